// A small raftmesh client built from the shipped cluster.proto (no generated code, no Python SDK):
// it fails over between nodes, speaks TLS / mutual TLS and sends a bearer token, reading the
// same environment variables as the Python SDK and the CLI.
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';

/** Run statuses that never change again (as the Python SDK's TERMINAL). */
export const TERMINAL = new Set(['SUCCEEDED', 'FAILED', 'CANCELLED', 'COMPENSATED', 'COMPENSATION_FAILED']);

// UNAVAILABLE: no leader yet, a node down, or a write's outcome unknown. Every write this client
// makes carries an idempotency key or request id, so trying it again (on another node) is safe.
const RETRYABLE = new Set([grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED]);
// Nodes send a heartbeat each second on an idle stream: this much silence means a stalled node.
const STREAM_SILENCE_MS = 5000;
const CALL_TIMEOUT_MS = 10000;
const MAX_MESSAGE_BYTES = 16 * 1024 * 1024; // as the nodes and the Python SDK

/** A status from a node (or from failing to reach any): `code` is the gRPC status name. */
export class RaftmeshError extends Error {
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.code = code;
  }
}

/** Bad input or configuration on this side: nothing was sent. */
export class UsageError extends Error {}

const STATUS_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([name, code]) => [code, name]));

// grpc-js ends a connection failure's details with an empty "Resolution note:".
const detailsOf = (err) => (err.details || err.message || '').replace(/\s*Resolution note:\s*$/, '');

function translate(err, tls) {
  let details = detailsOf(err);
  // grpc-js reports a failed handshake as a bare "Failed to connect": say what to check.
  if (err.code === grpc.status.UNAVAILABLE && tls) {
    details +=
      " (TLS is on: RAFTMESH_CA must be the CA that signed the nodes' certificates, which must cover" +
      " the address's host (else set RAFTMESH_SERVER_NAME), and nodes that require client" +
      ' certificates need RAFTMESH_CERT and RAFTMESH_KEY)';
  }
  return new RaftmeshError(STATUS_NAMES[err.code] ?? 'UNKNOWN', details);
}

/** `RAFTMESH_PROTO`, else the repository's copy next to this example, else the installed package's. */
export function findProto(env = process.env) {
  if (env.RAFTMESH_PROTO) return env.RAFTMESH_PROTO;
  const here = dirname(fileURLToPath(import.meta.url));
  const inRepo = join(here, '..', '..', 'raftmesh', 'proto', 'raftmesh', 'v1', 'cluster.proto');
  if (existsSync(inRepo)) return inRepo;
  const python = env.PYTHON || 'python3';
  const script = 'import os, raftmesh.proto as p; print(os.path.dirname(p.__file__))';
  try {
    const dir = execFileSync(python, ['-c', script], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    return join(dir.trim(), 'raftmesh', 'v1', 'cluster.proto');
  } catch {
    throw new UsageError(
      `cannot find cluster.proto: not at ${inRepo} and ${python} cannot import raftmesh.proto;` +
        ' set RAFTMESH_PROTO to the file (or PYTHON to an interpreter with raftmesh installed)',
    );
  }
}

function loadApi(protoPath) {
  const definition = protoLoader.loadSync(protoPath, {
    keepCase: true, // field names as the .proto spells them: run_id, idempotency_key
    longs: String, // uint64 revisions and times do not fit a JS number in general
    enums: String,
    defaults: true,
    oneofs: true, // RunEvent.event names the member that is set (none: a heartbeat)
  });
  return grpc.loadPackageDefinition(definition).raftmesh.v1;
}

/** Host:port list from a comma-separated string (else `RAFTMESH_ADDRESSES`). */
export function parseAddresses(addresses = process.env.RAFTMESH_ADDRESSES ?? '') {
  const out = addresses.split(',').map((a) => a.trim()).filter(Boolean);
  if (out.length === 0) {
    throw new UsageError('no node addresses: pass --addresses host:port,... or set RAFTMESH_ADDRESSES');
  }
  return out;
}

function readPem(path, what, variable) {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new UsageError(`cannot read the ${what} ${path} (${err.code}); fix ${variable}`);
  }
}

/** TLS and token from `RAFTMESH_CA` / `_CERT` / `_KEY` / `_SERVER_NAME` / `_TOKEN`, as the Python SDK. */
export function credentialsFromEnv(env = process.env) {
  const token = env.RAFTMESH_TOKEN || undefined;
  const { RAFTMESH_CA: ca, RAFTMESH_CERT: cert, RAFTMESH_KEY: key, RAFTMESH_SERVER_NAME: serverName } = env;
  if (!cert !== !key) {
    throw new UsageError(
      'a client certificate needs its key and the other way round: set both RAFTMESH_CERT and RAFTMESH_KEY',
    );
  }
  if (cert && !ca) throw new UsageError('RAFTMESH_CERT needs RAFTMESH_CA: mutual TLS is TLS first');
  if (token !== undefined && !/^[\x20-\x7e]+$/.test(token)) {
    throw new UsageError('the token has characters a header cannot carry; check RAFTMESH_TOKEN');
  }
  const channel = ca
    ? grpc.credentials.createSsl(
        readPem(ca, 'CA certificate', 'RAFTMESH_CA'),
        key ? readPem(key, 'client key', 'RAFTMESH_KEY') : null,
        cert ? readPem(cert, 'client certificate', 'RAFTMESH_CERT') : null,
      )
    : grpc.credentials.createInsecure();
  return { channel, token, serverName, tls: Boolean(ca) };
}

