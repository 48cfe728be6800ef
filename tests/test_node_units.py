"""The node's decisions as functions of (state, clock): no network, no sleeps.

Liveness (which members to mark down, which to give no new work), the scheduler's
step (what the leader proposes for a given state and time) and the agent host's
reconcile (which attempts to start and stop) are each driven by a real
``StateMachine`` and a ``ManualClock`` that a test moves by hand.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import grpc
import pytest

from raftmesh.agents import AgentHost, AgentRegistry, TaskContext
from raftmesh.clock import ManualClock
from raftmesh.consensus import limits
from raftmesh.consensus.commands import (
    Assign,
    Assignment,
    Command,
    Complete,
    Completion,
    NodeDown,
    RegisterNode,
    SubmitRun,
    SuspectNode,
    TaskSpec,
    Tick,
)
from raftmesh.consensus.machine import StateMachine
from raftmesh.consensus.results import Result
from raftmesh.consensus.state import TaskStatus
from raftmesh.errors import Internal, InvalidArgument, OutcomeUnknown, RaftmeshError, ResourceExhausted
from raftmesh.node import proposer as proposer_mod
from raftmesh.node import rpc
from raftmesh.node.liveness import NEVER_HEARD_REQUEUE_S, Liveness
from raftmesh.node.proposer import Proposer
from raftmesh.node.reads import ReadView
from raftmesh.node.scheduler import Scheduler

NODES = ("n1", "n2", "n3")


def register(sm: StateMachine, node: str, incarnation: str = "i1", ts: int = 1) -> None:
    res, _ = sm.apply(
        RegisterNode(
            f"reg-{node}-{incarnation}",
            ts,
            node_id=node,
            grpc=f"g-{node}",
            raft=f"r-{node}",
            agents=("echo", "block"),
            slots=4,
            incarnation=incarnation,
        )
    )
    assert res.ok, res


def cluster(tasks: int = 0, timeout_ms: int = 0) -> StateMachine:
    sm = StateMachine()
    for n in NODES:
        register(sm, n)
    if tasks:
        specs = tuple(TaskSpec(f"t{i}", "echo", timeout_ms=timeout_ms) for i in range(tasks))
        res, _ = sm.apply(SubmitRun("s1", 2, run_id="r1", tasks=specs))
        assert res.ok, res
    return sm


class Unused:
    """A writer for code under test that must decide, not propose: any call fails the test."""

    async def propose(
        self, cmd: Command, timeout_s: float | None = None, *, leader_only: bool = False
    ) -> Result:
        raise AssertionError(f"proposed {cmd.TAG} while only deciding")

    async def barrier(self, timeout_s: float | None = None) -> None:
        raise AssertionError("barrier while only deciding")


def reads_of(sm: StateMachine) -> ReadView:
    return ReadView(threading.RLock(), lambda: sm.state)


# ---- the clock ------------------------------------------------------------------------


def test_manual_clock_sleep_returns_only_when_advanced_past_its_deadline() -> None:
    clock = ManualClock()

    async def scenario() -> list[str]:
        woke: list[str] = []

        async def sleeper(name: str, s: float) -> None:
            await clock.sleep(s)
            woke.append(name)

        tasks = [asyncio.create_task(sleeper("short", 1.0)), asyncio.create_task(sleeper("long", 5.0))]
        await asyncio.sleep(0)
        clock.advance(0.5)
        await asyncio.sleep(0)
        assert woke == []
        clock.advance(0.5)
        await asyncio.sleep(0)
        assert woke == ["short"]
        clock.advance(10)
        await asyncio.gather(*tasks)
        return woke

    start_ms = clock.now_ms()
    assert asyncio.run(scenario()) == ["short", "long"]
    assert clock.now_ms() == start_ms + 11_000
    with pytest.raises(ValueError):
        clock.advance(-1)


# ---- liveness --------------------------------------------------------------------------


def test_a_silent_member_is_overdue_after_node_down_after_and_a_heard_one_is_not() -> None:
    sm = cluster()
    clock = ManualClock()
    live = Liveness(clock, "n1", node_down_after_s=5.0)
    ups = list(sm.state.members.values())
    assert live.overdue(ups) == []  # every clock starts when the member is first seen up
    clock.advance(4.9)
    live.heard_from("n2")
    assert live.overdue(ups) == []
    clock.advance(0.1)
    overdue = live.overdue(ups)
    assert [(o.node_id, o.incarnation) for o in overdue] == [("n3", "i1")]  # never n1: this node
    assert overdue[0].silent_s == pytest.approx(5.0)
    clock.advance(5.0)
    assert {o.node_id for o in live.overdue(ups)} == {"n2", "n3"}


def test_a_member_that_rejoined_gets_a_full_timeout_again() -> None:
    sm = cluster()
    clock = ManualClock()
    live = Liveness(clock, "n1", node_down_after_s=5.0)
    live.overdue(sm.state.members.values())
    clock.advance(6.0)
    assert {o.node_id for o in live.overdue(sm.state.members.values())} == {"n2", "n3"}
    register(sm, "n3", incarnation="i2", ts=clock.now_ms())  # restarted: a new incarnation
    assert {o.node_id for o in live.overdue(sm.state.members.values())} == {"n2"}


def test_suspects_are_members_not_heard_since_leading_or_silent_lately() -> None:
    sm = cluster()
    clock = ManualClock()
    live = Liveness(clock, "n1", node_down_after_s=5.0, suspect_after_s=1.5)
    ups = list(sm.state.members.values())
    assert live.suspects(ups) == {"n2", "n3"}  # a new leader waits for a first heartbeat
    live.heard_from("n2")
    live.heard_from("n3")
    assert live.suspects(ups) == frozenset()
    clock.advance(1.0)
    live.heard_from("n3")
    clock.advance(1.0)
    assert live.suspects(ups) == {"n2"}
    live.reset()
    assert live.suspects(ups) == {"n2", "n3"}


def test_raft_silence_flags_a_member_sooner_than_heartbeats_and_moves_its_work_once_both_stop() -> None:
    """Raft silence alone flags (no new work); moving the member's attempts also needs its
    heartbeats (its agent host) to stop for ``requeue_heartbeat_s``: a slow follower whose
    Raft answers lag keeps its work, a cut-off one loses it well before node-down."""
    sm = cluster()
    clock = ManualClock()
    ages = {"n2": 0.0, "n3": 0.0}
    live = Liveness(clock, "n1", node_down_after_s=5.0, raft_ages=lambda: ages)
    ups = list(sm.state.members.values())

    def step() -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
        live.overdue(ups)
        live.observe_raft()
        return live.silent(ups), live.lost(ups), live.suspects(ups)

    live.heard_from("n2")
    live.heard_from("n3")
    assert step() == (frozenset(), frozenset(), frozenset())
    clock.advance(0.6)  # heartbeats are fine (0.6 s < 1.5 s); n3's Raft answers stopped 0.6 s ago
    ages["n3"] = 0.6
    assert step() == ({"n3"}, frozenset(), {"n3"})
    clock.advance(0.4)
    ages["n3"] = 1.0
    live.heard_from("n3")  # its agent host still heartbeats: slow, not cut off
    assert step() == ({"n3"}, frozenset(), {"n3"})
    clock.advance(1.0)
    ages["n3"] = 2.0
    live.heard_from("n2")
    assert step() == ({"n3"}, frozenset(), {"n3"})  # 1.0 s without a heartbeat: not yet
    clock.advance(0.5)
    ages["n3"] = 2.5
    live.heard_from("n2")
    assert step() == ({"n3"}, {"n3"}, {"n3"})  # silent on both: 2.5 s and 1.5 s
    assert live.overdue(ups) == []  # node-down stays the heartbeats' call
    live.reset()  # not leading: no Raft ages are read and every clock starts afresh
    ages.clear()
    assert step()[:2] == (frozenset(), frozenset())


def test_a_flag_clears_only_after_the_member_was_heard_for_clear_after_s() -> None:
    """Hysteresis: a member whose Raft answers flap is flagged once and kept flagged, not
    flagged and cleared on every beat (each change is a log entry)."""
    sm = cluster()
    clock = ManualClock()
    ages = {"n2": 0.0, "n3": 0.0}
    live = Liveness(clock, "n1", node_down_after_s=5.0, raft_ages=lambda: ages)

    def flagged() -> frozenset[str]:
        ups = list(sm.state.members.values())
        for n in ("n2", "n3"):
            live.heard_from(n)
        live.overdue(ups)
        live.observe_raft()
        return live.silent(ups)

    assert flagged() == frozenset()
    ages["n3"] = 0.7
    assert flagged() == {"n3"}
    sm.state.members["n3"].suspect = True  # as the SuspectNode it leads to sets it
    for _ in range(3):  # answers again, then silent again, within a second each time
        ages["n3"] = 0.0
        clock.advance(0.4)
        assert flagged() == {"n3"}
        ages["n3"] = 0.6
        clock.advance(0.4)
        assert flagged() == {"n3"}
    ages["n3"] = 0.0
    clock.advance(0.1)
    assert flagged() == {"n3"}
    clock.advance(0.9)
    assert flagged() == {"n3"}
    clock.advance(0.1)  # heard on both signals for 1.0 s
    assert flagged() == frozenset()


# ---- the scheduler's step --------------------------------------------------------------


def scheduler(sm: StateMachine, clock: ManualClock, heard: tuple[str, ...] = ("n2", "n3")) -> Scheduler:
    live = Liveness(clock, "n1", node_down_after_s=5.0)
    for n in heard:
        live.heard_from(n)
    return Scheduler(reads_of(sm), Unused(), lambda: True, "n1", live, clock)


def test_scheduler_assigns_ready_tasks_once_and_not_to_suspects() -> None:
    sm = cluster(tasks=6)
    clock = ManualClock(start_ms=10_000)
    s = scheduler(sm, clock, heard=("n2",))  # n3 not heard from: no new work there
    (cmd,) = s.decide(sm.state)
    assert isinstance(cmd, Assign) and cmd.ts_ms == 10_000
    placed = {a.node_id for a in cmd.items}
    assert placed == {"n1", "n2"}
    assert len(cmd.items) == 6
    # The plan is in flight: the next step proposes nothing for the same tasks.
    assert s.decide(sm.state) == []


def test_scheduler_proposes_node_down_for_silent_members_once() -> None:
    sm = cluster()
    clock = ManualClock()
    s = scheduler(sm, clock)
    assert s.decide(sm.state) == []
    clock.advance(5.0)
    s.heard_from("n2")
    cmds = s.decide(sm.state)
    assert [(type(c), c.node_id) for c in cmds if isinstance(c, NodeDown)] == [(NodeDown, "n3")]
    assert s.decide(sm.state) == []  # in flight: not proposed twice


def test_scheduler_stamps_a_liveness_decision_with_the_term_it_was_decided_in() -> None:
    """Decided as the leader of term 7, a NodeDown carries 7 however late it is proposed (the
    proposer refuses it once this node leads another term); not leading when it decides, it
    decides nobody's liveness (a later leadership must not adopt this view)."""

    def down_decided(term: int | None) -> NodeDown | None:
        sm = cluster()
        clock = ManualClock()
        live = Liveness(clock, "n1", node_down_after_s=5.0)
        live.heard_from("n2")
        live.heard_from("n3")
        s = Scheduler(reads_of(sm), Unused(), lambda: True, "n1", live, clock, leader_term=lambda: term)
        assert s.decide(sm.state) == []  # the first step as leader starts its clocks
        clock.advance(5.0)
        s.heard_from("n2")
        downs = [c for c in s.decide(sm.state) if isinstance(c, NodeDown)]
        assert [d.node_id for d in downs] in (["n3"], [])
        return downs[0] if downs else None

    down = down_decided(7)
    assert down is not None and down.leader_term == 7
    assert down_decided(None) is None  # not leading when it decides: no liveness decision at all


