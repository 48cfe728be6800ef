"""Messaging commands: durable sends and publishes, handler turns (acks), activations, topic
subscriptions and dead letters; and what a tick ends (leases, message TTLs, old replies).

Processors over an ``ApplyContext`` (see ``context.py``); the state is ``messages.MessageStore``
and placement is ``activations``. Each validates its command completely before it advances.

- ``SendMessages``: all or nothing. Each message gets one ``seq`` (a publish: the same seq in
  every subscriber's mailbox, where its copy names that subscriber as ``target``, and in the
  topic's retained log) and activates a target that has none (or leaves it unplaced). A message already past its TTL when committed goes straight
  to the dead letters. ``ttl_ms`` 0 means ``DEFAULT_MESSAGE_TTL_MS`` and ``sent_ms`` 0 the
  command's time, so a proposer that leaves them unset still gets a bounded, live message.
- ``AckMessage``: one handler turn. Fenced by the activation's epoch (ABORTED when stale). A
  ``seq`` no longer queued (acknowledged, expired) answers ``applied=False`` and applies
  nothing, so a redelivered message takes effect once. A message whose TTL passed (state
  time) before its ack commits is dead-lettered instead of acknowledged.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field, replace

from . import activations, kv_commands, limits
from .codes import Code
from .commands import (
    AckMessage,
    Activate,
    Deactivate,
    Fence,
    KvTxn,
    Message,
    MessageDeadLetter,
    RecordDeadLetters,
    RenewActivations,
    SendMessages,
    SubscribeTopic,
)
from .context import ApplyContext
from .messages import (
    DeadMessage,
    Mailbox,
    MessageStore,
    Published,
    Queued,
    dead_letter_error,
    message_error,
    publish_targets,
    reply_error,
    reply_key,
    split_address,
)
from .results import (
    ActivationResult,
    ChangedResult,
    MessageAcked,
    MessageQueued,
    MessagesSent,
    Rejected,
    RenewResult,
    ReplyCommitted,
    Result,
    TopicPublished,
)

EXPIRED = "expired"
"""The dead-letter reason of a durable message whose TTL passed in its mailbox."""


@dataclass(slots=True)
class _Plan:
    """Validated sends, ready to commit: each message (normalized) and the mailboxes it goes to."""

    items: list[tuple[Message, tuple[str, ...]]] = field(default_factory=list)
    dead: list[tuple[int, str, str]] = field(default_factory=list)
    """(index in items, address or "", reason) of messages (or publish legs) recorded as dead
    letters instead."""


def _plan_sends(ctx: ApplyContext, msgs: tuple[Message, ...]) -> tuple[Rejected | None, _Plan]:
    st = ctx.state
    store = st.messages
    plan = _Plan()
    if len(msgs) > limits.MAX_MESSAGES_PER_SEND:
        return Rejected(
            Code.INVALID_ARGUMENT, f"at most {limits.MAX_MESSAGES_PER_SEND} messages are sent at once"
        ), plan
    now = ctx.now_ms
    offered: dict[str, int] | None = None
    adds: dict[str, int] = {}
    for i, m in enumerate(msgs):
        why = message_error(m)
        if why:
            return Rejected(Code.INVALID_ARGUMENT, f"message {i} ({m.id[:40]!r}): {why}"), plan
        if not (m.durable and m.sent_ms and m.ttl_ms):  # the API fills these in: usually no copy
            m = replace(
                m,
                durable=True,
                sent_ms=m.sent_ms or now,
                ttl_ms=m.ttl_ms or limits.DEFAULT_MESSAGE_TTL_MS,
            )
        if offered is None:
            offered = activations.offered_types(st)
        if m.expires_ms <= now:
            plan.dead.append((len(plan.items), "", "expired before it was committed"))
            plan.items.append((m, ()))
            continue
        if m.target:
            kind = split_address(m.target)[0]
            if kind not in offered:
                return Rejected(
                    Code.FAILED_PRECONDITION,
                    f"message {i} ({m.id[:40]!r}): no node offers actor type {kind!r} "
                    "(register an agent module with @raftmesh.actor of that type)",
                ), plan
            targets: tuple[str, ...] = (m.target,)
        else:
            found: dict[str, None] = {}
            for address in publish_targets(store, m.topic, m.source):
                kind = split_address(address)[0]
                why = limits.address_error("subscriber", address)
                if why or kind not in offered:
                    reason = why or f"no node offers actor type {kind!r}"
                    plan.dead.append((len(plan.items), address, f"undeliverable: {reason}"))
                    continue
                found[address] = None
            targets = tuple(found)
        for a in targets:
            adds[a] = adds.get(a, 0) + 1
        plan.items.append((m, targets))
    total = sum(adds.values())
    if store.queued + total > limits.MAX_QUEUED_MESSAGES:
        return Rejected(
            Code.RESOURCE_EXHAUSTED,
            f"{store.queued} durable messages are queued; the cluster holds at most {limits.MAX_QUEUED_MESSAGES}",
        ), plan
    for a in sorted(adds):
        box = store.mailboxes.get(a)
        if (len(box.queue) if box else 0) + adds[a] > limits.MAX_MAILBOX_MESSAGES:
            return Rejected(
                Code.RESOURCE_EXHAUSTED,
                f"the mailbox of {a!r} is full ({limits.MAX_MAILBOX_MESSAGES} messages): retry later",
            ), plan
    return None, plan


def add_dead_letter(store: MessageStore, message: Message, reason: str, node: str, now: int) -> None:
    store.seq += 1
    store.dead_letters.append(DeadMessage(store.seq, now, MessageDeadLetter(message, reason), node))
    store.dead_letters_total += 1
    while len(store.dead_letters) > limits.MAX_MESSAGE_DEAD_LETTERS:
        store.dead_letters.popleft()


def _retain(store: MessageStore, m: Message, seq: int, now: int) -> None:
    log = store.topics.get(m.topic)
    if log is None:
        log = store.topics[m.topic] = deque()
    log.append(Published(seq, m, now))
    while len(log) > limits.MAX_TOPIC_RETAINED:
        log.popleft()
    heapq.heappush(store.topic_order, (seq, m.topic))
    while len(store.topics) > limits.MAX_TOPICS_RETAINED:
        entry = heapq.heappop(store.topic_order)
        if store.topic_live(entry):
            del store.topics[entry[1]]


def _commit_sends(ctx: ApplyContext, plan: _Plan, rev: int) -> MessagesSent:
    st = ctx.state
    store = st.messages
    now = st.time_ms
    dead: dict[int, list[tuple[str, str]]] = {}
    for i, address, reason in plan.dead:
        dead.setdefault(i, []).append((address, reason))
    seqs: list[int] = []
    touched: dict[str, None] = {}
    for i, (m, targets) in enumerate(plan.items):
        for address, reason in dead.get(i, ()):
            add_dead_letter(store, replace(m, target=address) if address else m, reason, "", now)
        if m.expires_ms <= now:
            seqs.append(store.seq)  # its dead letter's
            continue
        store.seq += 1
        seq = store.seq
        seqs.append(seq)
        if m.topic:
            _retain(store, m, seq, now)
            ctx.emit(TopicPublished(rev, m.topic, seq))
        for a in targets:
            box = store.mailboxes.get(a)
            if box is None:
                box = store.mailboxes[a] = Mailbox(a)
            # A publish leg names the subscriber it is for (its handler, its dead letter).
            box.queue[seq] = Queued(seq, m if m.target else replace(m, target=a), now)
            store.queued += 1
            heapq.heappush(store.expiries, (m.expires_ms, a, seq))
            touched[a] = None
    for a in touched:
        act = store.activations.get(a)
        if act is not None:
            ctx.emit(MessageQueued(rev, a, act.node))
        elif a in store.unplaced or activations.activate_or_wait(ctx, a, rev) is None:
            ctx.emit(MessageQueued(rev, a, ""))
        # else ``grant`` announced the new activation and its queued messages
    return MessagesSent(tuple(seqs), tuple(t for _, t in plan.items))


def send(ctx: ApplyContext, cmd: SendMessages) -> Result:
    if not cmd.messages:
        return Rejected(Code.INVALID_ARGUMENT, "send at least one message")
    why = kv_commands.fence_shape_error(cmd.fence)
    if why:
        return Rejected(Code.INVALID_ARGUMENT, why)
    rejected, plan = _plan_sends(ctx, cmd.messages)
    if rejected is not None:
        return rejected
    fenced = kv_commands.fence_error(ctx, cmd.fence)
    if fenced:
        return Rejected(Code.ABORTED, fenced)
    rev = ctx.advance()
    sent = _commit_sends(ctx, plan, rev)
    ctx.state.messages.compact()
    return sent


def _unqueue(store: MessageStore, box: Mailbox, seq: int) -> Queued:
    q = box.queue.pop(seq)
    store.queued -= 1
    if not box.queue:
        del store.mailboxes[box.address]
        store.set_unplaced(box.address, False)
    return q


def _keep_reply(ctx: ApplyContext, reply: Message, requester: str, rev: int) -> None:
    store = ctx.state.messages
    now = ctx.state.time_ms
    key = reply_key(requester, reply.correlation_id)
    if key not in store.replies:  # the first answer stands (a retried request reads it)
        store.replies[key] = (now, reply)
        ctx.emit(ReplyCommitted(rev, reply.correlation_id, reply.reply_to))
    trim_replies(store, now)


def trim_replies(store: MessageStore, now: int) -> int:
    """Forget replies past ``REPLY_RETENTION_MS`` or beyond ``MAX_RETAINED_REPLIES``; how many."""
    n = 0
    horizon = now - limits.REPLY_RETENTION_MS
    while store.replies:
        ms = next(iter(store.replies.values()))[0]
        if len(store.replies) <= limits.MAX_RETAINED_REPLIES and ms >= horizon:
            break
        store.replies.popitem(last=False)
        n += 1
    return n


def ack(ctx: ApplyContext, cmd: AckMessage) -> Result:
    st = ctx.state
    store = st.messages
    why = limits.id_error("node id", cmd.node_id) or limits.address_error("address", cmd.address)
    if not why and cmd.seq < 0:
        why = "seq must not be negative (0: a fast-path message's turn)"
    if not why and any(o.kind == "get" for o in cmd.kv):
        why = "a handler's turn writes KV (put, delete); it reads with ctx.kv.get"
    fence = Fence(actor=cmd.address, token=cmd.epoch)
    if not why:
        why = kv_commands.validate_txn(ctx, KvTxn(cmd.request_id, cmd.ts_ms, success=cmd.kv, fence=fence))
    if not why and cmd.reply is not None:
        why = reply_error(cmd.reply)
    if not why and cmd.dead_letter:
        why = _reason_error("dead_letter", cmd.dead_letter)
        if not why and (not cmd.seq or cmd.kv or cmd.sends):
            why = "dead_letter gives up a queued message (a seq): its turn writes and sends nothing"
    if not why and cmd.also:
        why = _also_error(cmd)
    if why:
        return Rejected(Code.INVALID_ARGUMENT, why)
    rejected, plan = _plan_sends(ctx, cmd.sends)
    if rejected is not None:
        return rejected
    fenced = kv_commands.fence_error(ctx, fence)
    if not fenced and store.activations[cmd.address].node != cmd.node_id:
        fenced = f"fenced: actor {cmd.address!r} is activated on {store.activations[cmd.address].node}"
    if fenced:
        return Rejected(Code.ABORTED, fenced)
    if cmd.also:
        return _ack_many(ctx, cmd)
    box = store.mailboxes.get(cmd.address)
    q = box.queue.get(cmd.seq) if box is not None and cmd.seq else None
    if cmd.seq and (box is None or q is None):
        return MessageAcked(False, st.revision)  # acknowledged (or expired) before: effect-once
    changes, full = kv_commands.plan_ops(ctx, cmd.kv)
    if full:
        return Rejected(Code.RESOURCE_EXHAUSTED, full)
    if q is None and not (changes or plan.items or cmd.reply):
        return MessageAcked(True, st.revision)  # a fast-path turn with no effects
    rev = ctx.advance()
    if q is not None and box is not None:
        if q.message.expires_ms <= st.time_ms:
            _unqueue(store, box, cmd.seq)
            add_dead_letter(store, q.message, EXPIRED, "", st.time_ms)
            return MessageAcked(False, rev)
        _unqueue(store, box, cmd.seq)
        if cmd.dead_letter:
            add_dead_letter(store, q.message, cmd.dead_letter, cmd.node_id, st.time_ms)
        else:
            box.acked += 1
    kv_commands.write_ops(ctx, cmd.kv, rev)
    if plan.items:
        _commit_sends(ctx, plan, rev)
    if cmd.reply is not None:
        reply_to = cmd.reply.reply_to or (q.message.reply_to if q else "")
        # Keyed by who asked (the queued request's sender): ids are per sender.
        requester = q.message.sender if q is not None else cmd.reply.target
        _keep_reply(ctx, replace(cmd.reply, epoch=cmd.epoch, reply_to=reply_to), requester, rev)
    store.compact()
    return MessageAcked(True, rev)


def _also_error(cmd: AckMessage) -> str:
    if len(cmd.also) >= limits.MAX_ACKS_PER_COMMAND:
        return f"one ack acknowledges at most {limits.MAX_ACKS_PER_COMMAND} seqs (seq and also)"
    if cmd.seq <= 0 or cmd.kv or cmd.sends or cmd.reply is not None or cmd.dead_letter:
        return "also acknowledges effect-free turns: with a seq, and no KV, sends, reply or dead_letter"
    if any(s <= 0 for s in cmd.also) or len(set(cmd.also) | {cmd.seq}) != len(cmd.also) + 1:
        return "also must hold distinct positive seqs, not seq itself"
    return ""


def _ack_many(ctx: ApplyContext, cmd: AckMessage) -> Result:
    """Effect-free turns of one (fenced) activation: each seq still queued is unqueued, an
    expired one dead-lettered as the tick would; the rest were acknowledged before (effect-once).
    ``applied`` says whether any was acknowledged by this command."""
    st = ctx.state
    store = st.messages
    box = store.mailboxes.get(cmd.address)
    seqs = (cmd.seq, *cmd.also)
    if box is None or not any(s in box.queue for s in seqs):
        return MessageAcked(False, st.revision)
    rev = ctx.advance()
    acked = False
    for s in seqs:
        q = box.queue.get(s)
        if q is None:
            continue
        _unqueue(store, box, s)
        if q.message.expires_ms <= st.time_ms:
            add_dead_letter(store, q.message, EXPIRED, "", st.time_ms)
        else:
            box.acked += 1
            acked = True
    store.compact()
    return MessageAcked(acked, rev)


def activate(ctx: ApplyContext, cmd: Activate) -> Result:
    st = ctx.state
    why = limits.address_error("address", cmd.address)
    if why:
        return Rejected(Code.INVALID_ARGUMENT, why)
    a = st.messages.activations.get(cmd.address)
    if a is not None:
        return ActivationResult(a.address, a.node, a.epoch, a.deadline_ms, False)
    kind = split_address(cmd.address)[0]
    if kind not in activations.offered_types(st):
        return Rejected(Code.FAILED_PRECONDITION, f"no node offers actor type {kind!r}")
    if len(st.messages.activations) >= limits.MAX_ACTIVATIONS:
        return Rejected(
            Code.RESOURCE_EXHAUSTED, f"the cluster holds its limit of {limits.MAX_ACTIVATIONS} activations"
        )
    node = activations.place(st, cmd.address)
    if node is None:
        return Rejected(
            Code.FAILED_PRECONDITION,
            f"no up node offering actor type {kind!r} has room for another activation: retry later",
        )
    rev = ctx.advance()
    a = activations.grant(ctx, cmd.address, node, rev)
    return ActivationResult(a.address, a.node, a.epoch, a.deadline_ms, True)


def renew(ctx: ApplyContext, cmd: RenewActivations) -> Result:
    st = ctx.state
    store = st.messages
    why = limits.id_error("node id", cmd.node_id) or limits.name_error(
        "incarnation", cmd.incarnation, limits.MAX_ID_CHARS
    )
    if not why and len(cmd.items) > limits.MAX_ACTIVATIONS_PER_NODE:
        why = f"renew at most {limits.MAX_ACTIVATIONS_PER_NODE} activations at once"
    if why:
        return Rejected(Code.INVALID_ARGUMENT, why)
    if not st.up_member(cmd.node_id, cmd.incarnation):
        # A node marked down (or an old process) keeps nothing: its leases run out and move.
        return RenewResult(0, tuple(a for a, _ in cmd.items))
    keep = []
    lost = []
    for address, epoch in cmd.items:
        a = store.activations.get(address)
        if a is not None and a.epoch == epoch and a.node == cmd.node_id and a.incarnation == cmd.incarnation:
            keep.append(a)
        else:
            lost.append(address)
    if keep:
        ctx.advance()
        for a in keep:
            activations.renew(store, a, st.time_ms)
        store.compact()
    return RenewResult(len(keep), tuple(lost))


def deactivate(ctx: ApplyContext, cmd: Deactivate) -> Result:
    st = ctx.state
    store = st.messages
    why = limits.id_error("node id", cmd.node_id) or limits.address_error("address", cmd.address)
    if why:
        return Rejected(Code.INVALID_ARGUMENT, why)
    a = store.activations.get(cmd.address)
    if a is None or a.epoch != cmd.epoch or a.node != cmd.node_id:
        return RenewResult(0, (cmd.address,))  # not this node's any more: nothing to give up
    box = store.mailboxes.get(cmd.address)
    if box is not None and box.queue:
        return Rejected(
            Code.FAILED_PRECONDITION,
            f"actor {cmd.address!r} has {len(box.queue)} queued message(s); handle them before deactivating",
        )
    rev = ctx.advance()
    activations.drop(ctx, cmd.address, rev)
    activations.fill(ctx, {cmd.node_id}, rev)
    return RenewResult(0, (cmd.address,))


def subscribe(ctx: ApplyContext, cmd: SubscribeTopic) -> Result:
    store = ctx.state.messages
    why = limits.name_error("topic", cmd.topic, limits.MAX_TOPIC_CHARS)
    if not why:
        if "/" in cmd.subscriber:
            why = limits.address_error("subscriber", cmd.subscriber)
        else:
            why = limits.id_error("subscriber (an actor type)", cmd.subscriber)
    if why:
        return Rejected(Code.INVALID_ARGUMENT, why)
    subs = store.subscriptions.get(cmd.topic)
    present = subs is not None and cmd.subscriber in subs
    if present == cmd.subscribe:
        return ChangedResult(0)
    if cmd.subscribe:
        if subs is not None and len(subs) >= limits.MAX_SUBSCRIBERS_PER_TOPIC:
            return Rejected(
                Code.RESOURCE_EXHAUSTED,
                f"topic {cmd.topic!r} has its limit of {limits.MAX_SUBSCRIBERS_PER_TOPIC} subscribers",
            )
        if store.subscription_count >= limits.MAX_SUBSCRIPTIONS:
            return Rejected(
                Code.RESOURCE_EXHAUSTED,
                f"the cluster holds its limit of {limits.MAX_SUBSCRIPTIONS} subscriptions",
            )
        ctx.advance()
        store.subscriptions.setdefault(cmd.topic, {})[cmd.subscriber] = None
        store.subscription_count += 1
        return ChangedResult(1)
    assert subs is not None
    ctx.advance()
    del subs[cmd.subscriber]
    if not subs:
        del store.subscriptions[cmd.topic]
    store.subscription_count -= 1
    return ChangedResult(1)


def _reason_error(what: str, reason: str) -> str:
    if not reason or len(reason) > limits.MAX_DEAD_LETTER_REASON_CHARS or not limits.printable(reason):
        return f"{what} must be printable text of 1 to {limits.MAX_DEAD_LETTER_REASON_CHARS} characters"
    return ""


def record_dead_letters(ctx: ApplyContext, cmd: RecordDeadLetters) -> Result:
    why = limits.id_error("node id", cmd.node_id)
    if not why and not 1 <= len(cmd.items) <= limits.MAX_DEAD_LETTERS_PER_RECORD:
        why = f"record 1 to {limits.MAX_DEAD_LETTERS_PER_RECORD} dead letters at once"
    for i, d in enumerate(cmd.items):
        if why:
            break
        bad = dead_letter_error(d.message)
        why = f"dead letter {i}: {bad}" if bad else _reason_error(f"dead letter {i}: the reason", d.reason)
    if why:
        return Rejected(Code.INVALID_ARGUMENT, why)
    ctx.advance()
    store = ctx.state.messages
    for d in cmd.items:
        add_dead_letter(store, d.message, d.reason, cmd.node_id, ctx.state.time_ms)
    return ChangedResult(len(cmd.items))


def expire(ctx: ApplyContext, now: int, rev: int) -> int:
    """The tick's part: queued messages past their TTL become dead letters, leases that ran out
    end (an address with messages still queued is placed again at once), old replies go.
    How many messages and activations ended."""
    store = ctx.state.messages
    n = 0
    while store.expiries and store.expiries[0][0] <= now:
        entry = heapq.heappop(store.expiries)
        if not store.expiry_live(entry):
            continue
        box = store.mailboxes[entry[1]]
        q = _unqueue(store, box, entry[2])
        add_dead_letter(store, q.message, EXPIRED, "", now)
        n += 1
    ended, freed = activations.expire_leases(ctx, now, rev)
    if freed:
        activations.fill(ctx, freed, rev)
    trim_replies(store, now)
    store.compact()
    return n + ended
