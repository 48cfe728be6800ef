"""The versioned KV store (``raftmesh.consensus.kv`` driven by the pure state machine).

etcd's data model: revisions, versions, transactions of compares then ops, leases
that expire only on applied ticks, fenced writes, and a bounded watch history.
Every applied command is also checked for index and encoding round-trip equality.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from raftmesh.consensus import ClusterState, Code, TaskStatus, limits
from raftmesh.consensus.commands import Compare, Fence, KvOp, NodeDown, decode_command, encode_command
from raftmesh.consensus.kv import DELETE, PUT, KvEvent, Lease
from raftmesh.consensus.results import (
    DeleteResponse,
    GetResponse,
    KvLeaseResult,
    KvLeaseRevoked,
    KvTxnResult,
    PutResponse,
    Record,
    expect,
)
from tests.coord import T0, Coord
from tests.test_machine import spec


@pytest.fixture
def c() -> Coord:
    return Coord()


def put_rev(c: Coord, key: str, value: object, lease: int = 0, fence: Fence | None = None) -> int:
    res = expect(c.ok(c.put(key, value, lease=lease, fence=fence)), KvTxnResult)
    assert res.succeeded is True
    assert res.revision == c.st.revision
    return res.revision


# ---- put / get / delete ------------------------------------------------------------------


def test_put_get_delete_with_etcd_revisions(c: Coord) -> None:
    assert c.get("k") is None
    r1 = put_rev(c, "k", {"a": 1})
    assert c.get("k") == Record({"a": 1}, mod_revision=r1, create_revision=r1, version=1, lease=0)
    c.ok(c.put("other", 0))  # other keys' writes raise the revision, not k's version
    res = c.ok(c.put("k", [1, 2]))
    r2 = c.st.revision
    assert r2 == r1 + 2
    [resp] = expect(res, KvTxnResult).responses
    assert resp == PutResponse("k", r2, 2, prev=Record({"a": 1}, r1, r1, 1, 0))
    e = c.st.kv.get("k")
    assert e is not None and (e.mod_revision, e.create_revision, e.version) == (r2, r1, 2)
    # Delete, then create again: a new create_revision and version 1.
    res = c.ok(c.delete("k"))
    assert expect(res, KvTxnResult).responses == (DeleteResponse("k", deleted=True),)
    assert c.get("k") is None
    r4 = put_rev(c, "k", "again")
    e = c.st.kv.get("k")
    assert e is not None and (e.mod_revision, e.create_revision, e.version) == (r4, r4, 1)


def test_values_are_json_like_and_stored_as_given(c: Coord) -> None:
    for i, value in enumerate((None, True, 0, -5, 1.5, "", "ü", [], {}, {"n": [1, {"x": None}]})):
        c.ok(c.put(f"v{i}", value))
        assert c.read(f"v{i}").value == value


def test_delete_of_a_missing_key_changes_nothing(c: Coord) -> None:
    res = c.unchanged(c.delete("nope"), Code.OK)
    assert res == KvTxnResult(True, c.st.revision, (DeleteResponse("nope", deleted=False),))
    assert not c.st.kv.history


def test_list_by_prefix_in_key_order(c: Coord) -> None:
    for k in ("b/2", "a/1", "b/10", "b/1", "c", "b", "b/1/x", "ba"):
        c.ok(c.put(k, k.upper()))
    kv = c.st.kv
    assert [k for k, _ in kv.list_prefix("b/", 100)] == ["b/1", "b/1/x", "b/10", "b/2"]
    assert [k for k, _ in kv.list_prefix("b", 100)] == ["b", "b/1", "b/1/x", "b/10", "b/2", "ba"]
    assert [k for k, _ in kv.list_prefix("", 3)] == ["a/1", "b", "b/1"]
    assert [e.value for _, e in kv.list_prefix("b/1", 1)] == ["B/1"]
    assert kv.list_prefix("zz", 10) == []
    c.ok(c.delete("b/10"))
    assert [k for k, _ in kv.list_prefix("b/", 100)] == ["b/1", "b/1/x", "b/2"]


# ---- transactions ----------------------------------------------------------------------------


def cas(c: Coord, key: str, target: str, expected: object, value: object) -> bool:
    """Compare-and-set; returns whether it succeeded."""
    cmd = c.txn(compares=(Compare(key, target, "=", expected),), success=(KvOp("put", key, value),))
    before = c.st.revision
    res = c.apply(cmd)
    assert res.ok, res
    ok = expect(res, KvTxnResult).succeeded
    assert c.st.revision == before + (1 if ok else 0)
    return ok


def test_compare_and_set_on_version(c: Coord) -> None:
    # Expected version 0: the key must not exist (create-if-absent).
    assert cas(c, "k", "version", 0, "first") is True
    assert cas(c, "k", "version", 0, "second") is False
    assert c.read("k").value == "first"
    assert cas(c, "k", "version", 2, "x") is False
    assert cas(c, "k", "version", 1, "second") is True
    assert c.read("k").value == "second" and c.read("k").version == 2


def test_compare_and_set_on_mod_revision(c: Coord) -> None:
    assert cas(c, "k", "mod", 0, "first") is True
    mod = c.read("k").mod_revision
    c.ok(c.put("k", "interloper"))
    assert cas(c, "k", "mod", mod, "lost update") is False
    assert c.read("k").value == "interloper"
    assert cas(c, "k", "mod", c.read("k").mod_revision, "ok") is True


def test_compare_targets_and_ops(c: Coord) -> None:
    r = put_rev(c, "k", 10)
    c.ok(c.put("k", 20))

    def holds(*cmp: Compare) -> bool:
        res = c.unchanged(c.txn(compares=cmp), Code.OK)
        return expect(res, KvTxnResult).succeeded

    assert holds(Compare("k", "value", "=", 20))
    assert holds(Compare("k", "value", ">", 15), Compare("k", "value", "<", 25))
    assert not holds(Compare("k", "value", "!=", 20))
    assert holds(Compare("k", "create", "=", r), Compare("k", "version", ">", 1))
    assert holds(Compare("k", "mod", ">", r))
    assert holds(Compare("missing", "value", "=", None), Compare("missing", "create", "=", 0))
    assert not holds(Compare("k", "value", "<", "a string"))  # incomparable: does not hold
    assert not holds(Compare("k", "version", "=", 2), Compare("k", "version", "=", 3))  # all must hold
    assert holds()  # no comparisons: success


def test_multi_key_txn_runs_success_or_failure_ops(c: Coord) -> None:
    c.ok(c.put("acct/a", 100))
    c.ok(c.put("acct/b", 0))
    va, vb = c.read("acct/a").version, c.read("acct/b").version

    def transfer(amount: int, ver_a: int, ver_b: int) -> KvTxnResult:
        a, b = c.st.kv.entries["acct/a"].value, c.st.kv.entries["acct/b"].value
        res = c.apply(
            c.txn(
                compares=(Compare("acct/a", "version", "=", ver_a), Compare("acct/b", "version", "=", ver_b)),
                success=(
                    KvOp("put", "acct/a", a - amount),
                    KvOp("put", "acct/b", b + amount),
                    KvOp("get", "acct/a"),
                    KvOp("delete", "pending"),
                ),
                failure=(KvOp("get", "acct/a"), KvOp("get", "acct/b")),
            )
        )
        return expect(res, KvTxnResult)

    before = c.st.revision
    out = transfer(30, va, vb)
    rev = c.st.revision
    assert rev == before + 1  # one revision for the whole transaction
    assert out.succeeded is True and out.revision == rev
    responses = out.responses
    assert [type(r) for r in responses] == [PutResponse, PutResponse, GetResponse, DeleteResponse]
    # A get after a put in the same transaction sees the put.
    got = responses[2]
    assert isinstance(got, GetResponse) and got.record is not None
    assert got.record.value == 70 and got.record.mod_revision == rev
    assert responses[3] == DeleteResponse("pending", deleted=False)
    assert c.st.kv.entries["acct/a"].mod_revision == c.st.kv.entries["acct/b"].mod_revision == rev
    # Stale versions: the failure branch runs, returns both entries and writes nothing.
    out = transfer(30, va, vb)
    assert out.succeeded is False and c.st.revision == rev and out.revision == rev
    assert [
        (r.key, r.record.value, r.record.version)
        for r in out.responses
        if isinstance(r, GetResponse) and r.record is not None
    ] == [("acct/a", 70, 2), ("acct/b", 30, 2)]
    assert len(out.responses) == 2


def test_txn_whose_branch_has_no_writes_changes_nothing(c: Coord) -> None:
    c.ok(c.put("k", 1))
    # Reads only.
    c.unchanged(c.txn(success=(KvOp("get", "k"), KvOp("get", "x"))), Code.OK)
    # A failing compare with an empty failure branch.
    res = c.unchanged(
        c.txn(compares=(Compare("k", "value", "=", 2),), success=(KvOp("put", "k", 2),)), Code.OK
    )
    assert res == KvTxnResult(False, c.st.revision, ())
    # Deleting only keys that do not exist.
    c.unchanged(c.txn(success=(KvOp("delete", "x"), KvOp("delete", "y"))), Code.OK)


def test_txn_put_then_delete_of_a_new_key_is_a_change(c: Coord) -> None:
    before = c.st.revision
    res = c.ok(c.txn(success=(KvOp("put", "tmp", 1), KvOp("delete", "tmp"))))
    assert c.st.revision == before + 1 and "tmp" not in c.st.kv.entries
    assert expect(res, KvTxnResult).responses[1] == DeleteResponse("tmp", deleted=True)
    assert [(e.kind, e.key) for e in c.st.kv.history] == [(PUT, "tmp"), (DELETE, "tmp")]


def test_kv_changed_events_carry_the_revision(c: Coord) -> None:
    c.ok(c.put("a", 1))
    n = len(c.events)
    c.ok(c.txn(success=(KvOp("put", "a", 2), KvOp("put", "b", 3), KvOp("delete", "a"))))
    rev = c.st.revision
    evs = c.kv_events(n)
    assert [(e.revision, e.event.kind, e.event.key, e.event.value) for e in evs] == [
        (rev, PUT, "a", 2),
        (rev, PUT, "b", 3),
        (rev, DELETE, "a", None),
    ]
    assert (evs[0].event.version, evs[1].event.create_revision) == (2, rev)


# ---- limits -----------------------------------------------------------------------------------


def test_limits_are_rejected_with_invalid_argument_and_change_nothing(c: Coord) -> None:
    c.ok(c.put("k", 1))
    big = "x" * limits.MAX_KV_VALUE_BYTES
    cases = [
        c.put("big", big),
        c.put("", 1),
        c.put("has space", 1),
        c.put("tab\there", 1),
        c.put("nl\n", 1),
        c.put("k" * (limits.MAX_KV_KEY_CHARS + 1), 1),
        c.put("k", 1, lease=12345),  # no such lease
        c.txn(success=tuple(KvOp("put", f"k{i}", i) for i in range(limits.MAX_TXN_OPS + 1))),
        c.txn(
            compares=tuple(Compare(f"k{i}", "version", "=", 0) for i in range(limits.MAX_TXN_OPS // 2)),
            success=tuple(KvOp("get", f"k{i}") for i in range(limits.MAX_TXN_OPS // 2)),
            failure=(KvOp("get", "k"),),
        ),
        c.txn(success=(KvOp("upsert", "k", 1),)),
        c.txn(compares=(Compare("k", "lease", "=", 0),)),
        c.txn(compares=(Compare("k", "version", ">=", 0),)),
        c.txn(compares=(Compare("", "version", "=", 0),)),
        # Limits are checked on both branches, even the one that would not run.
        c.txn(
            compares=(Compare("k", "version", "=", 1),),
            success=(KvOp("get", "k"),),
            failure=(KvOp("put", "big", big),),
        ),
        c.put("k", 2, fence=Fence("bad lock name", 1)),
    ]
    for cmd in cases:
        c.unchanged(cmd, Code.INVALID_ARGUMENT)
    # Just under the limits is fine.
    fits = "x" * (limits.MAX_KV_VALUE_BYTES - 5)  # msgpack str32 header: 5 bytes
    c.ok(c.put("big", fits))
    c.ok(c.put("k" * limits.MAX_KV_KEY_CHARS, 1))
    c.ok(c.txn(success=tuple(KvOp("put", f"k{i}", i) for i in range(limits.MAX_TXN_OPS))))


def test_key_count_limit(c: Coord, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_KV_KEYS", 2)
    c.ok(c.put("a", 1))
    c.ok(c.put("b", 1))
    c.unchanged(c.put("c", 1), Code.RESOURCE_EXHAUSTED)
    c.ok(c.put("a", 2))  # overwriting is fine
    c.ok(c.txn(success=(KvOp("delete", "a"), KvOp("put", "c", 1))))


# ---- leases ---------------------------------------------------------------------------------


def grant(c: Coord, ttl: int, ts: int | None = None) -> int:
    res = c.ok(c.lease("grant", ttl=ttl, ts=ts))
    lease = expect(res, KvLeaseResult).lease
    assert lease == c.st.revision
    assert res == KvLeaseResult(lease, ttl_ms=ttl, deadline_ms=c.st.time_ms + ttl)
    return lease


def test_lease_expiry_by_tick_deletes_its_keys(c: Coord) -> None:
    lease = grant(c, 1000, ts=T0)
    c.ok(c.put("s/1", "a", lease=lease))
    c.ok(c.put("s/2", "b", lease=lease))
    c.ok(c.put("keep", "c"))
    assert c.read("s/1").lease == lease
    assert c.st.kv.leases[lease].keys == {"s/1", "s/2"}
    assert c.st.next_deadline_ms() == T0 + 1000
    # Later commands of other kinds expire nothing.
    c.ok(c.put("later", 1, fence=None))
    c.granted(c.acquire("o", "L", ts=T0 + 60_000))
    assert "s/1" in c.st.kv.entries
    c.ok(c.tick(T0 + 999))  # state time is past the deadline: a tick expires against it
    rev = c.st.revision
    assert sorted(c.st.kv.entries) == ["keep", "later"]
    assert lease not in c.st.kv.leases
    assert [(e.revision, e.event.kind, e.event.key) for e in c.kv_events()[-2:]] == [
        (rev, DELETE, "s/1"),
        (rev, DELETE, "s/2"),
    ]
    c.unchanged(c.put("s/3", 1, lease=lease), Code.INVALID_ARGUMENT)
    c.unchanged(c.lease("keep_alive", lease), Code.NOT_FOUND)
    c.unchanged(c.lease("revoke", lease), Code.NOT_FOUND)


def test_lease_expires_at_its_deadline_only(c: Coord) -> None:
    lease = grant(c, 1000, ts=T0)
    c.ok(c.put("s", 1, lease=lease))
    c.ok(c.tick(T0 + 999))
    assert "s" in c.st.kv.entries
    c.ok(c.tick(T0 + 1000))
    assert "s" not in c.st.kv.entries and c.st.next_deadline_ms() is None


def test_lease_keep_alive_extends(c: Coord) -> None:
    lease = grant(c, 1000, ts=T0)
    c.ok(c.put("s", 1, lease=lease))
    res = c.ok(c.lease("keep_alive", lease, ts=T0 + 700))
    assert res == KvLeaseResult(lease, ttl_ms=1000, deadline_ms=T0 + 1700)
    c.ok(c.tick(T0 + 1500))
    assert "s" in c.st.kv.entries
    c.ok(c.lease("keep_alive", lease, ts=T0 + 1500))  # renew again, same clock as the tick
    c.ok(c.lease("keep_alive", lease, ts=T0 + 1500))
    c.ok(c.tick(T0 + 2499))
    assert "s" in c.st.kv.entries
    c.ok(c.tick(T0 + 2500))
    assert "s" not in c.st.kv.entries


def test_lease_revoke_deletes_its_keys_only(c: Coord) -> None:
    lease = grant(c, 10_000)
    other = grant(c, 10_000)
    c.ok(c.put("a", 1, lease=lease))
    c.ok(c.put("b", 1, lease=lease))
    c.ok(c.put("b", 2))  # rewritten without the lease: detached from it
    c.ok(c.put("c", 1, lease=lease))
    c.ok(c.put("c", 2, lease=other))  # moved to another lease
    assert c.st.kv.leases[lease].keys == {"a"}
    res = c.ok(c.lease("revoke", lease))
    assert res == KvLeaseRevoked(lease, deleted=("a",))
    assert sorted(c.st.kv.entries) == ["b", "c"]
    c.ok(c.delete("c"))
    assert c.st.kv.leases[other].keys == set()


def test_lease_validation(c: Coord) -> None:
    c.unchanged(c.lease("grant", ttl=limits.MIN_KV_LEASE_TTL_MS - 1), Code.INVALID_ARGUMENT)
    c.unchanged(c.lease("grant", ttl=limits.MAX_KV_LEASE_TTL_MS + 1), Code.INVALID_ARGUMENT)
    lease = grant(c, limits.MIN_KV_LEASE_TTL_MS)
    c.unchanged(c.lease("renew", lease), Code.INVALID_ARGUMENT)
    c.unchanged(c.lease("keep_alive", lease + 1), Code.NOT_FOUND)


def test_a_lease_keeps_its_grantees_principal_and_older_leases_encode_as_before(c: Coord) -> None:
    res = c.ok(replace(c.lease("grant", ttl=10_000), principal="token:alice"))
    assert isinstance(res, KvLeaseResult) and c.st.kv.leases[res.lease].principal == "token:alice"
    plain = grant(c, 10_000)
    assert c.st.kv.leases[plain].principal == ""
    assert c.st.kv.leases[plain].encode() == [plain, 10_000, c.st.kv.leases[plain].deadline_ms, []]
    assert Lease.decode(c.st.kv.leases[res.lease].encode()) == c.st.kv.leases[res.lease]
    copy = ClusterState.decode(c.st.encode())
    assert copy.kv.leases[res.lease].principal == "token:alice" and copy.encode() == c.st.encode()
    cmd = replace(c.lease("grant", ttl=10_000), principal="token:bob")
    assert decode_command(encode_command(cmd)) == cmd
    assert "principal" not in encode_command(c.lease("grant", ttl=10_000)).decode("latin-1")
    c.unchanged(replace(c.lease("grant", ttl=10_000), principal="p" * 1000), Code.INVALID_ARGUMENT)


# ---- fenced writes ------------------------------------------------------------------------------


def test_write_fenced_by_a_lock_token(c: Coord) -> None:
    t1 = c.granted(c.acquire("a", "L", ttl=1000, ts=T0))
    put_rev(c, "res", "from a", fence=Fence("L", t1))
    w = c.acquire("b", "L", wait=60_000, ts=T0)
    c.waits(w)
    # a pauses past its TTL; the tick hands the lock to b.
    c.ok(c.tick(T0 + 1000))
    t2 = c.holders("L")["b"]
    assert t2 > t1
    res = c.unchanged(c.put("res", "late write from a", fence=Fence("L", t1)), Code.ABORTED)
    assert "newer grant" in res.message
    c.unchanged(c.delete("res", fence=Fence("L", t1)), Code.ABORTED)
    # Fenced before compares: even a txn whose branch would only read is rejected.
    c.unchanged(c.txn(success=(KvOp("get", "res"),), fence=Fence("L", t1)), Code.ABORTED)
    put_rev(c, "res", "from b", fence=Fence("L", t2))
    # Tokens never granted for this lock.
    res = c.unchanged(c.put("res", "x", fence=Fence("L", t2 + 100)), Code.ABORTED)
    assert "never granted" in res.message
    c.unchanged(c.put("res", "x", fence=Fence("never-locked", 1)), Code.ABORTED)
    c.unchanged(c.put("res", "x", fence=Fence("never-locked", 0)), Code.ABORTED)
    assert c.read("res").value == "from b"
    # After b releases, its token is still the last grant: its writes still pass (etcd-like:
    # fencing rejects only holders overtaken by a newer grant).
    c.ok(c.release("b", "L", t2))
    put_rev(c, "res", "b after release", fence=Fence("L", t2))


def test_write_fenced_by_a_shared_lock_grant(c: Coord) -> None:
    t1 = c.granted(c.acquire("r1", ("L", "shared")))
    t2 = c.granted(c.acquire("r2", ("L", "shared")))
    put_rev(c, "k", 1, fence=Fence("L", t2))
    c.unchanged(c.put("k", 2, fence=Fence("L", t1)), Code.ABORTED)  # a newer grant exists


def test_write_fenced_by_a_task_attempt(c: Coord) -> None:
    c.ok(c.register("n1"))
    c.ok(c.register("n2"))
    c.ok(c.submit("r1", [spec("a", retries=1), spec("b")]))
    c.ok(c.assign(("r1", "a", "n1"), ("r1", "b", "n1")))
    tok = c.task("r1", "a").token
    put_rev(c, "out/a", 1, fence=Fence(run_id="r1", task_id="a", token=tok))
    c.unchanged(c.put("out/a", 2, fence=Fence(run_id="r1", task_id="a", token=tok - 1)), Code.ABORTED)
    c.unchanged(c.put("out/a", 2, fence=Fence(run_id="r1", task_id="zz", token=tok)), Code.ABORTED)
    c.unchanged(c.put("out/a", 2, fence=Fence(run_id="nope", task_id="a", token=tok)), Code.ABORTED)
    # The attempt is lost with its node and requeued: its token no longer writes.
    c.ok(NodeDown(c.rid(), c.ts, "n1", "inc-1", "lost"))
    assert c.task("r1", "a").status is TaskStatus.READY
    res = c.unchanged(c.put("out/a", 3, fence=Fence(run_id="r1", task_id="a", token=tok)), Code.ABORTED)
    assert "no longer running" in res.message
    c.ok(c.assign(("r1", "a", "n2")))
    tok2 = c.task("r1", "a").token
    c.unchanged(c.put("out/a", 3, fence=Fence(run_id="r1", task_id="a", token=tok)), Code.ABORTED)
    put_rev(c, "out/a", 3, fence=Fence(run_id="r1", task_id="a", token=tok2))
    # Once the attempt completes, not even its own token writes.
    c.ok(c.complete("r1", "a"))
    c.unchanged(c.put("out/a", 4, fence=Fence(run_id="r1", task_id="a", token=tok2)), Code.ABORTED)
    assert c.read("out/a").value == 3


# ---- watch history -------------------------------------------------------------------------------


def test_events_since_by_prefix_and_exact_key(c: Coord) -> None:
    start = c.st.revision
    r1 = put_rev(c, "a/1", 1)
    r2 = put_rev(c, "a/2", 2)
    put_rev(c, "b/1", 3)
    r4 = put_rev(c, "a", 4)
    c.ok(c.delete("a/1"))
    r5 = c.st.revision
    kv = c.st.kv

    def seen(since: int, prefix: str, exact: bool = False) -> list[tuple[int, str, str]]:
        evs = kv.events_since(since, prefix, exact)
        assert evs is not None
        return [(e.revision, e.kind, e.key) for e in evs]

    assert seen(start, "a/") == [(r1, PUT, "a/1"), (r2, PUT, "a/2"), (r5, DELETE, "a/1")]
    assert seen(r1, "a/") == [(r2, PUT, "a/2"), (r5, DELETE, "a/1")]
    assert seen(start, "a", exact=True) == [(r4, PUT, "a")]
    assert seen(start, "a/1", exact=True) == [(r1, PUT, "a/1"), (r5, DELETE, "a/1")]
    assert seen(r5, "") == []
    assert len(seen(start, "")) == 5
    [ev] = kv.events_since(r4, "a/1", True) or []
    assert (ev.mod_revision, ev.create_revision, ev.version, ev.value) == (r5, r1, 0, None)


def test_history_is_compacted_by_count(c: Coord, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "KV_HISTORY_EVENTS", 3)
    start = c.st.revision
    revs = [put_rev(c, f"k{i}", i) for i in range(5)]
    kv = c.st.kv
    assert len(kv.history) == 3 and kv.compacted == revs[1]
    assert kv.events_since(start, "", False) is None  # revs[0], revs[1] are gone
    assert kv.events_since(revs[0], "", False) is None
    # A watcher that has seen up to the compacted revision misses nothing.
    evs = kv.events_since(revs[1], "", False)
    assert evs is not None and [e.revision for e in evs] == revs[2:]


def test_history_is_compacted_by_bytes(c: Coord, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "KV_HISTORY_BYTES", 300)
    r1 = put_rev(c, "k1", "x" * 100)
    r2 = put_rev(c, "k2", "x" * 100)
    assert c.st.kv.compacted == 0
    r3 = put_rev(c, "k3", "x" * 100)
    kv = c.st.kv
    assert kv.compacted == r1 and kv.history_bytes <= 300
    evs = kv.events_since(r1, "", False)
    assert evs is not None and [e.revision for e in evs] == [r2, r3]


def test_compaction_with_several_events_in_one_revision(c: Coord, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "KV_HISTORY_EVENTS", 3)
    before = c.st.revision
    c.ok(c.txn(success=tuple(KvOp("put", f"k{i}", i) for i in range(4))))
    rev = c.st.revision
    kv = c.st.kv
    # One of the revision's events was dropped: a watcher from before it must re-read.
    assert kv.compacted == rev and len(kv.history) == 3
    assert kv.events_since(before, "", False) is None
    assert kv.events_since(rev, "", False) == []


# ---- encoding --------------------------------------------------------------------------------------


def test_kv_round_trips_through_the_canonical_encoding(c: Coord) -> None:
    lease = grant(c, 5000)
    c.ok(c.put("a/1", {"deep": [1, 2, {"x": None}]}, lease=lease))
    c.ok(c.put("a/2", "two"))
    c.ok(c.put("a/2", "two again"))
    c.ok(c.delete("a/2"))  # a delete event in the history
    c.ok(c.put("b", 1.5))
    c.granted(c.acquire("o", "L", ttl=3000))
    c.waits(c.acquire("p", "L", wait=4000))
    data = c.st.encode()
    copy = ClusterState.decode(data)
    assert copy.encode() == data
    assert copy.digest() == c.st.digest()
    assert copy.index_snapshot() == c.st.index_snapshot()
    assert copy.kv.history_bytes == c.st.kv.history_bytes
    assert list(copy.kv.history) == list(c.st.kv.history)
    assert copy.next_deadline_ms() == c.st.next_deadline_ms()


def test_kv_event_size_survives_decoding(c: Coord) -> None:
    c.ok(c.put("key", {"v": 1}))
    c.ok(c.delete("key"))
    assert [e.kind for e in c.st.kv.history] == [PUT, DELETE]
    for recorded in c.st.kv.history:
        assert KvEvent.decode(recorded.encode()).size == recorded.size


def test_the_kv_service_makes_request_ids_without_a_getrandom_call_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Put/Delete/Txn without the caller's request id gets a fresh one (it goes into the
    replicated dedup table, so unique); uuid4 made a getrandom() call per write, letting go of
    the GIL mid-call."""
    import os

    from raftmesh.node.coordination_service import _request_id

    real, drawn = os.urandom, []

    def counted(n: int) -> bytes:
        drawn.append(n)
        return real(n)

    monkeypatch.setattr(os, "urandom", counted)
    ids = {_request_id("", "kv-") for _ in range(1000)}
    assert len(ids) == 1000
    assert len(drawn) <= 1000 * 16 // 4096 + 2, drawn  # from the OS's CSPRNG, 4 KiB at a time
    assert all(
        i.startswith("kv-") and len(i) == 35 and not limits.request_id_error("request_id", i) for i in ids
    )
    assert _request_id("mine", "kv-") == "mine"
