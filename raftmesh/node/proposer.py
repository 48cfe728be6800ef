"""The asyncio side of writes: batching commands into log entries and retrying them.

Commands proposed while a batch is in flight accumulate and go out together as
one log entry (group commit), so an idle cluster commits one command at once
and a busy one amortises Raft over many. Every failure pysyncobj reports, and
every batch with no answer within ``commit_timeout_s``, is an *unknown outcome*:
the same commands (same request ids) are proposed again until ``deadline``;
the state machine applies each request id once. A ``leader_only`` command (the leader's
liveness decisions) is the exception: it goes to Raft only while this node leads in the term it
was proposed in, and is never retried through another leader.

The queue of commands not yet handed to Raft is bounded (``MAX_QUEUED_COMMANDS``,
``MAX_QUEUED_BYTES``): a caller that finds it full waits for room until its own
deadline, and then gets ``ResourceExhausted`` (its command was never proposed,
so retrying later is safe). A gRPC caller sees RESOURCE_EXHAUSTED only after
its deadline's worth of waiting, which is what a deadline promises.

A node that has known no leader for ``LEADERLESS_FAIL_S`` answers at once instead of holding
commands until their deadline (a node cut off from its leader held a client's submit for the
whole 10 s): the client's SDK moves on to another node on the UNAVAILABLE. "Knows a leader" is
``RaftMember.leader_known``: one it can still hear, not merely the last one pysyncobj named
(which it keeps when every link closes with a reset).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

import msgpack

from .. import calls
from ..clock import SYSTEM_CLOCK, Clock
from ..consensus.commands import Command, NodeDown, Origin, SubmitRun, SuspectNode, encode_command
from ..consensus.raft import RaftMember
from ..consensus.results import Result
from ..errors import NoLeader, OutcomeUnknown, ResourceExhausted

log = logging.getLogger(__name__)

MAX_BATCH_BYTES = 4 * 1024 * 1024
MAX_BATCH_COMMANDS = 5000
MAX_INFLIGHT_BATCHES = 4
MAX_QUEUED_COMMANDS = 20_000
MAX_QUEUED_BYTES = 64 * 1024 * 1024
"""Commands waiting to be handed to Raft (not counting retries of commands already admitted)."""
COMMIT_TIMEOUT_S_PER_MIB = 1.0
"""Added to ``commit_timeout_s`` per MiB of a batch: a large entry takes seconds to stream to the
followers (consensus/raft/replication.py), and a retry before it commits appends it again."""
LEADERLESS_FAIL_S = 1.0
"""How long this node may know no Raft leader before its queued and new commands fail at once:
``NoLeader`` for one never handed to Raft, ``OutcomeUnknown`` for one that was (it may still be
applied; a retry with the same request id / idempotency key is safe). Counted from when the
proposer first saw no leader: a follower forgets a silent leader after its election timeout
(0.6-1.2 s, ``election.py``), so this answers 1.6-2.2 s after the last word from the leader;
an ordinary election elects one well within it. A follower whose every link closed (a reset) elects
nobody, but stops knowing its leader once it has not heard it for the longest election timeout
(``RaftMember.leader_known``): the same 2.2 s."""


def _settle(fut: asyncio.Future[str | None], err: str | None) -> None:
    if not fut.done():
        fut.set_result(err)


def _settle_all(futs: list[asyncio.Future[str | None]], err: str | None) -> None:
    for fut in futs:
        if not fut.done():
            fut.set_result(err)


def new_request_id(prefix: str = "") -> str:
    return f"{prefix}{uuid.uuid4().hex}"


def _batch_bytes(encoded: list[bytes]) -> bytes:
    """``encode_batch`` of the commands, from their encodings: a msgpack array is its header
    followed by its elements' encodings, so no command is encoded twice."""
    header: bytes = msgpack.Packer().pack_array_header(len(encoded))
    return header + b"".join(encoded)


@dataclass(eq=False)
class _Pending:
    cmd: Command
    size: int
    encoded: bytes
    """``encode_command(cmd)``: made once, it sizes the command and goes into every batch as is."""
    future: asyncio.Future[Result]
    deadline: float
    attempts: int = 0
    term: int | None = None
    """For a ``leader_only`` command, the term in which this node led when it was proposed."""
    hinted_leader: str | None = None
    """For a ``SubmitRun`` naming a ``prefer``: the Raft leader known when it was proposed (the
    one ``prefer`` names); sent to another, it goes without the hint (``_send``)."""


