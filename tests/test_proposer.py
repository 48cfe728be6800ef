"""The proposer against pysyncobj's known traps, with a scripted fake Raft member.

pysyncobj can report LEADER_CHANGED (or DISCARDED, NOT_LEADER, ...) for a command
that *was* applied, and can lose a callback entirely (e.g. after a snapshot install).
The proposer must treat all of these as unknown outcomes and retry with the same
request ids; the state machine's dedup makes the retry apply once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from raftmesh.consensus.codes import Code
from raftmesh.consensus.commands import NodeDown, RegisterNode, SubmitRun, SuspectNode, TaskSpec, decode_batch
from raftmesh.consensus.machine import StateMachine
from raftmesh.consensus.results import Result, SubmitRunResult
from raftmesh.errors import NoLeader, OutcomeUnknown
from raftmesh.node import proposer as proposer_mod
from raftmesh.node.proposer import Proposer


class FakeRaft:
    """Applies batches to a real StateMachine; ``script`` decides what each propose() reports."""

    def __init__(self, script: list[str]) -> None:
        self.machine = StateMachine()
        self.lock = threading.RLock()
        self.script = list(script)
        self.leader_addr: str | None = "127.0.0.1:1"
        self.unheard = False
        """The leader is still named but not heard (every link closed with a reset)."""
        self.proposals = 0

    @property
    def leader_known(self) -> bool:
        return self.leader_addr is not None and not self.unheard

    @property
    def leader_term(self) -> int | None:
        """As ``RaftMember.leader_term``: the term it leads in (subclasses set ``is_leader``/``term``)."""
        return int(getattr(self, "term", 1)) if getattr(self, "is_leader", False) else None

    def propose(self, payload: bytes, callback: Callable[[list[Result] | None, str | None], None]) -> None:
        self.proposals += 1
        action = self.script.pop(0) if self.script else "ok"

        def later() -> None:
            if action == "missing_leader":
                callback(None, "MISSING_LEADER")
                return
            with self.lock:
                results, _ = self.machine.apply_batch(payload)
            if action == "ok":
                callback(results, None)
            elif action == "applied_then_leader_changed":
                callback(None, "LEADER_CHANGED")
            elif action == "applied_then_lost":
                pass  # the callback never comes
            else:
                raise AssertionError(action)

        threading.Thread(target=later).start()  # callbacks arrive on another thread, like pysyncobj's


def register(rid: str = "reg-1") -> RegisterNode:
    return RegisterNode(
        rid, 1000, node_id="n1", grpc="h:1", raft="h:2", agents=("echo",), slots=4, incarnation="i1"
    )


def submit(key: str) -> SubmitRun:
    return SubmitRun(f"s-{key}", 2000, run_id=f"r-{key}", idempotency_key=key, tasks=(TaskSpec("a", "echo"),))


@contextlib.asynccontextmanager
async def _running(raft: FakeRaft, commit_timeout_s: float) -> AsyncIterator[Proposer]:
    """A started proposer over ``raft``, stopped at exit."""
    p = Proposer(raft, asyncio.get_running_loop(), commit_timeout_s=commit_timeout_s)  # type: ignore[arg-type]
    p.start()
    try:
        yield p
    finally:
        await p.stop()


async def _propose(
    raft: FakeRaft, cmds: list[Any], timeout_s: float = 5.0, commit_timeout_s: float = 0.2
) -> list[Any]:
    async with _running(raft, commit_timeout_s=commit_timeout_s) as p:
        return await asyncio.gather(
            *(p.propose(c, timeout_s=timeout_s) for c in cmds), return_exceptions=True
        )


@pytest.mark.parametrize("trap", ["applied_then_leader_changed", "applied_then_lost", "missing_leader"])
def test_unknown_outcomes_are_retried_and_apply_once(trap: str) -> None:
    raft = FakeRaft([trap, trap, "ok"])
    # The node is registered already: an idle proposer sends a command at once, so a register
    # proposed with the submit would take an entry of its own and the trap script would split.
    ((reg_result,), _) = raft.machine.apply_batch([register()])
    (sub_result,) = asyncio.run(_propose(raft, [submit("k1")]))
    assert isinstance(reg_result, Result) and reg_result.ok
    assert isinstance(sub_result, Result) and sub_result.ok
    assert sub_result == SubmitRunResult("r-k1", created=True)
    st = raft.machine.state
    assert list(st.runs) == ["r-k1"]
    # applied once: one register + one submit raised the revision twice, however many proposals
    assert st.revision == 2
    assert raft.proposals == 3


def test_outcome_unknown_after_deadline() -> None:
    raft = FakeRaft(["applied_then_lost"] * 100)
    (res,) = asyncio.run(_propose(raft, [register()], timeout_s=0.5, commit_timeout_s=0.1))
    assert isinstance(res, OutcomeUnknown)
    assert "retrying with the same request id" in res.message
    assert raft.machine.state.revision == 1  # it was applied: "unknown" never means "not applied"


def test_no_leader_fails_fast_without_touching_the_log() -> None:
    raft = FakeRaft([])
    raft.leader_addr = None
    (res,) = asyncio.run(_propose(raft, [register()], timeout_s=0.3))
    assert isinstance(res, NoLeader)
    assert raft.proposals == 0


def test_a_node_cut_off_from_its_leader_answers_before_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the node has known no leader for LEADERLESS_FAIL_S, a command already handed to Raft
    fails OutcomeUnknown and a new one NoLeader at once, long before their 30 s deadline (the
    SDK then tries another node); a leader known again makes proposals go through."""
    monkeypatch.setattr(proposer_mod, "LEADERLESS_FAIL_S", 0.3)

    async def go() -> tuple[Any, Any, int, Any]:
        raft = HeldRaft()
        async with _running(raft, commit_timeout_s=60.0) as p:
            async with asyncio.timeout(5):  # without the limit, each waits its 30 s deadline
                first = asyncio.ensure_future(p.propose(register(), timeout_s=30.0))
                while not raft.held:
                    await asyncio.sleep(0.005)
                raft.leader_addr = None  # the follower forgot its silent leader (election.py)
                raft.held.pop()(None, "LEADER_CHANGED")
                handed = (await asyncio.gather(first, return_exceptions=True))[0]
                new = (await asyncio.gather(p.propose(submit("k1"), timeout_s=30.0), return_exceptions=True))[
                    0
                ]
            proposals = raft.proposals
            raft.leader_addr = "127.0.0.1:2"
            again = asyncio.ensure_future(p.propose(submit("k2"), timeout_s=30.0))
            async with asyncio.timeout(5):
                while not raft.held:
                    await asyncio.sleep(0.005)
            raft.held.pop()([SubmitRunResult("r-k2", created=True)], None)
            return handed, new, proposals, await again

    handed, new, proposals, again = asyncio.run(go())
    assert isinstance(handed, OutcomeUnknown), handed  # it was handed to Raft: it may be applied
    assert isinstance(new, NoLeader), new
    assert proposals == 1, "the new command must not reach the log"
    assert again == SubmitRunResult("r-k2", created=True)


