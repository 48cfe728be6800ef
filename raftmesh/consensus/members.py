"""Member commands: a node registers (at start, and as a new incarnation after a
restart) or is marked down by the leader; either way its running attempts go back
to READY. Processors over an ``ApplyContext`` (see ``context.py``).

Actor activations: a new incarnation's registration drops the old process's at once (re-placing
those with queued messages); a registration places unplaced addresses of the types it offers.
``NodeDown`` leaves them to their leases: a node that is only cut off may still be handling
until its own lease guard stops it, so moving them earlier would run two at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from . import activations, limits
from .codes import Code
from .commands import ActorOffer, AgentOffer, NodeDown, RegisterNode, SuspectNode
from .context import ApplyContext
from .results import MemberChanged, MemberResult, Rejected, Result
from .state import ClusterState, Member, TaskState
from .tasks import make_ready, requeue_node_tasks, unrun


def offer_error(o: AgentOffer) -> str:
    """ "" if ``o`` is an acceptable offer, else what is wrong with it (the node's registry
    checks its agents with this at start, ``apply`` checks every registration)."""
    why = limits.id_error("agent type", o.name)
    if why:
        return why
    label = f"agent {o.name!r}"
    if len(o.capabilities) > limits.MAX_CAPABILITIES:
        return f"{label} lists {len(o.capabilities)} capabilities; the limit is {limits.MAX_CAPABILITIES}"
    for c in o.capabilities:
        why = limits.id_error(f"{label}: capability", c)
        if why:
            return why
    if len(set(o.capabilities)) != len(o.capabilities):
        return f"{label} lists a capability twice"
    bounds = (
        ("concurrency", o.concurrency, limits.MAX_AGENT_CONCURRENCY),
        ("breaker_failures", o.breaker_failures, limits.MAX_BREAKER_FAILURES),
        ("breaker_cooldown_ms", o.breaker_cooldown_ms, limits.MAX_BREAKER_COOLDOWN_MS),
        ("timeout_ms", o.timeout_ms, limits.MAX_TIMEOUT_MS),
        ("retries", o.retries, limits.MAX_RETRIES),
    )
    for what, value, top in bounds:
        if not 0 <= value <= top:
            return f"{label}: {what} must be between 0 and {top} (got {value})"
    return ""


def actor_offer_error(o: ActorOffer) -> str:
    """ "" if ``o`` is an acceptable actor offer, else what is wrong with it (``offer_error``'s
    counterpart for ``@raftmesh.actor`` types)."""
    why = limits.id_error("actor type", o.name)
    if why:
        return why
    label = f"actor {o.name!r}"
    if len(o.capabilities) > limits.MAX_CAPABILITIES:
        return f"{label} lists {len(o.capabilities)} capabilities; the limit is {limits.MAX_CAPABILITIES}"
    for c in o.capabilities:
        why = limits.id_error(f"{label}: capability", c)
        if why:
            return why
    if len(set(o.capabilities)) != len(o.capabilities):
        return f"{label} lists a capability twice"
    if not 0 <= o.max_activations <= limits.MAX_ACTIVATIONS_PER_NODE:
        return f"{label}: max_activations must be between 0 and {limits.MAX_ACTIVATIONS_PER_NODE}"
    return ""


def _actors(cmd: RegisterNode) -> tuple[str, dict[str, ActorOffer]]:
    if len(cmd.actors) > limits.MAX_ACTOR_TYPES_PER_NODE:
        return f"a node may offer at most {limits.MAX_ACTOR_TYPES_PER_NODE} actor types", {}
    for o in cmd.actors:
        why = actor_offer_error(o)
        if why:
            return why, {}
    out = {o.name: replace(o, capabilities=tuple(sorted(o.capabilities))) for o in cmd.actors}
    if len(out) != len(cmd.actors):
        return "an actor type is offered twice", {}
    return "", out


def _offers(cmd: RegisterNode) -> tuple[str, dict[str, AgentOffer]]:
    """The registration's offers by name, or what is wrong with them."""
    if len(cmd.agents) > limits.MAX_AGENT_TYPES_PER_NODE:
        return f"a node may offer at most {limits.MAX_AGENT_TYPES_PER_NODE} agent types", {}
    for a in cmd.agents:
        why = limits.id_error("agent type", a)
        if why:
            return why, {}
    if not cmd.offers:  # a registration from before offers: every type with the default policy
        return "", {a: AgentOffer(a) for a in cmd.agents}
    offers = {o.name: o for o in cmd.offers}
    if len(offers) != len(cmd.offers) or set(offers) != set(cmd.agents):
        return "offers must name each type in agents exactly once", {}
    for o in cmd.offers:
        why = offer_error(o)
        if why:
            return why, {}
    return "", {k: replace(o, capabilities=tuple(sorted(o.capabilities))) for k, o in offers.items()}


