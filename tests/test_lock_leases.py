"""Lock lease handles in the pure state machine: a release or renewal must name the grant's
secret handle; a wrong or missing one is PERMISSION_DENIED and changes nothing; the node's
own holders (no handle) work as before; tables and commands without handles encode and
decode as they did (older snapshots and log entries load)."""

from __future__ import annotations

from dataclasses import replace

from raftmesh.consensus import ClusterState, Code
from raftmesh.consensus.commands import LockAcquire, LockRelease, decode_command, encode_command
from raftmesh.consensus.locks import Holder, LockTable, Request
from raftmesh.consensus.results import LockKeepAliveResult, LockReleaseResult
from tests.coord import T0, Coord

H = "0123456789abcdef0123456789abcdef"


def _acquire(c: Coord, owner: str, name: str, lease: str = H, wait: int = 0) -> LockAcquire:
    return replace(c.acquire(owner, name, wait=wait), lease=lease)


def _release(c: Coord, owner: str, name: str, token: int, lease: str, keep: bool = False) -> LockRelease:
    return replace(c.release(owner, name, token, keep_alive=keep), lease=lease)


def test_release_and_renewal_need_the_grants_lease_handle() -> None:
    c = Coord()
    t = c.granted(_acquire(c, "alice", "L"))
    assert c.holder("L", "alice").lease == H
    for wrong in ("", "f" * 32, H[:-1]):
        for keep in (False, True):
            res = c.unchanged(_release(c, "alice", "L", t, wrong, keep), Code.PERMISSION_DENIED)
            assert "lease handle" in res.message
    assert c.holders("L") == {"alice": t}
    assert c.ok(_release(c, "alice", "L", t, H, keep=True)) == LockKeepAliveResult(t, c.st.time_ms + 10_000)
    assert c.ok(_release(c, "alice", "L", t, H)) == LockReleaseResult(token=t)
    assert c.holders("L") == {}


def test_a_waiter_granted_later_keeps_its_handle() -> None:
    c = Coord()
    t1 = c.granted(_acquire(c, "a", "L", lease="1" * 32))
    c.waits(_acquire(c, "b", "L", lease="2" * 32, wait=60_000))
    c.ok(_release(c, "a", "L", t1, "1" * 32))
    h = c.holder("L", "b")
    assert h.lease == "2" * 32
    c.unchanged(_release(c, "b", "L", h.token, "1" * 32), Code.PERMISSION_DENIED)
    c.ok(_release(c, "b", "L", h.token, "2" * 32))


def test_holders_without_a_handle_release_without_one() -> None:
    # The node's own holders (actor activations, agents' ctx.locks) acquire with no handle.
    c = Coord()
    t = c.granted(c.acquire("task:r/t#1:agent", "L"))
    c.unchanged(_release(c, "task:r/t#1:agent", "L", t, H), Code.PERMISSION_DENIED)
    c.ok(c.release("task:r/t#1:agent", "L", t))


def test_an_oversized_handle_is_refused_before_anything_changes() -> None:
    c = Coord()
    c.unchanged(_acquire(c, "a", "L", lease="x" * 1000), Code.INVALID_ARGUMENT)


def test_commands_and_tables_without_handles_encode_as_before() -> None:
    c = Coord()
    plain = c.acquire("a", "L")
    assert "lease" not in encode_command(plain).decode("latin-1")
    with_handle = replace(plain, lease=H)
    assert decode_command(encode_command(with_handle)) == with_handle
    rel = replace(c.release("a", "L", 3), lease=H)
    assert decode_command(encode_command(rel)) == rel
    # Holder and Request records written before handles existed (6 and 8 fields) still load.
    old_holder = ["a", "exclusive", 3, "rid", 1000, T0 + 1000]
    assert Holder.decode(old_holder).lease == ""
    assert Holder.decode(old_holder).encode() == old_holder
    old_request = ["rid", "a", [["L", "exclusive"]], 1000, 0, T0, 0, 1]
    assert Request.decode(old_request).lease == ""
    assert Request.decode(old_request).encode() == old_request
    table = LockTable.decode([[["L", [old_holder], [], 3]], [], [], 0])
    assert table.locks["L"].holders["a"].lease == ""


def test_a_snapshot_keeps_the_handles() -> None:
    c = Coord()
    c.granted(_acquire(c, "alice", "L"))
    c.waits(_acquire(c, "bob", "L", lease="9" * 32, wait=60_000))
    copy = ClusterState.decode(c.st.encode())
    assert copy.locks.locks["L"].holders["alice"].lease == H
    assert copy.locks.waiting[next(iter(copy.locks.waiting))].lease == "9" * 32
    assert copy.encode() == c.st.encode()


def test_the_acquiring_principal_is_kept_through_a_wait_and_a_snapshot() -> None:
    # The Locks service hands a replayed request id's lease only to this principal.
    c = Coord()
    t1 = c.granted(replace(_acquire(c, "a", "L", lease="1" * 32), principal="token:alice"))
    assert c.holder("L", "a").principal == "token:alice"
    c.waits(replace(_acquire(c, "b", "L", lease="2" * 32, wait=60_000), principal="token:bob"))
    assert next(iter(c.st.locks.waiting.values())).principal == "token:bob"
    copy = ClusterState.decode(c.st.encode())
    assert next(iter(copy.locks.waiting.values())).principal == "token:bob"
    assert copy.encode() == c.st.encode()
    c.ok(_release(c, "a", "L", t1, "1" * 32))
    assert c.holder("L", "b").principal == "token:bob" and c.holder("L", "b").lease == "2" * 32
    # A principal without a lease handle keeps its place in the record.
    h = Holder("o", "exclusive", 3, "rid", 0, 0, "", "node:n1")
    assert Holder.decode(h.encode()) == h
    r = Request("rid", "o", (("L", "exclusive"),), 1000, 0, T0, 0, 1, "", "token:x")
    assert Request.decode(r.encode()) == r
    cmd = replace(c.acquire("a", "M"), principal="token:alice")
    assert decode_command(encode_command(cmd)) == cmd
    assert "principal" not in encode_command(c.acquire("a", "M")).decode("latin-1")
    c.unchanged(replace(c.acquire("z", "M"), principal="p" * 1000), Code.INVALID_ARGUMENT)