def test_scheduler_replicates_suspicion_only_on_changes_with_a_new_leaders_grace() -> None:
    sm = cluster()
    clock = ManualClock()
    writer = MachineWriter(sm)
    s = Scheduler(reads_of(sm), writer, lambda: True, "n1", Liveness(clock, "n1", 5.0), clock)

    def flags(cmds: list[Command]) -> list[tuple[str, bool]]:
        for c in cmds:
            if isinstance(c, SuspectNode):
                asyncio.run(s._propose(c))  # commits it, as the leader's loop does
        return [(c.node_id, c.suspect) for c in cmds if isinstance(c, SuspectNode)]

    # A new leader has heard nobody yet: no one is flagged during the grace.
    assert flags(s.decide(sm.state)) == []
    clock.advance(1.0)
    s.heard_from("n2")
    assert flags(s.decide(sm.state)) == []
    clock.advance(0.6)  # n3 silent for 1.6 s, n2 for 0.6 s
    assert flags(s.decide(sm.state)) == [("n3", True)]
    assert sm.state.members["n3"].suspect
    assert flags(s.decide(sm.state)) == []  # the state agrees: not again on later steps
    s.heard_from("n3")
    assert flags(s.decide(sm.state)) == []  # hysteresis: heard for CLEAR_AFTER_S first
    clock.advance(0.5)
    s.heard_from("n2")
    s.heard_from("n3")
    assert flags(s.decide(sm.state)) == []
    clock.advance(0.5)
    s.heard_from("n2")
    s.heard_from("n3")
    assert flags(s.decide(sm.state)) == [("n3", False)]
    assert not sm.state.members["n3"].suspect
    assert flags(s.decide(sm.state)) == []


