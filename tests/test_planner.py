"""The ``planner`` built-in agent against the fake OpenAI-compatible server (a real process),
checked against a real replicated state (the pure state machine), whose ``apply`` then takes
the spawned plan with the planner's completion."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest

from raftmesh.agents import TaskContext, default_registry
from raftmesh.agents._builtin import AgentInputError
from raftmesh.agents._planner import (
    _KEY_HINTS,
    PROMPT_MARKER,
    REJECTED,
    PlanRejected,
    parse_plan,
    planner_agent,
)
from raftmesh.agents._spawn import task_specs
from raftmesh.client._dag import _TASK_KEYS
from raftmesh.consensus import RunStatus, TaskStatus, limits
from raftmesh.consensus.commands import Budget, Complete, Completion
from raftmesh.consensus.members import task_defaults
from raftmesh.consensus.state import ClusterState
from raftmesh.testing import FakeLLM, plan_rules
from tests.test_machine import Cluster, spec

T = TypeVar("T")

GOOD = [
    {"id": "a", "agent": "echo", "input": 1},
    {"id": "b", "agent": "echo", "input": 2},
    {"id": "total", "agent": "sum", "input": {"value": 0}, "deps": ["a", "b"]},
]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeLLM]:
    with FakeLLM() as f:
        yield f


@pytest.fixture(autouse=True)
def endpoint(fake: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "RAFTMESH_LLM_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RAFTMESH_LLM_BASE_URL", fake.base_url)
    monkeypatch.setenv("RAFTMESH_LLM_MODEL", "fake-planner")
    fake.set_script([])


class Replica:
    """The node's read view over a real state (``raftmesh.node.reads``' ``read``)."""

    def __init__(self, c: Cluster) -> None:
        self.c = c

    def read(self, fn: Callable[[ClusterState], T]) -> T:
        return fn(self.c.st)


@pytest.fixture
def c() -> Cluster:
    """Run r1: ``seed`` (SUCCEEDED) -> ``plan`` and ``plan2`` (planners, RUNNING on n1)."""
    cl = Cluster()
    cl.ok(cl.register("n1", agents=("echo", "sum", "llm", "planner")))
    cl.ok(
        cl.submit(
            "r1",
            [spec("seed"), spec("plan", "seed", agent="planner"), spec("plan2", "seed", agent="planner")],
        )
    )
    cl.run_task("r1", "seed", output=5)
    cl.ok(cl.assign(("r1", "plan", "n1"), ("r1", "plan2", "n1")))
    return cl


def ctx_for(c: Cluster, inp: Any, task_id: str = "plan") -> TaskContext:
    t = c.task("r1", task_id)
    log = logging.LoggerAdapter(logging.getLogger("raftmesh.agent.planner"), {})
    upstream = {d: c.task("r1", d).output for d in t.spec.deps}
    return TaskContext(
        "r1",
        task_id,
        t.attempt,
        t.token,
        "n1",
        inp,
        upstream,
        "r1",
        log,
        agents=default_registry(),
        reads=Replica(c),
    )


def plan(ctx: TaskContext) -> Any:
    return asyncio.run(planner_agent(ctx))


def apply_completion(c: Cluster, ctx: TaskContext, output: Any) -> None:
    """Commit the planner's attempt as the host would: its spawn made explicit, then ``apply``."""
    specs = task_specs(ctx.spawns.tasks, 0, task_defaults(c.st, {m["agent"] for m in ctx.spawns.tasks}))
    done = Completion(
        "r1", ctx.task_id, ctx.attempt, ctx.token, output, ctx.usage, specs, ctx.spawns.wait is not False
    )
    c.ok(Complete(c.rid(), c.ts, "n1", (done,)))


