"""A staged submit (``StageRun`` parts, then ``SubmitRun`` with ``staged``): state-machine level.

A large run goes to the log in parts of bounded size so that no one entry holds apply for the
whole run. These tests hold the promises: the run is invisible until its last entry applies,
and then equal to the same run submitted in one entry; the stage is in snapshots, expires, is
bounded; a retried submit with the same idempotency key keeps working.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import msgpack
import pytest

from raftmesh.consensus import limits
from raftmesh.consensus.codes import Code
from raftmesh.consensus.commands import (
    Command,
    RegisterNode,
    StageRun,
    SubmitRun,
    TaskSpec,
    Tick,
    decode_batch,
    encode_batch,
)
from raftmesh.consensus.dag import dependency_order, stage_parts
from raftmesh.consensus.machine import StateMachine
from raftmesh.consensus.results import ChangedResult, Rejected, Result, SubmitRunResult
from raftmesh.consensus.state import ClusterState, TaskStatus
from raftmesh.node.reads import ReadView

T0 = 1_000


def machine() -> StateMachine:
    sm = StateMachine()
    assert sm.apply(RegisterNode("reg", T0, "n1", "n1:1", "n1:2", ("sum", "sleep"), 4, "i1"))[0].ok
    return sm


def fan(n: int) -> list[TaskSpec]:
    """root -> n leaves -> join (spec order is a dependency order)."""
    specs = [TaskSpec(id="root", agent="sum", input={"value": 1})]
    specs += [TaskSpec(id=f"w{i}", agent="sum", input={"value": i}, deps=("root",)) for i in range(n)]
    specs.append(TaskSpec(id="join", agent="sum", deps=tuple(f"w{i}" for i in range(n))))
    return specs


def apply(sm: StateMachine, cmd: Command) -> tuple[Result, list[Any]]:
    """Through the log's encoding, as a replica applies it."""
    decoded = decode_batch(encode_batch([cmd]))[0]
    assert isinstance(decoded, Command)
    return sm.apply(decoded)


def part(
    run_id: str, seq: int, tasks: list[TaskSpec], key: str = "", node: str = "n1", ts: int = T0
) -> StageRun:
    return StageRun(
        f"g-{run_id}-{seq}", ts, run_id=run_id, seq=seq, tasks=tuple(tasks), idempotency_key=key, node_id=node
    )


def staged(sm: StateMachine, cmd: SubmitRun, size: int) -> tuple[Result, list[list[Any]]]:
    """``cmd`` proposed as the node's staging does: parts of ``size`` tasks, then the submit.
    Returns the submit's result and, per entry, the events it emitted."""
    parts = [list(cmd.tasks[i : i + size]) for i in range(0, len(cmd.tasks), size)]
    events = []
    n = 0
    for seq, p in enumerate(parts[:-1]):
        res, evs = apply(sm, part(cmd.run_id, seq, p, cmd.idempotency_key, ts=cmd.ts_ms))
        assert isinstance(res, ChangedResult), res
        assert cmd.run_id not in sm.state.runs  # invisible to every reader until the submit
        events.append(evs)
        n += len(p)
    res, evs = apply(sm, replace(cmd, tasks=tuple(parts[-1]), staged=n))
    events.append(evs)
    return res, events


def run_body(sm: StateMachine, run_id: str) -> list[Any]:
    body = sm.state.runs[run_id].encode()
    body[11] = 0  # the run's revision: a staged run is created some entries later
    return body


def test_a_staged_run_is_invisible_until_its_submit_then_equal_to_one_submitted_whole() -> None:
    cmd = SubmitRun("s-k", T0, "r1", "k", tuple(fan(40)), 0, "big", "alice")
    whole, parted = machine(), machine()
    assert apply(whole, cmd)[0] == SubmitRunResult("r1", created=True)
    res, events = staged(parted, cmd, 7)
    assert res == SubmitRunResult("r1", created=True)
    assert all(evs == [] for evs in events[:-1])  # parts tell no watcher anything
    assert events[-1]  # the run's start and its root's READY come with the submit
    assert run_body(parted, "r1") == run_body(whole, "r1")
    assert parted.state.index_snapshot() == whole.state.index_snapshot()
    assert parted.state.idempotency == {"k": "r1"} and not parted.state.stages
    assert parted.state.runs["r1"].tasks["root"].status is TaskStatus.READY


