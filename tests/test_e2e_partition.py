"""End to end with real partitions (one network namespace per node, nftables drops; needs root)."""

from __future__ import annotations

import pathlib
import time

import pytest

from raftmesh import DAG
from raftmesh.chaos.netns import NetnsLab, is_supported
from raftmesh.errors import DeadlineExceeded, Unavailable
from raftmesh.localcluster import LocalCluster, wait_until

from .conftest import dump_logs
from .test_e2e_durability import sleepers

pytestmark = [pytest.mark.e2e, pytest.mark.netns]

_OK, _WHY = is_supported()


@pytest.mark.skipif(not _OK, reason=f"network namespaces unavailable: {_WHY}")
def test_isolated_leader_commits_nothing_and_steps_down(tmp_path: pathlib.Path) -> None:
    nodes = ["n1", "n2", "n3"]
    with NetnsLab(nodes) as lab:
        c = LocalCluster(
            3,
            base_dir=str(tmp_path),
            hosts={n: lab.ip_of(n) for n in nodes},
            exec_prefix=lab.exec_prefix,
            extra_args=["--node-down-after", "3"],
        )
        try:
            c.start()
            leader = c.wait_ready()
            others = [n for n in nodes if n != leader]
            client = c.client([c.nodes[n].grpc for n in others], retry_deadline_s=60)
            run_id = client.submit(sleepers(6, 2.0, "partition"))
            wait_until(
                lambda: any(t.status == "RUNNING" for t in client.get(run_id).tasks.values()),
                30,
                "tasks to start",
            )

            lab.partition([{leader}, set(others)])
            cut = time.monotonic()
            frozen_revision = c.status_of(leader).revision
            # a write sent to the isolated old leader cannot commit
            lonely = DAG("lonely")
            lonely.task("a", "echo", input=1)
            iso = c.client([c.nodes[leader].grpc], retry_deadline_s=0, timeout_s=6)
            with pytest.raises((Unavailable, DeadlineExceeded)):
                iso.submit(lonely, idempotency_key="written-to-isolated-leader")
            # it steps down within a few seconds (leaderFallbackTimeout)
            wait_until(lambda: c.status_of(leader).leader != leader, 15, "the isolated leader to step down")
            assert time.monotonic() - cut < 15
            # the majority elects a new leader and finishes the run, including the old leader's attempts
            new_leader = c.wait_ready(among=others, timeout_s=30)
            assert new_leader != leader
            run = client.wait(run_id, timeout_s=90)
            assert run.status == "SUCCEEDED", run.error
            assert c.status_of(leader).revision == frozen_revision, "the isolated node applied something"
            # Keep the partition well past the node-down timeout: the deposed leader is marked
            # down, but the healthy follower of the majority keeps heartbeating the new leader.
            follower = next(n for n in others if n != new_leader)

            def old_leader_down() -> bool:
                members = {m.id: m.up for m in c.status_of(new_leader).members}
                return not members[leader]

            wait_until(old_leader_down, 30, "the isolated old leader to be marked down")
            deadline = time.monotonic() + 4.0
            while time.monotonic() < deadline:  # observing a steady state for a while, not waiting for one
                members = {m.id: m.up for m in c.status_of(new_leader).members}
                assert members[follower], f"healthy follower {follower} was marked down during the partition"
                time.sleep(0.2)

            lab.heal()
            c.wait_ready(timeout_s=60)
            c.wait_converged(timeout_s=60)
            keys = [r["idempotency_key"] for r in client.list_runs(limit=1000)]
            assert "written-to-isolated-leader" not in keys, "an entry of the deposed leader was committed"
            assert client.get(run_id).status == "SUCCEEDED"
        except Exception:
            dump_logs(c)
            raise
        finally:
            c.close()


@pytest.mark.skipif(not _OK, reason=f"network namespaces unavailable: {_WHY}")
def test_rejoining_isolated_follower_does_not_raise_the_term(tmp_path: pathlib.Path) -> None:
    """Pre-vote: a follower cut off for several election timeouts asks before campaigning.

    Nobody answers it, so it never raises its term, and when the partition heals it rejoins the
    leader it had instead of deposing it with a higher term (pysyncobj alone did: its term grew
    with every timeout it spent alone, and the first vote request after the heal ended the term).
    """
    nodes = ["n1", "n2", "n3"]
    with NetnsLab(nodes) as lab:
        c = LocalCluster(
            3,
            base_dir=str(tmp_path),
            hosts={n: lab.ip_of(n) for n in nodes},
            exec_prefix=lab.exec_prefix,
        )
        try:
            c.start()
            leader = c.wait_ready()
            term = c.status_of(leader).term
            lonely = next(n for n in nodes if n != leader)
            rest = {n for n in nodes if n != lonely}
            wait_until(lambda: c.status_of(lonely).leader == leader, 15, "the follower to know its leader")
            lab.partition([{lonely}, rest])
            # Past several election timeouts (0.6-1.2 s) and the links' idle timeout (3 s).
            deadline = time.monotonic() + 4.0
            while time.monotonic() < deadline:  # observing a steady state for a while, not waiting for one
                assert c.status_of(lonely).term == term, "the isolated follower raised its term"
                time.sleep(0.3)
            lab.heal()
            c.wait_ready(timeout_s=30)
            wait_until(lambda: c.status_of(lonely).leader == leader, 30, "the follower to rejoin its leader")
            c.wait_converged(timeout_s=30)
            for n in nodes:
                st = c.status_of(n)
                assert (st.leader, st.term) == (leader, term), f"{n}: the rejoin forced an election"
        except Exception:
            dump_logs(c)
            raise
        finally:
            c.close()