def test_a_valid_plan_is_spawned_and_apply_takes_it(c: Cluster, fake: FakeLLM) -> None:
    fake.set_script(plan_rules(GOOD, fenced=True))
    ctx = ctx_for(c, {"goal": "add one and two"})
    out = plan(ctx)
    assert out == {"goal": "add one and two", "plan": ["a", "b", "total"], "repairs": 0}
    assert [m["id"] for m in ctx.spawns.tasks] == ["a", "b", "total"] and ctx.spawns.wait is True
    (req,) = fake.requests()
    system, user, upstream = req["body"]["messages"]
    assert "echo" in system["content"] and "planner" in system["content"]
    assert "seed" in system["content"]  # an id in use, and a succeeded task to depend on
    for key in _KEY_HINTS:  # workflow keys are explained once the spec loader takes them
        assert (f"\n{key}: " in system["content"]) == (key in _TASK_KEYS), key
    assert user["content"] == "Goal: add one and two"
    assert '"seed": 5' in upstream["content"]  # the planner's upstream reaches the model
    apply_completion(c, ctx, out)
    st = c.st.runs["r1"].tasks
    assert st["plan"].status is TaskStatus.WAITING_CHILDREN
    assert {st[i].parent for i in ("a", "b", "total")} == {"plan"}


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (
            [{"id": "x", "agent": "echo", "deps": ["y"]}, {"id": "y", "agent": "echo", "deps": ["x"]}],
            "cycle",
        ),
        ([{"id": "x", "agent": "translate"}], "unknown agent type(s) 'translate'"),
        ([{"id": "x", "agent": "echo"}, {"id": "x", "agent": "sum"}], "'x' is used twice"),
        ([{"id": "seed", "agent": "echo"}], "'seed' is already a task of run"),
        ([{"id": "x", "agent": "echo", "deps": ["nowhere"]}], "depends on 'nowhere'"),
        ("I would first fetch the data, then sum it.", "no JSON"),
        ({"steps": []}, 'JSON list of tasks, or {"tasks": [...]}'),
        ([{"id": "x", "agent": "echo", "retries": -1}], "retries must be between 0 and"),
        ([{"id": "x", "agent": "echo", "max_parallel": 2**40}], "max_parallel must be between 0 and"),
    ],
)
def test_an_invalid_plan_is_repaired_once(c: Cluster, fake: FakeLLM, bad: Any, error: str) -> None:
    fake.set_script(plan_rules(bad, {"tasks": GOOD}))
    ctx = ctx_for(c, {"goal": "add one and two", "max_repairs": 1})
    out = plan(ctx)
    assert out["repairs"] == 1 and out["plan"] == ["a", "b", "total"]
    _, second = fake.requests()
    assert [m["role"] for m in second["body"]["messages"][-2:]] == ["assistant", "user"]
    repair = second["body"]["messages"][-1]["content"]
    assert repair.startswith(REJECTED) and error in repair, repair
    apply_completion(c, ctx, out)  # the repaired plan is one apply takes


def test_interleaved_conversations_each_get_their_scripted_sequence(c: Cluster, fake: FakeLLM) -> None:
    """``assistant_turns`` keys a reply to the conversation, not to the order requests arrive."""
    bad = [{"id": "x", "agent": "nope"}]
    rules = plan_rules(bad, [{"id": "alpha1", "agent": "echo"}], goal_contains="alpha")
    fake.set_script(rules + plan_rules(bad, [{"id": "beta1", "agent": "echo"}], goal_contains="beta"))
    one, two = ctx_for(c, {"goal": "alpha"}), ctx_for(c, {"goal": "beta"}, task_id="plan2")

    async def both() -> list[Any]:
        return list(await asyncio.gather(planner_agent(one), planner_agent(two)))

    assert asyncio.run(both()) == [
        {"goal": "alpha", "plan": ["alpha1"], "repairs": 1},
        {"goal": "beta", "plan": ["beta1"], "repairs": 1},
    ]
    assert len(fake.requests()) == 4


def test_repairs_exhausted_fail_for_good_with_the_last_error(c: Cluster, fake: FakeLLM) -> None:
    cyclic = [{"id": "x", "agent": "echo", "deps": ["x"]}]
    fake.set_script(plan_rules(cyclic, cyclic, cyclic, [{"id": "x", "agent": "nope"}]))
    ctx = ctx_for(c, {"goal": "loop", "max_repairs": 3})
    with pytest.raises(PlanRejected, match=r"after 3 repair\(s\).*unknown agent type\(s\) 'nope'") as exc:
        plan(ctx)
    assert exc.value.retryable is False
    assert len(fake.requests()) == 4
    assert ctx.spawns.tasks == []