def register(ctx: ApplyContext, cmd: RegisterNode) -> Result:
    why = limits.id_error("node id", cmd.node_id)
    if why:
        return Rejected(Code.INVALID_ARGUMENT, why)
    why, offers = _offers(cmd)
    if not why:
        why, actors = _actors(cmd)
    if why:
        return Rejected(Code.INVALID_ARGUMENT, why)
    if not 0 <= cmd.slots <= limits.MAX_NODE_SLOTS:
        return Rejected(Code.INVALID_ARGUMENT, f"slots must be between 0 and {limits.MAX_NODE_SLOTS}")
    st = ctx.state
    rev = ctx.advance()
    old = st.members.get(cmd.node_id)
    if old is not None and old.incarnation != cmd.incarnation:
        # The node restarted: whatever it was running died with the old process.
        requeue_node_tasks(ctx, cmd.node_id, rev, "node restarted")
    # Breakers outlive a restart (they are the node's record, not its process's); a type no
    # longer offered drops its breaker.
    kept = {a: b for a, b in old.breakers.items() if a in offers} if old is not None else {}
    st.set_member(
        Member(
            cmd.node_id,
            cmd.grpc,
            cmd.raft,
            tuple(sorted(set(cmd.agents))),
            cmd.slots,
            cmd.incarnation,
            True,
            st.time_ms,
            offers,
            kept,
            actors,
            cmd.places,
        )
    )
    room = {cmd.node_id}
    if old is not None and old.incarnation != cmd.incarnation:
        room |= activations.drop_node(ctx, cmd.node_id, cmd.incarnation, rev)
    activations.fill(ctx, room, rev)
    ctx.emit(MemberChanged(rev, cmd.node_id, True))
    return MemberResult(cmd.node_id)


def leader_term_error(ctx: ApplyContext, cmd: NodeDown | SuspectNode) -> Rejected | None:
    """ABORTED if ``cmd`` is a leader's decision arriving in a log entry of another term.

    The leader's liveness view holds only in its own term: pysyncobj hands a queued command to
    the next leader when this one stepped down meanwhile, and that leader would commit a view
    it did not form (it may even name itself). Every replica applies the entry with the same
    term, so every one refuses alike. A command without ``leader_term`` (entries from before
    it) or an entry whose term is unknown (``ApplyContext.entry_term``) is not checked. O(1).
    """
    if not cmd.leader_term or ctx.entry_term is None or ctx.entry_term == cmd.leader_term:
        return None
    return Rejected(
        Code.ABORTED,
        f"{cmd.TAG} for node {cmd.node_id!r} was decided by the leader of term {cmd.leader_term} but "
        f"reached the log in term {ctx.entry_term}; a leader's liveness view is applied only in its "
        "own term, so nothing was changed",
    )


def node_down(ctx: ApplyContext, cmd: NodeDown) -> Result:
    stale = leader_term_error(ctx, cmd)
    if stale is not None:
        return stale
    m = ctx.state.members.get(cmd.node_id)
    if m is None:
        return Rejected(Code.NOT_FOUND, f"node {cmd.node_id!r} is not a member")
    if not m.up or m.incarnation != cmd.incarnation:
        return Rejected(
            Code.FAILED_PRECONDITION, f"node {cmd.node_id!r} incarnation {cmd.incarnation} is not up"
        )
    rev = ctx.advance()
    m.up = False
    requeue_node_tasks(ctx, cmd.node_id, rev, f"node {cmd.node_id} down: {cmd.reason or 'unreachable'}")
    ctx.emit(MemberChanged(rev, cmd.node_id, False))
    return MemberResult(cmd.node_id)