def test_a_new_leader_keeps_an_earlier_leaders_flag_until_it_hears_the_member() -> None:
    sm = cluster()
    clock = ManualClock()
    old = Scheduler(reads_of(sm), MachineWriter(sm), lambda: True, "n1", Liveness(clock, "n1", 5.0), clock)
    old.decide(sm.state)
    clock.advance(2.0)
    old.heard_from("n2")
    for c in old.decide(sm.state):
        if isinstance(c, SuspectNode):
            asyncio.run(old._propose(c))
    assert sm.state.members["n3"].suspect
    # n2 leads now: n3 is within its grace there, but that proves nothing about n3.
    new = Scheduler(reads_of(sm), MachineWriter(sm), lambda: True, "n2", Liveness(clock, "n2", 5.0), clock)
    assert [c for c in new.decide(sm.state) if isinstance(c, SuspectNode)] == []
    clock.advance(0.5)
    assert [c for c in new.decide(sm.state) if isinstance(c, SuspectNode)] == []
    new.heard_from("n3")
    clock.advance(0.5)  # heard, and for CLEAR_AFTER_S (its clock started with this leader's grace)
    new.heard_from("n1")
    new.heard_from("n3")
    cmds = [c for c in new.decide(sm.state) if isinstance(c, SuspectNode)]
    assert [(c.node_id, c.suspect) for c in cmds] == [("n3", False)]


