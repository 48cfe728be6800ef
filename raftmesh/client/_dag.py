"""Building a DAG in Python, or loading one from a YAML/JSON file."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidArgument

_TASK_KEYS = {
    "id",
    "agent",
    "input",
    "deps",
    "retries",
    "priority",
    "timeout_ms",
    "retry_backoff_ms",
    "locks",
    "requires",
    *("replicas", "fusion", "quorum", "weights", "agents", "judge"),
    "compensate",
    "approval",
    "when",
    "trigger",
    "map",
    "max_parallel",
}
_APPROVAL_KEYS = {"prompt", "timeout_ms", "on_timeout"}
_RUN_KEYS = ("name", "priority", "budget", "tasks")

UINT32 = (0, 2**32 - 1)
UINT64 = (0, 2**64 - 1)
INT32 = (-(2**31), 2**31 - 1)
"""The wire types of a task's integer keys (cluster.proto): a value outside fails at submit."""


def whole(who: str, key: str, value: Any, bounds: tuple[int, int]) -> int:
    """``value`` if it is an integer within ``bounds``, else InvalidArgument naming ``who`` and ``key``.

    Checked where a task is built, so submit, the CLI and ``ctx.spawn`` refuse it at the call
    instead of the protobuf conversion raising a bare ValueError later.
    """
    lo, hi = bounds
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{who}: {key} must be a whole number, not {value!r}")
    if not lo <= value <= hi:
        floor = "0" if lo == 0 else str(lo)
        raise InvalidArgument(f"{who}: {key} must be between {floor} and {hi}, not {value}")
    return value


def _approval(task_id: str, value: Any) -> dict[str, Any] | None:
    """An ``approval`` as the builder keeps it: ``{prompt, timeout_ms, on_timeout}`` (None: no gate)."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - _APPROVAL_KEYS:
        raise InvalidArgument(
            f"task {task_id!r}: approval must be a map with keys among {sorted(_APPROVAL_KEYS)}, "
            'e.g. {"prompt": "Deploy?", "timeout_ms": 3600000, "on_timeout": "reject"}'
        )
    prompt, timeout_ms = value.get("prompt", ""), value.get("timeout_ms", 0)
    on_timeout = value.get("on_timeout", "reject")
    if not isinstance(prompt, str) or not isinstance(on_timeout, str):
        raise InvalidArgument(f"task {task_id!r}: approval prompt and on_timeout must be strings")
    if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int) or not 0 <= timeout_ms <= UINT64[1]:
        raise InvalidArgument(
            f"task {task_id!r}: approval timeout_ms must be an integer >= 0 (0: wait for ever)"
        )
    return {"prompt": prompt, "timeout_ms": timeout_ms, "on_timeout": on_timeout}


BUDGET_KEYS = ("max_tasks", "max_seconds", "max_cost", "max_tokens")
"""A run budget's figures (0 or absent: no limit); tasks and tokens are whole numbers."""


def check_budget(budget: Any, source: str = "budget") -> dict[str, float] | None:
    """``budget`` as a map of its figures (None: no budget), or InvalidArgument saying what to fix.

    The cluster checks the bounds; this checks the shape, so a typo is not silently no limit.
    """
    if budget is None:
        return None
    if not isinstance(budget, dict):
        raise InvalidArgument(f"{source} must be a map with any of {', '.join(BUDGET_KEYS)}")
    unknown = sorted(set(budget) - set(BUDGET_KEYS))
    if unknown:
        raise InvalidArgument(f"{source} has unknown key(s) {unknown}; known: {list(BUDGET_KEYS)}")
    out: dict[str, float] = {}
    for k, v in budget.items():
        whole = k in ("max_tasks", "max_tokens")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (whole and not float(v).is_integer()):
            kind = "a whole number" if whole else "a number"
            raise InvalidArgument(f"{source}: {k} must be {kind} >= 0 (0: no limit), not {v!r}")
        if not v >= 0:
            raise InvalidArgument(f"{source}: {k} must be >= 0 (0: no limit), not {v!r}")
        out[k] = int(v) if whole else float(v)
    return out


def check_compensate(value: Any, task_id: str) -> dict[str, Any] | None:
    """A task's ``compensate`` step as ``{"agent": TYPE, "input": ...}`` (None: none)."""
    if value is None:
        return None
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("agent"), str)
        or set(value) - {"agent", "input"}
    ):
        raise InvalidArgument(
            f"task {task_id!r}: compensate must be a map {{agent: TYPE, input: ...}} (input optional)"
        )
    return {"agent": value["agent"], "input": value.get("input")}


