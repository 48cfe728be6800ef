"""Placement: which READY task goes to which node. Pure; the leader's scheduler calls it.

A node serves a task when it is an up member whose offer of the task's agent type has
every capability the task ``requires``, with a free node slot, a free slot under the
offer's per-node ``concurrency``, and that type's breaker there not open (half-open:
one probe attempt at a time, see ``breakers.py``). Highest priority first, FIFO within
a priority; among the nodes that serve a task, the least loaded (running / slots) wins,
ties broken by node id; a replica (``fusion.py``) prefers a node where no sibling replica
runs or is being placed, so competing answers come from different nodes where possible.
The state machine re-validates every assignment with the same rule (``unfit``), so a
plan computed from a slightly stale view is safe.

``waiting_reason`` says why a READY task is not placed; reads derive it on demand
(it depends on the clock and on every member, so it is never replicated).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from .breakers import BreakerState, state_of
from .commands import AgentOffer, Assignment, TaskSpec
from .locks import EXCLUSIVE, task_owner
from .state import ClusterState, Member, RunStatus, TaskKey, TaskState, TaskStatus


def offer_fits(m: Member, agent: str, requires: Collection[str]) -> AgentOffer | None:
    """``m``'s offer of ``agent`` if it has every capability in ``requires``."""
    o = m.offers.get(agent)
    if o is None or (requires and not set(requires).issubset(o.capabilities)):
        return None
    return o


def room(m: Member, offer: AgentOffer, node_running: int, type_running: int, now_ms: int) -> str:
    """Why ``m`` cannot start one more attempt of ``offer``'s type ("" if it can), given the
    attempts running there (``node_running``) and of that type (``type_running``)."""
    if node_running >= m.slots:
        return f"node {m.node_id!r} has no free slot"
    if offer.concurrency and type_running >= offer.concurrency:
        return f"node {m.node_id!r} runs {offer.concurrency} {offer.name!r} attempts (its concurrency)"
    b = m.breakers.get(offer.name)
    state = state_of(b, now_ms)
    if state is BreakerState.OPEN and b is not None:
        return f"breaker for {offer.name!r} on node {m.node_id!r} is open until {format_ms(b.open_until_ms)}"
    if state is BreakerState.HALF_OPEN and type_running:
        return f"breaker for {offer.name!r} on node {m.node_id!r} is half-open and its probe is running"
    return ""


def unfit(
    state: ClusterState,
    node_id: str,
    spec: TaskSpec,
    now_ms: int,
    planned_node: int = 0,
    planned_type: int = 0,
) -> str:
    """Why ``node_id`` cannot take an attempt of ``spec`` now ("" if it can).

    ``planned_*``: attempts already promised to that node (in total, of this type) by the
    same plan or command, not yet in the state.
    """
    m = state.members.get(node_id)
    if m is None or not m.up:
        return f"node {node_id!r} is not an up member"
    offer = m.offers.get(spec.agent)
    if offer is None:
        return f"node {node_id!r} does not offer agent {spec.agent!r}"
    if spec.requires:
        missing = sorted(set(spec.requires).difference(offer.capabilities))
        if missing:
            return f"node {node_id!r} offers {spec.agent!r} without capabilities {_caps(missing)}"
    node_running = len(state.running.get(node_id, ())) + planned_node
    type_running = state.running_agent.get((node_id, spec.agent), 0) + planned_type
    return room(m, offer, node_running, type_running, now_ms)


def serves(state: ClusterState, node_id: str, spec: TaskSpec, now_ms: int) -> bool:
    """Whether ``node_id`` could start an attempt of ``spec`` now (the rule ``apply`` enforces)."""
    return not unfit(state, node_id, spec, now_ms)


def eligible_nodes(
    state: ClusterState, spec: TaskSpec, now_ms: int, avoid: frozenset[str] = frozenset()
) -> list[str]:
    """Up members (not in ``avoid``) that could run ``spec`` if they had room: the offer
    matches and the type's breaker there is not open. Sorted by node id."""
    out = []
    for node_id in sorted(state.members):
        m = state.members[node_id]
        if not m.up or node_id in avoid or offer_fits(m, spec.agent, spec.requires) is None:
            continue
        if state_of(m.breakers.get(spec.agent), now_ms) is not BreakerState.OPEN:
            out.append(node_id)
    return out


