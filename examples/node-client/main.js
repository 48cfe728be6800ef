#!/usr/bin/env node
// Submit a DAG with an idempotency key (twice: the same run id comes back), watch it to the end,
// write the outcome to a KV key and read it back. See README.md.
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

import { Client, RaftmeshError, UsageError, credentialsFromEnv, parseAddresses, runStatus } from './raftmesh.js';

// grpc-js gives Node an IP address as the TLS server name when the address is one, and Node warns
// of that (DEP0123) on every connection; the certificate is still checked against the IP.
process.removeAllListeners('warning');
process.on('warning', (w) => w.code === 'DEP0123' || console.error(`${w.name}: ${w.message}`));

const USAGE = `usage: node main.js [--dag FILE.json] [--key KEY] [--kv-key KEY] [--addresses H:P,...] [--json]
Environment: RAFTMESH_ADDRESSES, RAFTMESH_TOKEN, RAFTMESH_CA, RAFTMESH_CERT, RAFTMESH_KEY, RAFTMESH_SERVER_NAME`;

// The raftmesh CLI's exit codes, so scripts can treat both alike.
const EXIT = { ok: 0, runFailed: 1, usage: 2, notFound: 3, unavailable: 4, error: 5, aborted: 6, refused: 7 };
const EXIT_FOR_CODE = {
  INVALID_ARGUMENT: EXIT.usage,
  NOT_FOUND: EXIT.notFound,
  UNAVAILABLE: EXIT.unavailable,
  DEADLINE_EXCEEDED: EXIT.unavailable,
  ABORTED: EXIT.aborted,
  UNAUTHENTICATED: EXIT.refused,
  PERMISSION_DENIED: EXIT.refused,
};

// Fan-out / fan-in with the built-in `sum` agent: seed = 1, p_i = i + 1, total = 2+3+4+5 = 14.
const BUILTIN_DAG = {
  name: 'node-client-fanout',
  tasks: [
    { id: 'seed', agent: 'sum', input: { value: 1 } },
    ...[1, 2, 3, 4].map((i) => ({ id: `p${i}`, agent: 'sum', input: { value: i }, deps: ['seed'] })),
    { id: 'total', agent: 'sum', deps: ['p1', 'p2', 'p3', 'p4'] },
  ],
};

// The DAG file keys this example sends (README "DAG files"); the raftmesh CLI takes them all.
const TASK_KEYS = new Set(['id', 'agent', 'input', 'deps', 'retries', 'priority', 'timeout_ms', 'retry_backoff_ms']);

function taskSpec(task) {
  const unknown = Object.keys(task).filter((k) => !TASK_KEYS.has(k));
  if (unknown.length) {
    const keys = [...TASK_KEYS].join(', ');
    throw new UsageError(`task ${task.id}: this example sends only ${keys}, not ${unknown.join(', ')}`);
  }
  if (typeof task.id !== 'string' || typeof task.agent !== 'string') {
    throw new UsageError(`every task needs a string "id" and "agent": ${JSON.stringify(task).slice(0, 200)}`);
  }
  return {
    id: task.id,
    agent: task.agent,
    input_json: JSON.stringify(task.input ?? null),
    deps: task.deps ?? [],
    retries: task.retries, // proto3 optional: unset means the agent type's default
    priority: task.priority ?? 0,
    timeout_ms: task.timeout_ms,
    retry_backoff_ms: task.retry_backoff_ms ?? 0,
  };
}

function loadDag(path) {
  if (path === undefined) return BUILTIN_DAG;
  let dag;
  try {
    dag = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new UsageError(`cannot read the DAG file ${path}: ${err.message}`);
  }
  if (!Array.isArray(dag?.tasks)) throw new UsageError(`${path}: expected {"tasks": [...]}`);
  return dag;
}

function describe(ev) {
  switch (ev.event) {
    case 'snapshot': {
      const counts = {};
      for (const t of ev.snapshot.tasks) counts[runStatus(t.status)] = (counts[runStatus(t.status)] ?? 0) + 1;
      const tasks = Object.entries(counts).map(([s, n]) => `${n} ${s}`).join(', ');
      return `snapshot: run ${runStatus(ev.snapshot.status)} (${tasks})`;
    }
    case 'task': {
      const { task_id, status, attempt, node } = ev.task;
      return `task ${task_id} ${runStatus(status)} (attempt ${attempt}${node ? ` on ${node}` : ''})`;
    }
    default:
      return `run ${runStatus(ev.run.status)}${ev.run.error ? `: ${ev.run.error}` : ''}`;
  }
}