def test_a_stage_is_in_snapshots_and_a_restored_replica_finishes_it_alike() -> None:
    specs = fan(12)
    live = machine()
    for seq in range(2):
        assert apply(live, part("r1", seq, specs[seq * 5 : seq * 5 + 5]))[0].ok
    snap = live.snapshot()
    assert len(msgpack.unpackb(snap, raw=False, strict_map_key=False)) == 13
    restored = StateMachine(ClusterState.decode(snap))
    assert restored.digest() == live.digest()
    # The node's snapshot (encoded partly off the apply lock) is the same bytes.
    import threading

    assert ReadView(threading.Lock(), lambda: live.state).snapshot() == snap
    last = SubmitRun("s-x", T0, "r1", "", tuple(specs[10:]), 0, "", "alice", staged=10)
    for sm in (live, restored):
        assert apply(sm, last)[0] == SubmitRunResult("r1", created=True)
    assert restored.digest() == live.digest()


def test_a_state_without_stages_encodes_as_before() -> None:
    sm = machine()
    apply(sm, SubmitRun("s1", T0, "r1", "", tuple(fan(2)), 0, "", "alice"))
    body = msgpack.unpackb(sm.snapshot(), raw=False, strict_map_key=False)
    assert len(body) == 12  # what a node of the previous release wrote, and reads
    assert ClusterState.decode(sm.snapshot()).digest() == sm.digest()


def test_an_abandoned_stage_expires_at_a_tick_and_its_submit_is_answered_retryably() -> None:
    sm = machine()
    specs = fan(6)
    assert apply(sm, part("r1", 0, specs[:4]))[0].ok
    assert sm.state.next_deadline_ms() == T0 + limits.STAGE_TTL_MS
    apply(sm, Tick("t1", T0 + limits.STAGE_TTL_MS - 1))
    assert "r1" in sm.state.stages
    apply(sm, Tick("t2", T0 + limits.STAGE_TTL_MS))
    assert not sm.state.stages and sm.state.next_deadline_ms() is None
    late = apply(sm, part("r1", 1, specs[4:6]))[0]
    assert isinstance(late, Rejected) and late.code is Code.ABORTED and "again" in late.message
    end = apply(sm, SubmitRun("s-r1", T0, "r1", "", tuple(specs[6:]), 0, "", "alice", staged=4))[0]
    assert isinstance(end, Rejected) and end.code is Code.ABORTED
    assert "r1" not in sm.state.runs


def test_a_retried_submit_with_the_same_key_answers_the_run_the_first_made() -> None:
    sm = machine()
    cmd = SubmitRun("s-k", T0, "r1", "k", tuple(fan(10)), 0, "", "alice")
    assert staged(sm, cmd, 4)[0] == SubmitRunResult("r1", created=True)
    # A retry (another run id) stops at its first part, which answers the key's run.
    assert apply(sm, part("r2", 0, list(cmd.tasks[:4]), key="k"))[0] == SubmitRunResult("r1", created=False)
    assert not sm.state.stages