def test_allowed_agents_and_max_tasks_are_the_planners_own_rules(c: Cluster, fake: FakeLLM) -> None:
    fake.set_script(plan_rules(GOOD, GOOD[:1]))
    ctx = ctx_for(c, {"goal": "g", "allowed_agents": ["echo"], "max_repairs": 1})
    assert plan(ctx)["plan"] == ["a"]
    repair = fake.requests()[1]["body"]["messages"][-1]["content"]
    assert "agent type(s) sum may not be used in this plan; use only: echo" in repair
    assert "Agent types you may use: echo." in fake.requests()[0]["body"]["messages"][0]["content"]
    fake.set_script(plan_rules(GOOD, GOOD[:2]))
    ctx = ctx_for(c, {"goal": "g", "max_tasks": 2, "max_repairs": 1})
    assert plan(ctx)["plan"] == ["a", "b"]
    assert "the plan has 3 tasks; at most 2" in fake.requests()[1]["body"]["messages"][-1]["content"]


def test_a_plan_over_the_runs_task_budget_is_repaired(fake: FakeLLM) -> None:
    c = Cluster()
    c.ok(c.register("n1", agents=("echo", "sum", "planner")))
    sub = c.submit("r1", [spec("seed"), spec("plan", "seed", agent="planner")])
    c.ok(dataclasses.replace(sub, budget=Budget(max_tasks=4)))
    c.run_task("r1", "seed", output=5)
    c.ok(c.assign(("r1", "plan", "n1")))
    fake.set_script(plan_rules(GOOD, GOOD[:2]))
    ctx = ctx_for(c, {"goal": "g"})
    assert plan(ctx) == {"goal": "g", "plan": ["a", "b"], "repairs": 1}
    repair = fake.requests()[1]["body"]["messages"][-1]["content"]
    assert "BUDGET_EXCEEDED: max_tasks is 4; the run has 2 tasks and would add 3" in repair
    apply_completion(c, ctx, {})
    assert c.st.runs["r1"].status is RunStatus.RUNNING


def test_the_usage_of_every_model_call_is_reported(c: Cluster, fake: FakeLLM) -> None:
    rules = plan_rules("not a plan", GOOD)
    rules[0]["usage"] = {"prompt_tokens": 100, "completion_tokens": 7}
    rules[1]["usage"] = {"prompt_tokens": 130, "completion_tokens": 40}
    fake.set_script(rules)
    ctx = ctx_for(c, {"goal": "g", "price_per_1m_tokens": {"input": 1.0, "output": 2.0}})
    plan(ctx)
    assert (ctx.usage.tokens_in, ctx.usage.tokens_out) == (230, 47)
    assert ctx.usage.cost == pytest.approx((230 * 1.0 + 47 * 2.0) / 1e6)


def test_usage_is_reported_when_the_plans_stay_invalid(c: Cluster, fake: FakeLLM) -> None:
    rules = plan_rules("no", "still no")
    for r in rules:
        r["usage"] = {"prompt_tokens": 10, "completion_tokens": 1}
    fake.set_script(rules)
    ctx = ctx_for(c, {"goal": "g", "max_repairs": 1})
    with pytest.raises(PlanRejected):
        plan(ctx)
    assert (ctx.usage.tokens_in, ctx.usage.tokens_out) == (20, 2)


def test_a_plan_may_depend_on_the_runs_succeeded_tasks(c: Cluster, fake: FakeLLM) -> None:
    fake.set_script(plan_rules([{"id": "double", "agent": "sum", "deps": ["seed"]}]))
    ctx = ctx_for(c, {"goal": "g", "wait": False})
    assert plan(ctx) == {"goal": "g", "plan": ["double"], "repairs": 0}
    assert ctx.spawns.wait is False
    apply_completion(c, ctx, {"done": True})
    assert c.task("r1", "plan").status is TaskStatus.SUCCEEDED


