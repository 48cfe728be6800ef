"""The ``planner`` built-in agent: a goal in, a validated sub-DAG spawned into the run.

Input::

    {"goal": "Summarise the three incident reports, then rank them",
     "model": "gpt-4o-mini", "base_url": "...", ...       # any llm key but prompt/messages
     "agent": "llm",                                       # or an agent type that returns a plan
     "max_repairs": 2, "allowed_agents": ["echo", "sum"], "max_tasks": 20, "wait": true,
     "system": "extra guidance for the model"}

It asks the model (the ``llm`` agent, called in-line with a context derived from the task's,
so its endpoint, key, retry and usage rules are the ``llm`` agent's own; or the async agent
type ``agent`` names, given the same input) for a plan: a JSON list of task specs in a spec
file's shape (``{"tasks": [...]}`` too; a fenced ```json block is fine). The plan is read
by the spec loader and checked with the state machine's own rules for a spawn
(``consensus.spawn.check``: submit's DAG rules against the agent types members offer, ids
new in the run, dependencies on the plan, the planner or tasks that SUCCEEDED, depth and
size limits), the run's ``max_tasks`` budget, ``allowed_agents`` and ``max_tasks``. A plan
that fails is given back to the model with the error, at most ``max_repairs`` times; then
the attempt fails for good with the last error. A valid plan is spawned
(``ctx.spawn(plan, wait=...)``): with ``wait`` (the default) the planner's dependents run
after the plan's tasks have ended.

Output: ``{"goal": ..., "plan": [task ids], "repairs": n}``.

The state read here is the node's local replica (``ctx.reads``): it may be a moment behind,
so the state machine validates the spawned fragment again when the completion is applied,
and a plan that became invalid in between fails the attempt there.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import re
from collections.abc import Collection
from typing import Any

from ..client._dag import _TASK_KEYS
from ..consensus import budgets, limits
from ..consensus import spawn as spawn_rules
from ..consensus.commands import NO_USAGE, TaskSpec
from ..consensus.members import task_defaults
from ..consensus.state import ClusterState, TaskStatus
from ._builtin import AgentInputError
from ._context import TaskContext
from ._llm import _INPUT_KEYS as _LLM_KEYS
from ._llm import _messages, llm_agent
from ._spawn import SpawnError, fragment_maps, task_specs

DEFAULT_MAX_REPAIRS = 2
MAX_REPAIRS = 5
"""Repair rounds at most: each is a model call (and its tokens)."""
MAX_GOAL_CHARS = 16_000
MAX_SYSTEM_CHARS = 16_000
MAX_PLAN_REPLY_CHARS = 64_000
"""A reply quoted back to the model in a repair round (clipped)."""
MAX_LISTED = 64
"""Agent types and task ids named in the prompt; more are counted."""
PROMPT_MARKER = "You are the planner of a raftmesh workflow run."
"""Opens the planner's system prompt (fake-model scripts match on it)."""
REJECTED = "The plan was rejected:"
"""Opens every repair message."""

