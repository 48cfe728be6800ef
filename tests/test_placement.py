"""Placement is pure: READY tasks to least-loaded up members offering the agent, never to avoided ones."""

from __future__ import annotations

import pytest

from raftmesh.agents import AgentRegistry
from raftmesh.consensus import Code, Result, limits
from raftmesh.consensus.commands import (
    AgentOffer,
    Assign,
    Assignment,
    Fail,
    Failure,
    LockAcquire,
    NodeDown,
    RegisterNode,
    SubmitRun,
    TaskSpec,
)
from raftmesh.consensus.machine import StateMachine
from raftmesh.consensus.members import task_defaults
from raftmesh.consensus.placement import (
    eligible_nodes,
    format_ms,
    plan_assignments,
    serves,
    waiting_reason,
    waiting_reasons,
)
from raftmesh.consensus.results import AssignResult
from raftmesh.errors import InvalidArgument
from raftmesh.node.runtime import agent_offers


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


# ---- capabilities, concurrency, reasons -------------------------------------------

T = 1_000_000


def _offers_machine() -> StateMachine:
    """n1: work with [gpu, fp16]; n2: work with [cpu], concurrency 1; n3: echo only."""
    sm = StateMachine()
    regs = {
        "n1": (AgentOffer("work", ("fp16", "gpu")),),
        "n2": (AgentOffer("work", ("cpu",), concurrency=1),),
        "n3": (AgentOffer("echo"),),
    }
    for n, offers in regs.items():
        res, _ = sm.apply(
            RegisterNode(f"reg-{n}", T, n, "g", f"r{n}", tuple(o.name for o in offers), 4, "i", offers)
        )
        assert res.ok, res
    return sm


def _submit(sm: StateMachine, run_id: str, *tasks: TaskSpec) -> Result:
    res, _ = sm.apply(SubmitRun(f"s-{run_id}", T, run_id, "", tasks, 0, run_id, "t"))
    return res


def test_a_task_goes_only_to_a_node_whose_offer_has_every_required_capability() -> None:
    sm = _offers_machine()
    tasks = [TaskSpec(f"g{i}", "work", requires=("gpu",)) for i in range(6)]
    assert _submit(sm, "r1", *tasks, TaskSpec("any", "work")).ok
    plan = plan_assignments(sm.state, T, {})
    on = {a.task_id: a.node_id for a in plan}
    assert {on[f"g{i}"] for i in range(4)} == {"n1"}  # n1's four slots; n2 lacks gpu
    assert "g4" not in on and "g5" not in on
    assert on["any"] == "n2"  # no requirement: n2 (concurrency 1) takes it
    # apply enforces the same rule on a plan that ignores it
    bad, _ = sm.apply(Assign("a1", T, (Assignment("r1", "g4", "n2", 1),)))
    assert bad.code is Code.FAILED_PRECONDITION and "without capabilities [gpu]" in bad.message
    wrong_type, _ = sm.apply(Assign("a2", T, (Assignment("r1", "g4", "n3", 1),)))
    assert "does not offer agent 'work'" in wrong_type.message


def test_per_agent_concurrency_limits_one_type_on_one_node() -> None:
    sm = _offers_machine()
    assert _submit(sm, "r1", *(TaskSpec(f"c{i}", "work", requires=("cpu",)) for i in range(3))).ok
    plan = plan_assignments(sm.state, T, {})
    assert [(a.task_id, a.node_id) for a in plan] == [("c0", "n2")]
    res, _ = sm.apply(Assign("a1", T, tuple(Assignment("r1", f"c{i}", "n2", 1) for i in range(2))))
    assert isinstance(res, AssignResult) and res.accepted == 1
    assert "concurrency" in res.rejected[0].reason
    assert sm.state.running_agent == {("n2", "work"): 1}
    assert plan_assignments(sm.state, T, {}) == []  # full until c0 ends
    assert plan_assignments(sm.state, T, {("r1", "c1"): "n2"}) == []


def test_least_loaded_wins_and_ties_go_to_the_lowest_node_id() -> None:
    sm = StateMachine()
    for n, slots in (("n3", 4), ("n1", 4), ("n2", 2)):
        offers = (AgentOffer("w"),)
        sm.apply(RegisterNode(f"reg-{n}", T, n, "g", f"r{n}", ("w",), slots, "i", offers))
    assert _submit(sm, "r1", TaskSpec("a", "w"), TaskSpec("b", "w"), TaskSpec("c", "w")).ok
    plan = plan_assignments(sm.state, T, {})
    # all idle: a -> n1 (lowest id); then n2 and n3 tie at 0 -> n2; then n3 (0/4 < 1/4, 1/2)
    assert [a.node_id for a in plan] == ["n1", "n2", "n3"]
    assert serves(sm.state, "n1", TaskSpec("x", "w"), T)
    assert not serves(sm.state, "n1", TaskSpec("x", "w", requires=("gpu",)), T)
    assert eligible_nodes(sm.state, TaskSpec("x", "w"), T, avoid=frozenset({"n2"})) == ["n1", "n3"]