@pytest.mark.parametrize(
    ("inp", "msg"),
    [
        ("plan it", "input must be a map"),
        ({}, "goal must be a non-empty string"),
        ({"goal": "g", "max_repairs": 99}, "max_repairs must be an integer from 0 to 5"),
        ({"goal": "g", "max_repairs": True}, "max_repairs must be an integer"),
        ({"goal": "g", "allowed_agents": "echo"}, "allowed_agents must be a non-empty list"),
        ({"goal": "g", "max_tasks": 0}, "max_tasks must be an integer from 1"),
        ({"goal": "g", "wait": "yes"}, "wait must be true or false"),
        ({"goal": "g", "prompt": "x"}, "unknown input key(s) ['prompt']"),
        ({"goal": "g", "agent": "planner"}, "not planner itself"),
    ],
)
def test_bad_input_fails_for_good_before_any_model_call(
    c: Cluster, fake: FakeLLM, inp: Any, msg: str
) -> None:
    with pytest.raises(AgentInputError, match="planner: ") as exc:
        plan(ctx_for(c, inp))
    assert msg in str(exc.value) and exc.value.retryable is False
    assert fake.requests() == []


def test_a_named_agent_type_can_be_the_planner_model(c: Cluster, fake: FakeLLM) -> None:
    """``agent`` names an async agent type given the llm input (here a registry agent that asks
    the fake model through ``llm`` with a system prompt of its own)."""
    reg = default_registry()
    seen: list[Any] = []

    @reg.agent("house_model")
    async def house_model(ctx: TaskContext) -> Any:
        seen.append(ctx.input)
        ctx.report_usage(tokens_in=3)
        return {"tasks": GOOD[:1]}

    ctx = ctx_for(c, {"goal": "g", "agent": "house_model", "temperature": 0})
    ctx.agents = reg
    assert plan(ctx)["plan"] == ["a"]
    (inp,) = seen
    assert inp["temperature"] == 0 and inp["messages"][1] == {"role": "user", "content": "Goal: g"}
    assert ctx.usage.tokens_in == 3


def test_a_planner_too_deep_to_spawn_asks_no_model(c: Cluster, fake: FakeLLM) -> None:
    c.st.runs["r1"].tasks["plan"].depth = limits.MAX_SPAWN_DEPTH
    with pytest.raises(PlanRejected, match="spawn depth"):
        plan(ctx_for(c, {"goal": "g"}))
    assert fake.requests() == []


@pytest.mark.parametrize(
    "reply",
    [
        '[{"id": "a", "agent": "echo"}]',
        'Here is the plan:\n```json\n{"tasks": [{"id": "a", "agent": "echo"}]}\n```\nDone.',
        'Sure! {"tasks": [{"id": "a", "agent": "echo"}]} Hope it helps.',
        [{"id": "a", "agent": "echo"}],
    ],
)
def test_parse_plan_tolerates_fences_and_prose(reply: Any) -> None:
    assert [m["id"] for m in parse_plan(reply)] == ["a"]


def test_a_json_response_format_reaches_the_model_and_its_parsed_reply_is_the_plan(
    c: Cluster, fake: FakeLLM
) -> None:
    fake.set_script(plan_rules({"tasks": GOOD}))  # unfenced: what a json_object reply looks like
    ctx = ctx_for(c, {"goal": "g", "response_format": {"type": "json_object"}, "seed": 7})
    assert plan(ctx)["plan"] == ["a", "b", "total"]
    (req,) = fake.requests()
    assert req["body"]["response_format"] == {"type": "json_object"} and req["body"]["seed"] == 7


def test_the_fake_models_plan_rules_answer_by_turn_fenced_or_not(fake: FakeLLM) -> None:
    fake.set_script(
        plan_rules([1], [2], goal_contains="alpha", fenced=True) + plan_rules([3], goal_contains="beta")
    )

    def ask(*roles: str, goal: str = "alpha") -> str:
        msgs = [{"role": "system", "content": PROMPT_MARKER}, {"role": "user", "content": goal}]
        msgs += [{"role": r, "content": "x"} for r in roles]
        body = {"model": "m", "messages": msgs}
        out = httpx.post(fake.base_url + "/chat/completions", json=body, timeout=10).json()
        return str(out["choices"][0]["message"]["content"])

    assert ask("assistant", "user") == "```json\n[\n 2\n]\n```"
    assert ask() == "```json\n[\n 1\n]\n```"
    assert ask() == "```json\n[\n 1\n]\n```"  # keyed by the conversation, not used up
    assert ask(goal="beta") == "[\n 3\n]"
