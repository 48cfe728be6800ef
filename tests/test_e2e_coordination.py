"""End to end: KV (linearizable, CAS, txn, watch that resumes after a node dies) and fenced locks."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable

import pytest

from raftmesh.errors import Aborted, DeadlineExceeded
from raftmesh.localcluster import LocalCluster, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def cluster3(module_cluster3: LocalCluster) -> LocalCluster:
    """The module's shared cluster: the tests that take it leave its nodes running."""
    return module_cluster3


def test_kv_is_linearizable_across_nodes(cluster3: LocalCluster) -> None:
    a, b, c = (cluster3.client([addr]) for addr in cluster3.addresses)
    rev = a.kv.put("cfg/x", {"v": 1})
    # a read on another node right after the write sees it (ReadIndex: the follower asks the leader)
    e = b.kv.get("cfg/x")
    assert e is not None and e.value == {"v": 1} and e.mod_revision == rev and e.version == 1
    assert c.kv.cas("cfg/x", rev, {"v": 2}) is True
    assert a.kv.cas("cfg/x", rev, {"v": 3}) is False  # stale expected revision
    assert b.kv.get("cfg/x").value == {"v": 2}  # type: ignore[union-attr]
    assert c.kv.cas("cfg/new", 0, "created") is True
    assert c.kv.cas("cfg/new", 0, "again") is False
    res = a.kv.txn(
        compares=[("cfg/x", "value", "=", {"v": 2})],
        success=[("put", "cfg/y", 10), ("delete", "cfg/new"), ("get", "cfg/x")],
        failure=[("put", "cfg/y", -1)],
    )
    assert res.succeeded and res.results[2]["entry"]["value"] == {"v": 2}
    assert [e.key for e in b.kv.list("cfg/")] == ["cfg/x", "cfg/y"]
    assert b.kv.delete("cfg/y") is True and b.kv.get("cfg/y") is None


def test_kv_watch_resumes_without_gaps_after_its_node_dies(make_cluster: Callable[..., LocalCluster]) -> None:
    cluster3 = make_cluster(3)  # its nodes die: not the shared cluster
    leader = cluster3.wait_ready()
    victim = next(i for i in cluster3.nodes if i != leader)
    others = [cluster3.nodes[i].grpc for i in cluster3.nodes if i != victim]
    watcher = cluster3.client([cluster3.nodes[victim].grpc, *others], retry_deadline_s=60)
    watcher._current = 0  # start on the victim
    writer = cluster3.client(others, retry_deadline_s=60)
    start = writer.kv.put("w/start", 0)
    seen: list[tuple[int, str, object]] = []
    done = threading.Event()

    def watch() -> None:
        for ev in watcher.kv.watch(prefix="w/k", from_revision=start, timeout_s=60):
            seen.append((ev.revision, ev.key, ev.entry.value if ev.entry else None))
            if len(seen) == 20:
                break
        done.set()

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    for i in range(10):
        writer.kv.put(f"w/k{i:02d}", i)
    wait_until(lambda: len(seen) >= 5, 30, "the watcher to see events")
    cluster3.kill(victim)
    for i in range(10, 20):
        writer.kv.put(f"w/k{i:02d}", i)
    assert done.wait(60), f"watch saw only {len(seen)} events"
    assert [k for _, k, _ in seen] == [f"w/k{i:02d}" for i in range(20)]
    revs = [r for r, _, _ in seen]
    assert revs == sorted(set(revs))


def test_locks_fence_stale_holders(cluster3: LocalCluster) -> None:
    c1, c2 = cluster3.client(), cluster3.client()
    with c1.lock("db:orders", ttl_s=5) as lease:
        t1 = lease.token
        c1.kv.put("orders/balance", 100, fence=lease.fence())
        granted, _, _ = c2.locks.acquire("db:orders", owner="other", wait_s=0)
        assert not granted
    with c2.lock("db:orders", ttl_s=5) as lease2:
        assert lease2.token > t1
        with pytest.raises(Aborted, match="newer grant"):
            c1.kv.put("orders/balance", -1, fence=lease.fence())
        c2.kv.put("orders/balance", 200, fence=lease2.fence())
    assert c1.kv.get("orders/balance").value == 200  # type: ignore[union-attr]