def plan_assignments(
    state: ClusterState,
    now_ms: int,
    inflight: Mapping[TaskKey, str],
    max_items: int = 1000,
    avoid: frozenset[str] = frozenset(),
    placing_only: bool = False,
    max_scan: int | None = None,
    prefer: str = "",
    alive: str = "",
    only: str = "",
) -> list[Assignment]:
    """Assignments for READY tasks not already in flight (``inflight``: task -> node).

    ``avoid``: up members the leader has not heard from lately; new work skips them
    until they are heard from again or marked down. So does a member the state flags
    ``suspect`` (the leader's view, replicated), unless it is ``alive``: the node whose
    report this apply is (it just proved alive). ``placing_only``: only members that take
    placements from apply (``Member.places``). ``max_scan``: look at no more than that many
    READY tasks from the head of the queue (``tasks.place_queued``, inside apply). ``prefer``:
    the member that wins a tie on load (else the lowest node id). ``only``: that member's
    choices alone (a node's report, inside apply), the same list as the whole plan's choices of
    it: the others are still planned, uncollected (they fill other members first, count toward
    ``max_items`` and reserve locks), and the plan stops once that member is full.
    """
    live: list[Member] = []
    load: dict[str, int] = {}
    for node_id in sorted(state.members):
        m = state.members[node_id]
        if not m.up or m.slots <= 0 or node_id in avoid or (placing_only and not m.places):
            continue
        if m.suspect and node_id != alive:
            continue
        live.append(m)
        load[node_id] = len(state.running.get(node_id, ()))
    type_load: dict[tuple[str, str], int] = {}
    for key, node_id in inflight.items():
        t = state.task(*key)
        if node_id in load and t is not None:
            load[node_id] += 1
            na = (node_id, t.spec.agent)
            type_load[na] = type_load.get(na, 0) + 1
    free_total = sum(max(0, m.slots - load[m.node_id]) for m in live)
    out: list[Assignment] = []
    only_slots = state.members[only].slots if only in load else 0
    if free_total <= 0 or (only and load.get(only, 0) >= only_slots):
        return out  # nothing to place, or nothing ``only`` may take
    chosen = 0
    # (agent, requires) -> the live members whose offer matches: the member, its offer, its id,
    # its slots, and whether ``room`` reduces to the slot check there (no per-type concurrency,
    # no breaker for the type; neither changes during a plan), so the common case calls nothing.
    groups: dict[tuple[str, tuple[str, ...]], list[tuple[Member, AgentOffer, str, int, bool]]] = {}
    full: set[tuple[str, tuple[str, ...]]] = set()
    planned_locks: dict[str, str] = {}
    planned: dict[TaskKey, str] = {}
    scan = max_scan if max_scan is not None else -1
    for prio in sorted(state.ready, reverse=True):
        for key in state.ready[prio]:
            if scan == 0:
                return out
            scan -= 1
            if key in inflight:
                continue
            run_id, task_id = key
            t = state.runs[run_id].tasks[task_id]
            if t.not_before_ms > now_ms:
                continue
            agent = t.spec.agent
            gkey = (agent, t.spec.requires)
            if gkey in full:
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
            group = groups.get(gkey)
            if group is None:
                group = groups[gkey] = [
                    (m, o, m.node_id, m.slots, not o.concurrency and o.name not in m.breakers)
                    for m in live
                    if (o := offer_fits(m, agent, t.spec.requires)) is not None
                ]
            crowded = sibling_nodes(state, run_id, t, inflight, planned) if t.origin == "replica" else ()
            best: str | None = None
            best_rank = (False, 0.0, False)
            for m, offer, node_id, slots, slots_only in group:
                node_running = load[node_id]
                if node_running >= slots:
                    continue
                # a node without a sibling replica first (independent answers), then the least loaded
                rank = (node_id in crowded, node_running / slots, node_id != prefer)
                if best is not None and rank >= best_rank:
                    continue  # cheap filters first: ``room`` (the rule) only for a better node
                if slots_only:  # ``room`` would return "": a free slot, no concurrency, no breaker
                    best, best_rank = node_id, rank
                    continue
                type_running = state.running_agent.get((node_id, agent), 0) + type_load.get(
                    (node_id, agent), 0
                )
                if not room(m, offer, node_running, type_running, now_ms):
                    best, best_rank = node_id, rank
            if best is None:
                # loads only grow during a plan: no later task of this group fits either
                full.add(gkey)
                continue
            load[best] += 1
            type_load[(best, agent)] = type_load.get((best, agent), 0) + 1
            free_total -= 1
            for lock_name, mode in t.spec.locks:
                planned_locks[lock_name] = (
                    EXCLUSIVE if EXCLUSIVE in (mode, planned_locks.get(lock_name)) else mode
                )
            chosen += 1
            if not only or best == only:
                out.append(Assignment(run_id, task_id, best, t.attempt + 1))
            planned[key] = best
            if free_total <= 0 or chosen >= max_items:
                return out
            if only and load[only] >= only_slots:
                return out  # loads only grow: the member has all its choices
    return out


