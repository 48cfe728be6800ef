"""Placement is pure: READY tasks to least-loaded up members offering the agent, never to avoided ones."""

from __future__ import annotations

from raftmesh.consensus.commands import RegisterNode, SubmitRun, TaskSpec
from raftmesh.consensus.machine import StateMachine
from raftmesh.consensus.placement import plan_assignments


def _machine(tasks: int) -> StateMachine:
    sm = StateMachine()
    for n in ("n1", "n2", "n3"):
        sm.apply(
            RegisterNode(
                f"reg-{n}", 1, node_id=n, grpc="g", raft=f"r{n}", agents=("echo",), slots=4, incarnation="i"
            )
        )
    specs = tuple(TaskSpec(f"t{i}", "echo") for i in range(tasks))
    sm.apply(SubmitRun("s1", 2, run_id="r1", tasks=specs))
    return sm


def test_spreads_least_loaded_first_and_respects_slots() -> None:
    sm = _machine(20)
    plan = plan_assignments(sm.state, now_ms=10, inflight={})
    per_node: dict[str, int] = {}
    for a in plan:
        per_node[a.node_id] = per_node.get(a.node_id, 0) + 1
    assert per_node == {"n1": 4, "n2": 4, "n3": 4}
    assert [a.task_id for a in plan] == [f"t{i}" for i in range(12)]  # FIFO


def test_avoided_nodes_get_no_new_work() -> None:
    sm = _machine(6)
    plan = plan_assignments(sm.state, now_ms=10, inflight={}, avoid=frozenset({"n1"}))
    assert {a.node_id for a in plan} == {"n2", "n3"}
    assert len(plan) == 6


def test_inflight_tasks_and_their_slots_are_not_planned_twice() -> None:
    sm = _machine(13)
    inflight = {("r1", f"t{i}"): "n1" for i in range(4)}
    plan = plan_assignments(sm.state, now_ms=10, inflight=inflight)
    assert all(a.task_id not in {f"t{i}" for i in range(4)} for a in plan)
    assert all(a.node_id != "n1" for a in plan)  # n1's 4 slots are taken by the in-flight ones