def test_scheduler_proposes_a_suspicion_once_while_it_is_in_flight() -> None:
    sm = cluster()
    clock = ManualClock()
    s = scheduler(sm, clock, heard=("n2",))
    assert s.decide(sm.state) == []  # this leader's first step: every member's grace starts
    clock.advance(2.0)
    s.heard_from("n2")
    cmds = s.decide(sm.state)
    assert [(c.node_id, c.suspect) for c in cmds if isinstance(c, SuspectNode)] == [("n3", True)]
    assert len(cmds) == 1
    assert s.decide(sm.state) == []  # not committed yet: not proposed twice


def test_scheduler_ticks_when_a_task_timeout_is_due() -> None:
    sm = cluster(tasks=1, timeout_ms=2000)
    clock = ManualClock(start_ms=10_000)
    s = scheduler(sm, clock)
    (assign,) = s.decide(sm.state)
    assert isinstance(assign, Assign)
    res, _ = sm.apply(assign)
    assert res.ok, res
    assert not any(isinstance(c, Tick) for c in s.decide(sm.state))
    clock.advance(2.0)
    (tick,) = [c for c in s.decide(sm.state) if isinstance(c, Tick)]
    assert tick.ts_ms == 12_000


# ---- the agent host's reconcile ---------------------------------------------------------


def test_host_starts_its_assigned_attempts_and_stops_fenced_ones() -> None:
    sm = cluster(tasks=1)
    clock = ManualClock()
    started: list[tuple[str, int]] = []
    cancelled: list[int] = []

    async def scenario() -> None:
        gate = asyncio.Event()  # never set: the attempt runs until it is stopped

        async def block(ctx: TaskContext) -> Any:
            started.append((ctx.task_id, ctx.attempt))
            try:
                await gate.wait()
            except asyncio.CancelledError:
                cancelled.append(ctx.attempt)
                raise
            return None

        registry = AgentRegistry()
        registry.register("echo", block)
        host = AgentHost("n1", "i1", registry, reads_of(sm), Unused(), clock)
        assert host.decide(sm.state).start == []  # nothing assigned yet
        res, _ = sm.apply(Assign("a1", 3, (Assignment("r1", "t0", "n1", 1),)))
        assert res.ok, res
        plan = host.decide(sm.state)
        assert [(s.key, s.attempt, s.token) for s in plan.start] == [(("r1", "t0"), 1, sm.state.revision)]
        host._reconcile()
        await asyncio.sleep(0)
        assert started == [("t0", 1)] and host.running == 1
        assert host.decide(sm.state).start == []  # already running here
        # The cluster marks n1 down: its attempt is requeued and fenced, so the host stops it.
        res, _ = sm.apply(NodeDown("d1", 4, node_id="n1", incarnation="i1", reason="test"))
        assert res.ok, res
        assert host.decide(sm.state).stop == [("r1", "t0")]
        host._reconcile()
        await asyncio.sleep(0)
        assert cancelled == [1] and host.running == 0

    asyncio.run(scenario())