def sibling_nodes(
    state: ClusterState,
    run_id: str,
    t: TaskState,
    inflight: Mapping[TaskKey, str],
    planned: Mapping[TaskKey, str],
) -> set[str]:
    """Nodes running, or about to run, another replica of ``t``'s parent (placement avoids
    them where another node fits, and never refuses a task for it). O(replicas)."""
    run = state.runs[run_id]
    parent = run.tasks.get(t.parent)
    out: set[str] = set()
    for sib_id in parent.children if parent is not None else ():
        if sib_id == t.spec.id:
            continue
        key = (run_id, sib_id)
        sib = run.tasks[sib_id]
        if sib.status is TaskStatus.RUNNING:
            out.add(sib.node)
        node = planned.get(key) or inflight.get(key)
        if node:
            out.add(node)
    return out


def waiting_reasons(state: ClusterState, run_id: str, task_ids: Iterable[str], now_ms: int) -> dict[str, str]:
    """Why each READY task of ``task_ids`` is not running yet (tasks a node can take now, or
    that are not READY, are left out). Derived at read time from the local replica and the
    reader's clock: never replicated. O(tasks + members x distinct (agent, requires))."""
    run = state.runs.get(run_id)
    out: dict[str, str] = {}
    if run is None:
        return out
    groups: dict[tuple[str, tuple[str, ...]], str] = {}
    for task_id in task_ids:
        t = run.tasks.get(task_id)
        if t is None or t.status is not TaskStatus.READY:
            continue
        if run.status is RunStatus.PAUSED:
            out[task_id] = "its run is paused (raftmesh resume)"
            continue
        why = _task_wait(state, run_id, t, now_ms)
        if not why:
            gkey = (t.spec.agent, t.spec.requires)
            if gkey not in groups:
                groups[gkey] = _nodes_wait(state, t.spec, now_ms)
            why = groups[gkey]
        if why:
            out[task_id] = why
    return out


def waiting_reason(state: ClusterState, run_id: str, t: TaskState, now_ms: int) -> str:
    """``waiting_reasons`` for one task ("" if it is not READY or a node can take it now)."""
    return waiting_reasons(state, run_id, (t.spec.id,), now_ms).get(t.spec.id, "")


def _task_wait(state: ClusterState, run_id: str, t: TaskState, now_ms: int) -> str:
    spec = t.spec
    if t.not_before_ms > now_ms:
        return f"retry backoff until {format_ms(t.not_before_ms)}"
    if spec.locks:
        owner = task_owner(run_id, spec.id, t.attempt + 1)
        if not state.locks.can_grant(owner, tuple(sorted(spec.locks)), ahead_of=None):
            return "waiting for locks " + ", ".join(repr(n) for n, _ in spec.locks)
    return ""


def _nodes_wait(state: ClusterState, spec: TaskSpec, now_ms: int) -> str:
    offering: list[tuple[Member, AgentOffer]] = []
    for node_id in sorted(state.members):
        m = state.members[node_id]
        o = offer_fits(m, spec.agent, spec.requires) if m.up else None
        if o is not None:
            offering.append((m, o))
    what = f"agent {spec.agent!r}" + (f" with capabilities {_caps(spec.requires)}" if spec.requires else "")
    if not offering:
        return f"no live node offers {what}"
    open_until = [
        b.open_until_ms
        for m, _ in offering
        if (b := m.breakers.get(spec.agent)) is not None and state_of(b, now_ms) is BreakerState.OPEN
    ]
    if len(open_until) == len(offering):
        return (
            f"breaker open for {spec.agent!r} on every node offering it "
            f"(next probe at {format_ms(min(open_until))})"
        )
    for m, o in offering:
        node_running = len(state.running.get(m.node_id, ()))
        if not room(m, o, node_running, state.running_agent.get((m.node_id, spec.agent), 0), now_ms):
            return ""
    return f"every eligible node is busy ({len(offering)} live node(s) offer {what})"


def format_ms(ms: int) -> str:
    """A state time (ms since the epoch) as UTC ISO 8601, for messages.

    Computed by hand (days to a civil date, H. Hinnant's algorithm): this package imports
    no clock module, not even ``datetime``.
    """
    days, rest = divmod(ms, 86_400_000)
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (month <= 2)
    h, rest = divmod(rest, 3_600_000)
    mi, rest = divmod(rest, 60_000)
    sec, milli = divmod(rest, 1000)
    return f"{year:04d}-{month:02d}-{day:02d}T{h:02d}:{mi:02d}:{sec:02d}.{milli:03d}Z"


def _caps(caps: Iterable[str]) -> str:
    return "[" + ", ".join(caps) + "]"
