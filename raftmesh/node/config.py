"""Node configuration: frozen dataclasses, validated once at start."""

from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from ..agents._pools import MAX_PROCESS_POOL_SIZE, MAX_THREAD_POOL_SIZE, PROCESS_POOL_SIZE, THREAD_POOL_SIZE
from ..consensus import limits
from ..consensus.raft import RaftTimings
from ..errors import InvalidArgument
from .tls import NodeTls

_ADDR_RE = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")
MAX_HTTP_STREAMS = 10_000
"""Upper bound of ``--http-max-streams`` (each open stream holds a gRPC stream and a socket)."""


@dataclass(frozen=True, slots=True)
class Peer:
    id: str
    raft: str
    grpc: str


@dataclass(frozen=True)
class NodeConfig:
    node_id: str
    raft: str
    grpc: str
    peers: tuple[Peer, ...]
    """Every member of the cluster, this node included."""
    data_dir: str
    slots: int = 64
    agents: tuple[str, ...] = ()
    """Agent types offered (empty: all registered ones)."""
    agents_modules: tuple[str, ...] = ()
    """Agent modules loaded at start (``--agents-module``: file paths or module names)."""
    raft_password: str | None = None
    """Cluster secret for the Raft transport (``--raft-secret-file`` or env); never on argv."""
    fsync: bool = True
    """fsync the Raft journal before acknowledging entries (``--unsafe-no-fsync`` turns it off)."""
    timings: RaftTimings = field(default_factory=RaftTimings)
    propose_timeout_s: float = 10.0
    """How long one write is retried (same request id) before its outcome is reported unknown."""
    commit_timeout_s: float = 3.0
    """A batch with no answer from pysyncobj after this long is retried (lost callbacks)."""
    node_down_after_s: float = 5.0
    """The leader marks a member down after this long without a Raft connection to it."""
    archive_applied: bool = False
    """Record every applied log entry in ``archive_path`` (audits across snapshots)."""
    audit_max_runs: int = 10_000
    """Runs whose audit timeline the node keeps (``--audit-max-runs``; 0: no audit archive)."""
    audit_max_bytes: int = 256 * 1024**2
    """About how many bytes of audit timelines the node keeps (``--audit-max-bytes``)."""
    agent_threads: int = THREAD_POOL_SIZE
    """Threads that run ``thread`` agents' attempts (``--agent-threads``)."""
    agent_processes: int = PROCESS_POOL_SIZE
    """Worker processes that run ``process`` agents' attempts (``--agent-processes``)."""
    preempt_priority: int | None = None
    """READY tasks of at least this priority preempt lower running ones when no slot is free (None: off)."""
    tokens_file: str | None = None
    """Bearer tokens and roles (``raftmesh.security.tokens``); None: an open cluster."""
    tls: NodeTls | None = None
    """TLS of the gRPC port and of every channel to a peer (``--tls-cert``/``--tls-key``/``--tls-ca``)."""
    metrics: str = ""
    """``HOST:PORT`` this node serves Prometheus metrics on (``--metrics``; "" = off)."""
    http: str = ""
    """``HOST:PORT`` this node serves its web dashboard on (``--http``; "" = off)."""
    http_max_streams: int = 64
    """Event streams the dashboard serves at once (``--http-max-streams``; 503 beyond)."""
    http_client_auth: str = ""
    """Whether the dashboard's HTTPS asks callers for a client certificate (``--http-client-auth``:
    "require" or "none"; "" follows ``--tls-client-auth``)."""

    @property
    def dashboard_client_auth(self) -> str:
        """What the dashboard asks of its callers: "require" (a client certificate) or "none"."""
        if self.tls is None:
            return "none"
        return self.http_client_auth or self.tls.client_auth

    def peer_by_raft(self, addr: str) -> Peer | None:
        return next((p for p in self.peers if p.raft == addr), None)

    @property
    def journal_path(self) -> str:
        return os.path.join(self.data_dir, "raft.journal")

    @property
    def snapshot_path(self) -> str:
        return os.path.join(self.data_dir, "snapshot.lmdb")


def _check_addr(what: str, addr: str) -> None:
    if not _ADDR_RE.match(addr):
        raise InvalidArgument(f"{what} {addr!r} must look like HOST:PORT")
    port = int(addr.rsplit(":", 1)[1])
    if not 0 < port < 65536:
        raise InvalidArgument(f"{what} {addr!r}: port must be 1-65535")


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 and ``localhost``: the only places Raft may listen without a secret."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_secret_file(path: str) -> str:
    """The cluster secret from ``path`` (surrounding whitespace stripped)."""
    try:
        with open(path, encoding="utf-8") as f:
            secret = f.read().strip()
    except OSError as exc:
        raise InvalidArgument(f"--raft-secret-file {path!r}: {exc.strerror}") from exc
    if len(secret) < 16:
        raise InvalidArgument(f"--raft-secret-file {path!r}: the secret must be at least 16 characters")
    return secret


def parse_peers(text: str) -> list[Peer]:
    """``ID=RAFT/GRPC,...`` -> peers."""
    peers = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        if "=" not in item or "/" not in item:
            raise InvalidArgument(f"peer {item!r} must look like ID=RAFT_HOST:PORT/GRPC_HOST:PORT")
        pid, addrs = item.split("=", 1)
        raft, grpc_addr = addrs.split("/", 1)
        peers.append(Peer(pid.strip(), raft.strip(), grpc_addr.strip()))
    return peers