def test_another_request_under_a_staging_key_is_refused_and_the_first_goes_on() -> None:
    """Two different requests under one key (two keyed run ids): the second's first part is
    refused while the first's stage is live, naming the key and when that stage expires; the
    first's retries still resume. Before, each first part dropped the other's stage, so two
    clients retrying them dropped each other's stage without end."""
    sm = machine()
    specs = fan(10)
    assert apply(sm, part("rk-a", 0, specs[:4], key="k", ts=T0))[0].ok
    before = sm.digest()
    other = apply(sm, part("rk-b", 0, specs[:4], key="k", ts=T0 + 1_500))[0]
    assert isinstance(other, Rejected) and other.code is Code.FAILED_PRECONDITION, other
    assert "'k'" in other.message and "'rk-a'" in other.message
    assert f"{T0 + limits.STAGE_TTL_MS} ms" in other.message and "in 59 s" in other.message
    assert sm.digest() == before and list(sm.state.stages) == ["rk-a"]
    # Its retries (new request ids, any node) are refused alike, and never drop the first stage.
    for i, node in enumerate(("n1", "n2", "n1")):
        res = apply(sm, replace(part("rk-b", 0, specs[:4], key="k", node=node), request_id=f"g-b-{i}"))[0]
        assert isinstance(res, Rejected) and res.code is Code.FAILED_PRECONDITION
    assert sm.digest() == before
    # The first request's own retry (same run id, another node) still resumes its stage.
    again = apply(sm, replace(part("rk-a", 0, specs[:4], key="k", node="n2"), request_id="g-a-again"))[0]
    assert again == ChangedResult(4) and sm.state.stages["rk-a"].node_id == "n2"
    assert apply(sm, part("rk-a", 1, specs[4:8], key="k", node="n2"))[0].ok
    end = SubmitRun("s-k", T0, "rk-a", "k", tuple(specs[8:]), 0, "", "alice", staged=8)
    assert apply(sm, end)[0] == SubmitRunResult("rk-a", created=True)
    # Once the key's run exists, the other request is answered that run, as an unstaged submit is.
    late = replace(part("rk-b", 0, specs[:4], key="k"), request_id="g-b-late")
    assert apply(sm, late)[0] == SubmitRunResult("rk-a", created=False) and not sm.state.stages
    # A stage of the key past its expiry (no tick yet) holds nothing: the other request starts.
    sm2 = machine()
    assert apply(sm2, part("rk-a", 0, specs[:4], key="k"))[0].ok
    res = apply(sm2, part("rk-b", 0, specs[:4], key="k", ts=T0 + limits.STAGE_TTL_MS))[0]
    assert res == ChangedResult(4) and list(sm2.state.stages) == ["rk-b"]
    # Unkeyed stages never refuse each other; another key is another request.
    assert apply(sm2, part("u1", 0, specs[:4]))[0].ok and apply(sm2, part("u2", 0, specs[:4]))[0].ok
    assert apply(sm2, part("c", 0, specs[:4], key="k2"))[0].ok
    assert StateMachine(ClusterState.decode(sm2.snapshot())).digest() == sm2.digest()
    # A live stage of the key under a random id (from before keyed run ids: maybe this request's
    # own earlier attempt) does not refuse the keyed attempt: it is dropped, as before.
    sm3 = machine()
    assert apply(sm3, part("r-old", 0, specs[:4], key="k"))[0].ok
    res = apply(sm3, part("rk-a", 0, specs[:4], key="k", ts=T0 + 1_000))[0]
    assert res == ChangedResult(4) and list(sm3.state.stages) == ["rk-a"]


