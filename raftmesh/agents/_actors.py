"""The actor host: runs the actor activations the replicated state gives this node.

Level-triggered like the agent host: on every applied batch (``poke``) it compares the
activations of this node's incarnation in the local replica with the workers it runs,
starts what is missing and stops what moved or expired. One worker per activation
handles one message at a time (a turn): the highest priority first among its durable
mailbox (in the replica, sequence order within a priority) and its fast inbox (what the
router hands over through ``accept``, arrival order within a priority). A fast message is
acknowledged to its sender only once handled (``done``); an activation that stops gives
the ones it has not handled back to their senders (retryable), who resend them in order.

A turn commits as ONE ``AckMessage`` carrying the mailbox ack (``seq``; 0 for a fast
message), the KV writes (``ctx.kv``, and ``ctx.state`` saved under ``actors/TYPE/KEY``
if it changed), the durable sends and publishes, and the reply to a durable request,
all fenced by the activation's epoch. A fast turn with no effect commits nothing. A
fast request's reply goes back through the router after the ack committed.

The lease: a renewal loop extends every activation here each third of
``ACTIVATION_LEASE_MS``; a worker starts no turn once its lease may have ended by the
local clock (last renewal sent + lease - ``LEASE_MARGIN_S``), so a cut-off node stops
before another node is granted the address. The state machine's epoch fencing is what
makes a late write harmless anyway.

A handler that raises, or whose ack is rejected (other than for back-pressure), is tried
again (``MAX_HANDLER_ATTEMPTS`` in all, state rolled back each time); then the message is
dead-lettered with the error (a request gets an error reply) and acknowledged, so one bad
message never blocks a mailbox. An ack rejected for a full mailbox or KV
(RESOURCE_EXHAUSTED) is back-pressure: the turn is tried again with a growing backoff
until the message's TTL ends it.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import hashlib
import heapq
import itertools
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import calls, tracing
from ..clock import Clock
from ..consensus import limits, values
from ..consensus.codes import Code
from ..consensus.commands import (
    AckMessage,
    Command,
    Deactivate,
    Fence,
    KvOp,
    LockAcquire,
    LockRelease,
    Message,
    RenewActivations,
    SubscribeTopic,
)
from ..consensus.messages import Activation, Mailbox, message_error, split_address
from ..consensus.results import (
    ActivationChanged,
    Event,
    LockAcquireResult,
    LockKeepAliveResult,
    LockReleaseResult,
    MemberChanged,
    MessageAcked,
    MessageQueued,
    Rejected,
    RenewResult,
    Result,
    expect,
)
from ..consensus.state import ClusterState
from ..errors import DeadlineExceeded, InvalidArgument, RaftmeshError, StaleToken
from ..messaging.api import Done, Refused
from ._messaging import ERROR_REPLY_TYPE, Messenger, Router, derived_message_id, error_payload
from ._registry import ActorDef, AgentRegistry
from ._task_clients import Reader, Writer

log = logging.getLogger(__name__)

STATE_KEY_PREFIX = "actors/"
"""``ctx.state`` of ``TYPE/KEY`` lives in the KV under ``actors/TYPE/KEY``."""
LEASE_MARGIN_S = 1.0
"""A worker stops taking turns this long before its lease may end by the local clock."""
RENEW_EVERY_S = limits.ACTIVATION_LEASE_MS / 3000
MAX_RENEW_ITEMS = 1000
"""Activations per ``RenewActivations`` command."""
MAX_HANDLER_ATTEMPTS = 3
MAX_INFLIGHT_ACKS = 64
"""Effect-free acks (a turn that changed nothing but its mailbox) in flight per activation."""
RETRY_BACKOFF_S = 0.2
MAX_HELD_BACKOFF_S = 5.0
"""The longest wait before a turn whose ack met a full mailbox or KV is tried again."""


def state_key(address: str) -> str:
    return STATE_KEY_PREFIX + address


def reply_to(
    msg: Message, address: str, epoch: int, payload: Any, now_ms: int, error: bool = False
) -> Message:
    """The answer to request ``msg`` from activation ``address``@``epoch``.

    Routed by ``reply_to`` (the requesting node) and ``correlation_id`` (the request's id);
    its target is the requester when that is an address (an actor, ``task:RUN/TASK``);
    a client has none."""
    target = msg.sender if msg.sender and not limits.address_error("", msg.sender) else ""
    return Message(
        id=derived_message_id("reply", address, msg.id),
        sender=address,
        target=target,
        type=ERROR_REPLY_TYPE if error else msg.type,
        payload=payload,
        correlation_id=msg.id,
        trace_id=msg.trace_id,
        ttl_ms=msg.ttl_ms or limits.DEFAULT_MESSAGE_TTL_MS,
        sent_ms=now_ms,
        durable=msg.durable,
        reply_to=msg.reply_to,
        epoch=epoch,
    )


def _reply_problem(reply: Message) -> str:
    """What ``message_error`` checks of a reply that has no target (a client's): its payload."""
    if not isinstance(reply.payload, bytes):
        why = values.problem(reply.payload)
        if why:
            return f"payload: {why}"
    size = limits.encoded_size(reply.payload)
    if size > limits.MAX_MESSAGE_PAYLOAD_BYTES:
        return f"payload is {size} bytes encoded; the limit is {limits.MAX_MESSAGE_PAYLOAD_BYTES}"
    return ""


class ActorKv:
    """The KV store as a turn sees it: writes buffered into the turn's ack, read-your-writes."""

    def __init__(self, reads: Reader, writer: Writer) -> None:
        self._reads = reads
        self._writer = writer
        self.ops: dict[str, KvOp] = {}

    async def get(self, key: str) -> Any:
        """This turn's own write of ``key``, else the committed value (linearizable) or None."""
        op = self.ops.get(key)
        if op is not None:
            return op.value if op.kind == "put" else None
        await self._writer.barrier()

        def value(st: ClusterState) -> Any:
            e = st.kv.get(key)
            return None if e is None else copy.deepcopy(e.value)

        return self._reads.read(value)

    def put(self, key: str, value: Any) -> None:
        why = (
            limits.name_error("key", key, limits.MAX_KV_KEY_CHARS)
            if isinstance(key, str)
            else "key must be a string"
        )
        why = why or values.problem(value)
        if why:
            raise InvalidArgument(f"ctx.kv.put: {why}")
        self.ops.pop(key, None)  # the latest write of a key goes last
        self.ops[key] = KvOp("put", key, copy.deepcopy(value))

    def delete(self, key: str) -> None:
        why = (
            limits.name_error("key", key, limits.MAX_KV_KEY_CHARS)
            if isinstance(key, str)
            else "key must be a string"
        )
        if why:
            raise InvalidArgument(f"ctx.kv.delete: {why}")
        self.ops.pop(key, None)
        self.ops[key] = KvOp("delete", key)


def _turn_limit(adef: ActorDef) -> asyncio.Timeout:
    """The deadline of one turn (``@raftmesh.actor(timeout_s=)``; 0: none)."""
    return asyncio.timeout(adef.timeout_s or None)


def _stale(res: Result) -> Result:
    if isinstance(res, Rejected) and res.code is Code.ABORTED:
        raise StaleToken(res.message)
    return res


class ActorLocks:
    """Locks under a lease, held by one activation (owner ``actor:TYPE/KEY@EPOCH``) and fenced
    by its epoch: a request or renewal from an activation that is no longer current is
    rejected (``StaleToken``), so a deposed activation never takes or keeps a lock."""

    def __init__(self, writer: Writer, clock: Clock, address: str, epoch: int) -> None:
        self._writer = writer
        self._clock = clock
        self.fence = Fence(actor=address, token=epoch)
        owner = f"actor:{address}@{epoch}"
        if len(owner) > limits.MAX_ID_CHARS:  # an address may be longer than an owner name
            digest = hashlib.sha256(address.encode()).hexdigest()[:16]
            owner = f"actor:{address[:64]}~{digest}@{epoch}"
        self.owner = owner

    async def try_acquire(self, name: str, *, ttl_s: float = 30.0, mode: str = "exclusive") -> int | None:
        """The fencing token, or None if the lock is not free now."""
        cmd = LockAcquire(
            uuid.uuid4().hex,
            self._clock.now_ms(),
            owner=self.owner,
            items=((name, mode),),
            ttl_ms=int(ttl_s * 1000),
            fence=self.fence,
        )
        out = expect(_stale(await self._writer.propose(cmd)), LockAcquireResult)
        return out.token if out.granted else None

    async def keep_alive(self, name: str, token: int) -> int:
        """Extend the lease of a held lock; its new deadline (state time, ms)."""
        cmd = LockRelease(
            uuid.uuid4().hex,
            self._clock.now_ms(),
            owner=self.owner,
            name=name,
            token=token,
            keep_alive=True,
            fence=self.fence,
        )
        return expect(_stale(await self._writer.propose(cmd)), LockKeepAliveResult).deadline_ms

    async def release(self, name: str, token: int) -> None:
        res = await self._writer.propose(
            LockRelease(uuid.uuid4().hex, self._clock.now_ms(), owner=self.owner, name=name, token=token)
        )
        expect(res, LockReleaseResult)


class ActorContext:
    """What ``on_message(self, ctx, msg)`` (and ``on_activate(self, ctx)``) receives for one turn.

    ``state`` is this key's dict, saved with the turn if changed; ``kv`` buffers writes into
    the turn; ``send``/``publish`` with ``durable=True`` commit with the turn, fast ones go at
    once; ``request`` waits for an answer; ``reply(x)`` answers the request being handled
    (else the return value of ``on_message`` is the answer).
    """

    def __init__(
        self,
        address: str,
        epoch: int,
        node_id: str,
        message: Message | None,
        state: dict[str, Any],
        kv: ActorKv,
        messenger: Messenger,
        logger: logging.LoggerAdapter[logging.Logger],
        locks: ActorLocks,
    ) -> None:
        self.address = address
        self.type, self.key = split_address(address)
        self.epoch = epoch
        self.node_id = node_id
        self.message = message
        self.trace_id = message.trace_id if message is not None else ""
        self.state = state
        self.kv = kv
        self.logger = logger
        self.locks = locks
        self._messenger = messenger
        self.replied = False
        self.reply_value: Any = None

    async def send(
        self,
        target: str,
        payload: Any,
        *,
        durable: bool = False,
        type: str = "",
        ttl_ms: int = 0,
        priority: int = 0,
    ) -> Any:
        return await self._messenger.send(
            target, payload, durable=durable, type=type, ttl_ms=ttl_ms, priority=priority
        )

    async def request(
        self, target: str, payload: Any, *, timeout_s: float = 30.0, durable: bool = False, type: str = ""
    ) -> Any:
        if target == self.address:
            raise InvalidArgument(
                f"{self.address} cannot request itself: its own turn would wait for itself until the timeout"
            )
        return await self._messenger.request(target, payload, timeout_s=timeout_s, durable=durable, type=type)

    async def publish(
        self, topic: str, payload: Any, *, durable: bool = False, source: str = "", type: str = ""
    ) -> Any:
        return await self._messenger.publish(topic, payload, durable=durable, source=source, type=type)

    def reply(self, payload: Any) -> None:
        """Answer the request being handled (the handler's return value is then ignored)."""
        if self.message is None or not self.message.reply_to:
            raise InvalidArgument("ctx.reply: the message being handled is not a request")
        self.replied, self.reply_value = True, payload


@dataclass(eq=False)
class _Worker:
    address: str
    epoch: int
    adef: ActorDef
    valid_until: float
    """Local monotonic time the lease may end (minus the margin): no turn starts after it."""
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    inbox: list[tuple[int, int, Message]] = field(default_factory=list)
    """Heap of (-priority, arrival, message): the fast messages waiting for a turn."""
    pending: dict[int, Done] = field(default_factory=dict)
    """arrival -> how to answer a fast message's sender: those in the inbox and the one in its
    turn. Acked once handled; given back (retry) if the activation stops first."""
    handled: dict[int, None] = field(default_factory=dict)
    """Durable seqs acked here that the replica may still show queued."""
    queued: list[tuple[int, int]] = field(default_factory=list)
    """Heap of (-priority, seq) of the mailbox's messages seen so far (some since acked or
    expired: dropped when they come to the top), so a turn finds the next one in O(log n)."""
    seen_seq: int = 0
    """The highest mailbox seq pushed onto ``queued`` (a mailbox is in seq order, seqs never reused)."""
    failures: dict[str, int] = field(default_factory=dict)
    """Message id -> handler attempts that failed (raised, or their ack was rejected)."""
    held: dict[str, int] = field(default_factory=dict)
    """Message id -> turns whose ack met back-pressure (RESOURCE_EXHAUSTED)."""
    inflight: set[asyncio.Task[None]] = field(default_factory=set)
    """Effect-free acks being committed while the next turns run."""
    to_ack: list[int] = field(default_factory=list)
    """Seqs of effect-free turns whose ack is not proposed yet (the next batch)."""
    acking: int = 0
    """Seqs in the batch being committed."""
    ack_room: asyncio.Event = field(default_factory=asyncio.Event)
    flusher: asyncio.Task[None] | None = None
    task: asyncio.Task[None] | None = None
    instance: Any = None
    state: dict[str, Any] = field(default_factory=dict)
    saved: Any = None
    """``state`` as last committed (a turn writes it when it differs, ``on_activate``'s changes too)."""
    last_active: float = 0.0
    stopped: bool = False
    deactivating: bool = False
    ready: bool = False
    """Activated (state loaded, ``on_activate`` run)."""


@dataclass
class ActorPlan:
    start: list[Activation] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)
    wake: list[str] = field(default_factory=list)
    """Addresses with durable messages queued."""


class ActorHost:
    """Implements ``raftmesh.messaging.api.Deliver`` for the node's router."""

    def __init__(
        self,
        node_id: str,
        incarnation: str,
        registry: AgentRegistry,
        reads: Reader,
        writer: Writer,
        clock: Clock,
        router: Router | None = None,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self.node_id = node_id
        self.incarnation = incarnation
        self._actors = registry.actors
        self._reads = reads
        self._writer = writer
        self._clock = clock
        self._router: Router | None = router
        """The node's router (set by ``attach_router`` once the node has made it)."""
        self._ready = ready
        self._workers: dict[str, _Worker] = {}
        self._wake = asyncio.Event()
        self._renew_now = asyncio.Event()
        self._arrivals = itertools.count()
        self.stats: dict[str, int] = {
            "turns": 0,
            "acks": 0,
            "acks_not_applied": 0,
            "fenced": 0,
            "handler_errors": 0,
            "held_back": 0,
            "dead_lettered": 0,
            "activated": 0,
            "deactivated": 0,
            "refused": 0,
            "given_back": 0,
        }

    # ---- what the router and the runtime call --------------------------------------

    def attach_router(self, router: Router) -> None:
        self._router = router

    @property
    def router(self) -> Router:
        if self._router is None:
            raise RaftmeshError("the node's message router is not attached yet")
        return self._router

    def poke(self) -> None:
        """Reconcile with the replica soon (everything: activations, mailboxes)."""
        self._wake.set()

    def applied(self, events: list[Event]) -> None:
        """After an applied batch: wake the workers whose mailbox got messages; reconcile
        fully only when activations or members changed (or the state was replaced: no events),
        so a busy cluster does not cost a pass over every activation here per batch."""
        if not events:
            self.poke()
            return
        for e in events:
            if isinstance(e, MessageQueued) and e.node == self.node_id:
                w = self._workers.get(e.address)
                if w is None:
                    self.poke()
                else:
                    w.wake.set()
            elif isinstance(e, (ActivationChanged, MemberChanged)):
                self.poke()

    @property
    def running(self) -> int:
        return len(self._workers)

    def activations(self) -> dict[str, int]:
        """address -> epoch of the workers running here."""
        return {a: w.epoch for a, w in self._workers.items()}

    def accept(self, msg: Message, done: Done) -> Refused | None:
        """Take a fast message for an activation held here into its inbox, or say why not.
        ``done`` answers its sender once it is handled (or given back: the activation stopped)."""
        if msg.expires_ms and msg.expires_ms <= self._clock.now_ms():
            return self._refuse("expired before it was handled", False)
        kind, _ = split_address(msg.target)
        if kind not in self._actors:
            return self._refuse(f"node {self.node_id} does not offer actor type {kind!r}", False)
        w = self._workers.get(msg.target)
        if w is None and self._ready():
            self._reconcile()  # the activation may have been applied a moment ago
            w = self._workers.get(msg.target)
        if w is None or w.stopped:
            return self._refuse(f"{msg.target} is not activated on node {self.node_id}", True)
        if w.deactivating:
            return self._refuse(f"{msg.target} is being deactivated on node {self.node_id}", True)
        if self._clock.monotonic() >= w.valid_until:
            return self._refuse(f"{msg.target}'s lease on node {self.node_id} is not renewed", True)
        if len(w.inbox) >= limits.MAX_INBOX_MESSAGES:
            return self._refuse(f"{msg.target}'s inbox is full ({limits.MAX_INBOX_MESSAGES})", True)
        arrival = next(self._arrivals)
        heapq.heappush(w.inbox, (-msg.priority, arrival, msg))
        w.pending[arrival] = done
        w.wake.set()
        return None

    def _settle(self, w: _Worker, arrival: int, error: str = "", retry: bool = False) -> None:
        """Answer the sender of fast message ``arrival`` ("" : handled)."""
        done = w.pending.pop(arrival, None)
        if done is not None:
            done(error, retry)

    def _refuse(self, reason: str, retry: bool) -> Refused:
        self.stats["refused"] += 1
        return Refused(reason, retry)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        helpers = [
            loop.create_task(self._renew_loop(), name="actors-renew"),
            loop.create_task(self._subscribe_declared(), name="actors-subscribe"),
        ]
        try:
            while True:
                try:
                    async with asyncio.timeout(0.5):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                self._wake.clear()
                try:
                    self._reconcile()
                except Exception:
                    log.exception("actor host reconcile failed")
        finally:
            for t in helpers:
                t.cancel()
            for w in list(self._workers.values()):
                self._stop(w, "the node is stopping")

    # ---- reconcile ----------------------------------------------------------------------

    def decide(self, st: ClusterState) -> ActorPlan:
        """Which workers to start, stop and wake, given the state and the workers here (no I/O)."""
        out = ActorPlan()
        mine: dict[str, None] = {}
        if st.up_member(self.node_id, self.incarnation):
            mine = st.messages.by_node.get(self.node_id, {})
        acts = st.messages.activations
        for address in mine:
            a = acts[address]
            if a.incarnation != self.incarnation or split_address(address)[0] not in self._actors:
                continue  # an earlier incarnation's (the state drops them) / a type not loaded here
            w = self._workers.get(address)
            if w is not None and w.epoch == a.epoch:
                if address in st.messages.mailboxes:
                    out.wake.append(address)
                continue
            if w is not None:
                out.stop.append(address)
            out.start.append(
                Activation(a.address, a.node, a.incarnation, a.epoch, a.granted_ms, a.deadline_ms)
            )
        for address, w in self._workers.items():
            cur = acts.get(address)
            gone = address not in mine or cur is None or cur.epoch != w.epoch
            if (gone or cur is None or cur.incarnation != self.incarnation) and address not in out.stop:
                out.stop.append(address)
        return out

    def _reconcile(self) -> None:
        if not self._ready():
            return
        plan = self._reads.read(self.decide)
        for address in plan.stop:
            w = self._workers.get(address)
            if w is not None:
                self._stop(w, "the cluster no longer has it here")
        now_ms, mono = self._clock.now_ms(), self._clock.monotonic()
        for a in plan.start:
            # Conservative until this node's first renewal of it commits: the lease counted from
            # the grant by state time, and never more than a whole lease from now.
            left_ms = min(a.deadline_ms - now_ms, a.deadline_ms - a.granted_ms)
            w = _Worker(
                a.address,
                a.epoch,
                self._actors[split_address(a.address)[0]],
                mono + left_ms / 1000 - LEASE_MARGIN_S,
            )
            w.last_active = mono
            self._workers[a.address] = w
            # A fresh context: reconcile may run inside a Peer.Exchange handler (a delivery woke it);
            # the worker must not carry that peer's call (its trace, node:PEER) for its whole life.
            w.task = asyncio.get_running_loop().create_task(
                self._work(w), name=f"actor {a.address}", context=contextvars.Context()
            )
            self.stats["activated"] += 1
            log.info("actor %s activated here (epoch %d)", a.address, a.epoch)
        if plan.start:
            self._renew_now.set()
        for address in plan.wake:
            self._workers[address].wake.set()

    def _stop(self, w: _Worker, why: str) -> None:
        if self._workers.get(w.address) is w:
            del self._workers[w.address]
        if w.stopped:
            return
        w.stopped = True
        log.info("actor %s (epoch %d) stopped here: %s", w.address, w.epoch, why)
        if w.task is not None and not w.task.done() and w.task is not asyncio.current_task():
            w.task.cancel()
        for t in list(w.inflight):  # fenced anyway: the activation is not ours any more
            t.cancel()
        # Its fast messages not handled yet (the inbox, the one in its turn) were never acked:
        # given back, oldest first, so their senders resend them in their order to wherever
        # the address is activated next (this node's newer epoch included).
        w.inbox.clear()
        pending, w.pending = w.pending, {}
        self.stats["given_back"] += len(pending)
        for arrival in sorted(pending):
            pending[arrival](
                f"moved: {w.address} (epoch {w.epoch}) stopped on node {self.node_id} ({why})", True
            )

    # ---- one activation -----------------------------------------------------------------

    def _logger(self, address: str, epoch: int) -> logging.LoggerAdapter[logging.Logger]:
        kind, _ = split_address(address)
        return logging.LoggerAdapter(
            logging.getLogger(f"raftmesh.actor.{kind}"), {"actor": address, "epoch": epoch}
        )

    async def _work(self, w: _Worker) -> None:
        try:
            await self._activate(w)
            while not w.stopped:
                if self._clock.monotonic() >= w.valid_until:
                    self._renew_now.set()
                    await self._sleep_on(w, 0.5)  # a renewal that commits wakes it
                    continue
                item = self._next(w)
                if item is None:
                    idle = w.adef.idle_s
                    quiet = self._clock.monotonic() - w.last_active
                    if idle and quiet >= idle and not w.inbox:
                        if await self._deactivate(w):
                            return
                        w.last_active = self._clock.monotonic()
                    await self._sleep_on(w, max(0.05, idle - quiet) if idle else 5.0)
                    continue
                msg, seq, arrival = item
                # The turn runs under the message's trace: its ack, KV writes and sends carry it.
                with calls.bound(tracing.node_call(self.node_id, msg.trace_id)):
                    await self._turn(w, msg, seq, arrival)
                w.last_active = self._clock.monotonic()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("actor %s worker failed", w.address)
            await self._clock.sleep(1.0)  # a class that cannot be constructed is not retried hot
            self._stop(w, "its worker failed")
            self.poke()  # the next reconcile starts a fresh worker while the lease is ours

    async def _sleep_on(self, w: _Worker, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await w.wake.wait()
        except TimeoutError:
            pass
        w.wake.clear()

    async def _activate(self, w: _Worker) -> None:
        """Make the instance, load ``ctx.state`` as the last committed turn left it, run ``on_activate``.

        No barrier: the replica has applied this activation's grant, so it has applied every
        turn committed before it, and a later write of an earlier activation is fenced."""
        w.state = self._load_state(w.address)
        w.saved = copy.deepcopy(w.state)
        w.instance = w.adef.cls()
        hook = getattr(w.instance, "on_activate", None)
        if hook is not None:
            await self._on_activate(w, hook)
        w.ready = True

    async def _on_activate(self, w: _Worker, hook: Any) -> None:
        """Run ``on_activate``; what it wrote (``ctx.state``, ``ctx.kv``, durable sends) commits
        as one ack of its own (seq 0), like a turn's. If it raises, nothing of it is kept and
        the activation goes on."""
        ctx, sends = self._context(w, None)
        try:
            async with _turn_limit(w.adef):
                await hook(ctx)
            if not isinstance(ctx.state, dict):
                raise InvalidArgument(f"ctx.state must stay a dict, not {type(ctx.state).__name__}")
            ops = dict(ctx.kv.ops)
            if ctx.state != w.saved:
                why = values.problem(ctx.state)
                if why:
                    raise InvalidArgument(f"ctx.state is not storable: {why}")
                ops[state_key(w.address)] = KvOp("put", state_key(w.address), ctx.state)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(
                "actor %s on_activate raised (nothing of it is kept; the activation goes on)", w.address
            )
            w.state = copy.deepcopy(w.saved)
            return
        w.state = ctx.state
        if not ops and not sends:
            return
        cmd = self._ack(
            w,
            kv=tuple(ops.values()),
            sends=tuple(sends),
        )
        res = await self._commit(w, cmd)
        if isinstance(res, MessageAcked) and res.applied:
            w.saved = copy.deepcopy(w.state)
        elif res is not None:
            log.warning("actor %s: what on_activate wrote was rejected: %s", w.address, res)
            w.state = copy.deepcopy(w.saved)

    def _ack(self, w: _Worker, **fields: Any) -> AckMessage:
        """An ``AckMessage`` of ``w``'s activation (its node, address and epoch) with ``fields``."""
        return AckMessage(
            f"ack-{uuid.uuid4().hex}",
            self._clock.now_ms(),
            node_id=self.node_id,
            address=w.address,
            epoch=w.epoch,
            **fields,
        )

    def _load_state(self, address: str) -> dict[str, Any]:
        def value(st: ClusterState) -> Any:
            e = st.kv.get(state_key(address))
            return None if e is None else copy.deepcopy(e.value)

        v = self._reads.read(value)
        return v if isinstance(v, dict) else {}

    def _next(self, w: _Worker) -> tuple[Message, int, int] | None:
        """The next message to handle: the highest priority of the mailbox's first and the inbox's."""
        now_ms = self._clock.now_ms()

        def pick(st: ClusterState) -> Any:
            box: Mailbox | None = st.messages.mailboxes.get(w.address)
            if box is None:
                w.handled.clear()
                w.queued.clear()
                return None
            w.handled = {s: None for s in w.handled if s in box.queue}
            # Only what was queued since the last pick is new: the mailbox appends in seq order.
            fresh = []
            for s in reversed(box.queue):
                if s <= w.seen_seq:
                    break
                fresh.append(s)
            if fresh:
                w.seen_seq = fresh[0]
                for s in fresh:
                    heapq.heappush(w.queued, (-box.queue[s].message.priority, s))
            in_flight = []
            best = None
            while w.queued:
                s = w.queued[0][1]
                q = box.queue.get(s)
                # An expired one is the tick's to dead-letter: handling it would deliver it late.
                if q is None or q.message.expires_ms <= now_ms:
                    heapq.heappop(w.queued)
                elif s in w.handled:  # its ack is in flight: skipped now, picked again if it fails
                    in_flight.append(heapq.heappop(w.queued))
                else:
                    best = q
                    break
            for item in in_flight:
                heapq.heappush(w.queued, item)
            return None if best is None else (best.message, best.seq, 0)

        durable = self._reads.read(pick)
        while w.inbox and w.inbox[0][2].expires_ms <= now_ms:
            _, late, _ = heapq.heappop(w.inbox)
            # Refused for good: its sender dead-letters it and its send raises.
            self._settle(w, late, f"expired: its TTL passed in {w.address}'s inbox on node {self.node_id}")
        if w.inbox and (durable is None or -w.inbox[0][0] > durable[0].priority):
            _, arrival, msg = heapq.heappop(w.inbox)
            return msg, 0, arrival
        return durable

    def _context(self, w: _Worker, msg: Message | None) -> tuple[ActorContext, list[Message]]:
        sends: list[Message] = []
        messenger = Messenger(
            self.router,
            self._clock,
            self.node_id,
            w.address,
            Fence(actor=w.address, token=w.epoch),
            trace_id=msg.trace_id if msg is not None else "",
            buffer=sends,
            # What a turn sends is named by what it handles (an ``on_activate`` by its epoch), so
            # a turn run again after a crash, a handler error or a redelivery sends the same ids.
            id_seed=f"{w.address}\x00{msg.id}" if msg is not None else f"{w.address}\x00activate@{w.epoch}",
            lease_problem=lambda: self._lease_problem(w),
        )
        ctx = ActorContext(
            w.address,
            w.epoch,
            self.node_id,
            msg,
            w.state,
            ActorKv(self._reads, self._writer),
            messenger,
            self._logger(w.address, w.epoch),
            ActorLocks(self._writer, self._clock, w.address, w.epoch),
        )
        return ctx, sends

    def _lease_problem(self, w: _Worker) -> str:
        """Why ``w`` must not send at once any more: its lease may have ended by the local clock
        (a long turn on a node cut off from the leader), so another node may hold the address."""
        if w.stopped:
            return f"{w.address} (epoch {w.epoch}) no longer runs on node {self.node_id}"
        if self._clock.monotonic() >= w.valid_until:
            return (
                f"{w.address}'s lease (epoch {w.epoch}) on node {self.node_id} may have ended: "
                "not renewed in time; its turn sends nothing more"
            )
        return ""

    async def _turn(self, w: _Worker, msg: Message, seq: int, arrival: int) -> None:
        self.stats["turns"] += 1
        before = copy.deepcopy(w.state)
        ctx, sends = self._context(w, msg)
        try:
            async with _turn_limit(w.adef) as limit:
                out = await w.instance.on_message(ctx, msg)
            if ctx.replied:
                out = ctx.reply_value
            state = ctx.state
            if not isinstance(state, dict):
                raise InvalidArgument(f"ctx.state must stay a dict, not {type(state).__name__}")
            w.state = state  # the handler may have assigned a new dict
            ops = dict(ctx.kv.ops)
            if state != w.saved:
                why = values.problem(state)
                if why:
                    raise InvalidArgument(f"ctx.state is not storable: {why}")
                ops[state_key(w.address)] = KvOp("put", state_key(w.address), state)
            reply = None
            if msg.reply_to:
                reply = reply_to(msg, w.address, w.epoch, out, self._clock.now_ms())
                why = message_error(reply) if reply.target else _reply_problem(reply)
                if why:
                    raise InvalidArgument(f"the reply: {why}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            w.state = before
            if isinstance(exc, TimeoutError) and limit.expired():
                exc = DeadlineExceeded(
                    f"on_message ran longer than timeout_s={w.adef.timeout_s:g} s: cancelled"
                )
            if self._lease_problem(w):
                # Not the handler's fault: the turn runs again once the lease is renewed (or the
                # next activation handles the message). A fast one goes back to the inbox.
                log.info("actor %s: turn of %s ended: %s", w.address, msg.id, exc)
                if seq == 0 and not w.stopped:  # (a stopped worker gave it back)
                    heapq.heappush(w.inbox, (-msg.priority, arrival, msg))
                return
            await self._handler_failed(w, msg, seq, arrival, exc)
            return
        if seq == 0 and not ops and not sends and (reply is None or not msg.durable):
            self._succeeded(w, msg)
            if reply is not None:
                self.router.reply(reply)
            self._settle(w, arrival)
            return
        if seq and not ops and not sends and reply is None:
            self._succeeded(w, msg)  # nothing of it can be rejected but a lost activation
            await self._ack_in_background(w, seq)
            return
        cmd = self._ack(
            w,
            seq=seq,
            kv=tuple(ops.values()),
            sends=tuple(sends),
            reply=reply if msg.durable else None,
        )
        res = await self._commit(w, cmd)
        if res is None:
            return
        if isinstance(res, MessageAcked):
            self.stats["acks"] += 1
            self._succeeded(w, msg)
            if seq:
                w.handled[seq] = None
            if not res.applied:  # handled before (a redelivery): its first turn's effects stand
                self.stats["acks_not_applied"] += 1
                w.state = self._load_state(w.address)
                w.saved = copy.deepcopy(w.state)
                if seq == 0:
                    self._settle(w, arrival)
                return
            if state_key(w.address) in ops:
                w.saved = copy.deepcopy(state)
            if reply is not None and not msg.durable:
                self.router.reply(reply)
            if seq == 0:
                self._settle(w, arrival)
            return
        # Rejected, not fenced: the turn's effects are not acceptable. A full mailbox or KV is
        # back-pressure: the turn is tried again later, until the message's TTL ends it. Any
        # other rejection (an unknown target type, too many writes) will not pass on a retry:
        # it counts as a handler failure, so the message is dead-lettered after the attempts.
        w.state = before
        assert isinstance(res, Rejected)
        if res.code is Code.RESOURCE_EXHAUSTED:
            await self._held_back(w, msg, seq, arrival, res)
            return
        await self._handler_failed(w, msg, seq, arrival, res.error())

    def _succeeded(self, w: _Worker, msg: Message) -> None:
        """The turn of ``msg`` is done (its ack applied, or it needed none): forget its failures."""
        w.failures.pop(msg.id, None)
        w.held.pop(msg.id, None)

    async def _held_back(self, w: _Worker, msg: Message, seq: int, arrival: int, res: Rejected) -> None:
        """The turn's effects met a full mailbox or KV: try the message again after a backoff
        that grows to ``MAX_HELD_BACKOFF_S``. Its TTL bounds the retries (an expired durable one
        is the tick's to dead-letter; an expired fast one ``_next`` dead-letters)."""
        n = w.held.get(msg.id, 0) + 1
        if len(w.held) >= limits.MAX_INBOX_MESSAGES:  # ones that expired before their retry
            w.held.clear()
        w.held[msg.id] = n
        self.stats["held_back"] += 1
        log.info("actor %s: the turn of message %s is held back (%d): %s", w.address, msg.id, n, res.message)
        if seq == 0:
            heapq.heappush(w.inbox, (-msg.priority, arrival, msg))
        await self._clock.sleep(min(RETRY_BACKOFF_S * 2 ** min(n, 8), MAX_HELD_BACKOFF_S))

    async def _ack_in_background(self, w: _Worker, seq: int) -> None:
        """An ack that carries nothing but the mailbox seq does not hold the next turn up.

        Its outcome cannot change what the next turn computes (no state, KV, sends or reply),
        so up to ``MAX_INFLIGHT_ACKS`` of them are pending at once, and those waiting while a
        batch commits go out together as ONE ``AckMessage`` (``seq`` + ``also``): a consumer's
        throughput is then not one command, task and commit per message. A turn with effects
        still waits for its own ack (its successor builds on its state).
        """
        w.handled[seq] = None  # picked no more while its ack is pending
        while len(w.to_ack) + w.acking >= MAX_INFLIGHT_ACKS:
            w.ack_room.clear()
            await w.ack_room.wait()
        w.to_ack.append(seq)
        if w.flusher is None or w.flusher.done():
            # Not under this turn's call: the batch acks the turns of many messages (many traces).
            t = asyncio.get_running_loop().create_task(
                self._flush_acks(w), name=f"acks {w.address}", context=contextvars.Context()
            )
            w.flusher = t
            w.inflight.add(t)
            t.add_done_callback(w.inflight.discard)

    async def _flush_acks(self, w: _Worker) -> None:
        while w.to_ack:
            seqs = w.to_ack[: limits.MAX_ACKS_PER_COMMAND]
            del w.to_ack[: len(seqs)]
            w.acking = len(seqs)
            cmd = self._ack(
                w,
                seq=seqs[0],
                also=tuple(seqs[1:]),
            )
            try:
                res = await self._commit(w, cmd)
            finally:
                w.acking = 0
                w.ack_room.set()
            if isinstance(res, MessageAcked):
                self.stats["acks"] += 1
                if not res.applied:
                    self.stats["acks_not_applied"] += 1
            elif isinstance(res, Rejected):
                log.warning("actor %s: ack of seqs %s rejected: %s", w.address, seqs, res.message)
                for s in seqs:
                    w.handled.pop(s, None)  # handled again (its turn had no effect to repeat)
                w.wake.set()

    async def _commit(self, w: _Worker, cmd: Command) -> Result | None:
        """Propose ``cmd`` (the same request id until applied); None if the activation is lost."""
        while not w.stopped:
            try:
                res = await self._writer.propose(cmd, timeout_s=30.0)
            except RaftmeshError as exc:
                log.info("actor %s: %s %s: %s; retrying", w.address, cmd.TAG, cmd.request_id, exc)
                await self._clock.sleep(RETRY_BACKOFF_S)
                continue
            if isinstance(res, Rejected) and res.code is Code.ABORTED:
                self.stats["fenced"] += 1
                self._stop(w, f"its write was fenced: {res.message}")
                self.poke()
                return None
            return res
        return None

    async def _handler_failed(
        self, w: _Worker, msg: Message, seq: int, arrival: int, exc: BaseException
    ) -> None:
        self.stats["handler_errors"] += 1
        n = w.failures.get(msg.id, 0) + 1
        if len(w.failures) >= limits.MAX_INBOX_MESSAGES:  # ones that expired before their retry
            w.failures.clear()
        w.failures[msg.id] = n
        log.warning(
            "actor %s: message %s failed (attempt %d of %d): %s: %s",
            w.address,
            msg.id,
            n,
            MAX_HANDLER_ATTEMPTS,
            type(exc).__name__,
            exc,
        )
        if n < MAX_HANDLER_ATTEMPTS:
            if seq == 0:  # a fast message lives only in the inbox: put it back at its place
                heapq.heappush(w.inbox, (-msg.priority, arrival, msg))
            await self._clock.sleep(RETRY_BACKOFF_S * n)
            return
        w.failures.pop(msg.id, None)
        reason = f"handler failed {MAX_HANDLER_ATTEMPTS} times: {error_payload(exc)['error']}"
        reason = reason[: limits.MAX_DEAD_LETTER_REASON_CHARS]
        reply = (
            reply_to(msg, w.address, w.epoch, error_payload(exc), self._clock.now_ms(), error=True)
            if msg.reply_to
            else None
        )
        if seq:
            # Unqueued and dead-lettered by one command: a crash cannot lose the dead letter, and
            # a fenced ack leaves the message queued for the next activation, not dead-lettered.
            cmd = self._ack(
                w,
                seq=seq,
                reply=reply if msg.durable else None,
                dead_letter=reason,
            )
            res = await self._commit(w, cmd)
            if isinstance(res, MessageAcked):
                w.handled[seq] = None
                if res.applied:
                    self.stats["dead_lettered"] += 1
                    log.warning("message %s to %s dead-lettered: %s", msg.id, w.address, reason)
        else:
            self._dead_letter(msg, reason)
        if reply is not None and not msg.durable:
            self.router.reply(reply)
        if seq == 0:  # given up on, recorded: handled as far as its sender is concerned
            self._settle(w, arrival)

    async def _deactivate(self, w: _Worker) -> bool:
        """Give an idle activation up (refused while durable messages wait for it).

        ``accept`` refuses (retryable) from the first line on: a fast message taken while the
        last acks commit would otherwise only be given back when the worker stops."""
        w.deactivating = True
        try:
            if w.inflight:
                await asyncio.wait(set(w.inflight))
            if w.inbox:  # taken before this began (not by accept since): handle it first
                return False
            try:
                res = await self._writer.propose(
                    Deactivate(
                        f"deact-{uuid.uuid4().hex}",
                        self._clock.now_ms(),
                        node_id=self.node_id,
                        address=w.address,
                        epoch=w.epoch,
                    ),
                    timeout_s=10.0,
                )
            except RaftmeshError as exc:
                log.info("actor %s: deactivation not committed: %s", w.address, exc)
                return False
            if isinstance(res, RenewResult) and w.address in res.lost:
                self.stats["deactivated"] += 1
                self._stop(w, f"idle for {w.adef.idle_s:g} s")
                return True
            return False
        finally:
            w.deactivating = False

    # ---- leases, dead letters, subscriptions -------------------------------------------------

    async def _renew_loop(self) -> None:
        while True:
            try:
                async with asyncio.timeout(RENEW_EVERY_S):
                    await self._renew_now.wait()
            except TimeoutError:
                pass
            self._renew_now.clear()
            items = [(w.address, w.epoch) for w in self._workers.values() if not w.stopped]
            for i in range(0, len(items), MAX_RENEW_ITEMS):
                await self._renew(items[i : i + MAX_RENEW_ITEMS])

    async def _renew(self, items: list[tuple[str, int]]) -> None:
        sent = self._clock.monotonic()
        cmd = RenewActivations(
            f"renew-{uuid.uuid4().hex}",
            self._clock.now_ms(),
            node_id=self.node_id,
            incarnation=self.incarnation,
            items=tuple(items),
        )
        try:
            res = await self._writer.propose(cmd, timeout_s=RENEW_EVERY_S)
        except RaftmeshError as exc:
            log.info("actor leases not renewed: %s", exc)
            return
        if not isinstance(res, RenewResult):
            log.warning("actor leases not renewed: %s", res)
            return
        lost = set(res.lost)
        for address, epoch in items:
            w = self._workers.get(address)
            if w is None or w.epoch != epoch:
                continue
            if address in lost:
                self._stop(w, "its lease was lost")
            else:
                w.valid_until = sent + limits.ACTIVATION_LEASE_MS / 1000 - LEASE_MARGIN_S
                w.wake.set()

    def _dead_letter(self, msg: Message, reason: str) -> None:
        """Record ``msg`` as not handled (the router batches it into ``RecordDeadLetters``)."""
        self.stats["dead_lettered"] += 1
        log.warning("message %s to %s dead-lettered: %s", msg.id, msg.target or msg.topic, reason)
        self.router.dead_letter(msg, reason[: limits.MAX_DEAD_LETTER_REASON_CHARS])

    async def _subscribe_declared(self) -> None:
        """Subscribe each actor type to the topics it declares (once per node start; idempotent)."""
        wanted = [(t, d.name) for d in self._actors.values() for t in d.topics]
        while wanted:
            if self._ready() and self._reads.read(lambda st: st.up_member(self.node_id, self.incarnation)):
                topic, subscriber = wanted[0]
                try:
                    res = await self._writer.propose(
                        SubscribeTopic(
                            f"sub-{uuid.uuid4().hex}",
                            self._clock.now_ms(),
                            topic=topic,
                            subscriber=subscriber,
                        ),
                        timeout_s=10.0,
                    )
                    if not res.ok:
                        log.error("actor type %s cannot subscribe to %r: %s", subscriber, topic, res)
                    wanted.pop(0)
                    continue
                except RaftmeshError as exc:
                    log.info("subscription of %s to %r pending: %s", subscriber, topic, exc)
            await self._clock.sleep(RETRY_BACKOFF_S)