def test_host_stops_an_attempt_whose_task_id_came_back_under_a_new_token() -> None:
    """A rerun drops a group's children and expands them again under the same ids, attempts
    counted afresh: attempt 1 of the new task is not the old attempt 1 still running here."""
    sm = cluster(tasks=1)

    async def scenario() -> None:
        gate = asyncio.Event()

        async def block(ctx: TaskContext) -> Any:
            await gate.wait()

        registry = AgentRegistry()
        registry.register("echo", block)
        host = AgentHost("n1", "i1", registry, reads_of(sm), Unused(), ManualClock())
        res, _ = sm.apply(Assign("a1", 3, (Assignment("r1", "t0", "n1", 1),)))
        assert res.ok, res
        host._reconcile()
        await asyncio.sleep(0)
        old = sm.state.runs["r1"].tasks["t0"].token
        # the state as a re-expanded child leaves it: the same id, attempt 1, a later token
        sm.state.runs["r1"].tasks["t0"].token = old + 7
        plan = host.decide(sm.state)
        assert plan.stop == [("r1", "t0")]
        assert [(s.key, s.attempt, s.token) for s in plan.start] == [(("r1", "t0"), 1, old + 7)]
        host._reconcile()
        await asyncio.sleep(0)
        gate.set()

    asyncio.run(scenario())


class MachineWriter:
    """Applies each command to the state machine at once, as a one-node log would.

    ``fail_with`` makes proposals fail the way they do while the leader is out of reach.
    """

    def __init__(self, sm: StateMachine) -> None:
        self.sm = sm
        self.fail_with: RaftmeshError | None = None
        self.leader_only: list[tuple[str, bool]] = []
        """(tag, leader_only) of every proposal, in order."""

    async def propose(
        self, cmd: Command, timeout_s: float | None = None, *, leader_only: bool = False
    ) -> Result:
        self.leader_only.append((cmd.TAG, leader_only))
        if self.fail_with is not None:
            raise self.fail_with
        res, _ = self.sm.apply(cmd)
        return res

    async def barrier(self, timeout_s: float | None = None) -> None:
        return None


def test_host_says_how_each_attempt_ends(caplog: pytest.LogCaptureFixture) -> None:
    """Accepted, fenced, undeliverable or stopped: every attempt's end is a line, at INFO but for
    the start and a success (DEBUG: two INFO lines per attempt were 12-19% of a node's CPU in a
    fan-out)."""
    caplog.set_level(logging.DEBUG, logger="raftmesh.agents._host")
    sm = cluster(tasks=4)
    writer = MachineWriter(sm)

    def said(how: str) -> str | None:
        for r in caplog.records:
            if r.getMessage().startswith(how):
                quiet = how.endswith((" started", " succeeded"))
                assert r.levelno == (logging.DEBUG if quiet else logging.INFO), (how, r.levelname)
                return r.getMessage()
        return None

    async def settle(how: str) -> str:
        for _ in range(100):  # the attempt, its report and the flush take a few loop turns
            line = said(how)
            if line is not None:
                return line
            await asyncio.sleep(0)
        raise AssertionError(f"never logged {how!r}: {[r.getMessage() for r in caplog.records]}")

    async def scenario() -> None:
        gates = {f"t{i}": asyncio.Event() for i in range(4)}

        async def put_when_let(ctx: TaskContext) -> Any:
            await gates[ctx.task_id].wait()
            return await ctx.kv.put(f"k/{ctx.task_id}", ctx.attempt)

        registry = AgentRegistry()
        registry.register("echo", put_when_let)
        host = AgentHost("n1", "i1", registry, reads_of(sm), writer, ManualClock())
        reporter = asyncio.get_running_loop().create_task(host._report_loop())
        res, _ = sm.apply(Assign("a1", 3, tuple(Assignment("r1", f"t{i}", "n1", 1) for i in range(4))))
        assert res.ok, res
        host._reconcile()
        await settle("attempt 1 of r1/t3 started")
        gates["t3"].set()
        assert await settle("attempt 1 of r1/t3 succeeded") == "attempt 1 of r1/t3 succeeded"
        # n1 is marked down: every attempt left is fenced, and the host has not reconciled yet
        res, _ = sm.apply(NodeDown("d1", 4, node_id="n1", incarnation="i1", reason="test"))
        assert res.ok, res
        gates["t0"].set()  # its write is rejected, and then its failure report
        line = await settle("attempt 1 of r1/t0 failed: StaleToken")
        assert "; its result was rejected as fenced: " in line, line
        writer.fail_with = OutcomeUnknown("the leader is out of reach")
        gates["t1"].set()  # its write and its report get no answer; the task is no longer n1's
        line = await settle("attempt 1 of r1/t1 failed: OutcomeUnknown: the leader is out of reach")
        assert "; its result was not delivered" in line, line
        host._reconcile()
        await settle("attempt 1 of r1/t2 stopped")
        assert host.running == 0
        assert sm.state.kv.get("k/t3") is not None and sm.state.kv.get("k/t0") is None
        reporter.cancel()

    asyncio.run(scenario())