def test_submit_refuses_a_requirement_no_member_ever_offered() -> None:
    sm = _offers_machine()
    res = _submit(sm, "r1", TaskSpec("t", "work", requires=("gpu", "tpu")))
    assert res.code is Code.INVALID_ARGUMENT
    assert "no member has ever offered 'work' with all of them" in res.message
    assert "[cpu]; [fp16, gpu]" in res.message  # what is offered, so the user can fix it
    # a member that is down still counts: its offer was made
    sm.apply(NodeDown("d1", T, "n1", "i", "gone"))
    assert _submit(sm, "r2", TaskSpec("t", "work", requires=("gpu",))).ok
    bad_cap = _submit(sm, "r3", TaskSpec("t", "work", requires=("no spaces",)))
    assert bad_cap.code is Code.INVALID_ARGUMENT and "capability" in bad_cap.message
    many = tuple(f"c{i}" for i in range(limits.MAX_CAPABILITIES + 1))
    assert _submit(sm, "r4", TaskSpec("t", "work", requires=many)).code is Code.INVALID_ARGUMENT


def test_waiting_reasons_say_why_a_ready_task_is_not_placed() -> None:
    sm = _offers_machine()
    st = sm.state
    assert _submit(
        sm, "r1", TaskSpec("gpu", "work", requires=("gpu",)), TaskSpec("cpu", "work", requires=("cpu",))
    ).ok
    assert waiting_reasons(st, "r1", ["gpu", "cpu"], T) == {}  # both placeable now
    sm.apply(NodeDown("d1", T, "n1", "i", "gone"))
    assert waiting_reasons(st, "r1", ["gpu"], T) == {
        "gpu": "no live node offers agent 'work' with capabilities [gpu]"
    }
    sm.apply(Assign("a1", T, (Assignment("r1", "cpu", "n2", 1),)))
    assert _submit(sm, "r2", TaskSpec("cpu2", "work", requires=("cpu",))).ok
    t = st.task("r2", "cpu2")
    assert t is not None
    assert waiting_reason(st, "r2", t, T).startswith("every eligible node is busy")
    # n2 restarts with a threshold of 1; one failure opens its breaker for 'work'
    offers = (AgentOffer("work", ("cpu",), breaker_failures=1, breaker_cooldown_ms=60_000),)
    sm.apply(RegisterNode("reg-n2b", T, "n2", "g", "rn2", ("work",), 4, "i2", offers))
    sm.apply(Assign("a2", T, (Assignment("r2", "cpu2", "n2", 1),)))
    t = st.task("r2", "cpu2")
    assert t is not None
    sm.apply(Fail("f1", T + 5, "n2", (Failure("r2", "cpu2", t.attempt, t.token, "x", retryable=True),)))
    assert st.members["n2"].breakers["work"].open_until_ms == T + 5 + 60_000
    assert _submit(sm, "r3", TaskSpec("c", "work", requires=("cpu",))).ok
    t3 = st.task("r3", "c")
    assert t3 is not None
    assert waiting_reason(st, "r3", t3, T + 10) == (
        "breaker open for 'work' on every node offering it (next probe at 1970-01-01T00:17:40.005Z)"
    )
    assert waiting_reason(st, "r3", t3, T + 60_005) == ""  # half-open: a probe may go
    assert format_ms(1_764_601_967_123) == "2025-12-01T15:12:47.123Z"


def test_waiting_reasons_for_backoff_and_locks() -> None:
    sm = _offers_machine()
    st = sm.state
    spec = TaskSpec("t", "work", retries=2, retry_backoff_ms=1000)
    assert _submit(sm, "r1", spec, TaskSpec("l", "echo", locks=(("db", "exclusive"),))).ok
    sm.apply(Assign("a1", T, (Assignment("r1", "t", "n1", 1),)))
    t = st.task("r1", "t")
    assert t is not None
    sm.apply(Fail("f1", T, "n1", (Failure("r1", "t", t.attempt, t.token, "x"),)))
    why = waiting_reason(st, "r1", t, T)
    assert why.startswith("retry backoff until 1970-01-01T00:16:4"), why
    sm.apply(LockAcquire("l1", T, owner="someone", items=(("db", "exclusive"),), ttl_ms=60_000))
    lt = st.task("r1", "l")
    assert lt is not None
    assert waiting_reason(st, "r1", lt, T) == "waiting for locks 'db'"


def test_task_defaults_come_from_the_lowest_up_node_offering_the_type() -> None:
    sm = StateMachine()
    regs = (("n2", 7, 300), ("n1", 3, 100), ("n3", 9, 900))
    for n, retries, timeout in regs:
        offers = (AgentOffer("w", retries=retries, timeout_ms=timeout),)
        sm.apply(RegisterNode(f"reg-{n}", T, n, "g", f"r{n}", ("w",), 4, "i", offers))
    assert task_defaults(sm.state, ["w", "unknown"]) == {"w": AgentOffer("w", retries=3, timeout_ms=100)}
    sm.apply(NodeDown("d1", T, "n1", "i", "gone"))
    assert task_defaults(sm.state, ["w"])["w"].retries == 7
    for n in ("n2", "n3"):
        sm.apply(NodeDown(f"d-{n}", T, n, "i", "gone"))
    assert task_defaults(sm.state, ["w"])["w"].retries == 3  # none up: the lowest id of all


def test_a_node_offers_what_its_registry_defines_and_refuses_to_start_with_a_bad_agent() -> None:
    async def fn(ctx: object) -> None:
        return None

    reg = AgentRegistry()
    reg.register("work", fn, capabilities=["gpu", "cpu"], concurrency=2, retries=3, breaker_failures=0)
    reg.register("echo", fn)
    assert agent_offers(reg) == (
        AgentOffer("echo"),
        AgentOffer("work", ("cpu", "gpu"), concurrency=2, breaker_failures=0, retries=3),
    )
    reg.register("bad", fn, capabilities=["has space"])
    with pytest.raises(InvalidArgument, match="agent 'bad' cannot be offered: agent 'bad': capability"):
        agent_offers(reg)
