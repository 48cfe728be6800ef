"""Start a real multi-process raftmesh cluster on this machine (tests, benchmarks, chaos).

Each node is a separate ``raftmesh node`` process on loopback (or inside a
network namespace via ``exec_prefix``), with free ports picked at start. Every
process is stopped by its own pid; ``close()`` removes what the cluster made.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .client import Client
from .client._security import Credentials
from .errors import RaftmeshError


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """Ports the kernel says are free now (held open together so they are distinct)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class NodeProc:
    id: str
    raft: str
    grpc: str
    data_dir: str
    log_path: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    paused: bool = False
    metrics: str = ""
    """``HOST:PORT`` of the node's Prometheus endpoint ("" when the cluster runs without)."""
    http: str = ""
    """``HOST:PORT`` of the node's web dashboard ("" when the cluster runs without)."""

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def wait_until(pred: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    """Poll ``pred`` until it returns something truthy; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout_s
    last_exc: Exception | None = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except Exception as exc:  # the thing we wait for may fail until it is ready
            last_exc = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"timed out after {timeout_s} s waiting for {what}"
                + (f" (last error: {last_exc})" if last_exc else "")
            )
        time.sleep(interval_s)


@dataclass
class LocalCluster:
    """``with LocalCluster(3) as c: c.client().run(dag)``."""

    size: int = 3
    base_dir: str | None = None
    host: str = "127.0.0.1"
    slots: int = 64
    extra_args: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    hosts: dict[str, str] = field(default_factory=dict)
    """Per-node host (e.g. a network namespace's address); default ``host``."""
    exec_prefix: Callable[[str], list[str]] | None = None
    """Per-node command prefix (e.g. ``ip netns exec NS``)."""
    raft_secret: bool = True
    """Generate a cluster secret (``base_dir/raft.secret``, mode 0600) and pass it to every node."""
    unsafe_no_fsync: bool = False
    """Run every node with ``--unsafe-no-fsync``."""
    agents_modules: Sequence[str] = ()
    """Agent modules every node loads (``--agents-module``: ``.py`` paths, made absolute, or module names)."""
    credentials: Credentials | None = None
    """How this harness's own clients and health checks reach the nodes (TLS, token); None: plaintext."""
    metrics: bool = False
    """Serve Prometheus metrics from every node (``--metrics`` on a free port: ``NodeProc.metrics``)."""
    http: bool = False
    """Serve the web dashboard from every node (``--http`` on a free port: ``NodeProc.http``)."""
    secret_path: str | None = field(default=None, init=False)
    nodes: dict[str, NodeProc] = field(default_factory=dict)
    _clients: list[Client] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self._own_dir = self.base_dir is None
        self.base_dir = self.base_dir or tempfile.mkdtemp(prefix="raftmesh-")
        ports = free_ports((2 + self.metrics + self.http) * self.size)
        ids = [f"n{i + 1}" for i in range(self.size)]
        addr = {i: self.hosts.get(i, self.host) for i in ids}
        peers = ",".join(
            f"{i}={addr[i]}:{ports[k]}/{addr[i]}:{ports[self.size + k]}" for k, i in enumerate(ids)
        )
        node_flags: list[str] = []
        if self.raft_secret:
            os.makedirs(self.base_dir, exist_ok=True)
            self.secret_path = path = os.path.join(self.base_dir, "raft.secret")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
            node_flags = ["--raft-secret-file", path]
        if self.unsafe_no_fsync:
            node_flags.append("--unsafe-no-fsync")
        for m in self.agents_modules:
            node_flags += ["--agents-module", os.path.abspath(m) if m.endswith(".py") else m]
        for k, i in enumerate(ids):
            d = os.path.join(self.base_dir, i)
            os.makedirs(d, exist_ok=True)
            metrics = f"{addr[i]}:{ports[2 * self.size + k]}" if self.metrics else ""
            http = f"{addr[i]}:{ports[(2 + self.metrics) * self.size + k]}" if self.http else ""
            argv = [
                sys.executable,
                "-m",
                "raftmesh.cli.main",
                "node",
                "--id",
                i,
                "--raft",
                f"{addr[i]}:{ports[k]}",
                "--grpc",
                f"{addr[i]}:{ports[self.size + k]}",
                "--peers",
                peers,
                "--data-dir",
                os.path.join(d, "data"),
                "--slots",
                str(self.slots),
                *node_flags,
                *(["--metrics", metrics] if metrics else []),
                *(["--http", http] if http else []),
                *self.extra_args,
            ]
            self.nodes[i] = NodeProc(
                i,
                f"{addr[i]}:{ports[k]}",
                f"{addr[i]}:{ports[self.size + k]}",
                os.path.join(d, "data"),
                os.path.join(d, "node.log"),
                argv,
                metrics=metrics,
                http=http,
            )

    # ---- lifecycle -------------------------------------------------------------

    @property
    def addresses(self) -> list[str]:
        return [n.grpc for n in self.nodes.values()]

    @property
    def metrics_urls(self) -> list[str]:
        """Every node's ``http://HOST:PORT/metrics`` (empty unless ``metrics=True``)."""
        return [f"http://{n.metrics}/metrics" for n in self.nodes.values() if n.metrics]

    def start(self, wait: bool = True, timeout_s: float = 60.0) -> LocalCluster:
        for i in self.nodes:
            self.start_node(i)
        if wait:
            self.wait_ready(timeout_s)
        return self

    def start_node(self, node_id: str) -> None:
        n = self.nodes[node_id]
        if n.alive:
            raise RaftmeshError(f"{node_id} is already running (pid {n.pid})")
        prefix = self.exec_prefix(node_id) if self.exec_prefix else []
        env = {**os.environ, **self.env}
        with open(n.log_path, "ab") as log:
            n.proc = subprocess.Popen(
                [*prefix, *n.argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        n.paused = False

    def kill(self, node_id: str) -> None:
        """kill -9, and reap."""
        n = self.nodes[node_id]
        if n.proc is not None and n.proc.poll() is None:
            os.kill(n.proc.pid, signal.SIGKILL)
            n.proc.wait(timeout=10)
        n.paused = False

    def stop_node(self, node_id: str, timeout_s: float = 10.0) -> None:
        """SIGTERM (graceful), then SIGKILL after ``timeout_s``."""
        n = self.nodes[node_id]
        if n.proc is None or n.proc.poll() is not None:
            return
        if n.paused:
            os.kill(n.proc.pid, signal.SIGCONT)
        os.kill(n.proc.pid, signal.SIGTERM)
        try:
            n.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.kill(n.proc.pid, signal.SIGKILL)
            n.proc.wait(timeout=10)
        n.paused = False

    def restart(self, node_id: str) -> None:
        self.kill(node_id)
        self.start_node(node_id)

    def pause(self, node_id: str) -> None:
        n = self.nodes[node_id]
        if n.alive:
            os.kill(n.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
            n.paused = True

    def resume(self, node_id: str) -> None:
        n = self.nodes[node_id]
        if n.alive and n.paused:
            os.kill(n.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
        n.paused = False

    def wipe(self, node_id: str) -> None:
        """Delete a stopped node's data directory (it must catch up from its peers)."""
        n = self.nodes[node_id]
        if n.alive:
            raise RaftmeshError(f"stop {node_id} before wiping it")
        shutil.rmtree(n.data_dir, ignore_errors=True)

    def close(self) -> None:
        """Stop every node: all are sent SIGTERM first, then each is waited for (a node's graceful
        stop takes about a second, mostly its gRPC server's grace; one after another that was
        seconds of every test's teardown), with SIGKILL for any still running after 5 s."""
        stopping = []
        for i, n in self.nodes.items():
            if n.proc is None or n.proc.poll() is not None:
                continue
            try:
                if n.paused:
                    os.kill(n.proc.pid, signal.SIGCONT)
                os.kill(n.proc.pid, signal.SIGTERM)
                stopping.append(i)
            except OSError:
                self.kill(i)
        deadline = time.monotonic() + 5.0
        for i in stopping:
            n = self.nodes[i]
            try:
                n.proc.wait(timeout=max(0.0, deadline - time.monotonic()))  # type: ignore[union-attr]
            except subprocess.TimeoutExpired:
                self.kill(i)
            n.paused = False
        for c in self._clients:
            c.close()
        if self._own_dir and self.base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- observation ---------------------------------------------------------------

    def client(self, addresses: list[str] | None = None, **kw: Any) -> Client:
        kw.setdefault("credentials", self.credentials)
        c = Client(addresses or self.addresses, **kw)
        self._clients.append(c)
        return c

    def status_of(self, node_id: str, include_digest: bool = False) -> Any:
        with Client([self.nodes[node_id].grpc], retry_deadline_s=0, credentials=self.credentials) as c:
            return c.status_of(self.nodes[node_id].grpc, include_digest=include_digest)

    def leader(self, among: Sequence[str] | None = None) -> str | None:
        """The leader that the live nodes (or ``among``) agree on and is one of them, else None."""
        seen = set()
        live = list(among or [n for n in self.nodes if self.nodes[n].alive and not self.nodes[n].paused])
        for i in live:
            try:
                seen.add(self.status_of(i).leader)
            except RaftmeshError:
                return None
        if len(seen) == 1:
            (leader,) = seen
            return leader if leader in live else None
        return None

    def serving(self, node_id: str, timeout_s: float = 2.0) -> bool:
        """The node answers the gRPC health check with SERVING: it knows a leader and its
        current incarnation is registered and up in the state it has applied."""
        with (self.credentials or Credentials()).channel(self.nodes[node_id].grpc) as ch:
            try:
                resp = health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
                )
            except grpc.RpcError:
                return False
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

    def wait_ready(self, timeout_s: float = 60.0, among: Sequence[str] | None = None) -> str:
        """Wait until the live nodes agree on a leader and each is SERVING; returns the leader.

        SERVING (not the ``up`` flag of a member, which a quickly restarted node still
        carries from its previous incarnation) means each node has applied its own
        current registration, so nothing of the restart is still to commit.
        """
        live = list(among or [n for n in self.nodes if self.nodes[n].alive and not self.nodes[n].paused])

        def ready() -> str | None:
            leader = self.leader(live)
            if leader is None or not all(self.serving(i) for i in live):
                return None
            return leader

        return str(wait_until(ready, timeout_s, f"a leader agreed by {live}, each of them SERVING"))

    def digests(self, among: Sequence[str] | None = None) -> dict[str, tuple[int, str]]:
        """(revision, digest) per live node."""
        return {i: (st.revision, st.digest) for i, st in self.statuses(among).items()}

    def statuses(self, among: Sequence[str] | None = None) -> dict[str, Any]:
        """Each live node's status, with its state digest."""
        ids = among or [n for n in self.nodes if self.nodes[n].alive and not self.nodes[n].paused]
        return {i: self.status_of(i, include_digest=True) for i in ids}

    def wait_converged_statuses(
        self, timeout_s: float = 30.0, among: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """Wait until every live replica has the same revision and digest; returns the statuses
        of that one poll. Compare against these, never against a later read: a tick or a
        registration may commit meanwhile (all replicas equal again, one revision later)."""

        def same() -> dict[str, Any] | None:
            sts = self.statuses(among)
            return sts if len({(st.revision, st.digest) for st in sts.values()}) == 1 else None

        return dict(wait_until(same, timeout_s, "replicas to converge"))

    def wait_converged(self, timeout_s: float = 30.0, among: Sequence[str] | None = None) -> str:
        """Wait until every live replica has the same revision and digest; returns the digest."""
        sts = self.wait_converged_statuses(timeout_s, among)
        return str(next(iter(sts.values())).digest)