def test_host_of_another_incarnation_runs_nothing() -> None:
    sm = cluster(tasks=1)
    res, _ = sm.apply(Assign("a1", 3, (Assignment("r1", "t0", "n1", 1),)))
    assert res.ok, res
    registry = AgentRegistry()
    host = AgentHost("n1", "an-older-process", registry, reads_of(sm), Unused(), ManualClock())
    assert host.decide(sm.state).start == []


# ---- bounded proposer queue ---------------------------------------------------------------


class NoLeaderRaft:
    """A Raft member that never has a leader, so commands stay queued until their deadlines."""

    leader_addr = None
    leader_known = False

    def propose(self, payload: bytes, callback: Any) -> None:
        raise AssertionError("nothing may be proposed without a leader")


def test_a_full_proposer_queue_answers_resource_exhausted_at_the_callers_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(proposer_mod, "MAX_QUEUED_COMMANDS", 2)

    async def scenario() -> list[Any]:
        p = Proposer(NoLeaderRaft(), asyncio.get_running_loop())  # type: ignore[arg-type]
        p.start()
        try:
            cmds = [Tick(f"t{i}", 1) for i in range(3)]
            return await asyncio.gather(
                p.propose(cmds[0], timeout_s=1.0),
                p.propose(cmds[1], timeout_s=1.0),
                p.propose(cmds[2], timeout_s=0.1),
                return_exceptions=True,
            )
        finally:
            await p.stop()

    first, second, third = asyncio.run(scenario())
    assert isinstance(third, ResourceExhausted), third
    assert "queue is full" in third.message and "nothing was proposed" in third.message
    # The two admitted ones waited for a leader for their whole deadline.
    assert type(first).__name__ == "NoLeader" and type(second).__name__ == "NoLeader"


# ---- errors to the wire -------------------------------------------------------------------


def test_every_error_class_names_a_grpc_status() -> None:
    import raftmesh.errors as errors

    classes = [
        v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, errors.RaftmeshError)
    ]
    assert len(classes) > 10
    for cls in classes:
        assert hasattr(grpc.StatusCode, cls.code), cls


def test_rpc_translates_errors_and_bounds_bug_messages() -> None:
    code, msg = rpc.status_of(InvalidArgument("name is too long"), "ClusterService.SubmitRun")
    assert code is grpc.StatusCode.INVALID_ARGUMENT and msg == "name is too long"
    code, msg = rpc.status_of(KeyError("x" * 100_000), "ClusterService.GetRun")
    assert code is grpc.StatusCode.INTERNAL
    assert msg.startswith("internal error in ClusterService.GetRun: KeyError")
    assert len(msg.encode()) <= limits.MAX_STATUS_MESSAGE_BYTES + 40  # clipped, plus "…(N more characters)"
    code, msg = rpc.status_of(RaftmeshError("y" * 10_000), "x")
    assert code is grpc.StatusCode.UNKNOWN and msg.endswith("more characters)")
    assert Internal.code == "INTERNAL"


def test_host_fails_an_output_no_reader_could_store_without_retry() -> None:
    """A 1,000-deep output (json.dumps raised RecursionError here, killing the attempt silently)."""
    sm = cluster(tasks=1)

    async def deep(ctx: TaskContext) -> Any:
        out: Any = 1
        for _ in range(1000):
            out = [out]
        return out

    async def scenario() -> None:
        registry = AgentRegistry()
        registry.register("echo", deep)
        host = AgentHost("n1", "i1", registry, reads_of(sm), MachineWriter(sm), ManualClock())
        reporter = asyncio.get_running_loop().create_task(host._report_loop())
        res, _ = sm.apply(Assign("a1", 3, (Assignment("r1", "t0", "n1", 1),)))
        assert res.ok, res
        host._reconcile()
        for _ in range(100):  # the attempt, its report and the flush take a few loop turns
            t = sm.state.task("r1", "t0")
            if t is not None and t.status is TaskStatus.FAILED:
                break
            await asyncio.sleep(0)
        t = sm.state.task("r1", "t0")
        assert t is not None and t.status is TaskStatus.FAILED, t
        assert "output is not storable" in t.error and "deep" in t.error, t.error
        reporter.cancel()

    asyncio.run(scenario())


