"""Competing replicas: one task run N times in parallel and the answers fused.

A task with ``replicas: N`` and a ``fusion`` rule does not run itself. When it may run
(``tasks.begin``) it becomes the parent of N replica children ``ID#0`` .. ``ID#N-1``
(origin "replica"): ordinary tasks with the parent's input, deps, locks, retries and
timeout, replica ``i`` using the agent type ``agents[i % len(agents)]`` (or the parent's).
The parent waits in WAITING_CHILDREN. Each time a replica ends the rule is judged again
from the committed results of the replicas alone (their outputs in the state, in index
order), so a replica's late or fenced report can never sway it:

- ``vote``: the answer that ``quorum`` replicas gave (JSON equality, ``conditions.json_equal``;
  default quorum: a majority, ``N // 2 + 1``);
- ``weighted``: the weighted average of ``quorum`` numeric answers (an output that is a
  number, or a map with a numeric ``value``; ``weights[i]`` for replica ``i``, default 1; a
  replica of weight 0 does not count);
- ``merge``: the deep merge of ``quorum`` map answers; where two disagree on a key the lower
  replica index wins and the disagreement is listed in ``conflicts``;
- ``best``: of ``quorum`` answers, the highest ``score`` (a number in each output), or, with
  ``judge``, the one the judge task ``ID#judge`` picks (origin "judge": its input holds the
  candidates; it returns ``{"scores": [...]}`` or ``{"choice": i}``);
- ``first``: the first success (quorum 1).

Once the quorum is reached the replicas still READY or RUNNING are cancelled ("superseded:
quorum reached"; a late report from one is fenced like any stale attempt) and the parent
SUCCEEDS with ``{"answer": ..., "fusion": rule, "quorum": K, "replicas": [...]}``. A replica
that fails for good does not fail the run (``replica_failed``): the parent fails, and the
run with it, only when the quorum can no longer be reached. Nothing is stored beyond the
children: the tally is recomputed from them (at most ``MAX_REPLICAS`` outputs), so a
snapshot taken mid-vote restores it exactly.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from . import approvals, budgets, conditions, groups, limits, tasks
from .commands import TaskSpec
from .context import ApplyContext
from .results import TaskChanged
from .state import TERMINAL_TASK, RunState, TaskState, TaskStatus

RULES = ("vote", "weighted", "merge", "best", "first")
SUPERSEDED = "superseded: quorum reached"
JUDGE_SUFFIX = "#judge"


# ---- validation (``dag.validate`` calls it at submit and in apply) ------------------


def problem(
    t: TaskSpec, known_agents: Collection[str] | Mapping[str, Collection[tuple[str, ...]]]
) -> tuple[str, str] | None:
    """(DagError kind, message) if ``t``'s replica keys cannot be accepted, else None."""
    who = f"task {t.id!r}"
    if not t.replicas:
        for key in ("fusion", "quorum", "weights", "agents", "judge"):
            if getattr(t, key):
                return "invalid", f"{who}: {key} needs replicas (set replicas: N to run the task N times)"
        return None
    if not 1 <= t.replicas <= limits.MAX_REPLICAS:
        return "limit", f"{who}: replicas must be between 1 and {limits.MAX_REPLICAS} (got {t.replicas})"
    if t.fusion not in RULES:
        got = f"is {t.fusion!r}" if t.fusion else "is missing"
        return "invalid", f"{who}: replicas need a fusion rule; fusion {got}, use one of {', '.join(RULES)}"
    if t.map:
        return "invalid", f"{who}: replicas cannot be combined with map (replicate the mapped task instead)"
    if not 0 <= t.quorum <= t.replicas:
        return "invalid", f"{who}: quorum must be between 1 and replicas ({t.replicas}); got {t.quorum}"
    if t.fusion == "first" and t.quorum > 1:
        return "invalid", f"{who}: fusion first is decided by the first success; quorum must be 1 or unset"
    if t.weights:
        if t.fusion != "weighted":
            return "invalid", f"{who}: weights apply to fusion weighted only (fusion is {t.fusion})"
        if len(t.weights) != t.replicas:
            return (
                "invalid",
                f"{who}: weights lists {len(t.weights)} numbers; give one per replica ({t.replicas})",
            )
        if not all(math.isfinite(w) and w >= 0 for w in t.weights):
            return "invalid", f"{who}: weights must be finite numbers >= 0"
        counted = sum(1 for w in t.weights if w > 0)  # a replica of weight 0 does not count
        if counted < quorum_of(t):
            return (
                "invalid",
                f"{who}: weights give {counted} replica(s) a weight > 0, fewer than the quorum "
                f"({quorum_of(t)}): the task could never be decided",
            )
    if t.agents:
        if len(t.agents) > t.replicas:
            return "invalid", f"{who}: agents lists {len(t.agents)} types for {t.replicas} replicas"
        for a in t.agents:
            why = limits.id_error(f"{who}: agent type", a)
            if why:
                return "invalid", why
        unknown = sorted({a for a in t.agents if a not in known_agents})
        if unknown:
            return "unknown_agent", f"{who}: unknown agent type(s) {', '.join(map(repr, unknown))} in agents"
        if t.requires and isinstance(known_agents, Mapping):
            need = set(t.requires)
            for a in t.agents:
                if not any(need.issubset(caps) for caps in known_agents[a]):
                    return (
                        "unserved",
                        f"{who} requires capabilities [{', '.join(sorted(need))}], but no member has "
                        f"offered {a!r} (listed in agents) with all of them",
                    )
    if t.judge:
        if t.fusion != "best":
            return "invalid", f"{who}: judge applies to fusion best only (fusion is {t.fusion})"
        why = limits.id_error(f"{who}: judge agent type", t.judge)
        if why:
            return "invalid", why
        if t.judge not in known_agents:
            return "unknown_agent", f"{who}: unknown judge agent type {t.judge!r}"
    return None