def test_lock_lease_expires_and_waiter_gets_it(cluster3: LocalCluster) -> None:
    c = cluster3.client()
    granted, token, _ = c.locks.acquire("jobs", owner="sleepy", ttl_s=1.0, wait_s=0)
    assert granted
    t0 = time.monotonic()
    granted2, token2, _ = c.locks.acquire("jobs", owner="patient", ttl_s=5, wait_s=20)
    assert granted2 and token2 > token
    assert time.monotonic() - t0 >= 0.5  # it waited for the lease to run out
    with pytest.raises(Aborted):
        c.locks.release("sleepy", "jobs", token)  # the expired holder's token is stale


def test_deadlock_is_broken_with_a_message_naming_the_cycle(cluster3: LocalCluster) -> None:
    c = cluster3.client()
    assert c.locks.acquire("x", owner="alice", wait_s=0)[0]
    bob_has_y, bob_token, _ = c.locks.acquire("y", owner="bob", wait_s=0)
    assert bob_has_y
    outcome: dict[str, object] = {}

    def alice_wants_y() -> None:
        try:
            outcome["alice"] = c.locks.acquire("y", owner="alice", wait_s=20)
        except Exception as exc:
            outcome["alice"] = exc

    t = threading.Thread(target=alice_wants_y)
    t.start()
    wait_until(lambda: any(lk["waiters"] == ["alice"] for lk in c.locks.list("y")), 10, "alice to wait for y")
    with pytest.raises(Aborted, match="deadlock") as err:
        c.locks.acquire("x", owner="bob", wait_s=20)  # bob is younger: he is the victim
    assert "alice" in err.value.message and "bob" in err.value.message
    # Only bob's request was aborted: he still holds y and alice still waits for it ...
    assert not outcome and t.is_alive()
    assert any(lk["waiters"] == ["alice"] for lk in c.locks.list("y"))
    # ... until he releases it, when she gets it.
    c.locks.release("bob", "y", bob_token)
    t.join(timeout=15)
    assert not t.is_alive(), "alice was not granted y after bob released it"
    granted, token, _ = outcome["alice"]  # type: ignore[misc]
    assert granted is True and token > bob_token, outcome


def test_try_lock_timeout(cluster3: LocalCluster) -> None:
    c = cluster3.client()
    assert c.locks.acquire("busy", owner="holder", ttl_s=30, wait_s=0)[0]
    with pytest.raises(DeadlineExceeded), c.lock("busy", wait_s=0.5):
        pass
    # the abandoned request was cancelled: nobody but the holder is queued
    assert c.locks.list("busy")[0]["waiters"] == []


def test_tasks_declaring_one_exclusive_lock_never_overlap(cluster3: LocalCluster) -> None:
    from raftmesh import DAG

    client = cluster3.client()
    dag = DAG("locked")
    for i in range(6):
        dag.task(f"s{i}", "sleep", input={"seconds": 0.3}, locks=["db:orders"])
    dag.task("free", "sleep", input={"seconds": 0.3})
    run = client.run(dag, timeout_s=60)
    assert run.status == "SUCCEEDED", run.error
    spans = sorted((t.started_ms, t.finished_ms) for tid, t in run.tasks.items() if tid != "free")
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, f"two holders of db:orders overlapped: {spans}"
    assert client.locks.list("db:orders")[0]["holders"] == []  # released with the last result


def test_bad_task_lock_is_rejected(cluster3: LocalCluster) -> None:
    from raftmesh.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="lock mode"):
        cluster3.client().submit({"tasks": [{"id": "a", "agent": "echo", "locks": [["x", "sideways"]]}]})