def test_numeric_config_values_are_whole_numbers_where_a_count_is_meant() -> None:
    from raftmesh.errors import InvalidArgument
    from raftmesh.node.main import _number

    assert _number("slots", 3.0, int) == 3 and _number("slots", "4", int) == 4
    assert _number("node-down-after", 2.5, float) == 2.5
    for bad in (2.9, True):
        with pytest.raises(InvalidArgument, match="slots must be a whole number"):
            _number("slots", bad, int)


def test_scheduler_requeues_a_member_without_raft_answers_once_and_work_moves() -> None:
    sm = cluster(tasks=12)
    clock = ManualClock(start_ms=10_000)
    ages = {"n2": 0.0, "n3": 0.0}
    live = Liveness(clock, "n1", node_down_after_s=5.0, raft_ages=lambda: ages)
    live.heard_from("n2")
    live.heard_from("n3")
    s = Scheduler(reads_of(sm), MachineWriter(sm), lambda: True, "n1", live, clock)
    (assign,) = s.decide(sm.state)
    asyncio.run(s._propose(assign))
    on_n3 = set(sm.state.running["n3"])
    assert len(on_n3) == 4
    for n in ("n1", "n2"):  # n1 and n2 finish their work, n3 is cut off mid-attempt
        for run_id, task_id in list(sm.state.running[n]):
            t = sm.state.runs[run_id].tasks[task_id]
            res, _ = sm.apply(
                Complete(f"c-{task_id}", 10_001, n, (Completion(run_id, task_id, t.attempt, t.token, 1),))
            )
            assert res.ok, res
    clock.advance(1.0)
    s.heard_from("n2")
    s.heard_from("n3")  # its heartbeats still arrive: only the Raft answers lag
    ages["n3"] = 1.0
    cmds = [c for c in s.decide(sm.state) if isinstance(c, SuspectNode)]
    assert [(c.node_id, c.suspect, c.requeue) for c in cmds] == [("n3", True, False)]  # a flag only
    asyncio.run(s._propose(cmds[0]))
    assert len(sm.state.running["n3"]) == 4
    clock.advance(1.5)  # now its heartbeats stopped too
    s.heard_from("n2")
    ages["n3"] = 2.5
    cmds = [c for c in s.decide(sm.state) if isinstance(c, SuspectNode)]
    assert [(c.node_id, c.suspect, c.requeue) for c in cmds] == [("n3", True, True)]
    assert [c for c in s.decide(sm.state) if isinstance(c, SuspectNode)] == []  # in flight
    asyncio.run(s._propose(cmds[0]))
    assert sm.state.members["n3"].suspect and sm.state.members["n3"].up
    assert not sm.state.running.get("n3")
    for run_id, task_id in on_n3:  # ready again, none of it planned back onto n3
        assert sm.state.runs[run_id].tasks[task_id].status is TaskStatus.READY
    plan = [c for c in s.decide(sm.state) if isinstance(c, Assign)]
    assert {a.node_id for c in plan for a in c.items} == {"n1", "n2"}


def test_scheduler_proposes_no_requeue_that_would_move_nothing_and_liveness_is_leader_only() -> None:
    """A lost member whose attempts all hold declared locks (or were moved by suspicion
    ``MAX_SUSPECT_MOVES`` times already) is flagged, not requeued: a requeue there would change
    nothing and be proposed again every step. Every liveness proposal is ``leader_only``."""
    sm = cluster()
    specs = tuple(TaskSpec(f"t{i}", "echo", locks=((f"L{i}", "exclusive"),)) for i in range(12))
    res, _ = sm.apply(SubmitRun("s1", 2, run_id="r1", tasks=specs))
    assert res.ok, res
    clock = ManualClock(start_ms=10_000)
    ages = {"n2": 0.0, "n3": 0.0}
    live = Liveness(clock, "n1", node_down_after_s=5.0, raft_ages=lambda: ages)
    live.heard_from("n2")
    live.heard_from("n3")
    writer = MachineWriter(sm)
    s = Scheduler(reads_of(sm), writer, lambda: True, "n1", live, clock)
    (assign,) = s.decide(sm.state)
    asyncio.run(s._propose(assign))
    assert len(sm.state.running["n3"]) == 4
    clock.advance(1.5)  # n3 silent on both signals
    s.heard_from("n2")
    ages["n3"] = 1.5
    cmds = [c for c in s.decide(sm.state) if isinstance(c, SuspectNode)]
    assert [(c.node_id, c.suspect, c.requeue) for c in cmds] == [("n3", True, False)]
    asyncio.run(s._propose(cmds[0]))
    assert [c for c in s.decide(sm.state) if isinstance(c, SuspectNode)] == []  # flagged: nothing more
    assert len(sm.state.running["n3"]) == 4  # lock holders wait for node-down
    clock.advance(3.5)  # node-down
    s.heard_from("n2")
    downs = [c for c in s.decide(sm.state) if isinstance(c, NodeDown)]
    assert [c.node_id for c in downs] == ["n3"]
    asyncio.run(s._propose(downs[0]))
    assert not sm.state.running.get("n3")
    assert [tag for tag, only in writer.leader_only if only] == ["suspect_node", "node_down"]
    assert [tag for tag, only in writer.leader_only if not only] == ["assign"]