export class Client {
  /**
   * @param {string[]} addresses nodes to try, in order; any node serves every call
   * @param {{channel: grpc.ChannelCredentials, token?: string, serverName?: string}} credentials
   * @param {{retryDeadlineMs?: number, log?: (line: string) => void, protoPath?: string}} options
   */
  constructor(addresses, credentials, { retryDeadlineMs = 30000, log = () => {}, protoPath = findProto() } = {}) {
    this.addresses = addresses;
    this.credentials = credentials;
    this.retryDeadlineMs = retryDeadlineMs;
    this.log = log;
    this.api = loadApi(protoPath);
    this.current = 0;
    this.stubs = new Map();
  }

  stub(addr) {
    let stub = this.stubs.get(addr);
    if (stub === undefined) {
      const options = {
        'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
        'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
        'grpc.initial_reconnect_backoff_ms': 100,
        'grpc.max_reconnect_backoff_ms': 1000,
      };
      if (this.credentials.serverName) options['grpc.ssl_target_name_override'] = this.credentials.serverName;
      const cluster = new this.api.Cluster(addr, this.credentials.channel, options);
      // One connection per node, shared by both services.
      const kv = new this.api.Kv(addr, this.credentials.channel, { channelOverride: cluster.getChannel() });
      stub = { Cluster: cluster, Kv: kv };
      this.stubs.set(addr, stub);
    }
    return stub;
  }

  metadata() {
    const md = new grpc.Metadata();
    if (this.credentials.token) md.set('authorization', `Bearer ${this.credentials.token}`);
    return md;
  }

  failover(addr, err) {
    this.current = (this.current + 1) % this.addresses.length;
    const code = STATUS_NAMES[err.code] ?? err.code;
    this.log(`${addr}: ${code} (${detailsOf(err)}); trying ${this.addresses[this.current]}`);
  }

  /** A unary call, e.g. `call('Cluster', 'SubmitRun', {...})`, failing over until the retry deadline. */
  async call(service, method, request) {
    const giveUpAt = Date.now() + this.retryDeadlineMs;
    for (let attempt = 1; ; attempt++) {
      const addr = this.addresses[this.current];
      const stub = this.stub(addr)[service];
      try {
        return await new Promise((resolve, reject) => {
          const deadline = Date.now() + CALL_TIMEOUT_MS;
          stub[method](request, this.metadata(), { deadline }, (err, res) => (err ? reject(err) : resolve(res)));
        });
      } catch (err) {
        if (!RETRYABLE.has(err.code) || Date.now() >= giveUpAt) throw translate(err, this.credentials.tls);
        this.failover(addr, err);
      }
      await sleep(backoffMs(attempt));
    }
  }

  /**
   * WatchRun's events until the run ends: a snapshot first (again after a reconnect to another
   * node), then task and run events. Heartbeats are skipped.
   */
  async *watchRun(runId) {
    let failingSince = null;
    for (let attempt = 1; ; attempt++) {
      const addr = this.addresses[this.current];
      const call = this.stub(addr).Cluster.WatchRun({ run_id: runId }, this.metadata());
      let stalled = false;
      let timer;
      const arm = () => {
        clearTimeout(timer);
        timer = setTimeout(() => {
          stalled = true;
          call.cancel();
        }, STREAM_SILENCE_MS);
      };
      arm();
      try {
        for await (const ev of call) {
          arm();
          failingSince = null;
          attempt = 0;
          if (!ev.event) continue;
          yield ev;
          const status = runStatus(ev.snapshot?.status ?? ev.run?.status);
          if (ev.event !== 'task' && TERMINAL.has(status)) return;
        }
        return;
      } catch (err) {
        failingSince ??= Date.now();
        const retryable = RETRYABLE.has(err.code) || (err.code === grpc.status.CANCELLED && stalled);
        if (!retryable || Date.now() - failingSince >= this.retryDeadlineMs) {
          throw translate(err, this.credentials.tls);
        }
        const silence = { code: 'STALLED', details: `no message for ${STREAM_SILENCE_MS} ms` };
        this.failover(addr, stalled ? silence : err);
      } finally {
        clearTimeout(timer);
        call.on('error', () => {}); // the cancel below (of a stream we leave) reports CANCELLED
        call.cancel();
      }
      await sleep(backoffMs(attempt));
    }
  }

  close() {
    for (const stub of this.stubs.values()) stub.Cluster.close();
    this.stubs.clear();
  }
}

/** `RUN_STATUS_SUCCEEDED` -> `SUCCEEDED` (and the same for task statuses). */
export function runStatus(status) {
  return status?.replace(/^(RUN|TASK)_STATUS_/, '');
}

function backoffMs(attempt) {
  return Math.min(1000, 50 * 2 ** Math.min(attempt, 5)) * (0.5 + Math.random() / 2);
}