@dataclass(eq=False)
class _Batch:
    items: list[_Pending]
    timer: asyncio.TimerHandle | None = None
    done: bool = False


class Proposer:
    def __init__(
        self,
        raft: RaftMember,
        loop: asyncio.AbstractEventLoop,
        commit_timeout_s: float = 3.0,
        default_timeout_s: float = 10.0,
        clock: Clock = SYSTEM_CLOCK,
        node_id: str = "",
    ) -> None:
        self._own_origin = Origin(f"node:{node_id}" if node_id else "node")
        """The origin of a command this node makes on its own (no call bound)."""
        self._raft = raft
        self._loop = loop
        self._clock = clock
        self._queued_bytes = 0
        self._room = asyncio.Event()
        self._commit_timeout_s = commit_timeout_s
        self._default_timeout_s = default_timeout_s
        self._queue: deque[_Pending] = deque()
        self._wake = asyncio.Event()
        self._gather = False  # see gather_this_turn
        self._inflight: dict[int, _Batch] = {}
        self._backing_off: dict[int, tuple[asyncio.TimerHandle, list[_Pending]]] = {}
        """Failed commands waiting out their retry backoff (``leader_changed`` cuts it short)."""
        self._ids = itertools.count()
        self._leaderless_since: float | None = None
        """When this proposer first saw no leader (None while it knows one)."""
        self._task: asyncio.Task[None] | None = None
        self._read_group: list[asyncio.Future[str | None]] = []
        """Barriers started this loop turn, waiting for ``_send_reads`` (``barrier``)."""
        self._reads_in_flight = 0
        """ReadIndex requests sent and not answered yet."""
        self.retried = 0
        """Commands sent again after their batch failed (a metric)."""
        self.on_batch: Callable[[int, int], None] | None = None
        """Told (commands, payload bytes) of every log entry proposed (the node's metrics)."""

    @property
    def queued_commands(self) -> int:
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    @property
    def inflight_batches(self) -> int:
        return len(self._inflight)

    def start(self) -> None:
        self._task = self._loop.create_task(self._run(), name="proposer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def propose(
        self, cmd: Command, timeout_s: float | None = None, *, leader_only: bool = False
    ) -> Result:
        """Apply ``cmd`` through the log; its ``Result`` once applied on this node.

        Raises ``NoLeader`` if no leader was known for the whole deadline and the
        command was never handed to Raft, ``ResourceExhausted`` if the queue stayed
        full for the whole deadline (never proposed), ``OutcomeUnknown`` if it may
        have been applied.

        ``leader_only``: a decision this node made as leader (a member's liveness). It is
        handed to Raft only while this node still leads in the term it led in at the call, and
        once that no longer holds (a new term, another leader, ``leader_changed``) it is not
        retried: it fails with ``NoLeader`` if it never reached Raft, else ``OutcomeUnknown``.
        Otherwise a deposed leader's retry is forwarded to the next leader, which commits a
        view it did not form (it may even name itself). A ``NodeDown``/``SuspectNode`` also
        carries that term (``leader_term``), and apply refuses it from a log entry of any other
        term: pysyncobj itself forwards a command it has queued if the node steps down before
        its next tick, which no check here can see.
        """
        fut: asyncio.Future[Result] = self._loop.create_future()
        deadline = self._clock.monotonic() + (timeout_s if timeout_s is not None else self._default_timeout_s)
        if cmd.origin is None:
            # Who caused it: the gRPC call being served (or the agent turn), else this node itself.
            call = calls.current()
            cmd = replace(cmd, origin=call.origin() if call is not None else self._own_origin)
        if self._leaderless_for() >= LEADERLESS_FAIL_S:
            raise NoLeader(self._NO_LEADER)
        term = None
        if leader_only:
            # The term this node leads in, recorded with the Raft state change (``leader_term``):
            # not ``term`` read beside ``is_leader``, which a step-down updates one after the other.
            term = self._raft.leader_term
            if term is None:
                raise NoLeader(f"{cmd.TAG} {cmd.request_id}: this node no longer leads; not proposed")
            if isinstance(cmd, NodeDown | SuspectNode):
                if cmd.leader_term and cmd.leader_term != term:  # decided under an earlier leadership
                    raise NoLeader(
                        f"{cmd.TAG} {cmd.request_id}: decided as the leader of term {cmd.leader_term}, "
                        f"and this node now leads term {term}; not proposed"
                    )
                # Apply refuses it from an entry of any other term (``members.leader_term_error``):
                # pysyncobj forwards a queued command if this node stops leading before its tick.
                cmd = replace(cmd, leader_term=term)
        encoded = encode_command(cmd)
        size = len(encoded)
        await self._wait_for_room(size, deadline)
        self._queued_bytes += size
        pending = _Pending(cmd, size, encoded, fut, deadline, term=term)
        if isinstance(cmd, SubmitRun) and cmd.prefer:
            pending.hinted_leader = self._raft.leader_addr or ""
        self._enqueue(pending)
        return await fut

    def _deposed(self, p: _Pending) -> bool:
        """A ``leader_only`` command whose proposing leadership is over (see ``propose``)."""
        return p.term is not None and self._raft.leader_term != p.term

    def _fail_deposed(self, p: _Pending) -> None:
        if p.future.done():
            return
        if p.attempts == 0:
            p.future.set_exception(
                NoLeader(f"{p.cmd.TAG} {p.cmd.request_id}: this node no longer leads; not proposed")
            )
        else:
            p.future.set_exception(
                OutcomeUnknown(
                    f"{p.cmd.TAG} {p.cmd.request_id}: this node's leadership changed before its commit "
                    "was confirmed; it is not retried through another leader"
                )
            )

    def _full(self, size: int) -> bool:
        return bool(self._queue) and (
            len(self._queue) >= MAX_QUEUED_COMMANDS or self._queued_bytes + size > MAX_QUEUED_BYTES
        )

    async def _wait_for_room(self, size: int, deadline: float) -> None:
        while self._full(size):
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0:
                raise ResourceExhausted(
                    f"this node's proposal queue is full ({len(self._queue)} commands, "
                    f"{self._queued_bytes} bytes; limits {MAX_QUEUED_COMMANDS} and {MAX_QUEUED_BYTES}) "
                    "and did not drain before the deadline; nothing was proposed, retry with backoff"
                )
            self._room.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._room.wait()
            except TimeoutError:
                pass

    async def barrier(self, timeout_s: float | None = None) -> None:
        """Return once this replica has applied every entry committed before the call.

        Raft's ReadIndex (``consensus/raft/read_index.py``): one heartbeat round confirms the
        leadership, no log entry is appended. A round that fails (leader change, no leader yet)
        is retried until the deadline.

        The barriers that start in one turn of the event loop share one ReadIndex request
        (``_join_read``), sent at the end of that turn (at once when no request is in flight):
        after every one of them began, so its read index (taken later, on the Raft thread)
        covers each. One request, one wake-up of
        the Raft thread and one hand-back to the loop per turn instead of per read.
        """
        deadline = self._clock.monotonic() + (timeout_s if timeout_s is not None else self._default_timeout_s)
        delay = 0.01
        loop = self._loop
        while True:
            fut: asyncio.Future[str | None] = loop.create_future()
            self._join_read(fut)
            remaining = deadline - self._clock.monotonic()
            timer = loop.call_later(max(remaining, 0.001), _settle, fut, "TIMEOUT")
            try:
                err = await fut
            finally:
                timer.cancel()
            if err is None:
                return
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0:
                if not self._raft.leader_known:
                    raise NoLeader(
                        "this node knows no Raft leader (an election is on, or it is cut off); retry shortly or on another node, or read with stale_ok"
                    )
                raise OutcomeUnknown(
                    f"a linearizable read could not be confirmed before the deadline ({err}); retry"
                )
            log.debug("read index: %s; retrying", err)
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.2)

    def _join_read(self, fut: asyncio.Future[str | None]) -> None:
        """Add a barrier to this loop turn's ReadIndex request (sent by ``_send_reads``); with no
        request of this proposer's in flight, it goes at once, alone (a lone reader does not wait
        for the end of the turn)."""
        self._read_group.append(fut)
        if len(self._read_group) == 1:
            if self._reads_in_flight:
                self._loop.call_soon(self._send_reads)
            else:
                self._send_reads()

    def _send_reads(self) -> None:
        group, self._read_group = self._read_group, []
        if not group:
            return
        loop = self._loop
        self._reads_in_flight += 1

        def settle(err: str | None) -> None:
            self._reads_in_flight -= 1
            _settle_all(group, err)

        def done(err: str | None) -> None:  # on the Raft thread
            loop.call_soon_threadsafe(settle, err)

        try:
            self._raft.read_index(done)
        except Exception as exc:  # a bug, but never leave the readers waiting for their deadline
            log.exception("read_index failed")
            settle(f"EXCEPTION:{exc}")

    # ---- internals ------------------------------------------------------------

    def gather_this_turn(self) -> None:
        """Make the next command wait for this loop turn's gathering instead of going to Raft
        alone at once: a caller that has just resumed coroutines whose commands belong in the
        same entry (held-back lock acquires before a release) calls it before proposing."""
        self._gather = True
        self._wake.set()

    _NO_LEADER = "this node knows no Raft leader (cut off, or an election is on); nothing was proposed, retry on another node"

    def leader_seen(self) -> None:
        """The health loop's pass saw a leader: if this node can still hear one
        (``RaftMember.leader_known``), a later leaderless spell counts from its own start, not from
        an earlier gap too short for any proposal to notice its end."""
        if self._raft.leader_known:
            self._leaderless_since = None

    def _leaderless_for(self) -> float:
        """Seconds since this proposer first saw no leader; 0 while it knows one."""
        if self._raft.leader_known:
            self._leaderless_since = None
            return 0.0
        now = self._clock.monotonic()
        if self._leaderless_since is None:
            self._leaderless_since = now
        return now - self._leaderless_since

    def _enqueue(self, p: _Pending) -> None:
        if self._deposed(p):
            self._dequeued(p)
            self._fail_deposed(p)
            return
        if not self._gather and not self._queue and not self._inflight and self._raft.leader_known:
            # Idle: nothing to batch it with. Handed to Raft now rather than two loop iterations
            # later (the wake, then the gathering sleep); commands that come while it is in
            # flight batch as before.
            self._dequeued(p)
            self._send([p])
            return
        self._queue.append(p)
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            # Let every coroutine that is ready this loop iteration add its command first.
            await asyncio.sleep(0)
            self._gather = False
            while self._queue and len(self._inflight) < MAX_INFLIGHT_BATCHES:
                if not self._raft.leader_known:  # held here, not sent where no leader hears it
                    self._expire_waiting()
                    self._loop.call_later(0.05, self._wake.set)
                    break
                self._send(self._take_batch())

    def _take_batch(self) -> list[_Pending]:
        batch: list[_Pending] = []
        size = 0
        while self._queue and len(batch) < MAX_BATCH_COMMANDS:
            p = self._queue[0]
            if batch and size + p.size > MAX_BATCH_BYTES:
                break
            self._queue.popleft()
            self._dequeued(p)
            if p.future.done():
                continue
            if self._deposed(p):
                self._fail_deposed(p)
                continue
            batch.append(p)
            size += p.size
        return batch

    def _dequeued(self, p: _Pending) -> None:
        if p.attempts == 0:  # retries were admitted once already and are not counted again
            self._queued_bytes -= p.size
            self._room.set()

    def _expire_waiting(self) -> None:
        """Fail the queued commands whose deadline passed, or all of them once this node has
        known no leader for ``LEADERLESS_FAIL_S``."""
        now = self._clock.monotonic()
        cut_off = self._leaderless_for() >= LEADERLESS_FAIL_S
        keep: deque[_Pending] = deque()
        for p in self._queue:
            if p.future.done():
                self._dequeued(p)
                continue
            if cut_off or now >= p.deadline:
                self._dequeued(p)
                if p.attempts == 0:
                    p.future.set_exception(NoLeader(self._NO_LEADER))
                else:
                    p.future.set_exception(self._unknown(p))
            else:
                keep.append(p)
        self._queue = keep

    @staticmethod
    def _unknown(p: _Pending) -> OutcomeUnknown:
        return OutcomeUnknown(
            f"the outcome of {p.cmd.TAG} {p.cmd.request_id} is unknown (no commit confirmed before the "
            "deadline); retrying with the same request id / idempotency key is safe"
        )

    def _send(self, items: list[_Pending]) -> None:
        if not items:
            return
        bid = next(self._ids)
        batch = _Batch(items)
        self._inflight[bid] = batch
        leader = self._raft.leader_addr
        for p in items:
            p.attempts += 1
            if isinstance(p.cmd, SubmitRun) and p.hinted_leader not in (None, leader):
                # ``prefer`` names the leader the call saw, and this goes to another (an election
                # since): the hint would favour an old, possibly dead, leader. Same request id, so
                # a copy the old leader did commit still applies once.
                p.cmd = replace(p.cmd, prefer="")
                p.encoded = encode_command(p.cmd)
                p.hinted_leader = None
        payload = _batch_bytes([p.encoded for p in items])
        if self.on_batch is not None:
            self.on_batch(len(items), len(payload))
        timeout_s = self._commit_timeout_s + COMMIT_TIMEOUT_S_PER_MIB * len(payload) / (1024 * 1024)
        batch.timer = self._loop.call_later(timeout_s, self._on_done, bid, None, "TIMEOUT")

        def callback(results: list[Result] | None, err: str | None) -> None:
            self._loop.call_soon_threadsafe(self._on_done, bid, results, err)

        try:
            self._raft.propose(payload, callback)
        except Exception as exc:  # pysyncobj raising here is a bug, but never lose the commands
            log.exception("propose failed")
            self._on_done(bid, None, f"EXCEPTION:{exc}")

    def _on_done(self, bid: int, results: list[Result] | None, err: str | None) -> None:
        batch = self._inflight.pop(bid, None)
        if batch is None or batch.done:
            return
        batch.done = True
        if batch.timer is not None:
            batch.timer.cancel()
        if results is not None and len(results) == len(batch.items):
            for p, r in zip(batch.items, results, strict=True):
                if not p.future.done():
                    p.future.set_result(r)
        else:
            now = self._clock.monotonic()
            cut_off = self._leaderless_for() >= LEADERLESS_FAIL_S
            retry = []
            for p in batch.items:
                if p.future.done():
                    continue
                if cut_off or now >= p.deadline:
                    p.future.set_exception(self._unknown(p))
                elif self._deposed(p):
                    # Its leadership is over: a retry would go to whoever leads next.
                    self._fail_deposed(p)
                else:
                    retry.append(p)
            if retry:
                self.retried += len(retry)
                log.debug("batch %d: %s; retrying %d commands", bid, err, len(retry))
                delay = min(0.05 * (2 ** min(retry[0].attempts, 5)), 1.0)
                rid = next(self._ids)
                self._backing_off[rid] = (self._loop.call_later(delay, self._requeue, rid), retry)
        self._wake.set()

    def _requeue(self, rid: int) -> None:
        entry = self._backing_off.pop(rid, None)
        if entry is None:
            return
        self._queue.extendleft(reversed([p for p in entry[1] if not p.future.done()]))
        self._wake.set()

    def leader_changed(self) -> None:
        """A new leader is known: retry every command backing off now.

        The backoff spaces retries while no leader answers; once one is elected, waiting out
        up to a second more would only delay the completions (and the tasks they ready) that
        failed during the election.
        """
        self._leaderless_since = None
        # Leader-only commands of an earlier leadership end here (those backing off, at their
        # requeue below: ``_take_batch`` checks each before it goes out); none is retried.
        for p in self._queue:
            if self._deposed(p):
                self._fail_deposed(p)
        # Newest group first: each _requeue puts its group in front of the queue, so the oldest
        # commands (those waiting longest, whose completions other tasks wait for) go out first.
        for rid in reversed(list(self._backing_off)):
            timer, _ = self._backing_off[rid]
            timer.cancel()
            self._requeue(rid)
