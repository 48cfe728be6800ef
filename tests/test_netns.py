"""Real partitions (``raftmesh.chaos.netns``): namespaces, nftables drops, cleanup.

The lab tests need root, ``ip`` and ``nft`` and are skipped, with the reason,
otherwise. Every process they start is stopped by its pid; every wait polls with a
deadline. The reachability helpers at the bottom are pure and always run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from raftmesh.chaos import (
    NetnsLab,
    bridge,
    cleanup_stale,
    groups_reachability,
    is_supported,
    majorities_ring,
    resolve_reachability,
)
from raftmesh.errors import InvalidArgument

DEADLINE_S = 10.0
PORT = 7000
SUPPORTED, REASON = is_supported()
requires_netns = pytest.mark.skipif(not SUPPORTED, reason=f"netns lab unavailable here: {REASON}")

ECHO_SERVER = """
import socket, sys, threading
srv = socket.create_server(("0.0.0.0", int(sys.argv[1])))
def serve(conn):
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)
while True:
    threading.Thread(target=serve, args=(srv.accept()[0],), daemon=True).start()
"""

ECHO_CLIENT = """
import socket, sys
timeout = float(sys.argv[3])
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=timeout) as s:
    s.settimeout(timeout)
    s.sendall(b"ping")
    assert s.recv(4) == b"ping"
"""

UDP_RECEIVE = """
import socket, sys
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.bind(("0.0.0.0", int(sys.argv[1])))
    s.settimeout(float(sys.argv[2]))
    print(s.recv(100).decode())
"""

UDP_SEND = """
import socket, sys
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    for _ in range(20):
        s.sendto(b"hello", (sys.argv[1], int(sys.argv[2])))
"""

# A lab owner that never cleans up by itself: the test then ends it in one of three ways.
LAB_OWNER = """
import sys, time
from raftmesh.chaos import NetnsLab
lab = NetnsLab(["a", "b"], prefix=sys.argv[1]).start()
names = [lab.namespace("a"), lab.namespace("b"), lab.hub_namespace, lab.host_interface]
open(sys.argv[2], "w").write(" ".join(names))
if sys.argv[3] == "exit":
    sys.exit(0)
time.sleep(60)
"""


def wait_until(cond: Callable[[], bool], what: str, deadline_s: float = DEADLINE_S) -> None:
    end = time.monotonic() + deadline_s
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline_s} s waiting for {what}")
        time.sleep(0.05)


def run_in(lab: NetnsLab, node: str, script: str, *args: object, timeout_s: float = DEADLINE_S) -> int:
    argv = [*lab.exec_prefix(node), sys.executable, "-S", "-c", script, *map(str, args)]
    return subprocess.run(argv, capture_output=True, timeout=timeout_s, check=False).returncode


def connects(lab: NetnsLab, src: str, dst: str, timeout_s: float = 1.0) -> bool:
    """Whether an echo round trip from ``src``'s namespace to ``dst`` succeeds."""
    return (
        run_in(lab, src, ECHO_CLIENT, lab.ip_of(dst), PORT, timeout_s, timeout_s=timeout_s + DEADLINE_S) == 0
    )


def host_connects(lab: NetnsLab, dst: str) -> bool:
    argv = [sys.executable, "-S", "-c", ECHO_CLIENT, lab.ip_of(dst), str(PORT), "1.0"]
    return subprocess.run(argv, capture_output=True, timeout=DEADLINE_S, check=False).returncode == 0


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def link_names() -> set[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {str(link["ifname"]) for link in json.loads(out)}


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=DEADLINE_S)


@pytest.fixture
def lab() -> Iterator[NetnsLab]:
    with NetnsLab(["n1", "n2", "n3"]) as running:
        yield running


@pytest.fixture
def echo_in_n1(lab: NetnsLab) -> Iterator[subprocess.Popen[bytes]]:
    # `ip netns exec` execs the command, so proc.pid is the server's own pid.
    proc = subprocess.Popen([*lab.exec_prefix("n1"), sys.executable, "-S", "-c", ECHO_SERVER, str(PORT)])
    try:
        wait_until(lambda: host_connects(lab, "n1"), "the echo server in n1")
        yield proc
    finally:
        stop(proc)