def test_the_node_answers_another_request_under_a_staging_key_failed_precondition(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio

    from raftmesh.consensus.results import expect
    from raftmesh.errors import FailedPrecondition
    from raftmesh.node import staging

    monkeypatch.setattr(limits, "STAGE_ABOVE_TASKS", 8)
    monkeypatch.setattr(limits, "STAGE_PART_TASKS", 5)

    def stop_after_part_0(sm: StateMachine, c: Command) -> None:
        if isinstance(c, StageRun) and c.seq == 1:  # the first request's client gives up here
            raise TimeoutError

    w = LogWriter(machine(), stop_after_part_0)
    first = SubmitRun("s-k", T0, "r1", "k", tuple(fan(14)), 0, "", "alice")
    with pytest.raises(TimeoutError):
        asyncio.run(staging.propose_submit(access(w), first, "n1", NoDeadline()))  # type: ignore[arg-type]
    w.between = None
    second = replace(first, tasks=tuple(fan(15)))  # other tasks, same key
    res = asyncio.run(staging.propose_submit(access(w), second, "n1", NoDeadline()))  # type: ignore[arg-type]
    with pytest.raises(FailedPrecondition, match="idempotency key 'k' is in use") as err:
        expect(res, SubmitRunResult)
    assert err.value.code == "FAILED_PRECONDITION" and "expires at state time" in err.value.message
    # The first request's retry resumes after its applied part and makes the run.
    done = asyncio.run(staging.propose_submit(access(w), first, "n1", NoDeadline()))  # type: ignore[arg-type]
    assert isinstance(done, SubmitRunResult) and done.created
    assert len(w.sm.state.runs[done.run_id].tasks) == 16


def test_parts_in_the_wrong_order_or_count_change_nothing() -> None:
    sm = machine()
    specs = fan(8)
    assert apply(sm, part("r1", 0, specs[:4]))[0].ok
    before = sm.digest()
    out_of_order = apply(sm, part("r1", 2, specs[4:8]))[0]
    assert isinstance(out_of_order, Rejected) and out_of_order.code is Code.FAILED_PRECONDITION
    again = apply(sm, replace(part("r1", 0, specs[:4]), request_id="another-id"))[0]
    assert again == ChangedResult(0)  # a part applied already (retried under a new request id)
    miscount = apply(sm, SubmitRun("s", T0, "r1", "", tuple(specs[4:]), 0, "", "alice", staged=3))[0]
    assert isinstance(miscount, Rejected) and miscount.code is Code.FAILED_PRECONDITION
    assert sm.digest() == before


@pytest.mark.parametrize(
    "tasks, why",
    [
        ([TaskSpec(id="late", agent="sum", deps=("later",))], "not a task of this run"),  # a later part
        ([TaskSpec(id="root", agent="sum")], "used twice"),  # an id of an earlier part
        ([TaskSpec(id="x", agent="nobody")], "unknown agent"),
    ],
)
def test_a_bad_part_is_refused_and_changes_nothing(tasks: list[TaskSpec], why: str) -> None:
    sm = machine()
    assert apply(sm, part("r1", 0, fan(2)[:2]))[0].ok
    before = sm.digest()
    res = apply(sm, part("r1", 1, tasks))[0]
    assert isinstance(res, Rejected) and res.code is Code.INVALID_ARGUMENT and why in res.message
    assert sm.digest() == before


def test_stages_are_bounded_per_node_per_cluster_and_in_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_STAGES_PER_NODE", 2)
    monkeypatch.setattr(limits, "MAX_STAGES", 3)
    sm = machine()
    one = [TaskSpec(id="a", agent="sum", input={"value": 1})]
    assert apply(sm, part("r1", 0, one, node="n1"))[0].ok
    assert apply(sm, part("r2", 0, one, node="n1"))[0].ok
    full = apply(sm, part("r3", 0, one, node="n1"))[0]
    assert isinstance(full, Rejected) and full.code is Code.RESOURCE_EXHAUSTED
    assert apply(sm, part("r3", 0, one, node="n2"))[0].ok
    full = apply(sm, part("r4", 0, one, node="n3"))[0]
    assert isinstance(full, Rejected) and full.code is Code.RESOURCE_EXHAUSTED
    held = sum(s.spec_bytes for s in sm.state.stages.values())
    monkeypatch.setattr(limits, "MAX_STAGED_BYTES", held + 10)
    big = [TaskSpec(id="b", agent="sum", input={"text": "x" * 100})]
    over = apply(sm, part("r1", 1, big))[0]
    assert isinstance(over, Rejected) and over.code is Code.RESOURCE_EXHAUSTED
    monkeypatch.setattr(limits, "MAX_STAGED_BYTES", 2**30)
    here = sum(s.spec_bytes for s in sm.state.stages.values() if s.node_id == "n1")
    monkeypatch.setattr(limits, "MAX_STAGED_BYTES_PER_NODE", here + 10)
    over = apply(sm, part("r1", 1, big))[0]  # over node n1's bound
    assert isinstance(over, Rejected) and over.code is Code.RESOURCE_EXHAUSTED and "'n1'" in over.message
    small = [TaskSpec(id="c", agent="sum")]
    assert apply(sm, part("r3", 1, small, node="n2"))[0].ok  # another node's stage still grows
    assert not apply(sm, part("r1", 1, small))[0].ok  # n1's does not
    assert len(sm.state.runs) == 0


def test_the_run_limits_count_every_part() -> None:
    sm = machine()
    n = limits.MAX_TASKS_PER_RUN // 2
    first = [TaskSpec(id=f"a{i}", agent="sum") for i in range(n)]
    assert apply(sm, part("r1", 0, first))[0].ok
    rest = [TaskSpec(id=f"b{i}", agent="sum") for i in range(n + 1)]
    over = apply(sm, SubmitRun("s", T0, "r1", "", tuple(rest), 0, "", "alice", staged=n))[0]
    assert isinstance(over, Rejected) and str(limits.MAX_TASKS_PER_RUN) in over.message


def test_parts_follow_dependencies_and_bytes() -> None:
    # Out of dependency order: each task must land in a part at or after its deps.
    specs = [
        TaskSpec(id="c", agent="sum", deps=("b",)),
        TaskSpec(id="a", agent="sum"),
        TaskSpec(id="b", agent="sum", deps=("a",)),
        TaskSpec(id="d", agent="sum", deps=("a", "c")),
    ]
    assert [t.id for t in dependency_order(specs)] == ["a", "b", "c", "d"]
    in_order = fan(3)
    assert dependency_order(in_order) == in_order  # spec order kept where it already holds
    many = fan(limits.STAGE_PART_TASKS * 2)
    parts = stage_parts(many)
    assert [len(p) for p in parts] == [limits.STAGE_PART_TASKS] * 2 + [2]
    heavy = [TaskSpec(id=f"h{i}", agent="sum", input={"v": "x" * 100_000}) for i in range(12)]
    parts = stage_parts(heavy)
    assert len(parts) > 1 and all(
        limits.encoded_size([t.to_map() for t in p]) <= limits.STAGE_PART_BYTES for p in parts
    )


class LogWriter:
    """The proposer as a service sees it, over a real state machine: each command is one log
    entry, applied through the log's encoding (no Raft: the commit order is the call order).
    ``between`` runs before each entry (what other nodes commit meanwhile)."""

    def __init__(self, sm: StateMachine, between: Any = None) -> None:
        self.sm = sm
        self.between = between
        self.entries: list[Command] = []

    async def propose(self, cmd: Command, timeout_s: float | None = None) -> Result:
        if self.between is not None:
            self.between(self.sm, cmd)
        self.entries.append(cmd)
        return apply(self.sm, cmd)[0]

    async def barrier(self, timeout_s: float | None = None) -> None:
        return None


class NoDeadline:
    def time_remaining(self) -> float | None:
        return None


def access(writer: LogWriter) -> Any:
    import threading

    from raftmesh.clock import SYSTEM_CLOCK
    from raftmesh.node.access import NodeAccess

    reads = ReadView(threading.Lock(), lambda: writer.sm.state)
    return NodeAccess(writer, reads, SYSTEM_CLOCK, lambda: True, 5.0)  # type: ignore[arg-type]


def test_the_node_stages_a_large_submit_and_a_stage_cut_short_is_retryable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio

    from raftmesh.errors import Unavailable
    from raftmesh.node import staging

    monkeypatch.setattr(limits, "STAGE_ABOVE_TASKS", 8)
    monkeypatch.setattr(limits, "STAGE_PART_TASKS", 5)
    specs = tuple(fan(14))  # 16 tasks: parts of 5, 5, 5, then the submit with the last one

    def cmd(run_id: str) -> SubmitRun:
        return SubmitRun("s-k", T0, run_id, "k", specs, 0, "", "alice")

    def stall_past_expiry(sm: StateMachine, c: Command) -> None:
        if isinstance(c, StageRun) and c.seq == 2:  # e.g. a leader change that took too long
            sm.apply(Tick("t", sm.state.time_ms + limits.STAGE_TTL_MS))

    cut = LogWriter(machine(), stall_past_expiry)
    with pytest.raises(Unavailable, match="again"):
        asyncio.run(staging.propose_submit(access(cut), cmd("r1"), "n1", NoDeadline()))  # type: ignore[arg-type]
    assert [type(e).__name__ for e in cut.entries] == ["StageRun"] * 3
    assert "r1" not in cut.sm.state.runs and not cut.sm.state.stages
    # The client's retry (same key; the run id is the key's request's, whatever the node
    # picked) goes through: the expired stage's parts are proposed again, under new ids.
    cut.between = None
    res = asyncio.run(staging.propose_submit(access(cut), cmd("r2"), "n1", NoDeadline()))  # type: ignore[arg-type]
    assert isinstance(res, SubmitRunResult) and res.created and res.run_id.startswith("rk-")
    assert len(cut.sm.state.runs[res.run_id].tasks) == 16
    # Once the key's run exists, a retry stops at its first part with that run.
    again = asyncio.run(staging.propose_submit(access(cut), cmd("r3"), "n1", NoDeadline()))  # type: ignore[arg-type]
    assert again == SubmitRunResult(res.run_id, created=False) and not cut.sm.state.stages
    # A small run is one entry, as before.
    small = LogWriter(machine())
    one = replace(cmd("r4"), tasks=specs[:3])
    asyncio.run(staging.propose_submit(access(small), one, "n1", NoDeadline()))  # type: ignore[arg-type]
    assert [type(e).__name__ for e in small.entries] == ["SubmitRun"]


class SlowCommits(LogWriter):
    """Each entry is in the log once proposed, but its proposer learns so ``commit_s`` later (a
    loaded cluster): a caller's deadline can cut an attempt short after its part applied."""

    def __init__(self, sm: StateMachine, commit_s: float) -> None:
        super().__init__(sm)
        self.commit_s = commit_s

    async def propose(self, cmd: Command, timeout_s: float | None = None) -> Result:
        import asyncio

        res = await super().propose(cmd, timeout_s)
        await asyncio.sleep(self.commit_s)
        return res


def _attempts(writer: LogWriter, cmds: list[tuple[SubmitRun, str]], deadline_s: float) -> Result | None:
    """The client's attempts of one submit, each cut at ``deadline_s`` (DEADLINE_EXCEEDED, then
    the SDK's retry); the first answer, or None if every attempt was cut."""
    import asyncio

    from raftmesh.node import staging

    async def go() -> Result | None:
        for cmd, node_id in cmds:
            try:
                async with asyncio.timeout(deadline_s):
                    return await staging.propose_submit(access(writer), cmd, node_id, NoDeadline())  # type: ignore[arg-type]
            except TimeoutError:
                continue
        return None

    return asyncio.run(go())


def test_a_staged_submit_slower_than_the_callers_deadline_completes_over_its_retries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(limits, "STAGE_ABOVE_TASKS", 8)
    monkeypatch.setattr(limits, "STAGE_PART_TASKS", 5)
    specs = tuple(fan(24))  # 26 tasks: 5 parts of 5, then the submit with the last task
    w = SlowCommits(machine(), 0.05)  # 6 entries take 0.3 s; each attempt has 0.12 s
    # Each attempt is a new call: the node picks a new run id each time (the SDK keeps the key).
    tries = [(SubmitRun("s-K", T0, f"r{i}", "K", specs, 0, "", "alice"), "n1") for i in range(12)]
    res = _attempts(w, tries, 0.12)
    # (created or not: the attempt that made the run may have been cut short before its answer)
    assert isinstance(res, SubmitRunResult) and list(w.sm.state.runs) == [res.run_id], res
    assert len(w.sm.state.runs[res.run_id].tasks) == 26 and not w.sm.state.stages
    # Every attempt went on where the last stopped: no part was proposed twice before the
    # submit (a later attempt's first part then answers the key's run, as the service would).
    upto = next(i for i, e in enumerate(w.entries) if isinstance(e, SubmitRun))
    assert [e.seq for e in w.entries[:upto] if isinstance(e, StageRun)] == [0, 1, 2, 3, 4]
    # The run id is the request's: the same for every attempt, another for another request.
    from raftmesh.node.staging import keyed_run_id

    def rid(c: SubmitRun) -> str:
        return keyed_run_id(c, [msgpack.packb(t.to_map(), use_bin_type=True) for t in c.tasks])

    first = tries[0][0]
    assert rid(replace(first, run_id="other", ts_ms=5, prefer="n2")) == rid(first) == res.run_id
    assert rid(replace(first, submitter="bob")) != rid(first)
    assert rid(replace(first, tasks=specs[1:])) != rid(first)
    # On an open cluster the submitter is the caller's peer address, another port on every
    # connection: a retry through another channel (the SDK's next address) names the same stage.
    from raftmesh import calls

    with calls.bound(calls.Call()):
        a = rid(replace(first, submitter="ipv4:127.0.0.1:54530"))
        assert a == rid(replace(first, submitter="ipv4:127.0.0.1:54540"))
    with calls.bound(calls.Call(principal="token:bob")):
        assert rid(replace(first, submitter="token:bob")) != rid(first) != a


def test_a_retry_through_another_node_continues_the_stage_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "STAGE_ABOVE_TASKS", 8)
    monkeypatch.setattr(limits, "STAGE_PART_TASKS", 5)
    specs = tuple(fan(24))
    w = SlowCommits(machine(), 0.05)
    cmd = SubmitRun("s-K", T0, "r0", "K", specs, 0, "", "alice")
    assert _attempts(w, [(cmd, "n1")], 0.08) is None  # cut short after part 0 or 1
    (stage,) = w.sm.state.stages.values()
    applied = stage.next_seq
    assert stage.node_id == "n1" and 1 <= applied < 5
    w.commit_s = 0.0
    res = _attempts(w, [(replace(cmd, run_id="r1"), "n2")], 5.0)  # the SDK's retry, on the next node
    assert isinstance(res, SubmitRunResult) and res.created
    again = [e.seq for e in w.entries if isinstance(e, StageRun)][applied:]
    assert again == [0, *range(applied, 5)]  # part 0 moves the stage to n2; then the rest
    # The first attempt's handler, had it gone on, is refused from the move on.
    w2 = machine()
    assert apply(w2, part("r", 0, list(specs[:5]), key="K", node="n1"))[0].ok
    assert apply(w2, replace(part("r", 0, list(specs[:5]), key="K", node="n2"), request_id="g2"))[0].ok
    late = apply(w2, part("r", 1, list(specs[5:10]), key="K", node="n1"))[0]
    assert isinstance(late, Rejected) and late.code is Code.FAILED_PRECONDITION and "'n2'" in late.message
    assert apply(w2, part("r", 1, list(specs[5:10]), key="K", node="n2"))[0] == ChangedResult(10)