def test_the_heartbeat_silence_a_requeue_needs_is_three_beats_or_half_of_node_down() -> None:
    clock = ManualClock()
    assert Liveness(clock, "n1", node_down_after_s=5.0)._requeue_heartbeat_s == 1.5  # 3 beats
    assert Liveness(clock, "n1", node_down_after_s=2.0)._requeue_heartbeat_s == 1.0  # half of it
    assert Liveness(clock, "n1", node_down_after_s=1.0)._requeue_heartbeat_s == 1.0  # 2 beats at least


def test_a_leader_that_hears_no_majority_decides_nobodys_liveness() -> None:
    """A SIGSTOPped leader resumes with every Raft answer and heartbeat a pause old, and its
    scheduler may step before Raft deposes it: it must not flag, requeue or mark down the
    members that went on without it (its proposals would be retried on the new leader)."""
    sm = cluster(tasks=4)
    clock = ManualClock()
    ages = {"n2": 0.0, "n3": 0.0}
    live = Liveness(clock, "n1", node_down_after_s=5.0, raft_ages=lambda: ages)
    live.heard_from("n2")
    live.heard_from("n3")
    s = Scheduler(reads_of(sm), MachineWriter(sm), lambda: True, "n1", live, clock)
    (assign,) = s.decide(sm.state)
    asyncio.run(s._propose(assign))
    clock.advance(7.5)  # paused: nothing heard from anyone
    ages.update(n2=7.5, n3=7.5)
    assert s.decide(sm.state) == [] and live.cut_off
    ages["n2"] = 0.05  # n2 answers again: with this node, a majority; n3 is the silent one
    s.heard_from("n2")
    cmds = s.decide(sm.state)
    assert not live.cut_off
    assert sorted((type(c).__name__, c.node_id) for c in cmds if isinstance(c, NodeDown | SuspectNode)) == [
        ("NodeDown", "n3")
    ]


def test_a_new_leader_moves_its_previous_leaders_attempts_after_two_beats_not_a_fresh_wait() -> None:
    """The previous leader heartbeated no one, and ``response_ages`` dates its silence from this
    node's last contact with it: its attempts move two heartbeat periods after this node leads,
    not a fresh ``requeue_heartbeat_s`` (nor at once: a previous leader whose Raft thread stalled
    while its host ran on heartbeats this leader once that thread resumes). A member heard since
    this node leads still needs its heartbeats to stop for ``requeue_heartbeat_s``."""
    sm = cluster()
    clock = ManualClock()
    ages = {"n2": 0.05, "n3": 1.1}  # n3 led until it went silent 1.1 s ago; n2 answers
    live = Liveness(clock, "n1", node_down_after_s=5.0, raft_ages=lambda: ages)
    ups = list(sm.state.members.values())
    live.reset()  # this node has just started leading
    live.overdue(ups)
    live.observe_raft()
    assert live.lost(ups) == frozenset()  # Raft silence alone is not enough
    clock.advance(NEVER_HEARD_REQUEUE_S - 0.01)
    live.heard_from("n2")
    live.observe_raft()
    assert live.lost(ups) == frozenset()
    clock.advance(0.01)
    assert live.lost(ups) == {"n3"}
    live.heard_from("n3")  # had it heartbeated this leader, its Raft lag alone would not do
    assert live.lost(ups) == frozenset()
    clock.advance(1.5)
    live.heard_from("n2")
    live.observe_raft()
    assert live.lost(ups) == {"n3"}


def test_a_late_but_live_majority_still_lets_the_leader_judge_the_silent_member() -> None:
    sm = cluster()
    clock = ManualClock()
    ages = {"n2": 0.7, "n3": 1.2}  # n2 answers late (a loaded machine), n3 not at all
    live = Liveness(clock, "n1", node_down_after_s=5.0, raft_ages=lambda: ages)
    ups = list(sm.state.members.values())
    live.overdue(ups)
    clock.advance(1.5)  # and n3's heartbeats stopped too
    live.heard_from("n2")
    live.overdue(ups)
    live.observe_raft()
    assert not live.cut_off
    assert live.lost(ups) == {"n3"} and live.silent(ups) == {"n2", "n3"}
