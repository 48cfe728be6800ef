"""Priority preemption: a waiting high-priority task takes the slot of a lower one.

Two halves, both pure:

- ``plan_preemptions`` (the leader's scheduler calls it): for each READY task of
  priority >= the threshold that is due and has no free eligible slot, the victim is
  the lowest-priority RUNNING attempt below it on a node that could serve it (placement's
  ``eligible_nodes``: up, not avoided, offering its type with the capabilities it requires,
  breaker not open; where the type's concurrency is used up, only a victim of the same
  type frees a place); among equals the one started last (least work
  lost), then by id. One victim per waiting task; the caller skips tasks whose
  preemption is still in flight, so a slow commit does not cost a second victim.
- ``preempt`` (apply): each item is fenced by the victim's attempt and token and
  needs its preemptor still READY and of higher priority, so a plan made from a stale
  view is refused item by item. The victim's attempt is fenced (the task leaves
  RUNNING; its host stops it and its late reports are rejected) and the task goes back
  to READY at once, its retries untouched; the preemption is recorded on it
  (``preempted_by``, the newest ``limits.MAX_PREEMPTED_BY``).
"""

from __future__ import annotations

from collections.abc import Container, Mapping

from . import limits
from .codes import Code
from .commands import Preempt, Preemption
from .context import ApplyContext
from .locks import task_owner
from .placement import eligible_nodes
from .results import ItemRejected, PreemptResult, Rejected, Result
from .state import SCHEDULABLE_RUN, ClusterState, RunState, TaskKey, TaskState, TaskStatus
from .tasks import make_ready, unrun

MAX_WAITING_EXAMINED = 32
"""High-priority waiting tasks one plan looks at (each may scan the running attempts)."""


def _type_full(state: ClusterState, node_id: str, agent: str) -> bool:
    """Whether ``agent``'s per-node concurrency on ``node_id`` is used up (a slot freed by a
    victim of another type would not let a task of this type start there)."""
    offer = state.members[node_id].offers.get(agent)
    conc = offer.concurrency if offer is not None else 0
    return conc > 0 and state.running_agent.get((node_id, agent), 0) >= conc


def plan_preemptions(
    state: ClusterState,
    now_ms: int,
    threshold: int,
    inflight: Mapping[TaskKey, str],
    skip: Container[TaskKey] = frozenset(),
    busy_victims: Container[TaskKey] = frozenset(),
    avoid: frozenset[str] = frozenset(),
    max_items: int = 8,
) -> list[Preemption]:
    """Preemptions for waiting tasks of priority >= ``threshold``.

    ``inflight``: assignments proposed but not applied (task -> node); they hold a slot.
    ``skip``: waiting tasks not to consider (their preemption is in flight).
    ``busy_victims``: attempts already being preempted.
    """
    load: dict[str, int] = {}
    for node_id in sorted(state.members):
        m = state.members[node_id]
        if m.up and m.slots > 0 and node_id not in avoid:
            load[node_id] = len(state.running.get(node_id, ()))
    for node_id in inflight.values():
        if node_id in load:
            load[node_id] += 1
    victims: list[tuple[int, int, str, str, str]] | None = None
    chosen: set[TaskKey] = set()
    out: list[Preemption] = []
    examined = 0
    for prio in sorted(state.ready, reverse=True):
        if prio < threshold:
            break
        for key in state.ready[prio]:
            if key in inflight or key in skip:
                continue
            run_id, task_id = key
            t = state.runs[run_id].tasks[task_id]
            if t.not_before_ms > now_ms:
                continue
            if t.spec.locks:
                owner = task_owner(run_id, task_id, t.attempt + 1)
                if not state.locks.can_grant(owner, tuple(sorted(t.spec.locks)), ahead_of=None):
                    continue  # a slot would not start it: its locks are held
            # placement's rule: the offer matches (capabilities) and the breaker is not open
            candidates = [n for n in eligible_nodes(state, t.spec, now_ms, avoid) if n in load]
            full_type = {n for n in candidates if _type_full(state, n, t.spec.agent)}
            if not candidates or any(
                load[n] < state.members[n].slots and n not in full_type for n in candidates
            ):
                continue  # nothing to take, or a free slot that placement will give it
            examined += 1
            if victims is None:
                victims = _running_by_priority(state, load)
            for v_prio, _, v_run, v_task, v_node in victims:
                if v_prio >= prio:
                    break
                v_key = (v_run, v_task)
                if v_key in chosen or v_key in busy_victims or v_node not in candidates:
                    continue
                v = state.runs[v_run].tasks[v_task]
                if v_node in full_type and v.spec.agent != t.spec.agent:
                    continue  # freeing this slot leaves the type's concurrency full there
                chosen.add(v_key)
                out.append(Preemption(v_run, v_task, v.attempt, v.token, run_id, task_id))
                break
            if len(out) >= max_items or examined >= MAX_WAITING_EXAMINED:
                return out
    return out