@pytest.mark.netns
@requires_netns
def test_partition_blocks_both_ways_spares_the_host_and_heals(
    lab: NetnsLab, echo_in_n1: subprocess.Popen[bytes]
) -> None:
    assert echo_in_n1.pid in lab.pids("n1")
    assert connects(lab, "n2", "n1")
    assert connects(lab, "n1", "n1")

    lab.partition([{"n1"}, {"n2", "n3"}])
    wait_until(lambda: not connects(lab, "n2", "n1"), "n2 to lose n1")
    assert not connects(lab, "n3", "n1")
    assert connects(lab, "n1", "n1")  # loopback and own address are never blocked
    assert host_connects(lab, "n1")  # client traffic from the host still flows
    assert lab.blocked_links() == {("n1", "n2"), ("n2", "n1"), ("n1", "n3"), ("n3", "n1")}

    lab.heal()
    wait_until(lambda: connects(lab, "n2", "n1"), "n2 to reach n1 again")
    assert lab.blocked_links() == frozenset()


@pytest.mark.netns
@requires_netns
def test_partition_is_idempotent_and_replaces_the_previous_one(
    lab: NetnsLab, echo_in_n1: subprocess.Popen[bytes]
) -> None:
    lab.partition([{"n1", "n3"}])
    lab.partition([{"n1", "n3"}])
    wait_until(lambda: not connects(lab, "n2", "n1"), "n2 to lose n1")
    assert connects(lab, "n3", "n1")

    lab.partition([{"n1", "n2"}])
    wait_until(lambda: connects(lab, "n2", "n1"), "n2 to reach n1 under the new partition")
    assert not connects(lab, "n3", "n1")
    tables = subprocess.run(
        [*lab.exec_prefix("n1"), "nft", "list", "tables"], capture_output=True, text=True, check=True
    ).stdout
    assert tables.count("raftmesh_chaos") == 1

    lab.heal()
    lab.heal()
    wait_until(lambda: connects(lab, "n3", "n1"), "n3 to reach n1 after heal")


@pytest.mark.netns
@requires_netns
def test_one_way_reachability_drops_only_that_direction(lab: NetnsLab) -> None:
    # n1 may send to n2, n2 may not send to n1; UDP shows each direction on its own.
    lab.set_reachability({"n1": {"n2", "n3"}, "n2": {"n3"}, "n3": {"n1", "n2"}})
    assert lab.blocked_links() == {("n2", "n1")}

    def datagram_arrives(src: str, dst: str) -> bool:
        argv = [*lab.exec_prefix(dst), sys.executable, "-S", "-c", UDP_RECEIVE, str(PORT), "1.5"]
        receiver = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 1.0
            while receiver.poll() is None and time.monotonic() < deadline:
                run_in(lab, src, UDP_SEND, lab.ip_of(dst), PORT)
                time.sleep(0.05)
            out, _ = receiver.communicate(timeout=DEADLINE_S)
            return out.strip() == b"hello"
        finally:
            stop(receiver)

    assert datagram_arrives("n1", "n2")
    assert not datagram_arrives("n2", "n1")


@pytest.mark.netns
@requires_netns
def test_cleanup_removes_everything_even_after_an_exception() -> None:
    with pytest.raises(RuntimeError, match="boom"), NetnsLab(["n1", "n2", "n3"]) as lab:
        made = {lab.namespace(n) for n in lab.nodes} | {lab.hub_namespace}
        assert made <= netns_names()
        assert lab.host_interface in link_names()
        raise RuntimeError("boom")
    assert not made & netns_names()
    assert lab.host_interface not in link_names()
    lab.cleanup()  # idempotent