def test_a_keys_abandoned_stages_do_not_hold_the_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    specs = fan(20)
    sm = machine()
    # Requests of one key under other run ids, each after the last one's stage expired (no tick
    # came): each first part drops the key's stage before it, so a key holds one stage at most.
    for i in range(limits.MAX_STAGES_PER_NODE + 2):
        ts = T0 + i * limits.STAGE_TTL_MS
        assert apply(sm, part(f"x{i}", 0, specs[:5], key="K", ts=ts))[0].ok
        assert apply(sm, part(f"x{i}", 1, specs[5:10], key="K", ts=ts))[0].ok
        assert list(sm.state.stages) == [f"x{i}"]
    assert apply(sm, part("other", 0, specs[:5], key="Z"))[0].ok  # the node still stages others
    # The key's run made by a submit in one entry: the key's stage can never finish, it goes.
    res = apply(sm, SubmitRun("s-K", T0, "whole", "K", tuple(specs), 0, "", "alice"))[0]
    assert res == SubmitRunResult("whole", created=True)
    assert list(sm.state.stages) == ["other"]
    # A refused first part drops nothing, not even the key's expired stage.
    assert apply(sm, part("y", 0, specs[:5], key="Z2"))[0].ok
    later = sm.state.stages["y"].expires_ms
    bad = apply(sm, part("z", 0, [TaskSpec(id="q", agent="nobody")], key="Z2", ts=later))[0]
    assert isinstance(bad, Rejected) and bad.code is Code.INVALID_ARGUMENT
    assert list(sm.state.stages) == ["other", "y"]
    # A replica decoding the snapshot agrees.
    assert StateMachine(ClusterState.decode(sm.snapshot())).digest() == sm.digest()


