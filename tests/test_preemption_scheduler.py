"""The leader's preemption decisions (``Scheduler.decide`` with ``preempt_priority``).

Driven like ``tests/test_node_units.py``: a real ``StateMachine``, a ``ManualClock``, and a
writer that applies each proposal to the machine at once, so a decision can be carried
out and the next step seen. No network, no sleeps.
"""

from __future__ import annotations

import asyncio

import pytest

from raftmesh.clock import ManualClock
from raftmesh.consensus import limits
from raftmesh.consensus.commands import (
    AgentOffer,
    Assign,
    Command,
    Preempt,
    RegisterNode,
    SubmitRun,
    TaskSpec,
)
from raftmesh.consensus.machine import StateMachine
from raftmesh.consensus.state import TaskStatus
from raftmesh.errors import InvalidArgument
from raftmesh.node.config import build_config
from raftmesh.node.liveness import Liveness
from raftmesh.node.scheduler import Scheduler

from .test_node_units import MachineWriter, reads_of

_n = 0


def apply(sm: StateMachine, cmd: Command) -> None:
    res, _ = sm.apply(cmd)
    assert res.ok, res


def rid() -> str:
    global _n
    _n += 1
    return f"req-{_n}"


def two_nodes(agents_n2: tuple[str, ...] = ("echo",)) -> StateMachine:
    """n1 (this leader) and n2, two slots each."""
    sm = StateMachine()
    for node, agents in (("n1", ("echo",)), ("n2", agents_n2)):
        apply(sm, RegisterNode(rid(), 1, node, f"g-{node}", f"r-{node}", agents, 2, "i1"))
    return sm


def submit(sm: StateMachine, run_id: str, *tasks: TaskSpec, ts: int = 2) -> None:
    apply(sm, SubmitRun(rid(), ts, run_id=run_id, tasks=tasks))


def sched(sm: StateMachine, clock: ManualClock, threshold: int | None) -> Scheduler:
    live = Liveness(clock, "n1", node_down_after_s=5.0)
    live.heard_from("n2")
    return Scheduler(
        reads_of(sm), MachineWriter(sm), lambda: True, "n1", live, clock, preempt_priority=threshold
    )


def carry_out(s: Scheduler, cmds: list[Command]) -> None:
    async def go() -> None:
        for c in cmds:
            await s._propose(c)

    asyncio.run(go())


def fill(sm: StateMachine, s: Scheduler, clock: ManualClock) -> None:
    """Four low tasks (priorities 0, 1, 1, 3), started in that order, fill both nodes."""
    for i, prio in enumerate((0, 1, 1, 3)):
        submit(sm, f"low{i}", TaskSpec("t", "echo", priority=prio), ts=clock.now_ms())
        carry_out(s, s.decide(sm.state))
        clock.advance(1.0)
        s.heard_from("n2")  # n2 keeps sending heartbeats: not a suspect
    assert sum(len(q) for q in sm.state.running.values()) == 4


def test_a_waiting_high_task_preempts_the_lowest_latest_started_attempt_once() -> None:
    sm = two_nodes()
    clock = ManualClock(start_ms=10_000)
    s = sched(sm, clock, threshold=5)
    fill(sm, s, clock)
    submit(sm, "high", TaskSpec("h", "echo", priority=9), ts=clock.now_ms())
    (cmd,) = s.decide(sm.state)
    assert isinstance(cmd, Preempt)
    (p,) = cmd.items
    assert (p.run_id, p.by_run_id, p.by_task_id) == ("low0", "high", "h")  # priority 0 is lowest
    assert s.decide(sm.state) == []  # in flight: no second victim for the same waiting task
    victim_node = sm.state.task("low0", "t").node
    carry_out(s, [cmd])
    t = sm.state.task("low0", "t")
    assert t.status is TaskStatus.READY and t.preempted_by[0][:3] == ("high", "h", 1)
    # The freed slot goes to the high task, and nothing else is preempted for it.
    (assign,) = s.decide(sm.state)
    assert isinstance(assign, Assign)
    assert [(a.run_id, a.node_id) for a in assign.items] == [("high", victim_node)]
    carry_out(s, [assign])
    assert s.decide(sm.state) == []  # the preempted task waits (priority 0 is below the threshold)


def test_ties_go_to_the_attempt_started_last() -> None:
    sm = two_nodes()
    clock = ManualClock(start_ms=10_000)
    s = sched(sm, clock, threshold=5)
    fill(sm, s, clock)
    carry_out(s, [c for c in s.decide(sm.state)])
    submit(
        sm, "high", TaskSpec("h", "echo", priority=9), TaskSpec("h2", "echo", priority=9), ts=clock.now_ms()
    )
    (cmd,) = s.decide(sm.state)
    assert isinstance(cmd, Preempt)
    # One victim per waiting task, distinct: priority 0, then the later-started priority 1.
    assert [(p.run_id, p.by_task_id) for p in cmd.items] == [("low0", "h"), ("low2", "h2")]


def test_no_preemption_below_the_threshold_when_off_or_with_a_free_slot() -> None:
    for threshold, prio in ((5, 4), (None, 9)):
        sm = two_nodes()
        clock = ManualClock(start_ms=10_000)
        s = sched(sm, clock, threshold)
        fill(sm, s, clock)
        submit(sm, "high", TaskSpec("h", "echo", priority=prio), ts=clock.now_ms())
        assert s.decide(sm.state) == [], (threshold, prio)
    sm = two_nodes()
    clock = ManualClock(start_ms=10_000)
    s = sched(sm, clock, threshold=5)
    submit(sm, "low", TaskSpec("t", "echo"), ts=clock.now_ms())
    carry_out(s, s.decide(sm.state))
    submit(sm, "high", TaskSpec("h", "echo", priority=9), ts=clock.now_ms())
    (cmd,) = s.decide(sm.state)
    assert isinstance(cmd, Assign)  # a slot is free: placed, nobody preempted