@pytest.mark.netns
@requires_netns
@pytest.mark.parametrize("ending", ["exit", "sigterm", "sigkill"])
def test_a_lab_owner_that_ends_leaves_nothing_behind(ending: str, tmp_path: Path) -> None:
    prefix = "rmt"
    names_file = tmp_path / "names"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    argv = [sys.executable, "-c", LAB_OWNER, prefix, str(names_file), ending]
    owner = subprocess.Popen(argv, env=env)
    try:
        wait_until(
            lambda: (names_file.exists() and names_file.read_text() != "") or owner.poll() is not None,
            "the lab",
        )
        *namespaces, host_interface = names_file.read_text().split()
        if ending == "sigterm":
            os.kill(owner.pid, signal.SIGTERM)
        elif ending == "sigkill":
            os.kill(owner.pid, signal.SIGKILL)
        returncode = owner.wait(timeout=DEADLINE_S)
    finally:
        stop(owner)

    if ending == "sigkill":
        assert set(namespaces) <= netns_names()  # a killed owner cannot clean up ...
        removed = cleanup_stale(prefix)  # ... so the next run does
        assert set(namespaces) <= set(removed)
    else:
        expected = -signal.SIGTERM if ending == "sigterm" else 0
        assert returncode == expected  # the previous handler still ran
    assert not set(namespaces) & netns_names()
    assert host_interface not in link_names()


@pytest.mark.netns
@requires_netns
def test_cleanup_stale_keeps_labs_of_live_processes(lab: NetnsLab) -> None:
    assert cleanup_stale(lab.run_name) == []
    assert lab.hub_namespace in netns_names()


@pytest.mark.netns
@requires_netns
def test_addresses_are_private_and_distinct(lab: NetnsLab) -> None:
    assert lab.subnet.startswith("10.213.") and lab.subnet.endswith(".0/24")
    ips = [lab.ip_of(n) for n in lab.nodes]
    assert len({*ips, lab.host_ip}) == 4
    assert lab.exec_prefix("n2")[-1] == lab.namespace("n2") == f"{lab.run_name}-n2"
    with pytest.raises(InvalidArgument):
        lab.ip_of("n9")


# --- pure reachability helpers (no root needed) --------------------------------------------

NODES = ("n1", "n2", "n3", "n4", "n5")


def pairs(*links: str) -> frozenset[frozenset[str]]:
    return frozenset(frozenset(link.split("-")) for link in links)


def test_groups_reachability_puts_unlisted_nodes_together() -> None:
    assert groups_reachability(NODES[:3], [{"n1"}]) == pairs("n2-n3")
    assert groups_reachability(NODES[:3], [{"n1", "n2"}, {"n3"}]) == pairs("n1-n2")
    with pytest.raises(InvalidArgument, match="more than one group"):
        groups_reachability(NODES[:3], [{"n1", "n2"}, {"n2"}])
    with pytest.raises(InvalidArgument, match="unknown"):
        groups_reachability(NODES[:3], [{"n7"}])


def test_bridge_node_sees_both_sides() -> None:
    links = bridge({"n1", "n2"}, {"n4", "n5"}, via="n3")
    assert links == pairs("n1-n2", "n1-n3", "n2-n3", "n3-n4", "n3-n5", "n4-n5")
    with pytest.raises(InvalidArgument):
        bridge({"n1"}, {"n1"}, via="n3")


def test_majorities_ring_gives_every_node_its_own_majority() -> None:
    for nodes in (NODES, tuple(f"n{i}" for i in range(1, 8))):
        seen = resolve_reachability(nodes, majorities_ring(nodes))
        views = {n: frozenset(seen[n] | {n}) for n in nodes}
        assert all(len(v) > len(nodes) // 2 for v in views.values())
        assert len(set(views.values())) == len(nodes)  # nobody shares a majority
    assert resolve_reachability(NODES, majorities_ring(NODES))["n1"] == {"n2", "n5"}
    with pytest.raises(InvalidArgument):
        majorities_ring(NODES[:3])


def test_resolve_reachability_accepts_pairs_and_directed_adjacency() -> None:
    assert resolve_reachability(NODES[:3], pairs("n1-n2")) == {
        "n1": {"n2"},
        "n2": {"n1"},
        "n3": frozenset(),
    }
    assert resolve_reachability(NODES[:3], {"n1": ["n1", "n2"]}) == {
        "n1": {"n2"},
        "n2": frozenset(),
        "n3": frozenset(),
    }
    with pytest.raises(InvalidArgument, match="two distinct"):
        resolve_reachability(NODES[:3], [frozenset({"n1"})])


def test_lab_arguments_are_checked_before_touching_the_system() -> None:
    for nodes in ([], ["n1", "n1"], ["bad name"]):
        with pytest.raises(InvalidArgument):
            NetnsLab(nodes)
    with pytest.raises(InvalidArgument):
        NetnsLab(["n1"], prefix="Way-too-long")