@dataclass(frozen=True)
class Task:
    """A task of a DAG under construction; pass it in another task's ``deps``."""

    id: str
    agent: str
    input: Any = None
    deps: tuple[str, ...] = ()
    retries: int | None = None
    """None: the agent type's default (``retries=`` of its registration), else 0."""
    priority: int = 0
    timeout_ms: int | None = None
    """None: the agent type's default; 0: no timeout."""
    retry_backoff_ms: int = 0
    locks: tuple[tuple[str, str], ...] = ()
    """(name, "exclusive" | "shared"): held while an attempt runs, acquired all at once."""
    requires: tuple[str, ...] = ()
    """Capabilities the node's agent must offer (``placement``)."""
    replicas: int = 0
    """Run the task this many times in parallel and fuse the answers (0: once)."""
    fusion: str = ""
    """vote | weighted | merge | best | first (required with ``replicas``)."""
    quorum: int = 0
    """Successful replicas that decide (0: a majority; first: 1)."""
    weights: tuple[float, ...] = ()
    """weighted: one weight per replica."""
    agents: tuple[str, ...] = ()
    """Agent types the replicas use in turn (replica i: ``agents[i % len(agents)]``)."""
    judge: str = ""
    """best: the agent type that scores the candidates."""
    approval: dict[str, Any] | None = None
    """``{prompt, timeout_ms, on_timeout}``: the task waits in WAITING_APPROVAL until decided."""
    when: Any = None
    """A condition on upstream outputs, e.g. ``{"path": "fetch.count", "op": ">", "value": 3}``;
    false: the task is SKIPPED."""
    trigger: str = ""
    """"" (all deps succeeded), "any_succeeded" or "all_done": whether skipped deps let it run."""
    map: str = ""
    """An upstream task id: one instance per item of its output list (``ctx.item``)."""
    max_parallel: int = 0
    """Map instances running at once (0: no bound)."""
    compensate: dict[str, Any] | None = None
    """Saga step ``{"agent": TYPE, "input": ...}``: undoes this task if it succeeded and the run
    fails or is cancelled (README "Sagas and budgets")."""

    def to_dict(self) -> dict[str, Any]:
        replicated = (
            {
                "replicas": self.replicas,
                "fusion": self.fusion,
                "quorum": self.quorum,
                "weights": list(self.weights),
                "agents": list(self.agents),
                "judge": self.judge,
            }
            # any one set: all go, so the cluster judges the combination (a quorum without
            # replicas is refused at submit and by ctx.spawn alike, never dropped)
            if any((self.replicas, self.fusion, self.quorum, self.weights, self.agents, self.judge))
            else {}
        )
        extra: dict[str, Any] = {"compensate": self.compensate} if self.compensate is not None else {}
        gated = {"approval": dict(self.approval)} if self.approval is not None else {}
        # a falsy condition (False, {}, 0) is still a condition: only None means none
        flow: dict[str, Any] = {"when": self.when} if self.when is not None else {}
        flow |= {
            k: v
            for k, v in (
                ("trigger", self.trigger),
                ("map", self.map),
                ("max_parallel", self.max_parallel),
            )
            if v
        }
        return (
            gated
            | replicated
            | extra
            | flow
            | {
                "requires": list(self.requires),
                "locks": [list(lk) for lk in self.locks],
                "id": self.id,
                "agent": self.agent,
                "input": self.input,
                "deps": list(self.deps),
                "retries": self.retries,
                "priority": self.priority,
                "timeout_ms": self.timeout_ms,
                "retry_backoff_ms": self.retry_backoff_ms,
            }
        )