def quorum_of(spec: TaskSpec) -> int:
    """Successful replicas that decide: ``quorum``, or the rule's default (a majority; first: 1)."""
    if spec.fusion == "first":
        return 1
    return spec.quorum or spec.replicas // 2 + 1


# ---- expansion -----------------------------------------------------------------


def expand(ctx: ApplyContext, run: RunState, t: TaskState, rev: int) -> bool:
    """``t`` may run: its replicas start and it waits for them. Returns False (it never ends here)."""
    spec = t.spec
    n = spec.replicas + (1 if spec.judge else 0)  # the judge, added later, is reserved here
    if len(run.tasks) + n > limits.MAX_TASKS_PER_RUN:
        why = (
            f"replicas: {spec.replicas} replicas{' and a judge' if spec.judge else ''} would take the run "
            f"from {len(run.tasks)} tasks over the limit of {limits.MAX_TASKS_PER_RUN}"
        )
        tasks.fail_task(ctx, run, t, why, rev)
        return False
    why = budgets.tasks_over(run, n)
    if why:
        budgets.exceed(ctx, run, why, rev)
        return False
    t.status = TaskStatus.WAITING_CHILDREN
    t.finished_ms = 0
    run.revision = rev
    ctx.emit(TaskChanged(rev, run.run_id, spec.id, t.status, t.attempt, ""))
    for i in range(spec.replicas):
        child_spec = replace(
            _plain(spec),
            id=groups.child_id(spec.id, "replica", i),
            agent=spec.agents[i % len(spec.agents)] if spec.agents else spec.agent,
        )
        child = groups.add_child(ctx, run, t, child_spec, "replica", index=i)
        tasks.begin(ctx, run, child, rev)
    return False


def _plain(spec: TaskSpec) -> TaskSpec:
    """``spec`` without the keys its parent already acted on: a replica runs as a plain task."""
    return replace(
        spec,
        when=None,
        trigger="",
        replicas=0,
        fusion="",
        quorum=0,
        weights=(),
        agents=(),
        judge="",
        approval=None,
        compensate=None,
    )


# ---- the tally -------------------------------------------------------------------