_OWN_KEYS = frozenset({"goal", "agent", "max_repairs", "allowed_agents", "max_tasks", "wait", "system"})
_PASSED_KEYS = _LLM_KEYS - {"prompt", "system", "messages"}
_BASIC_KEYS = frozenset({"id", "agent", "input", "deps"})
_KEY_HINTS = {
    "when": 'a condition on a dep\'s output, e.g. {"path": "fetch.count", "op": ">", "value": 3}; false skips the task',
    "map": "a dep whose output is a list: the task runs once per item and outputs the list of results",
    "replicas": "run the task N times in parallel and fuse the answers (with fusion: vote|weighted|merge|best|first)",
    "approval": 'a human approves before it runs, e.g. {"prompt": "Deploy?"}',
    "compensate": 'undoes it if the run fails, e.g. {"agent": "echo", "input": {}}',
}
"""What the prompt says of the workflow keys the spec loader takes (named only once it does)."""
_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n(.*?)```", re.S)


class PlanRejected(Exception):
    """The model's plans stayed invalid; the attempt fails for good."""

    retryable = False


class _Invalid(ValueError):
    """One plan's problem, worded for the model (and the task's error if it is the last)."""


def _bad(msg: str) -> AgentInputError:
    return AgentInputError(f"planner: {msg}")


@dataclasses.dataclass(frozen=True)
class _Options:
    goal: str
    agent: str
    max_repairs: int
    allowed: frozenset[str] | None
    max_tasks: int
    wait: bool
    system: str
    passed: dict[str, Any]


def _options(inp: Any) -> _Options:
    if not isinstance(inp, dict):
        raise _bad('input must be a map like {"goal": "...", "model": "..."}')
    unknown = sorted(set(inp) - _OWN_KEYS - _PASSED_KEYS)
    if unknown:
        raise _bad(f"unknown input key(s) {unknown}; known: {sorted(_OWN_KEYS | _PASSED_KEYS)}")
    goal = inp.get("goal")
    if not isinstance(goal, str) or not goal.strip() or len(goal) > MAX_GOAL_CHARS:
        raise _bad(f"goal must be a non-empty string of at most {MAX_GOAL_CHARS} characters")
    agent = inp.get("agent", "llm")
    if not isinstance(agent, str) or limits.id_error("agent", agent) or agent == "planner":
        raise _bad("agent must name an agent type that returns a plan (not planner itself)")
    repairs = inp.get("max_repairs", DEFAULT_MAX_REPAIRS)
    if not _is_int(repairs) or not 0 <= repairs <= MAX_REPAIRS:
        raise _bad(f"max_repairs must be an integer from 0 to {MAX_REPAIRS}")
    allowed = inp.get("allowed_agents")
    if allowed is not None and (
        not isinstance(allowed, list)
        or not allowed
        or len(allowed) > limits.MAX_AGENT_TYPES_PER_NODE
        or not all(isinstance(a, str) for a in allowed)
    ):
        raise _bad(
            f"allowed_agents must be a non-empty list of at most {limits.MAX_AGENT_TYPES_PER_NODE} agent types"
        )
    max_tasks = inp.get("max_tasks", limits.MAX_SPAWN_TASKS)
    if not _is_int(max_tasks) or not 1 <= max_tasks <= limits.MAX_SPAWN_TASKS:
        raise _bad(f"max_tasks must be an integer from 1 to {limits.MAX_SPAWN_TASKS}")
    wait = inp.get("wait", True)
    if not isinstance(wait, bool):
        raise _bad("wait must be true or false")
    system = inp.get("system", "")
    if not isinstance(system, str) or len(system) > MAX_SYSTEM_CHARS:
        raise _bad(f"system must be a string of at most {MAX_SYSTEM_CHARS} characters")
    return _Options(
        goal,
        agent,
        repairs,
        None if allowed is None else frozenset(allowed),
        max_tasks,
        wait,
        system,
        {k: v for k, v in inp.items() if k in _PASSED_KEYS},
    )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# ---- what a plan is checked against -----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunView:
    """What the model is told about the run (the node's replica when the planner starts)."""

    agents: tuple[str, ...]
    """Agent types a plan may use: offered by a member, and allowed."""
    used: tuple[str, ...]
    """Task ids of the run."""
    succeeded: tuple[str, ...]
    """Tasks of the run a planned task may depend on besides the planner (they SUCCEEDED)."""
    depth: int
    """The planner task's spawn depth."""


def run_view(st: ClusterState, run_id: str, task_id: str, allowed: Collection[str] | None) -> RunView:
    """The run ``run_id`` as its planner task ``task_id`` describes it to the model."""
    run = st.runs.get(run_id)
    tasks = run.tasks if run is not None else {}
    me = tasks.get(task_id)
    return RunView(
        tuple(sorted(a for a in st.offered_capabilities() if allowed is None or a in allowed)),
        tuple(tasks),
        tuple(tid for tid, t in tasks.items() if t.status is TaskStatus.SUCCEEDED),
        me.depth if me is not None else 0,
    )


def spec_defaults(st: ClusterState, run_id: str, agents: Collection[str]) -> tuple[int, dict[str, Any]]:
    """The run's priority and the agent types' offers a plan's unset keys take (as the host's)."""
    run = st.runs.get(run_id)
    return (run.priority if run is not None else 0), task_defaults(st, agents)


def plan_specs(maps: list[dict[str, Any]], priority: int, defaults: dict[str, Any]) -> tuple[TaskSpec, ...]:
    """The plan as the state machine would take it from ``ctx.spawn``: the submit conversion,
    the run's priority, the agent types' default retries/timeout where the plan sets none."""
    try:
        return task_specs(maps, priority, defaults)
    except SpawnError as exc:
        raise _Invalid(str(exc)) from None


def check_plan(
    st: ClusterState,
    run_id: str,
    task_id: str,
    specs: tuple[TaskSpec, ...],
    allowed: Collection[str] | None,
    max_tasks: int,
) -> None:
    """Raise ``_Invalid`` unless the planner task ``task_id`` may spawn ``specs`` into its run now.

    The rules are the state machine's for a spawn (``consensus.spawn.check``: submit's DAG rules
    against the agent types members offer, ids new in the run, dependencies on the plan, the
    planner or succeeded tasks, depth and size limits), the run's ``max_tasks`` budget, and the
    planner's own ``allowed_agents`` and ``max_tasks``."""
    if len(specs) > max_tasks:
        raise _Invalid(f"the plan has {len(specs)} tasks; at most {max_tasks} are allowed")
    if allowed is not None:
        banned = sorted({t.agent for t in specs} - set(allowed))
        if banned:
            raise _Invalid(
                f"agent type(s) {_names(banned)} may not be used in this plan; use only: {_names(allowed)}"
            )
    run = st.runs.get(run_id)
    me = run.tasks.get(task_id) if run is not None else None
    if run is None or me is None:
        raise PlanRejected(f"planner: task {task_id!r} of run {run_id!r} is not in this node's state")
    why = spawn_rules.check(st, run, me, specs, spawn_rules.Claims()) or budgets.tasks_over(run, len(specs))
    if why:
        raise _Invalid(why)


def _names(items: Collection[str]) -> str:
    shown = sorted(items)[:MAX_LISTED]
    more = f" and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
    return ", ".join(shown) + more


# ---- reading a reply -----------------------------------------------------------------------


def parse_plan(reply: Any) -> list[dict[str, Any]]:
    """The task spec maps of a reply: a JSON list or ``{"tasks": [...]}``, given as a value or as
    text (a fenced ```json block, else the whole text, else the first JSON value in it), after
    the spec loader's checks (``DAG.from_dict``: keys, types, ids unique, as a YAML file's)."""
    value = _json_of(reply) if isinstance(reply, str) else reply
    tasks = value.get("tasks") if isinstance(value, dict) else value
    if not isinstance(tasks, list):
        raise _Invalid('the plan must be a JSON list of tasks, or {"tasks": [...]}')
    if not tasks:
        raise _Invalid("the plan has no tasks")
    try:
        return fragment_maps(tasks)
    except SpawnError as exc:
        raise _Invalid(str(exc).replace("ctx.spawn", "the plan")) from None


def _json_of(text: str) -> Any:
    for candidate in [m.group(1) for m in _FENCE.finditer(text)] + [text]:
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    starts = [i for i in (text.find("["), text.find("{")) if i >= 0]
    if not starts:
        raise _Invalid("the reply holds no JSON")
    try:
        return json.JSONDecoder().raw_decode(text, min(starts))[0]
    except ValueError as exc:
        raise _Invalid(f"the reply is not valid JSON ({exc})") from None


def _reply_text(reply: Any) -> str:
    text = reply if isinstance(reply, str) else json.dumps(reply, default=str)
    if len(text) > MAX_PLAN_REPLY_CHARS:
        text = text[:MAX_PLAN_REPLY_CHARS] + f"…({len(text) - MAX_PLAN_REPLY_CHARS} more characters)"
    return text


# ---- the conversation ------------------------------------------------------------------------


def system_prompt(opt: _Options, view: RunView) -> str:
    lines = [
        f"{PROMPT_MARKER} Decompose the goal into tasks that agents of the cluster run, and "
        "answer with the plan as JSON only, in this shape:",
        '{"tasks": [{"id": "fetch", "agent": "echo", "input": {"x": 1}, "deps": []}, '
        '{"id": "total", "agent": "sum", "input": {"value": 0}, "deps": ["fetch"]}]}',
        "A task receives the outputs of its deps. Task ids are unique, use letters, digits and _ . : - "
        f"(at most {limits.MAX_ID_CHARS} characters), and the plan has no cycle. Optional task keys "
        f"(as in a raftmesh DAG file): {', '.join(sorted(_TASK_KEYS - _BASIC_KEYS))}.",
        f"Agent types you may use: {_names(view.agents) or 'none'}.",
        f"Task ids already in the run (do not reuse them): {_names(view.used) or 'none'}.",
        "A task may also depend on these tasks of the run, which succeeded (it receives their "
        f"outputs): {_names(view.succeeded) or 'none'}.",
        f"At most {opt.max_tasks} tasks.",
    ]
    lines += [f"{k}: {hint}." for k, hint in _KEY_HINTS.items() if k in _TASK_KEYS]
    if opt.system:
        lines.append(opt.system)
    return "\n".join(lines)


def repair_message(error: str) -> str:
    return f"{REJECTED} {error}\nReply with the whole corrected plan, as JSON only."


async def _ask(ctx: TaskContext, opt: _Options, msgs: list[dict[str, Any]]) -> Any:
    """One call of the plan agent with the conversation so far (the ``llm`` agent's input); the
    usage it reports counts for the planner's attempt, also when the call fails."""
    inp = opt.passed | {"messages": list(msgs), "include_upstream": False}
    sub = dataclasses.replace(ctx, input=inp, usage=NO_USAGE)
    try:
        if opt.agent == "llm":
            return await llm_agent(sub)
        adef = ctx.agents.get(opt.agent) if ctx.agents is not None else None
        if adef is None or not inspect.iscoroutinefunction(adef.fn) or adef.isolation == "process":
            raise _bad(
                f"agent {opt.agent!r} must be an async agent type of node {ctx.node_id} "
                "(the planner calls it in-line, as the llm agent calls a tool)"
            )
        return await adef.fn(sub)
    finally:
        u = sub.usage
        ctx.report_usage(tokens_in=u.tokens_in, tokens_out=u.tokens_out, cost=u.cost)


async def planner_agent(ctx: TaskContext) -> Any:
    opt = _options(ctx.input)
    reads = ctx.reads
    if reads is None:
        raise _bad("needs the node's state: it runs in the async isolation mode only")
    run_id, task_id = ctx.run_id, ctx.task_id
    view = reads.read(functools.partial(run_view, run_id=run_id, task_id=task_id, allowed=opt.allowed))
    if view.depth + 1 > limits.MAX_SPAWN_DEPTH:  # no plan could be spawned: spare the model calls
        raise PlanRejected(
            f"planner: task {task_id!r} is at spawn depth {view.depth}; spawned tasks nest at most "
            f"{limits.MAX_SPAWN_DEPTH} levels deep"
        )
    # The upstream outputs go in once, after the goal (the llm agent's own wording), so that a
    # repair message is the last thing the model reads.
    first = {"system": system_prompt(opt, view), "prompt": f"Goal: {opt.goal}"}
    msgs = _messages(first | {"include_upstream": opt.passed.get("include_upstream", True)}, ctx.upstream)
    error = ""
    for repairs in range(opt.max_repairs + 1):
        reply = await _ask(ctx, opt, msgs)
        try:
            maps = parse_plan(reply)
            agents = {str(m["agent"]) for m in maps}
            specs = plan_specs(
                maps, *reads.read(functools.partial(spec_defaults, run_id=run_id, agents=agents))
            )
            reads.read(
                functools.partial(
                    check_plan,
                    run_id=run_id,
                    task_id=task_id,
                    specs=specs,
                    allowed=opt.allowed,
                    max_tasks=opt.max_tasks,
                )
            )
            ids = ctx.spawn(maps, wait=opt.wait)
        except (_Invalid, SpawnError) as exc:
            error = str(exc)
            ctx.logger.info("planner: plan %d rejected: %s", repairs + 1, error[:200])
            msgs += [
                {"role": "assistant", "content": _reply_text(reply)},
                {"role": "user", "content": repair_message(error)},
            ]
            continue
        return {"goal": opt.goal, "plan": ids, "repairs": repairs}
    raise PlanRejected(
        f"planner: no valid plan after {opt.max_repairs} repair(s); the last was rejected: {error}"[
            : limits.MAX_ERROR_CHARS
        ]
    )
