"""Load, end to end on a real 3-node cluster (loopback):

- ``scripts/load.py``: 100 concurrent clients each submitting and watching small runs, every run
  checked (succeeded, outputs equal their inputs): no error; the p99 is printed (no speed is
  asserted: the machine is shared).
- 1,000 idle TCP connections (half of them having sent the HTTP/2 client preface, then nothing)
  held open to one node's gRPC port: the cluster still serves calls through that node, and when
  the leader is killed while they are open a new leader is elected and serves a submitted run.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from raftmesh import DAG
from raftmesh.localcluster import LocalCluster, wait_until

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "load.py")
IDLE_CONNECTIONS = 1000
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def test_load_script_100_clients_no_errors(make_cluster: Callable[..., LocalCluster]) -> None:
    cluster = make_cluster(3)
    cluster.wait_ready()
    p = subprocess.run(
        [
            sys.executable,
            SCRIPT,
            "--clients",
            "100",
            "--runs",
            "2",
            "--addresses",
            ",".join(cluster.addresses),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.stdout.strip(), p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    print(f"load: {out}")
    print(f"100 clients: p99 submit->done {out['p99_s']} s, {out['runs_per_s']} runs/s")
    assert out["errors"] == 0, out["first_errors"]
    assert out["runs_ok"] == 200
    assert p.returncode == 0


NODE_SOFT_LIMIT = 1024


@pytest.fixture
def fd_headroom() -> Iterator[None]:
    """Nodes start with a soft limit of 1,024 open files (a common default: they must raise their
    own, ``node/main.py``), this process with room for its 1,000 sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 3 * IDLE_CONNECTIONS
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (NODE_SOFT_LIMIT, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _room_for_sockets() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (3 * IDLE_CONNECTIONS, hard))


def test_1000_idle_connections_do_not_stop_serving_or_electing(
    fd_headroom: None, make_cluster: Callable[..., LocalCluster]
) -> None:
    cluster = make_cluster(3)
    leader = cluster.wait_ready()
    # The connections pile on a follower, which must then take part in electing a new leader.
    target = next(n for n in cluster.nodes if n != leader)
    pid = cluster.nodes[target].pid
    with open(f"/proc/{pid}/limits", encoding="ascii") as f:
        line = next(ln for ln in f if ln.startswith("Max open files"))
    assert int(line.split()[3]) > NODE_SOFT_LIMIT + IDLE_CONNECTIONS, f"the node kept its limit: {line}"
    _room_for_sockets()  # the nodes started with 1,024; this process needs its own room
    host, port = cluster.nodes[target].grpc.rsplit(":", 1)
    socks: list[socket.socket] = []
    try:
        for i in range(IDLE_CONNECTIONS):
            s = socket.create_connection((host, int(port)), timeout=10)
            if i % 2:
                s.sendall(H2_PREFACE)  # a client that starts HTTP/2 and then says nothing
            socks.append(s)
        client = cluster.client([cluster.nodes[target].grpc])
        try:
            # Served through the very node holding the idle connections (a write it forwards).
            info = client.run(_one_task(1), timeout_s=60)
            assert info.status == "SUCCEEDED" and info.tasks["a"].output == 1
            cluster.kill(leader)
            survivors = [n for n in cluster.nodes if n != leader]
            new_leader = wait_until(
                lambda: cluster.leader(among=survivors), 60.0, "a new leader after the kill"
            )
            assert new_leader in survivors
            info = client.run(_one_task(2), timeout_s=60)
            assert info.status == "SUCCEEDED" and info.tasks["a"].output == 2
            assert client.status().leader == new_leader
        finally:
            client.close()
        # Reported, not asserted: a server may rightly close connections that never finish a handshake.
        alive = 0
        for s in socks:
            s.setblocking(False)
            try:
                alive += s.recv(1, socket.MSG_PEEK) != b""
            except BlockingIOError:
                alive += 1
            except OSError:
                pass
        print(f"{alive} of {IDLE_CONNECTIONS} idle connections still open")
    finally:
        for s in socks:
            s.close()


def _one_task(value: int) -> DAG:
    dag = DAG()
    dag.task("a", "echo", input=value)
    return dag
