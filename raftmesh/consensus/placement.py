"""Placement: which READY task goes to which node. Pure; the leader's scheduler calls it.

Highest priority first, FIFO within a priority; among the up members that offer
the task's agent type and have a free slot, the least loaded (running / slots)
wins, ties broken by node id. The state machine re-validates every assignment,
so a plan computed from a slightly stale view is safe (stale items are rejected).
"""

from __future__ import annotations

from collections.abc import Mapping

from .commands import Assignment
from .locks import EXCLUSIVE, task_owner
from .state import ClusterState, TaskKey


def plan_assignments(
    state: ClusterState,
    now_ms: int,
    inflight: Mapping[TaskKey, str],
    max_items: int = 1000,
    avoid: frozenset[str] = frozenset(),
) -> list[Assignment]:
    """Assignments for READY tasks not already in flight (``inflight``: task -> node).

    ``avoid``: up members the leader has not heard from lately; new work skips them
    until they are heard from again or marked down.
    """
    load: dict[str, int] = {}
    slots: dict[str, int] = {}
    by_agent: dict[str, list[str]] = {}
    for node_id in sorted(state.members):
        m = state.members[node_id]
        if not m.up or m.slots <= 0 or node_id in avoid:
            continue
        load[node_id] = len(state.running.get(node_id, ()))
        slots[node_id] = m.slots
        for a in m.agents:
            by_agent.setdefault(a, []).append(node_id)
    for node_id in inflight.values():
        if node_id in load:
            load[node_id] += 1
    free_total = sum(max(0, slots[n] - load[n]) for n in load)
    out: list[Assignment] = []
    if free_total <= 0:
        return out
    full_agents: set[str] = set()
    planned_locks: dict[str, str] = {}
    for prio in sorted(state.ready, reverse=True):
        for key in state.ready[prio]:
            if key in inflight:
                continue
            run_id, task_id = key
            t = state.runs[run_id].tasks[task_id]
            if t.not_before_ms > now_ms:
                continue
            agent = t.spec.agent
            if agent in full_agents:
                continue
            if t.spec.locks:
                # a task's declared locks must all be grantable now, and not promised to
                # another task of this plan
                if any(
                    n in planned_locks and (m == EXCLUSIVE or planned_locks[n] == EXCLUSIVE)
                    for n, m in t.spec.locks
                ):
                    continue
                owner = task_owner(run_id, task_id, t.attempt + 1)
                if not state.locks.can_grant(owner, tuple(sorted(t.spec.locks)), ahead_of=None):
                    continue
            best: str | None = None
            best_ratio = 0.0
            for node_id in by_agent.get(agent, ()):
                if load[node_id] >= slots[node_id]:
                    continue
                ratio = load[node_id] / slots[node_id]
                if best is None or ratio < best_ratio:
                    best, best_ratio = node_id, ratio
            if best is None:
                full_agents.add(agent)
                continue
            load[best] += 1
            free_total -= 1
            for lock_name, mode in t.spec.locks:
                planned_locks[lock_name] = (
                    EXCLUSIVE if EXCLUSIVE in (mode, planned_locks.get(lock_name)) else mode
                )
            out.append(Assignment(run_id, task_id, best, t.attempt + 1))
            if free_total <= 0 or len(out) >= max_items:
                return out
    return out