@dataclass
class DAG:
    """A run to submit: tasks and their dependencies.

    >>> dag = DAG("demo")
    >>> a = dag.task("a", "echo", input=1)
    >>> b = dag.task("b", "sum", deps=[a])
    """

    name: str = ""
    priority: int = 0
    tasks: dict[str, Task] = field(default_factory=dict)
    budget: dict[str, float] | None = None
    """Run budget: any of ``max_tasks``, ``max_seconds``, ``max_cost``, ``max_tokens`` (0: no limit)."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise InvalidArgument(f"the run's name must be a string, not {self.name!r}")
        whole("the run", "priority", self.priority, INT32)
        self.budget = check_budget(self.budget)

    def task(
        self,
        id: str,
        agent: str,
        input: Any = None,
        deps: Sequence[Task | str] = (),
        retries: int | None = None,
        priority: int = 0,
        timeout_ms: int | None = None,
        retry_backoff_ms: int = 0,
        locks: Sequence[str | tuple[str, str]] = (),
        requires: Sequence[str] = (),
        *,
        replicas: int = 0,
        fusion: str = "",
        quorum: int = 0,
        weights: Sequence[float] = (),
        agents: Sequence[str] = (),
        judge: str = "",
        compensate: dict[str, Any] | None = None,
        approval: dict[str, Any] | None = None,
        when: Any = None,
        trigger: str = "",
        map: Task | str | None = None,
        max_parallel: int = 0,
    ) -> Task:
        """Add a task. ``retries``/``timeout_ms`` left None take the agent type's defaults.

        ``replicas=N, fusion=...``: N replicas compete and their answers are fused (README
        "Competing replicas"); the cluster validates the combination at submit.

        ``approval={"prompt": ..., "timeout_ms": 0, "on_timeout": "reject"}`` gates the task: it
        waits in WAITING_APPROVAL until ``Client.approve`` (or its timeout) decides.
        ``when``: a condition on upstream outputs (false: SKIPPED); ``trigger``: "any_succeeded"
        or "all_done" to run although some deps were skipped; ``map``: an upstream task whose
        output list the task maps over (added to ``deps`` if missing), ``max_parallel`` instances
        at once (0: no bound).
        """
        if not isinstance(id, str) or not isinstance(agent, str):
            raise InvalidArgument(f"task {id!r}: id and agent must be strings")
        if id in self.tasks:
            raise InvalidArgument(f"task id {id!r} is used twice; task ids must be unique in a run")
        _check_keys(
            f"task {id!r}",
            deps=deps,
            retries=retries,
            priority=priority,
            timeout_ms=timeout_ms,
            retry_backoff_ms=retry_backoff_ms,
            replicas=replicas,
            fusion=fusion,
            quorum=quorum,
            weights=weights,
            agents=agents,
            judge=judge,
            trigger=trigger,
            map=map,
            max_parallel=max_parallel,
        )
        dep_ids = tuple(d.id if isinstance(d, Task) else d for d in deps)
        map_id = map.id if isinstance(map, Task) else (map or "")
        if map_id and map_id not in dep_ids:
            dep_ids += (map_id,)
        lock_items = tuple(
            (lk, "exclusive") if isinstance(lk, str) else (str(lk[0]), str(lk[1])) for lk in locks
        )
        if isinstance(requires, str):
            raise InvalidArgument(f"task {id!r}: requires must be a list of capabilities, not a string")
        if isinstance(agents, str):
            raise InvalidArgument(f"task {id!r}: agents must be a list of agent types, not a string")
        t = Task(
            id,
            agent,
            input,
            dep_ids,
            retries,
            priority,
            timeout_ms,
            retry_backoff_ms,
            lock_items,
            tuple(str(c) for c in requires),
            replicas,
            fusion,
            quorum,
            tuple(float(w) for w in weights),
            tuple(agents),
            judge,
            when=when,
            trigger=trigger,
            map=map_id,
            max_parallel=max_parallel,
            compensate=check_compensate(compensate, id),
            approval=_approval(id, approval),
        )
        self.tasks[id] = t
        return t

    def to_dict(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"budget": self.budget} if self.budget is not None else {}
        return extra | {
            "name": self.name,
            "priority": self.priority,
            "tasks": [t.to_dict() for t in self.tasks.values()],
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "the DAG") -> DAG:
        if not isinstance(data, dict) or not isinstance(data.get("tasks"), list):
            raise InvalidArgument(f"{source} must be a map with a list under 'tasks'")
        unknown_keys = sorted(str(k) for k in set(data) - set(_RUN_KEYS))
        if unknown_keys:  # e.g. max_cost beside tasks: a budget the run would silently not have
            raise InvalidArgument(
                f"{source} has unknown top-level key(s) {unknown_keys}; known: {list(_RUN_KEYS)} "
                "(a budget's figures go under 'budget')"
            )
        dag = cls(
            name=_or(data.get("name"), ""),
            priority=_or(data.get("priority"), 0),
            budget=check_budget(data.get("budget"), f"{source}: budget"),
        )
        for i, t in enumerate(data["tasks"]):
            if not isinstance(t, dict):
                raise InvalidArgument(f"{source}: task #{i + 1} must be a map")
            unknown = set(t) - _TASK_KEYS
            if unknown:
                raise InvalidArgument(
                    f"{source}: task #{i + 1} has unknown field(s) {sorted(unknown)}; known: {sorted(_TASK_KEYS)}"
                )
            if "id" not in t or "agent" not in t:
                raise InvalidArgument(f"{source}: task #{i + 1} needs 'id' and 'agent'")
            deps = t.get("deps") or []
            if not isinstance(deps, list):
                raise InvalidArgument(f"{source}: task {t['id']!r}: deps must be a list of task ids")
            locks = t.get("locks") or []
            if not isinstance(locks, list) or not all(
                isinstance(lk, str) or (isinstance(lk, list) and len(lk) == 2) for lk in locks
            ):
                raise InvalidArgument(
                    f"{source}: task {t['id']!r}: locks must be a list of names or [name, mode] pairs"
                )
            requires = t.get("requires") or []
            if not isinstance(requires, list) or not all(isinstance(c, str) for c in requires):
                raise InvalidArgument(
                    f"{source}: task {t['id']!r}: requires must be a list of capability names"
                )
            try:
                dag.task(
                    str(t["id"]),
                    str(t["agent"]),
                    t.get("input"),
                    [_id(d) for d in deps],
                    t.get("retries"),  # absent (or null): the agent type's default
                    _or(t.get("priority"), 0),
                    t.get("timeout_ms"),
                    _or(t.get("retry_backoff_ms"), 0),
                    [lk if isinstance(lk, str) else (lk[0], lk[1]) for lk in locks],
                    requires,
                    **_replica_keys(t, source),
                    compensate=t.get("compensate"),
                    approval=t.get("approval"),
                    when=t.get("when"),
                    trigger=_or(t.get("trigger"), ""),
                    map=_id(t.get("map")),
                    max_parallel=_or(t.get("max_parallel"), 0),
                )
            except (TypeError, ValueError) as exc:
                raise InvalidArgument(f"{source}: task {t.get('id')!r}: {exc}") from exc
        return dag

    @classmethod
    def from_file(cls, path: str) -> DAG:
        """Load ``{"tasks": [{"id", "agent", "input", "deps", "retries"}, ...]}`` from YAML or JSON."""
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise InvalidArgument(f"cannot read {path}: {exc.strerror}") from exc
        try:
            if path.endswith((".yaml", ".yml")):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as exc:
            raise InvalidArgument(
                f"{path} is not valid {'YAML' if path.endswith(('.yaml', '.yml')) else 'JSON'}: {exc}"
            ) from exc
        return cls.from_dict(data, source=path)


def _id(value: Any) -> Any:
    """A task id in a spec file: a number is read as its digits (as ``id: 1`` is); anything
    else but a string is left for the checks to refuse (``map: [a]`` is not ``"['a']"``)."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _or(value: Any, default: Any) -> Any:
    """A spec key's value, ``default`` when absent or null (a wrong type is left for the checks)."""
    return default if value is None else value