def test_only_attempts_on_nodes_that_serve_the_waiting_task_and_below_its_priority() -> None:
    sm = two_nodes(agents_n2=("echo", "llm"))
    clock = ManualClock(start_ms=10_000)
    s = sched(sm, clock, threshold=5)
    fill(sm, s, clock)
    on_n2 = sorted(k[0] for k in sm.state.running["n2"])
    submit(sm, "high", TaskSpec("h", "llm", priority=9), ts=clock.now_ms())
    (cmd,) = s.decide(sm.state)
    assert isinstance(cmd, Preempt)
    assert cmd.items[0].run_id in on_n2  # only n2 offers llm


def test_only_attempts_strictly_below_the_waiting_priority_are_victims() -> None:
    sm = two_nodes()
    clock = ManualClock(start_ms=10_000)
    s = sched(sm, clock, threshold=0)
    fill(sm, s, clock)  # priorities 0, 1, 1, 3 running
    submit(sm, "mid", TaskSpec("m", "echo", priority=1), ts=clock.now_ms())
    (cmd,) = s.decide(sm.state)
    assert isinstance(cmd, Preempt) and [p.run_id for p in cmd.items] == ["low0"]
    carry_out(s, [cmd])
    carry_out(s, s.decide(sm.state))  # mid takes the slot
    assert sm.state.task("mid", "m").status is TaskStatus.RUNNING
    submit(sm, "mid2", TaskSpec("m", "echo", priority=1), ts=clock.now_ms())
    assert s.decide(sm.state) == []  # every running attempt is at priority >= 1


def test_preempt_priority_is_validated_once_at_start() -> None:
    cfg = build_config("n1", "127.0.0.1:1", "127.0.0.1:2", [], "data", preempt_priority=5)
    assert cfg.preempt_priority == 5
    assert build_config("n1", "127.0.0.1:1", "127.0.0.1:2", [], "data").preempt_priority is None
    with pytest.raises(InvalidArgument, match="preempt-priority"):
        build_config("n1", "127.0.0.1:1", "127.0.0.1:2", [], "data", preempt_priority=limits.MAX_PRIORITY + 1)


def test_a_new_leader_repeating_a_preemption_costs_no_second_victim() -> None:
    """The old leader's preemption commits after leadership moved; the new leader, which never
    saw it in flight, planned the same one from the same state: the log applies it once."""
    sm = two_nodes()
    clock = ManualClock(start_ms=10_000)
    old = sched(sm, clock, threshold=5)
    fill(sm, old, clock)
    submit(sm, "high", TaskSpec("h", "echo", priority=9), ts=clock.now_ms())
    (first,) = old.decide(sm.state)
    new = sched(sm, clock, threshold=5)  # a fresh scheduler: what a new leader starts with
    (again,) = new.decide(sm.state)
    assert isinstance(first, Preempt) and isinstance(again, Preempt)
    assert [(p.run_id, p.token) for p in again.items] == [(p.run_id, p.token) for p in first.items]
    res, _ = sm.apply(first)
    assert res.ok, res
    res, _ = sm.apply(again)
    assert not res.ok and "task is READY" in res.message  # stale: the victim was already preempted
    preempted = [k for k in ("low0", "low1", "low2", "low3") if sm.state.task(k, "t").preempted_by]
    assert preempted == ["low0"]
    (assign,) = new.decide(sm.state)
    assert isinstance(assign, Assign) and [a.run_id for a in assign.items] == ["high"]


def test_victims_are_taken_only_where_the_waiting_task_could_run_by_capability() -> None:
    """Placement's eligibility is the rule: a victim on a node whose offer lacks a required
    capability frees nothing for the waiting task."""
    sm = StateMachine()
    gpu = AgentOffer("echo", capabilities=("gpu",))
    apply(sm, RegisterNode(rid(), 1, "n1", "g-n1", "r-n1", ("echo",), 2, "i1"))
    apply(sm, RegisterNode(rid(), 1, "n2", "g-n2", "r-n2", ("echo",), 2, "i1", offers=(gpu,)))
    clock = ManualClock(start_ms=10_000)
    s = sched(sm, clock, threshold=5)
    fill(sm, s, clock)
    submit(sm, "high", TaskSpec("h", "echo", priority=9, requires=("gpu",)), ts=clock.now_ms())
    (cmd,) = s.decide(sm.state)
    assert isinstance(cmd, Preempt)
    (p,) = cmd.items
    assert sm.state.task(p.run_id, p.task_id).node == "n2"  # the lowest attempt on n1 is not taken


@pytest.mark.parametrize("yields", range(6))
def test_the_scheduler_and_host_loops_stop_when_cancelled_as_they_are_woken(yields: int) -> None:
    """A node's stop cancels these loops; a cancellation landing just as the loop's wake
    event is set must end them (asyncio.wait_for on 3.11 swallowed it: a stop that hung)."""
    from raftmesh.agents import AgentHost, default_registry

    from .test_node_units import Unused

    async def go() -> None:
        sm = two_nodes()
        clock = ManualClock(start_ms=10_000)
        s = sched(sm, clock, threshold=None)
        host = AgentHost("n1", "i1", default_registry(), reads_of(sm), Unused(), clock)
        for loop_owner in (s, host):
            task = asyncio.get_running_loop().create_task(loop_owner.run())
            await asyncio.sleep(0.01)  # parked on its wake event
            loop_owner.poke()
            for _ in range(yields):
                await asyncio.sleep(0)
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=2.0)
            assert done, f"{type(loop_owner).__name__}.run outlived its cancellation"

    asyncio.run(go())