def _running_by_priority(
    state: ClusterState, load: Mapping[str, int]
) -> list[tuple[int, int, str, str, str]]:
    """Running attempts on eligible nodes: lowest priority first, then the latest started."""
    out = []
    for node_id in load:
        for run_id, task_id in state.running.get(node_id, ()):
            t = state.runs[run_id].tasks[task_id]
            out.append((t.spec.priority, -t.started_ms, run_id, task_id, node_id))
    out.sort()
    return out


def preempt(ctx: ApplyContext, cmd: Preempt) -> Result:
    st = ctx.state
    if len(cmd.items) > limits.MAX_PREEMPT_ITEMS:
        return Rejected(
            Code.INVALID_ARGUMENT,
            f"{len(cmd.items)} preemptions; at most {limits.MAX_PREEMPT_ITEMS} per command",
        )
    accepted: list[tuple[Preemption, RunState, TaskState]] = []
    rejected: list[ItemRejected] = []
    seen: set[TaskKey] = set()
    seen_by: set[TaskKey] = set()
    """One victim per waiting task: a plan never names a preempting task twice."""
    for p in cmd.items:
        run = st.runs.get(p.run_id)
        t = run.tasks.get(p.task_id) if run else None
        by = st.task(p.by_run_id, p.by_task_id)
        why = ""
        if run is None or t is None:
            why = "no such task"
        elif (p.run_id, p.task_id) in seen:
            why = "preempted twice in one command"
        elif (p.by_run_id, p.by_task_id) in seen_by:
            why = f"task {p.by_run_id}/{p.by_task_id} already preempts another attempt in this command"
        elif t.status is not TaskStatus.RUNNING:
            why = f"task is {t.status.value}"
        elif t.attempt != p.attempt or t.token != p.token:
            why = f"stale attempt {p.attempt} (token {p.token}); current is {t.attempt} (token {t.token})"
        elif by is None:
            why = f"no preempting task {p.by_run_id}/{p.by_task_id}"
        elif by.status is not TaskStatus.READY:
            why = f"preempting task {p.by_run_id}/{p.by_task_id} is {by.status.value}, not waiting"
        elif (by_run := st.runs[p.by_run_id]).status not in SCHEDULABLE_RUN:
            why = f"preempting task's run {p.by_run_id} is {by_run.status.value}: it may start nothing"
        elif by.spec.priority <= t.spec.priority:
            why = f"preempting task's priority {by.spec.priority} is not above {t.spec.priority}"
        if why:
            rejected.append(ItemRejected(p.run_id, p.task_id, why))
            continue
        assert run is not None and t is not None
        seen.add((p.run_id, p.task_id))
        seen_by.add((p.by_run_id, p.by_task_id))
        accepted.append((p, run, t))
    if not accepted:
        quoted = [[r.run_id, r.task_id, r.reason] for r in rejected[:5]]
        return Rejected(Code.FAILED_PRECONDITION, f"no preemption applies: {quoted}")
    rev = ctx.advance()
    for p, run, t in accepted:
        t.error = f"attempt {t.attempt} preempted by {p.by_run_id}/{p.by_task_id}"
        unrun(ctx, run.run_id, t, "preempted", t.error)
        entry = (p.by_run_id, p.by_task_id, t.attempt, st.time_ms)
        t.preempted_by = (*t.preempted_by, entry)[-limits.MAX_PREEMPTED_BY :]
        make_ready(ctx, run, t, rev, not_before_ms=0)
    return PreemptResult(accepted=len(accepted), rejected=tuple(rejected))