def moves_on_suspicion(t: TaskState) -> bool:
    """Whether ``SuspectNode.requeue`` may move this running attempt off its member.

    Not a task that declares locks: the suspected member may still run the old attempt, and
    granting its locks to a new one would let two hold them; node-down moves it. Not a task
    already moved ``limits.MAX_SUSPECT_MOVES`` times: suspicion is a guess (a slow member is
    not a dead one), and past that bound the task waits for node-down, which the member's
    heartbeats settle. O(1); the scheduler asks it too, so it proposes no requeue that would
    move nothing.
    """
    return not t.spec.locks and t.suspect_moves < limits.MAX_SUSPECT_MOVES


def suspect_node(ctx: ApplyContext, cmd: SuspectNode) -> Result:
    """Flag (or clear) an up member as one the leader has not heard from lately.

    O(1): it only changes what later placements consider (``placement.plan_assignments``);
    what runs there stays until the node reports or is marked down. A flag already as asked
    changes nothing (no revision, no dedup entry).

    With ``requeue`` (only with ``suspect``), the member's running attempts that
    ``moves_on_suspicion`` allows go back to READY as ``NodeDown`` sends them (O(the member's
    slots)), each counting one ``suspect_moves``; the member stays up and its other attempts
    stay until it reports or node-down. The new attempts' tokens fence the old ones' late
    results, and this apply places them elsewhere (the flag is set first). Its actor
    activations are left to their leases, as ``NodeDown`` leaves them.
    """
    stale = leader_term_error(ctx, cmd)
    if stale is not None:
        return stale
    st = ctx.state
    m = st.members.get(cmd.node_id)
    if m is None:
        return Rejected(Code.NOT_FOUND, f"node {cmd.node_id!r} is not a member")
    if not m.up or m.incarnation != cmd.incarnation:
        return Rejected(
            Code.FAILED_PRECONDITION, f"node {cmd.node_id!r} incarnation {cmd.incarnation} is not up"
        )
    if cmd.requeue and not cmd.suspect:
        return Rejected(Code.INVALID_ARGUMENT, "requeue only goes with suspect")
    rev = 0
    if m.suspect != cmd.suspect:
        rev = ctx.advance()
        m.suspect = cmd.suspect
    if cmd.requeue:
        why = f"node {cmd.node_id} unreachable from the leader"
        # Sorted, as requeue_node_tasks does: the order decides each task's ready_seq.
        for run_id, task_id in sorted(st.running.get(cmd.node_id, {})):
            run = st.runs[run_id]
            t = run.tasks[task_id]
            if not moves_on_suspicion(t):
                continue
            rev = rev or ctx.advance()
            unrun(ctx, run_id, t, "lost", why)
            t.error = f"attempt {t.attempt} lost: {why}"
            t.suspect_moves += 1
            make_ready(ctx, run, t, rev, not_before_ms=0)
    return MemberResult(cmd.node_id)


def task_defaults(state: ClusterState, agents: Iterable[str]) -> dict[str, AgentOffer]:
    """The offer whose ``timeout_ms``/``retries`` a task of each type takes when it sets none.

    Deterministic: the up member with the lowest node id that offers the type, else (none
    up) the lowest node id of any member that offered it. The API resolves this before
    logging a submit, so the logged task spec is explicit and apply never looks it up.
    """
    want = set(agents)
    out: dict[str, AgentOffer] = {}
    fallback: dict[str, AgentOffer] = {}
    for node_id in sorted(state.members):
        m = state.members[node_id]
        for a in want.intersection(m.offers):
            (out if m.up else fallback).setdefault(a, m.offers[a])
    return fallback | out