def test_a_part_or_submit_for_another_key_or_node_is_refused_and_changes_nothing() -> None:
    specs = fan(12)
    sm = machine()
    assert apply(sm, part("r1", 0, specs[:5], key="k", node="n1"))[0].ok
    assert apply(sm, part("u1", 0, specs[:5], node="n1"))[0].ok  # no key
    before = sm.digest()
    refused = [
        part("r1", 1, specs[5:10], key="other"),
        part("r1", 1, specs[5:10], key=""),
        part("r1", 0, specs[:5], key="other", node="n2"),
        part("r1", 1, specs[5:10], key="k", node="n2"),  # a later part from another node
        part("u1", 0, specs[:5], node="n2"),  # only a keyed attempt moves a stage
        part("u1", 1, specs[5:10], key="k"),
    ]
    for i, cmd in enumerate(refused):
        res = apply(sm, replace(cmd, request_id=f"other-{i}"))[0]
        assert isinstance(res, Rejected) and res.code is Code.FAILED_PRECONDITION, (cmd, res)
    for key, rid in (("other", "r1"), ("", "r1"), ("k", "u1")):
        res = apply(
            sm, SubmitRun(f"s-{rid}-{key}", T0, rid, key, tuple(specs[5:]), 0, "", "alice", staged=5)
        )[0]
        assert isinstance(res, Rejected) and res.code is Code.FAILED_PRECONDITION and "key" in res.message
    assert sm.digest() == before and not sm.state.runs
    end = SubmitRun("s-k", T0, "r1", "k", tuple(specs[5:]), 0, "", "alice", staged=5)
    assert apply(sm, end)[0] == SubmitRunResult("r1", created=True)


def test_parts_are_cut_at_their_bytes_with_skewed_inputs() -> None:
    import asyncio

    from raftmesh.node import staging

    small = [TaskSpec(id=f"s{i}", agent="sum", input={"value": i}) for i in range(2_000)]
    heavy = [TaskSpec(id=f"h{i}", agent="sum", input={"v": "x" * 200_000}) for i in range(4)]
    specs = tuple(heavy + small)  # the average input is small; the first 1,000 tasks hold 800 KB
    w = LogWriter(machine())
    cmd = SubmitRun("s-k", T0, "r1", "k", specs, 0, "", "alice")
    res = asyncio.run(staging.propose_submit(access(w), cmd, "n1", NoDeadline()))  # type: ignore[arg-type]
    assert isinstance(res, SubmitRunResult) and res.created
    assert len(w.entries) > 2
    for e in w.entries:
        assert isinstance(e, StageRun | SubmitRun)
        assert len(e.tasks) <= limits.STAGE_PART_TASKS
        assert limits.encoded_size([t.to_map() for t in e.tasks]) <= limits.STAGE_PART_BYTES, len(e.tasks)
    assert [t.id for e in w.entries for t in e.tasks] == [t.id for t in specs]  # in dependency order