async function main(argv) {
  const { values: opts } = parseArgs({
    args: argv,
    options: {
      dag: { type: 'string' },
      key: { type: 'string' },
      'kv-key': { type: 'string' },
      addresses: { type: 'string' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (opts.help) {
    console.log(USAGE);
    return EXIT.ok;
  }
  // With --json, stdout carries only the summary object; progress goes to stderr.
  const say = opts.json ? (line) => console.error(line) : (line) => console.log(line);
  const dag = loadDag(opts.dag);
  const client = new Client(parseAddresses(opts.addresses), credentialsFromEnv(), {
    log: (line) => console.error(`failover: ${line}`),
  });
  try {
    const request = {
      tasks: dag.tasks.map(taskSpec),
      idempotency_key: opts.key ?? `node-client-${randomUUID()}`,
      name: dag.name ?? '',
      priority: dag.priority ?? 0,
    };
    const first = await client.call('Cluster', 'SubmitRun', request);
    say(`submitted run ${first.run_id} (idempotency key ${request.idempotency_key}, created: ${first.created})`);
    const again = await client.call('Cluster', 'SubmitRun', request);
    if (again.run_id !== first.run_id) {
      throw new Error(`the same idempotency key gave another run: ${again.run_id}, not ${first.run_id}`);
    }
    say(`submitted again with the same key: the same run ${again.run_id} (created: ${again.created})`);

    for await (const ev of client.watchRun(first.run_id)) say(describe(ev));
    const run = await client.call('Cluster', 'GetRun', { run_id: first.run_id });
    const status = runStatus(run.status);
    const outputs = Object.fromEntries(
      run.tasks.filter((t) => t.output_json).map((t) => [t.id, JSON.parse(t.output_json)]),
    );

    const kvKey = opts['kv-key'] ?? `node-client/${first.run_id}`;
    const written = { run_id: first.run_id, status, outputs };
    const put = await client.call('Kv', 'Put', {
      key: kvKey,
      value_json: JSON.stringify(written),
      request_id: randomUUID().replaceAll('-', ''), // a retry of the put applies once
    });
    const got = await client.call('Kv', 'Get', { key: kvKey });
    if (!got.entry.found) throw new Error(`KV key ${kvKey} is missing right after it was written`);
    const value = JSON.parse(got.entry.value_json);
    say(`kv ${kvKey} = ${got.entry.value_json} (written at revision ${put.revision})`);

    if (opts.json) {
      const summary = {
        run_id: first.run_id,
        created: first.created,
        resubmitted: { run_id: again.run_id, created: again.created },
        status,
        error: run.error,
        outputs,
        kv: { key: kvKey, value, mod_revision: Number(got.entry.mod_revision) },
      };
      console.log(JSON.stringify(summary));
    }
    if (status !== 'SUCCEEDED') {
      console.error(`node-client: run ${first.run_id} ended ${status}${run.error ? `: ${run.error}` : ''}`);
      return EXIT.runFailed;
    }
    return EXIT.ok;
  } finally {
    client.close();
  }
}

try {
  process.exitCode = await main(process.argv.slice(2));
} catch (err) {
  if (err instanceof RaftmeshError) {
    const refused = EXIT_FOR_CODE[err.code] === EXIT.refused;
    // the node's message names the raftmesh CLI's --token; this client has no such flag
    const message = err.message.replace('check --token / RAFTMESH_TOKEN', 'check RAFTMESH_TOKEN');
    console.error(`node-client: ${refused ? 'refused: ' : ''}${message}`);
    process.exitCode = EXIT_FOR_CODE[err.code] ?? EXIT.error;
  } else if (err instanceof UsageError || err.code?.startsWith?.('ERR_PARSE_ARGS')) {
    console.error(`node-client: ${err.message}\n${USAGE}`);
    process.exitCode = EXIT.usage;
  } else {
    console.error(`node-client: ${err.stack ?? err}`);
    process.exitCode = EXIT.error;
  }
}