@dataclass(slots=True)
class Tally:
    """Where the replicas of one parent stand, from their committed results."""

    replicas: list[TaskState]
    counted: list[tuple[TaskState, Any]] = field(default_factory=list)
    """Succeeded replicas whose answer the rule can use, with what it uses (index order)."""
    unusable: dict[str, str] = field(default_factory=dict)
    """Succeeded replica id -> why its answer does not count."""
    live: int = 0
    """Replicas that may still answer."""
    groups: list[tuple[Any, list[str]]] = field(default_factory=list)
    """vote: the distinct answers with the replicas that gave each, in order of first appearance."""


def _contribution(rule: str, judged: bool, output: Any) -> tuple[Any, str]:
    """What the rule uses of a replica's output, or why it cannot use it."""
    if rule == "weighted":
        v = output.get("value") if isinstance(output, dict) else output
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return float(v), ""
        return None, "weighted needs a number, or a map with a numeric 'value'"
    if rule == "merge":
        return (output, "") if isinstance(output, dict) else (None, "merge needs a map (JSON object)")
    if rule == "best" and not judged:
        s = output.get("score") if isinstance(output, dict) else None
        if isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s):
            return float(s), ""
        return None, "best needs a map with a numeric 'score' (or set judge)"
    return output, ""


def tally(run: RunState, parent: TaskState) -> Tally:
    spec = parent.spec
    reps = [run.tasks[c] for c in parent.children if run.tasks[c].origin == "replica"]
    out = Tally(reps)
    for r in reps:
        if r.status is TaskStatus.SUCCEEDED:
            value, why = _contribution(spec.fusion, bool(spec.judge), r.output)
            if not why and spec.weights and spec.weights[r.index] == 0:
                why = "its weight is 0"
            if why:
                out.unusable[r.spec.id] = why
                continue
            out.counted.append((r, value))
            if spec.fusion == "vote":
                for answer, ids in out.groups:
                    if conditions.json_equal(answer, value):
                        ids.append(r.spec.id)
                        break
                else:
                    out.groups.append((value, [r.spec.id]))
        elif r.status not in TERMINAL_TASK:
            out.live += 1
    return out


def _winner(tl: Tally) -> int:
    """vote: the index of the group with the most votes (the first such)."""
    best = 0
    for i, (_, ids) in enumerate(tl.groups):
        if len(ids) > len(tl.groups[best][1]):
            best = i
    return best


def _reached(spec: TaskSpec, tl: Tally) -> bool:
    k = quorum_of(spec)
    if spec.fusion == "vote":
        return bool(tl.groups) and len(tl.groups[_winner(tl)][1]) >= k
    return len(tl.counted) >= k


def _unreachable(spec: TaskSpec, tl: Tally) -> str:
    """Why the quorum can no longer be reached ("" while it can)."""
    k = quorum_of(spec)
    if spec.fusion == "vote":
        top = len(tl.groups[_winner(tl)][1]) if tl.groups else 0
        if top + tl.live >= k:
            return ""
        shown = "; ".join(f"{len(ids)} x {_clip(a)} ({', '.join(ids)})" for a, ids in tl.groups[:8])
        return (
            f"no majority: {k} replicas had to give the same answer, the most that agreed was {top} "
            f"(answers: {shown or 'none'}){_losses(tl)}"
        )
    if len(tl.counted) + tl.live >= k:
        return ""
    return (
        f"quorum unreachable: {k} successful replicas needed, {len(tl.counted)} answered usably "
        f"and none is left to run{_losses(tl)}"
    )


def _losses(tl: Tally) -> str:
    lost = [f"{r.spec.id}: {r.error or r.status.value}" for r in tl.replicas if r.status is TaskStatus.FAILED]
    lost += [f"{rid}: {why}" for rid, why in tl.unusable.items()]
    return f"; not counted: {'; '.join(lost)}" if lost else ""