def _check_keys(
    who: str,
    *,
    deps: Any,
    retries: Any,
    priority: Any,
    timeout_ms: Any,
    retry_backoff_ms: Any,
    replicas: Any,
    fusion: Any,
    quorum: Any,
    weights: Any,
    agents: Any,
    judge: Any,
    trigger: Any,
    map: Any,
    max_parallel: Any,
) -> None:
    """InvalidArgument unless every key of a task has its type and fits its wire type."""
    if isinstance(deps, (str, bytes)) or not all(isinstance(d, (Task, str)) for d in deps):
        raise InvalidArgument(f"{who}: deps must be a list of task ids or Tasks")
    if retries is not None:
        whole(who, "retries", retries, UINT32)
    whole(who, "priority", priority, INT32)
    if timeout_ms is not None:
        whole(who, "timeout_ms", timeout_ms, UINT64)
    whole(who, "retry_backoff_ms", retry_backoff_ms, UINT64)
    for key, value in (("replicas", replicas), ("quorum", quorum), ("max_parallel", max_parallel)):
        whole(who, key, value, UINT32)
    for key, value in (("fusion", fusion), ("judge", judge), ("trigger", trigger)):
        if not isinstance(value, str):
            raise InvalidArgument(f"{who}: {key} must be a string, not {value!r}")
    if isinstance(weights, (str, bytes)) or not all(
        isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights
    ):
        raise InvalidArgument(f"{who}: weights must be a list of numbers, one per replica")
    if not all(isinstance(a, str) for a in agents):
        raise InvalidArgument(f"{who}: agents must be a list of agent types")
    if map is not None and not isinstance(map, (Task, str)):
        raise InvalidArgument(f"{who}: map must be the id of an upstream task, not {map!r}")


def _replica_keys(t: dict[str, Any], source: str) -> dict[str, Any]:
    """The replica keys of a task map from a spec file (absent: not replicated)."""
    who = f"{source}: task {t['id']!r}"
    weights = t.get("weights") or []
    if not isinstance(weights, list) or not all(
        isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights
    ):
        raise InvalidArgument(f"{who}: weights must be a list of numbers, one per replica")
    agents = t.get("agents") or []
    if not isinstance(agents, list) or not all(isinstance(a, str) for a in agents):
        raise InvalidArgument(f"{who}: agents must be a list of agent types")
    for key in ("replicas", "quorum"):
        v = t.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise InvalidArgument(f"{who}: {key} must be a whole number")
    for key in ("fusion", "judge"):
        v = t.get(key)
        if v is not None and not isinstance(v, str):
            raise InvalidArgument(f"{who}: {key} must be a string")
    return {
        "replicas": t.get("replicas") or 0,
        "fusion": t.get("fusion") or "",
        "quorum": t.get("quorum") or 0,
        "weights": [float(w) for w in weights],
        "agents": agents,
        "judge": t.get("judge") or "",
    }