def build_config(
    node_id: str,
    raft: str,
    grpc_addr: str,
    peers: list[Peer],
    data_dir: str,
    slots: int = 64,
    agents: tuple[str, ...] = (),
    raft_password: str | None = None,
    timings: RaftTimings | None = None,
    node_down_after_s: float = 5.0,
    fsync: bool = True,
    archive_applied: bool = False,
    agent_threads: int = THREAD_POOL_SIZE,
    agent_processes: int = PROCESS_POOL_SIZE,
    agents_modules: tuple[str, ...] = (),
    preempt_priority: int | None = None,
    tokens_file: str | None = None,
    tls: NodeTls | None = None,
    metrics: str = "",
    http: str = "",
    http_max_streams: int = 64,
    http_client_auth: str = "",
    audit_max_runs: int = 10_000,
    audit_max_bytes: int = 256 * 1024**2,
) -> NodeConfig:
    """Validate and build a config; errors say what to fix."""
    why = limits.id_error("node id", node_id)  # the rule RegisterNode is checked against
    if why:
        raise InvalidArgument(why)
    _check_addr("--raft", raft)
    _check_addr("--grpc", grpc_addr)
    if not 1 <= slots <= 100_000:
        raise InvalidArgument("--slots must be between 1 and 100000")
    all_peers = [p for p in peers if p.id != node_id]
    for p in all_peers:
        why = limits.id_error("peer id", p.id)
        if why:
            raise InvalidArgument(why)
        _check_addr(f"peer {p.id} raft address", p.raft)
        _check_addr(f"peer {p.id} grpc address", p.grpc)
    me = Peer(node_id, raft, grpc_addr)
    full = sorted([me, *all_peers], key=lambda p: p.id)
    if len({p.id for p in full}) != len(full):
        raise InvalidArgument("peer ids must be unique")
    if len({p.raft for p in full}) != len(full):
        raise InvalidArgument("raft addresses must be unique")
    if not data_dir:
        raise InvalidArgument("--data-dir is required")
    if not raft_password and not is_loopback_host(raft.rsplit(":", 1)[0]):
        raise InvalidArgument(
            f"--raft {raft} is not a loopback address and no cluster secret is set: anyone who "
            "reaches the Raft port could join the cluster. Pass --raft-secret-file PATH (the same "
            "file on every node; scripts/cluster.sh makes one) or set RAFTMESH_RAFT_SECRET"
        )
    if not 0.5 <= node_down_after_s <= 3600:
        raise InvalidArgument("--node-down-after must be between 0.5 and 3600 seconds")
    if timings is not None and not 2 <= timings.log_compaction_entries <= 10_000_000:
        raise InvalidArgument("--snapshot-entries must be between 2 and 10000000")
    if timings is not None and not 1 <= timings.log_compaction_s <= 10_000_000:
        raise InvalidArgument("--snapshot-seconds must be between 1 and 10000000")
    if not 1 <= agent_threads <= MAX_THREAD_POOL_SIZE:
        raise InvalidArgument(f"--agent-threads must be between 1 and {MAX_THREAD_POOL_SIZE}")
    if not 1 <= agent_processes <= MAX_PROCESS_POOL_SIZE:
        raise InvalidArgument(f"--agent-processes must be between 1 and {MAX_PROCESS_POOL_SIZE}")
    if any(not isinstance(m, str) or not m.strip() for m in agents_modules):
        raise InvalidArgument("--agents-module must be a file path or a module name (not empty)")
    if preempt_priority is not None and abs(preempt_priority) > limits.MAX_PRIORITY:
        raise InvalidArgument(f"--preempt-priority must be within +-{limits.MAX_PRIORITY}")
    if metrics:
        _check_addr("--metrics", metrics)
    if http:
        _check_addr("--http", http)
        if http in (grpc_addr, raft, metrics):
            raise InvalidArgument(f"--http {http} is already the node's gRPC, Raft or metrics address")
    if not 1 <= http_max_streams <= MAX_HTTP_STREAMS:
        raise InvalidArgument(f"--http-max-streams must be between 1 and {MAX_HTTP_STREAMS}")
    if http_client_auth not in ("", "require", "none"):
        raise InvalidArgument(
            f"--http-client-auth must be require or none, got {str(http_client_auth)[:40]!r}"
        )
    if http_client_auth == "require" and tls is None:
        raise InvalidArgument("--http-client-auth require needs TLS: pass --tls-cert, --tls-key and --tls-ca")
    if tokens_file and not raft_password:
        raise InvalidArgument(
            "--tokens-file needs the cluster secret (--raft-secret-file PATH or RAFTMESH_RAFT_SECRET, "
            "the same on every node): nodes prove who they are to each other with it"
        )
    if audit_max_runs < 0 or audit_max_bytes < 1:
        raise InvalidArgument("--audit-max-runs must be >= 0 and --audit-max-bytes >= 1")
    return NodeConfig(
        node_id=node_id,
        raft=raft,
        grpc=grpc_addr,
        peers=tuple(full),
        data_dir=os.path.abspath(data_dir),
        slots=slots,
        agents=agents,
        raft_password=raft_password,
        fsync=fsync,
        timings=timings or RaftTimings(),
        node_down_after_s=node_down_after_s,
        archive_applied=archive_applied,
        agent_threads=agent_threads,
        agent_processes=agent_processes,
        agents_modules=tuple(m.strip() for m in agents_modules),
        preempt_priority=preempt_priority,
        tokens_file=os.path.abspath(tokens_file) if tokens_file else None,
        tls=tls,
        metrics=metrics,
        http=http,
        http_max_streams=http_max_streams,
        http_client_auth=http_client_auth,
        audit_max_runs=audit_max_runs,
        audit_max_bytes=audit_max_bytes,
    )


def load_config_file(path: str) -> dict[str, Any]:
    """A JSON or YAML file with the same keys as the command-line flags (id, raft, grpc, peers, ...)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise InvalidArgument(f"{path}: the config must be a map")
    return data