def _clip(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "…"


# ---- what a replica's end decides ----------------------------------------------------


def _on_replica_ended(
    ctx: ApplyContext, run: RunState, parent: TaskState, child: TaskState, rev: int
) -> bool:
    """A replica succeeded: the parent is decided (True: it succeeds now), or still waits."""
    if any(run.tasks[c].origin == "judge" for c in parent.children):
        return False  # the judge decides; no replica is left to end (they were cancelled)
    return _decide(ctx, run, parent, rev)


def replica_failed(ctx: ApplyContext, run: RunState, t: TaskState, rev: int) -> None:
    """A replica failed for good (``tasks.fail_attempt``, its attempt already unrun).

    It is FAILED but not a dead letter, and the run goes on, unless the parent's quorum
    is now unreachable: then the parent fails and the run with it.
    """
    t.status = TaskStatus.FAILED
    t.finished_ms = ctx.state.time_ms
    run.unfinished -= 1
    run.revision = rev
    ctx.emit(TaskChanged(rev, run.run_id, t.spec.id, t.status, t.attempt, t.node))
    parent = run.tasks.get(t.parent)
    if parent is None or parent.status is not TaskStatus.WAITING_CHILDREN:
        return
    parent.children_waiting = max(0, parent.children_waiting - 1)
    why = _unreachable(parent.spec, tally(run, parent))
    if why:
        tasks.fail_task(ctx, run, parent, why, rev)


def _decide(ctx: ApplyContext, run: RunState, parent: TaskState, rev: int) -> bool:
    spec = parent.spec
    tl = tally(run, parent)
    if not _reached(spec, tl):
        why = _unreachable(spec, tl)
        if why:
            tasks.fail_task(ctx, run, parent, why, rev)
        return False
    _cancel_rest(ctx, run, parent, tl, rev)
    if spec.judge:
        _start_judge(ctx, run, parent, tl, rev)
        return False
    if spec.fusion == "vote":
        w = _winner(tl)
        answer: Any = tl.groups[w][0]
        votes = {rid: i for i, (_, ids) in enumerate(tl.groups) for rid in ids}
        extra: dict[str, Any] = {
            "votes": len(tl.groups[w][1]),
            "tally": [{"answer": a, "votes": len(ids), "replicas": ids} for a, ids in tl.groups],
        }
        return _settle(ctx, run, parent, tl, answer, extra, "vote", votes, rev)
    if spec.fusion == "weighted":
        weights = {r.spec.id: spec.weights[r.index] if spec.weights else 1.0 for r, _ in tl.counted}
        total = sum(weights[r.spec.id] for r, _ in tl.counted)
        if total <= 0:  # cannot happen (a weight-0 answer does not count); never divide by 0 in apply
            tasks.fail_task(ctx, run, parent, "weighted: the replicas that answered all have weight 0", rev)
            return False
        avg = sum(weights[r.spec.id] * v for r, v in tl.counted) / total
        if not math.isfinite(avg):
            tasks.fail_task(ctx, run, parent, "weighted: the average is not a finite number", rev)
            return False
        return _settle(ctx, run, parent, tl, avg, {}, "weight", weights, rev)
    if spec.fusion == "merge":
        merged: dict[str, Any] = {}
        conflicts: list[dict[str, Any]] = []
        origins: dict[tuple[str, ...], str] = {}
        for r, value in tl.counted:
            _merge_into(merged, value, r.spec.id, [], conflicts, origins)
        return _settle(ctx, run, parent, tl, merged, {"conflicts": conflicts}, "", {}, rev)
    if spec.fusion == "best":
        scores = {r.spec.id: v for r, v in tl.counted}
        chosen = max(tl.counted, key=lambda rv: (rv[1], -rv[0].index))[0]
        extra = {"chosen": chosen.spec.id}
        return _settle(ctx, run, parent, tl, chosen.output, extra, "score", scores, rev)
    first = tl.counted[0][0]
    return _settle(ctx, run, parent, tl, first.output, {"chosen": first.spec.id}, "", {}, rev)


def _merge_into(
    into: dict[str, Any],
    value: dict[str, Any],
    rid: str,
    path: list[str],
    conflicts: list[dict[str, Any]],
    origins: dict[tuple[str, ...], str],
) -> None:
    """Deep-merge ``value`` (from replica ``rid``) into ``into``; the first writer of a leaf keeps it."""
    for k, v in value.items():
        here = (*path, k)
        if isinstance(v, dict) and (k not in into or isinstance(into[k], dict)):
            # copied key by key: the replica's own output (in the state) is never aliased
            origins.setdefault(here, rid)
            _merge_into(into.setdefault(k, {}), v, rid, [*path, k], conflicts, origins)
        elif k not in into:
            into[k] = v
            origins[here] = rid
        elif not conditions.json_equal(into[k], v):
            conflicts.append(
                {
                    "path": list(here),
                    "kept": into[k],
                    "from": origins.get(here, ""),
                    "replica": rid,
                    "value": v,
                }
            )


def _cancel_rest(ctx: ApplyContext, run: RunState, parent: TaskState, tl: Tally, rev: int) -> None:
    """The quorum is reached: the replicas still READY or RUNNING are not needed any more, nor
    what they spawned and still wait for (a spawned task must not outlive its cancelled spawner)."""
    st = ctx.state
    for r in tl.replicas:
        if r.status in TERMINAL_TASK:
            continue
        parent.children_waiting = max(0, parent.children_waiting - 1)
        work = [r]
        while work:
            x = work.pop()
            if x.status in TERMINAL_TASK:
                continue
            work.extend(run.tasks[c] for c in reversed(x.children) if c in run.tasks)
            tasks.unready(ctx, run.run_id, x)
            tasks.unrun(ctx, run.run_id, x)
            approvals.close_gate(ctx, run.run_id, x)
            x.status = TaskStatus.CANCELLED
            x.error = SUPERSEDED
            x.finished_ms = st.time_ms
            x.deadline_ms = 0
            run.unfinished -= 1
            ctx.emit(TaskChanged(rev, run.run_id, x.spec.id, x.status, x.attempt, x.node))
    run.revision = rev


def _settle(
    ctx: ApplyContext,
    run: RunState,
    parent: TaskState,
    tl: Tally,
    answer: Any,
    extra: dict[str, Any],
    key: str,
    per_replica: Mapping[str, Any],
    rev: int,
) -> bool:
    """Set the parent's fused output (True: it succeeds), or fail it if that output is too big."""
    spec = parent.spec
    counted = {r.spec.id for r, _ in tl.counted}
    entries = []
    for r in tl.replicas:
        e: dict[str, Any] = {
            "id": r.spec.id,
            "agent": r.spec.agent,
            "node": r.node,
            "status": r.status.value,
            "output": r.output if r.status is TaskStatus.SUCCEEDED else None,
        }
        if key:
            e[key] = per_replica.get(r.spec.id)
        if r.spec.id not in counted:
            e["error"] = tl.unusable.get(r.spec.id) or r.error
        entries.append(e)
    output = {
        "answer": answer,
        "fusion": spec.fusion,
        "quorum": quorum_of(spec),
        **extra,
        "replicas": entries,
    }
    if limits.encoded_size(output) > limits.MAX_TASK_OUTPUT_BYTES:
        # Each replica's output stays readable on the replica task itself.
        for e in entries:
            e["output"] = None
        for g in output.get("tally", ()):
            g["answer"] = None
        output["outputs_omitted"] = True
        size = limits.encoded_size(output)
        if size > limits.MAX_TASK_OUTPUT_BYTES:
            why = f"the fused output is {size} bytes encoded; the limit is {limits.MAX_TASK_OUTPUT_BYTES}"
            tasks.fail_task(ctx, run, parent, why, rev)
            return False
    parent.output = output
    parent.error = ""
    return True


# ---- the judge (fusion best with judge) ----------------------------------------------


def _start_judge(ctx: ApplyContext, run: RunState, parent: TaskState, tl: Tally, rev: int) -> None:
    spec = parent.spec
    why = budgets.tasks_over(run, 1)
    if why:
        budgets.exceed(ctx, run, why, rev)
        return
    judge_input = {
        "task": spec.id,
        "input": spec.input,
        "candidates": [
            {"replica": r.spec.id, "agent": r.spec.agent, "output": r.output} for r, _ in tl.counted
        ],
    }
    size = limits.encoded_size(judge_input)
    if size > limits.MAX_TASK_INPUT_BYTES:
        why = (
            f"the judge's input (the candidates' outputs) is {size} bytes encoded; the limit is "
            f"{limits.MAX_TASK_INPUT_BYTES} (have the replicas return smaller answers)"
        )
        tasks.fail_task(ctx, run, parent, why, rev)
        return
    judge_spec = TaskSpec(
        id=spec.id + JUDGE_SUFFIX,
        agent=spec.judge,
        input=judge_input,
        retries=spec.retries,
        priority=spec.priority,
        timeout_ms=spec.timeout_ms,
        retry_backoff_ms=spec.retry_backoff_ms,
    )
    judge = groups.add_child(ctx, run, parent, judge_spec, "judge")
    tasks.begin(ctx, run, judge, rev)


def _judged(output: Any, n: int) -> tuple[int, list[float] | None, str]:
    """(chosen candidate, scores or None, "") from a judge's output, or why it is unusable."""
    if isinstance(output, dict) and "scores" in output:
        s = output["scores"]
        if (
            isinstance(s, list)
            and len(s) == n
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in s)
        ):
            scores = [float(x) for x in s]
            return max(range(n), key=lambda i: (scores[i], -i)), scores, ""
        return 0, None, f"judge 'scores' must be a list of {n} finite numbers, one per candidate"
    if isinstance(output, dict) and "choice" in output:
        c = output["choice"]
        if isinstance(c, int) and not isinstance(c, bool) and 0 <= c < n:
            return c, None, ""
        return 0, None, f"judge 'choice' must be a candidate index 0..{n - 1}"
    return 0, None, 'a judge must return {"scores": [one number per candidate]} or {"choice": index}'


