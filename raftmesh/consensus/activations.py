"""Actor activations: placement (pure), grant, drop, and re-placement as nodes come and go.

An activation is a lease (``messages.Activation``) granted with ``epoch`` = the granting
revision, so epochs only grow and a write fenced by an older one is rejected. Placement is
a pure function of the state: among the up members that offer the actor type
(``Member.actors``) and have room for it (the offer's ``max_activations`` of that type,
``limits.MAX_ACTIVATIONS_PER_NODE`` in all), the least loaded, ties broken by node id.

An address with queued durable messages and no activation is *unplaced*; it is placed as
soon as a node offering its type gains room (a registration, a dropped or given-up
activation), so an unplaced address of a type always means no up node has room for it.
Capabilities in an offer are kept for listings; no message asks for any, so placement
does not read them.
"""

from __future__ import annotations

import heapq

from . import limits
from .context import ApplyContext
from .messages import Activation, MessageStore, split_address
from .results import ActivationChanged, MessageQueued
from .state import ClusterState


def offered_types(st: ClusterState) -> dict[str, int]:
    """Actor types some member (up or down) offers (-> how many): a send to any other type
    cannot wait. An index (``ClusterState.actor_offers``), so a send stays O(its messages)."""
    return st.actor_offers


def _free(st: ClusterState, node_id: str, kind: str) -> int:
    """How many more activations of ``kind`` the member ``node_id`` can take now."""
    m = st.members[node_id]
    offer = m.actors.get(kind)
    if offer is None or not m.up:
        return 0
    store = st.messages
    cap = min(offer.max_activations or limits.MAX_ACTIVATIONS_PER_NODE, limits.MAX_ACTIVATIONS_PER_NODE)
    free = min(
        limits.MAX_ACTIVATIONS_PER_NODE - store.load_of(node_id), cap - store.type_load_of(node_id, kind)
    )
    return max(0, free)


def _room(st: ClusterState, node_id: str, kind: str) -> bool:
    return _free(st, node_id, kind) > 0


def place(st: ClusterState, address: str) -> str | None:
    """The node an activation of ``address`` goes to now, or None (no up node has room).

    O(members)."""
    if len(st.messages.activations) >= limits.MAX_ACTIVATIONS:
        return None
    kind = split_address(address)[0]
    best: tuple[int, str] | None = None
    for node_id in st.members:
        if _room(st, node_id, kind):
            key = (st.messages.load_of(node_id), node_id)
            if best is None or key < best:
                best = key
    return best[1] if best else None


def grant(ctx: ApplyContext, address: str, node_id: str, rev: int) -> Activation:
    """Activate ``address`` on ``node_id`` with epoch ``rev`` (the caller has advanced)."""
    st = ctx.state
    store = st.messages
    now = st.time_ms
    a = Activation(
        address, node_id, st.members[node_id].incarnation, rev, now, now + limits.ACTIVATION_LEASE_MS
    )
    store.activations[address] = a
    store.by_node.setdefault(node_id, {})[address] = None
    load = store.type_load.setdefault(node_id, {})
    kind = split_address(address)[0]
    load[kind] = load.get(kind, 0) + 1
    heapq.heappush(store.lease_deadlines, (a.deadline_ms, address, a.epoch))
    store.set_unplaced(address, False)
    ctx.emit(ActivationChanged(rev, address, node_id, rev, True))
    box = store.mailboxes.get(address)
    if box is not None and box.queue:
        ctx.emit(MessageQueued(rev, address, node_id))
    return a


def renew(store: MessageStore, a: Activation, now: int) -> None:
    a.deadline_ms = now + limits.ACTIVATION_LEASE_MS
    heapq.heappush(store.lease_deadlines, (a.deadline_ms, a.address, a.epoch))


def drop(ctx: ApplyContext, address: str, rev: int) -> str:
    """End ``address``'s activation; re-place it at once if messages wait for it.

    Returns the node that lost it (which has room again)."""
    store = ctx.state.messages
    a = store.activations.pop(address)
    on_node = store.by_node.get(a.node)
    if on_node is not None:
        on_node.pop(address, None)
        if not on_node:
            del store.by_node[a.node]
    kind = split_address(address)[0]
    load = store.type_load[a.node]
    load[kind] -= 1
    if not load[kind]:
        del load[kind]
        if not load:
            del store.type_load[a.node]
    ctx.emit(ActivationChanged(rev, address, a.node, a.epoch, False))
    box = store.mailboxes.get(address)
    if box is not None and box.queue:
        activate_or_wait(ctx, address, rev)
    return a.node


def activate_or_wait(ctx: ApplyContext, address: str, rev: int) -> Activation | None:
    """Place ``address`` (which has messages queued) or leave it unplaced until a node has room."""
    node = place(ctx.state, address)
    if node is None:
        ctx.state.messages.set_unplaced(address, True)
        return None
    return grant(ctx, address, node, rev)


def fill(ctx: ApplyContext, nodes: set[str], rev: int) -> int:
    """Place unplaced addresses now that ``nodes`` have gained room (or come up); how many.

    Only the types those nodes offer can have become placeable; all types if the cluster-wide
    cap was what held them. Addresses are placed in sorted order (the order must not depend
    on how a replica built its indexes)."""
    st = ctx.state
    store = st.messages
    if not store.unplaced:
        return 0
    if len(store.activations) >= limits.MAX_ACTIVATIONS:
        return 0
    kinds: set[str] = set()
    for n in nodes:
        m = st.members.get(n)
        if m is not None and m.up:
            kinds.update(m.actors)
    if len(store.activations) >= limits.MAX_ACTIVATIONS - len(nodes) * limits.MAX_ACTIVATIONS_PER_NODE:
        kinds = set(store.unplaced_by_type)  # near the global cap: any type may have been held by it
    placed = 0
    for kind in sorted(kinds.intersection(store.unplaced_by_type)):
        # At most this many can be placed: order only those, not every waiting address.
        room = min(
            sum(_free(st, n, kind) for n in st.members), limits.MAX_ACTIVATIONS - len(store.activations)
        )
        for address in heapq.nsmallest(room, store.unplaced_by_type[kind]):
            node = place(st, address)
            if node is None:
                break
            grant(ctx, address, node, rev)
            placed += 1
    return placed


def drop_node(ctx: ApplyContext, node_id: str, keep_incarnation: str, rev: int) -> set[str]:
    """Drop the activations ``node_id`` holds in any incarnation but ``keep_incarnation`` (a
    restarted process lost them); the queued ones are re-placed. Returns the nodes with room."""
    store = ctx.state.messages
    gone = [
        a
        for a in sorted(store.by_node.get(node_id, ()))
        if store.activations[a].incarnation != keep_incarnation
    ]
    for address in gone:
        drop(ctx, address, rev)
    return {node_id} if gone else set()


def expire_leases(ctx: ApplyContext, now: int, rev: int) -> tuple[int, set[str]]:
    """Drop the activations whose lease ``now`` passed (re-placing those with queued messages);
    how many, and the nodes that gained room."""
    store = ctx.state.messages
    n = 0
    freed: set[str] = set()
    while store.lease_deadlines and store.lease_deadlines[0][0] <= now:
        entry = heapq.heappop(store.lease_deadlines)
        if store.lease_live(entry):
            freed.add(drop(ctx, entry[1], rev))
            n += 1
    return n, freed