def test_a_leader_named_but_no_longer_heard_is_no_leader_for_the_fail_fast(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pysyncobj keeps naming a leader whose every link closed with a reset (no election starts
    without a connected peer), so ``leader_addr`` stays set and the health loop keeps calling
    ``leader_seen``. The fail-fast reads ``leader_known``: the command is held (not sent where no
    leader hears it) and fails NoLeader after LEADERLESS_FAIL_S, not at its 30 s deadline."""
    monkeypatch.setattr(proposer_mod, "LEADERLESS_FAIL_S", 0.3)

    async def go() -> tuple[Any, Any, int, Any]:
        raft = HeldRaft()
        async with _running(raft, commit_timeout_s=60.0) as p:
            raft.unheard = True  # leader_addr unchanged
            async with asyncio.timeout(5):  # without the fix, each waits its 30 s deadline
                queued = asyncio.ensure_future(p.propose(register(), timeout_s=30.0))
                while not queued.done():
                    p.leader_seen()  # the health loop's pass: it sees leader_addr set
                    await asyncio.sleep(0.01)
                new = (await asyncio.gather(p.propose(submit("k1"), timeout_s=30.0), return_exceptions=True))[
                    0
                ]
            proposals = raft.proposals
            raft.unheard = False  # heard again
            p.leader_seen()
            again = asyncio.ensure_future(p.propose(submit("k2"), timeout_s=30.0))
            async with asyncio.timeout(5):
                while not raft.held:
                    await asyncio.sleep(0.005)
            raft.held.pop()([SubmitRunResult("r-k2", created=True)], None)
            return queued.exception(), new, proposals, await again

    queued, new, proposals, again = asyncio.run(go())
    assert isinstance(queued, NoLeader) and isinstance(new, NoLeader), (queued, new)
    assert proposals == 0, "nothing may be handed to Raft while no leader hears it"
    assert again == SubmitRunResult("r-k2", created=True)


def test_a_leaderless_spell_counts_from_its_own_start_once_a_leader_was_seen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A short gap that no proposal saw end must not make the next spell fail at once: the health
    loop's ``leader_seen`` ends the old one."""
    monkeypatch.setattr(proposer_mod, "LEADERLESS_FAIL_S", 0.3)
    clock = [100.0]

    async def go() -> tuple[float, float]:
        raft = HeldRaft()
        p = Proposer(raft, asyncio.get_running_loop(), commit_timeout_s=60.0)  # type: ignore[arg-type]
        monkeypatch.setattr(p._clock, "monotonic", lambda: clock[0])
        raft.leader_addr = None
        p._leaderless_for()  # a proposal noticed a short gap...
        raft.leader_addr = "127.0.0.1:2"
        p.leader_seen()  # ...whose end only the health loop saw
        clock[0] += 60.0
        raft.leader_addr = None
        fresh = p._leaderless_for()
        clock[0] += 0.5
        return fresh, p._leaderless_for()

    fresh, later = asyncio.run(go())
    assert fresh == 0.0 and later == 0.5


def test_concurrent_commands_share_log_entries() -> None:
    raft = FakeRaft([])
    cmds = [submit(f"k{i}") for i in range(200)]
    results = asyncio.run(_propose(raft, [register(), *cmds]))
    assert all(isinstance(r, Result) and r.ok for r in results)
    assert raft.proposals < 20, f"{raft.proposals} log entries for 201 commands: not batched"


def test_a_new_leader_ends_the_retry_backoff() -> None:
    """Commands that failed during an election are retried once a leader is known, not after
    the rest of their backoff (the runtime calls ``leader_changed``)."""

    async def go() -> tuple[Result, bool, int]:
        raft = FakeRaft(["missing_leader", "ok"])
        async with _running(raft, commit_timeout_s=5.0) as p:
            fut = asyncio.ensure_future(p.propose(register(), timeout_s=30.0))
            async with asyncio.timeout(10):
                while not p._backing_off:  # the first attempt failed: its retry waits out a backoff
                    await asyncio.sleep(0.005)
            ((timer, _),) = p._backing_off.values()
            p.leader_changed()
            res = await fut
            return res, timer.cancelled(), raft.proposals

    res, cancelled, proposals = asyncio.run(go())
    assert res.ok and proposals == 2
    assert cancelled, "the retry waited for its backoff timer instead of going at once"


class HeldRaft(FakeRaft):
    """Holds every proposal's callback until the test answers it."""

    def __init__(self) -> None:
        super().__init__([])
        self.held: list[Callable[[list[Result] | None, str | None], None]] = []

    def propose(self, payload: bytes, callback: Callable[[list[Result] | None, str | None], None]) -> None:
        self.proposals += 1
        self.held.append(callback)


def test_a_new_leader_retries_the_oldest_backed_off_commands_first() -> None:
    """Commands that failed in separate batches during an election go out oldest first."""

    async def go() -> list[str]:
        raft = HeldRaft()
        p = Proposer(raft, asyncio.get_running_loop(), commit_timeout_s=30.0)  # type: ignore[arg-type]
        p.start()
        futs = []
        try:
            for key in ("old", "mid", "new"):  # one batch each: every batch is in flight alone
                futs.append(asyncio.ensure_future(p.propose(submit(key), timeout_s=30.0)))
                async with asyncio.timeout(10):
                    while len(raft.held) < len(futs):
                        await asyncio.sleep(0.005)
            # The election fails all three, oldest batch first, in one go (so none's backoff ends first).
            held = list(raft.held)
            threading.Thread(target=lambda: [cb(None, "LEADER_CHANGED") for cb in held]).start()
            async with asyncio.timeout(10):
                while len(p._backing_off) < 3:
                    await asyncio.sleep(0.001)
            p.leader_changed()
            return [q.cmd.request_id for q in p._queue]
        finally:
            for f in futs:
                f.cancel()
            await p.stop()

    assert asyncio.run(go()) == ["s-old", "s-mid", "s-new"]


def test_an_idle_proposer_hands_a_command_to_raft_at_once_and_batches_the_rest() -> None:
    """Nothing in flight: the command goes to Raft in the caller's own step, not loop iterations
    later; commands that come while it is in flight still share the next log entry."""

    async def go() -> tuple[int, int, int]:
        raft = HeldRaft()
        p = Proposer(raft, asyncio.get_running_loop(), commit_timeout_s=30.0)  # type: ignore[arg-type]
        p.start()
        futs = []
        try:
            futs.append(asyncio.ensure_future(p.propose(submit("first"), timeout_s=30.0)))
            await asyncio.sleep(0)  # the propose call's first step runs, nothing else of the proposer's
            at_once = raft.proposals
            futs += [asyncio.ensure_future(p.propose(submit(f"k{i}"), timeout_s=30.0)) for i in range(5)]
            async with asyncio.timeout(10):
                while raft.proposals < 2:
                    await asyncio.sleep(0.001)
            for _ in range(5):
                await asyncio.sleep(0)
            return at_once, raft.proposals, len(p._queue)
        finally:
            for f in futs:
                f.cancel()
            await p.stop()

    at_once, proposals, queued = asyncio.run(go())
    assert at_once == 1, "the idle proposer waited for its loop before proposing"
    assert (proposals, queued) == (2, 0), "the commands proposed while one was in flight were not batched"


class DeposedRaft(FakeRaft):
    """Leads in term 1; the first proposal fails with LEADER_CHANGED unapplied, as the node is
    deposed (term 2, another leader), and pysyncobj would forward every later one to that leader."""

    def __init__(self) -> None:
        super().__init__([])
        self.is_leader = True
        self.term = 1
        self.payloads: list[bytes] = []

    def propose(self, payload: bytes, callback: Callable[[list[Result] | None, str | None], None]) -> None:
        self.payloads.append(payload)
        if len(self.payloads) > 1:
            super().propose(payload, callback)
            return
        self.proposals += 1

        def deposed() -> None:
            self.is_leader, self.term, self.leader_addr = False, 2, "127.0.0.1:2"
            callback(None, "LEADER_CHANGED")

        threading.Thread(target=deposed).start()


def test_a_leader_only_command_is_not_retried_through_the_next_leader() -> None:
    """The scheduler's liveness decisions (``leader_only``): once the proposing leadership is
    over, the next leader must not commit them (it may even be the node they name)."""

    async def go(leader_only: bool) -> tuple[Any, DeposedRaft]:
        raft = DeposedRaft()
        async with _running(raft, commit_timeout_s=5.0) as p:
            got = await asyncio.gather(
                p.propose(register(), timeout_s=5.0, leader_only=leader_only), return_exceptions=True
            )
            after = await asyncio.gather(
                p.propose(register("reg-2"), leader_only=True), return_exceptions=True
            )
            assert isinstance(after[0], NoLeader)  # no longer leading: never handed to Raft
            return got[0], raft

    res, raft = asyncio.run(go(True))
    assert isinstance(res, OutcomeUnknown) and "not retried" in str(res)
    assert len(raft.payloads) == 1 and raft.machine.state.members == {}
    res, raft = asyncio.run(go(False))  # any other command is retried, as before
    assert res.ok and len(raft.payloads) == 2 and "n1" in raft.machine.state.members


class ForwardingRaft(FakeRaft):
    """Leads in ``term``; what it is handed is logged in ``entry_term``: as pysyncobj does when this
    node stepped down between the proposer's check and its next tick, and forwarded the queued
    command to the next leader, which appended it in its own term and answered success."""

    def __init__(self, term: int, entry_term: int) -> None:
        super().__init__([])
        self.is_leader = True
        self.term = term
        self.entry_term = entry_term

    def propose(self, payload: bytes, callback: Callable[[list[Result] | None, str | None], None]) -> None:
        def later() -> None:
            with self.lock:
                results, _ = self.machine.apply_batch(payload, term=self.entry_term)
            callback(results, None)

        threading.Thread(target=later).start()


def test_a_liveness_decision_forwarded_to_the_next_leader_changes_nothing() -> None:
    """The proposer stamps a ``leader_only`` ``NodeDown``/``SuspectNode`` with its term; committed in
    another leader's term, apply refuses it (ABORTED), so the later leader's log holds no view it
    did not form."""

    async def go(entry_term: int) -> tuple[list[Result], FakeRaft]:
        raft = ForwardingRaft(term=3, entry_term=entry_term)
        raft.machine.apply(register())
        async with _running(raft, commit_timeout_s=5.0) as p:
            flag = SuspectNode("s-1", 3000, node_id="n1", incarnation="i1", suspect=True)
            down = NodeDown("d-1", 3000, node_id="n1", incarnation="i1", reason="gone")
            return [await p.propose(c, leader_only=True) for c in (flag, down)], raft

    results, raft = asyncio.run(go(entry_term=4))
    assert [r.code for r in results] == [Code.ABORTED, Code.ABORTED], results
    m = raft.machine.state.members["n1"]
    assert m.up and not m.suspect
    results, raft = asyncio.run(go(entry_term=3))  # logged in the term that decided it: applied
    assert all(r.ok for r in results) and not raft.machine.state.members["n1"].up


class SteppingDownRaft(ForwardingRaft):
    """Mid step-down as pysyncobj does it: the later term (4) is already stored, the state is still
    LEADER; ``leader_term`` (recorded with the state change) still says 3."""

    @property
    def leader_term(self) -> int | None:
        return 3


def test_a_decision_proposed_mid_step_down_carries_the_term_it_led_in() -> None:
    """``is_leader`` and ``term`` read together name leadership of term 4, which never was: stamped
    4, a decision forwarded to term 4's leader would apply. Stamped with ``leader_term`` (3), the
    entry of term 4 refuses it; one the proposer is handed already stamped with an earlier term is
    not proposed at all."""

    async def go() -> tuple[Result, Any]:
        raft = SteppingDownRaft(term=4, entry_term=4)
        raft.machine.apply(register())
        async with _running(raft, commit_timeout_s=5.0) as p:
            down = NodeDown("d-1", 3000, node_id="n1", incarnation="i1", reason="gone")
            res = await p.propose(down, leader_only=True)
            old = dataclasses.replace(down, request_id="d-2", leader_term=2)
            refused = await asyncio.gather(p.propose(old, leader_only=True), return_exceptions=True)
            return res, refused[0]

    res, refused = asyncio.run(go())
    assert res.code is Code.ABORTED, res
    assert isinstance(refused, NoLeader) and "term 2" in str(refused)


def test_a_submits_prefer_is_dropped_when_it_goes_to_another_leader() -> None:
    """``SubmitRun.prefer`` names the leader the call saw; retried after an election, it would
    favour the old, possibly dead, leader, so the retry goes without it (same request id)."""

    async def go() -> tuple[Result, DeposedRaft]:
        raft = DeposedRaft()
        raft.machine.apply(register())
        async with _running(raft, commit_timeout_s=5.0) as p:
            return await p.propose(dataclasses.replace(submit("k"), prefer="n1"), timeout_s=5.0), raft

    res, raft = asyncio.run(go())
    assert res.ok, res
    sent = [decode_batch(b)[0] for b in raft.payloads]
    assert [(c.request_id, getattr(c, "prefer", None)) for c in sent] == [("s-k", "n1"), ("s-k", "")]


class ReadRaft(FakeRaft):
    """Records each ReadIndex request's callback; the test answers them from another thread."""

    def __init__(self) -> None:
        super().__init__([])
        self.reads: list[Callable[[str | None], None]] = []

    def read_index(self, callback: Callable[[str | None], None]) -> None:
        self.reads.append(callback)


def test_barriers_of_one_loop_turn_share_one_read_index_request_and_later_ones_do_not() -> None:
    """One request (one wake-up of the Raft thread, one hand-back) per loop turn, not per read
    (a barrier with no request in flight goes at once, alone); a barrier that starts after a
    request was sent must not take its answer (its read index may predate a write committed
    before that barrier began)."""

    async def go() -> tuple[list[int], bool]:
        raft = ReadRaft()
        p = Proposer(raft, asyncio.get_running_loop())  # type: ignore[arg-type]
        sizes: list[int] = []
        first = [asyncio.create_task(p.barrier(timeout_s=5.0)) for _ in range(5)]
        while len(raft.reads) < 2:
            await asyncio.sleep(0)
        sizes.append(len(raft.reads))
        late = asyncio.create_task(p.barrier(timeout_s=5.0))
        while len(raft.reads) < 3:
            await asyncio.sleep(0)
        for _ in range(3):
            await asyncio.sleep(0)
        sizes.append(len(raft.reads))
        for answer in raft.reads[:2]:
            threading.Thread(target=answer, args=(None,)).start()  # answered on another thread
        await asyncio.wait_for(asyncio.gather(*first), 5)
        await asyncio.sleep(0.05)
        late_done = late.done()
        raft.reads[2](None)
        await asyncio.wait_for(late, 5)
        return sizes, late_done

    sizes, late_done = asyncio.run(go())
    assert sizes == [2, 3], (
        "five barriers of one turn: the first alone, the other four together; the late one alone"
    )
    assert not late_done, "a barrier took the answer to a request sent before it began"