def _on_judge_ended(ctx: ApplyContext, run: RunState, parent: TaskState, judge: TaskState, rev: int) -> bool:
    tl = tally(run, parent)
    chosen, scores, why = _judged(judge.output, len(tl.counted))
    if why:
        tasks.fail_task(ctx, run, parent, f"{judge.spec.id}: {why}", rev)
        return False
    winner = tl.counted[chosen][0]
    per = {r.spec.id: scores[i] for i, (r, _) in enumerate(tl.counted)} if scores else {}
    extra = {"chosen": winner.spec.id, "judge": judge.spec.id, "judge_output": judge.output}
    return _settle(ctx, run, parent, tl, winner.output, extra, "score", per, rev)


# ---- reading ---------------------------------------------------------------------------


def standings(run: RunState, parent: TaskState) -> list[dict[str, Any]]:
    """Each replica as ``get`` shows it while the vote goes on (and after): id, agent, node,
    status and what it counts for (``vote``: its answer's index in ``tally``; ``weight``;
    ``score``), or ``error``: why it does not count."""
    spec = parent.spec
    tl = tally(run, parent)
    votes = {rid: i for i, (_, ids) in enumerate(tl.groups) for rid in ids}
    counted = {r.spec.id: v for r, v in tl.counted}
    out = []
    for r in tl.replicas:
        e: dict[str, Any] = {"id": r.spec.id, "agent": r.spec.agent, "node": r.node, "status": r.status.value}
        if spec.fusion == "vote":
            e["vote"] = votes.get(r.spec.id)
        elif spec.fusion == "weighted":
            e["weight"] = (spec.weights[r.index] if spec.weights else 1.0) if r.spec.id in counted else None
        elif spec.fusion == "best" and not spec.judge:
            e["score"] = counted.get(r.spec.id)
        why = tl.unusable.get(r.spec.id) or (
            r.error if r.status in (TaskStatus.FAILED, TaskStatus.CANCELLED) else ""
        )
        e["error"] = why
        out.append(e)
    return out


def vote_tally(run: RunState, parent: TaskState) -> list[dict[str, Any]]:
    """vote: the distinct answers so far with their counts (empty for the other rules)."""
    return [{"answer": a, "votes": len(ids), "replicas": ids} for a, ids in tally(run, parent).groups]


groups.ON_CHILD_ENDED["replica"] = _on_replica_ended
groups.ON_CHILD_ENDED["judge"] = _on_judge_ended
