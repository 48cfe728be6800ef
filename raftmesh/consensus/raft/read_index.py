"""Linearizable reads with no log entry: Raft's ReadIndex (Raft thesis §6.4).

A read is linearizable if it reflects every write committed before it started. Appending a
barrier entry and waiting for it to apply proves that, at the cost of a log entry (and an
fsync on every member) per read. ReadIndex proves it with one round trip to the followers instead:

* Leader: once it has committed an entry of its own term (pysyncobj appends a no-op when it
  is elected; until that commits, its commit index may lag entries earlier leaders committed),
  it records its commit index as the read index, sends every follower a probe carrying its
  term and a fresh sequence number (``read_probe``), and counts the followers that echo it
  (``read_ack``) in its term. A follower echoes only while its own term is that term and it
  follows this leader: it has then voted in no later term, so a majority, the leader included,
  echoing a probe sent *after* the read began proves no other leader had been elected by then
  (that needs a majority's votes in a later term), and nothing committed before the read is
  missing from the read index. The read is served once this node has applied the read index.
  The probe is not an AppendEntries heartbeat (the first version's): a follower ran its log
  check on that and answered it with a log-matching reply as well as the echo, so each round
  cost every follower that work and the leader four incoming messages instead of two (receiving
  was ~30% of the leader's GIL samples under 16 clients' gets).
* One round is in flight at a time; the reads that arrive meanwhile go in the next one, sent
  when it confirms (or times out), as etcd does.
* Follower: asks the leader for a read index (``read_index_request``); the leader runs the
  round above and answers with the index (``read_index_reply``), after a heartbeat that
  carries its commit index to that follower; the follower serves once it has applied it.
* A deposed leader (partitioned away while a new one was elected) gets no majority of acks in
  its term, so its reads never confirm: they fail when it steps down or time out.

Every round or wait that cannot complete fails its callback (leader change, no leader, not
confirmed, answered or applied within ``ROUND_TIMEOUT_S``); the caller retries within its own deadline.
Everything but ``request`` runs on pysyncobj's tick thread.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pysyncobj.monotonic import monotonic as _monotonic
from pysyncobj.syncobj import _RAFT_STATE

log = logging.getLogger(__name__)

ReadCallback = Callable[[str | None], None]
"""Called once: ``None`` when this replica has applied the read index, else why it failed."""

REQUEST = "raftmesh_read_index_request"
REPLY = "raftmesh_read_index_reply"
ACK = "raftmesh_read_ack"
PROBE = "raftmesh_read_probe"

ROUND_TIMEOUT_S = 2.0
"""A read not confirmed (leader) or answered (follower) within this fails, and is retried by its caller."""

MAX_PENDING_READS = 100_000
"""Reads waiting on this node (local and forwarded ones together); beyond this a read fails at once."""

_MAX_RID_CHARS = 64
"""A forwarded read's request id is echoed back as is: bounded (an int, or a str this long)."""


@dataclass(eq=False, slots=True)
class _Round:
    seq: int
    term: int
    index: int
    deadline: float
    local: list[ReadCallback] = field(default_factory=list)
    remote: list[tuple[Any, Any]] = field(default_factory=list)
    """(follower node, its request id)."""


@dataclass(eq=False, slots=True)
class _Asked:
    deadline: float
    leader: Any
    term: int
    callback: ReadCallback


@dataclass(eq=False, slots=True)
class _Wait:
    """A read confirmed at some index, waiting for this replica to apply it (or its deadline)."""

    callback: ReadCallback | None
    """None once finished (served, or expired)."""


class ReadIndex:
    """The ReadIndex protocol of one pysyncobj ``SyncObj`` (reached through its private names)."""

    def __init__(self, so: Any) -> None:
        self._so = so
        self._lock = threading.Lock()
        self._incoming: collections.deque[ReadCallback] = collections.deque()
        self._seq = itertools.count(1)
        # Unique per process run: a restarted follower must never take the answer the leader
        # owed its previous run (a read index from before a write it has since acknowledged).
        self._rid_prefix = secrets.token_hex(8)
        self._rids = itertools.count(1)
        self._rounds: collections.deque[_Round] = collections.deque()
        """Leader: rounds sent, oldest first (sequence numbers increase along it)."""
        self._queued_local: list[ReadCallback] = []
        self._queued_remote: list[tuple[Any, Any]] = []
        """Leader: reads waiting for the next round (or for an entry of this term to commit)."""
        self._queued_deadline = 0.0
        self._acks: dict[Any, int] = {}
        self._acks_term = -1
        self._asked: dict[str, _Asked] = {}
        """Follower: request id -> the read asked of the leader (which one, in which term)."""
        self._applied_waits: list[tuple[int, int, _Wait]] = []
        """(read index, tie-breaker, wait): a heap of reads confirmed, waiting for apply."""
        self._wait_deadlines: collections.deque[tuple[float, _Wait]] = collections.deque()
        """The same waits by deadline (each is now + ROUND_TIMEOUT_S, so appended in order): a
        follower that fell behind fails them rather than piling up to ``MAX_PENDING_READS``."""
        self._tie = itertools.count()
        self._pending = 0
        self.rounds_sent = 0
        """Heartbeat rounds sent for reads (a metric: reads per round shows the batching)."""

    # ---- any thread ---------------------------------------------------------------

    def request(self, callback: ReadCallback) -> None:
        """Start a linearizable read; ``callback`` runs on the tick thread (or inline, on refusal)."""
        with self._lock:
            if self._pending >= MAX_PENDING_READS:
                refuse = True
            else:
                refuse = False
                self._pending += 1
                # Only the read that finds the queue empty wakes the tick thread: the others join
                # a queue whose first read's wake-up is sent (or about to be) and has not been
                # taken yet (the tick empties the queue under this lock), so that tick takes them
                # too. A wake-up is a pipe write that also hands the GIL to the tick thread: per
                # read it was a third of the Get handler's samples under 16 clients (py-spy).
                # Nor does a read while this leader has a round in flight: the round's end takes
                # the queue (``_confirm``; one that ends on the tick sees it at the tick's end),
                # and the read could go in no round before that anyway.
                wake = not self._incoming and not self._rounds
                self._incoming.append(callback)
        if refuse:
            callback("TOO_MANY_READS")
            return
        if not wake:
            return
        notifier = getattr(self._so, "_SyncObj__pipeNotifier", None)
        if notifier is not None:
            try:
                notifier.notify()
            except Exception:
                # Pipe full (BlockingIOError) means a wake-up is already pending; the read is
                # queued either way and the tick, which runs every poll period, takes it.
                pass

    # ---- tick thread ------------------------------------------------------------------

    def _finish(self, callback: ReadCallback, err: str | None) -> None:
        with self._lock:
            self._pending -= 1
        try:
            callback(err)
        except Exception:
            log.exception("read callback failed")

    def on_tick(self) -> None:
        so = self._so
        with self._lock:
            fresh = list(self._incoming)
            self._incoming.clear()
        now = _monotonic()
        is_leader = so._SyncObj__raftState == _RAFT_STATE.LEADER
        if not is_leader:
            self._fail_rounds("NOT_LEADER")
        if self._asked:
            self._fail_asked_of_old_leader()
        self._expire(now)
        if fresh:
            if is_leader:
                self._queue(now)
                self._queued_local.extend(fresh)
            else:
                leader = so._SyncObj__raftLeader
                if leader is None or leader is so._SyncObj__selfNode:
                    for cb in fresh:
                        self._finish(cb, "MISSING_LEADER")
                else:
                    rid = f"{self._rid_prefix}:{next(self._rids)}"
                    # One request for every read that arrived this tick: they share the answer.
                    term = int(so._SyncObj__raftCurrentTerm)
                    self._asked[rid] = _Asked(now + ROUND_TIMEOUT_S, leader, term, _fan_out(fresh))
                    with self._lock:
                        self._pending -= len(fresh) - 1
                    so._SyncObj__transport.send(leader, {"type": REQUEST, "rid": rid})
        if is_leader:
            self._start_round(now)
        self._release_applied()
        if not self._rounds:
            with self._lock:
                missed = bool(self._incoming)
            if missed:  # came while a round this tick ended was in flight, so woke nobody: now
                notifier = getattr(so, "_SyncObj__pipeNotifier", None)
                if notifier is not None:
                    with contextlib.suppress(Exception):  # full: a wake-up is pending anyway
                        notifier.notify()

    def _take_incoming(self, now: float) -> None:
        """Leader: queue the reads that came while a round was in flight (they woke no tick)."""
        with self._lock:
            fresh = list(self._incoming)
            self._incoming.clear()
        if fresh:
            self._queue(now)
            self._queued_local.extend(fresh)

    def _fail_asked_of_old_leader(self) -> None:
        """Fail (the caller retries) the reads asked of a leader this follower no longer follows:
        its answer may never come, and waiting ``ROUND_TIMEOUT_S`` would stall every read."""
        so = self._so
        leader = so._SyncObj__raftLeader
        term = so._SyncObj__raftCurrentTerm
        stale = [rid for rid, a in self._asked.items() if a.leader != leader or a.term != term]
        for rid in stale:
            self._finish(self._asked.pop(rid).callback, "LEADER_CHANGED")

    def _wait_applied(self, index: int, callback: ReadCallback, now: float) -> None:
        w = _Wait(callback)
        heapq.heappush(self._applied_waits, (index, next(self._tie), w))
        self._wait_deadlines.append((now + ROUND_TIMEOUT_S, w))

    def _fail_rounds(self, err: str) -> None:
        rounds, self._rounds = self._rounds, collections.deque()
        local, self._queued_local = self._queued_local, []
        remote, self._queued_remote = self._queued_remote, []
        for r in rounds:
            local.extend(r.local)
            remote.extend(r.remote)
        for cb in local:
            self._finish(cb, err)
        for node, rid in remote:
            self._so._SyncObj__transport.send(node, {"type": REPLY, "rid": rid, "error": err})

    def _queue(self, now: float) -> None:
        if not self._queued_local and not self._queued_remote:
            self._queued_deadline = now + ROUND_TIMEOUT_S

    def _expire(self, now: float) -> None:
        if (self._queued_local or self._queued_remote) and self._queued_deadline <= now:
            # This leader's term has had no commit for that long: fail them (the callers retry).
            local, self._queued_local = self._queued_local, []
            remote, self._queued_remote = self._queued_remote, []
            for cb in local:
                self._finish(cb, "READ_TIMEOUT")
            for node, rid in remote:
                self._so._SyncObj__transport.send(node, {"type": REPLY, "rid": rid, "error": "READ_TIMEOUT"})
        while self._rounds and self._rounds[0].deadline <= now:
            r = self._rounds.popleft()
            for cb in r.local:
                self._finish(cb, "READ_TIMEOUT")
            for node, rid in r.remote:
                self._so._SyncObj__transport.send(node, {"type": REPLY, "rid": rid, "error": "READ_TIMEOUT"})
        if self._asked:
            for rid in [rid for rid, a in self._asked.items() if a.deadline <= now]:
                self._finish(self._asked.pop(rid).callback, "READ_TIMEOUT")
        deadlines = self._wait_deadlines
        while deadlines and (deadlines[0][0] <= now or deadlines[0][1].callback is None):
            _, w = deadlines.popleft()
            if w.callback is not None:
                cb, w.callback = w.callback, None
                self._finish(cb, "READ_TIMEOUT")  # this replica did not apply the read index in time
        if not deadlines:
            self._applied_waits.clear()  # only finished waits remain in the heap
        elif len(self._applied_waits) > 2 * len(deadlines) + 1024:
            # Expired waits for an index not yet applied stay in the heap: drop them in bulk.
            self._applied_waits = [e for e in self._applied_waits if e[2].callback is not None]
            heapq.heapify(self._applied_waits)

    def _start_round(self, now: float) -> None:
        """Send one probe round for every read queued on this leader, if its term has a commit."""
        if not self._queued_local and not self._queued_remote:
            return
        if self._rounds:
            # One round in flight at a time (as etcd): the reads that arrive meanwhile share the
            # next one, sent when it confirms, so a busy leader sends a round per round trip,
            # not per read.
            return
        so = self._so
        term = int(so._SyncObj__raftCurrentTerm)
        commit = int(so._SyncObj__raftCommitIndex)
        entries = so._SyncObj__getEntries(commit, 1)
        if not entries or entries[0][2] != term:
            return  # this leader's own entry has not committed yet: the reads wait for it
        r = _Round(
            next(self._seq), term, commit, now + ROUND_TIMEOUT_S, self._queued_local, self._queued_remote
        )
        self._queued_local, self._queued_remote = [], []
        self._rounds.append(r)
        self.rounds_sent += 1
        transport = so._SyncObj__transport
        probe = {"type": PROBE, "term": term, "seq": r.seq}
        for node in so._SyncObj__otherNodes:
            if node in so._SyncObj__connectedNodes:
                transport.send(node, probe)
        self._confirm()

    def _confirm(self) -> None:
        """Serve every round a majority (this leader included) has acknowledged in its term."""
        so = self._so
        term = int(so._SyncObj__raftCurrentTerm)
        if self._acks_term != term:
            self._acks, self._acks_term = {}, term
        others = so._SyncObj__otherNodes
        need = (len(others) + 1) // 2 + 1  # a majority of the whole cluster
        while self._rounds:
            r = self._rounds[0]
            if r.term != term:
                self._fail_rounds("LEADER_CHANGED")
                return
            votes = 1 + sum(1 for n in others if self._acks.get(n, 0) >= r.seq)
            if votes < need:
                return
            self._rounds.popleft()
            now = _monotonic()
            for cb in r.local:
                self._wait_applied(r.index, cb, now)
            for node, rid in r.remote:
                self._answer(node, rid, r.index)
        self._release_applied()
        now = _monotonic()
        if not self._rounds:
            self._take_incoming(now)
        self._start_round(now)

    def _answer(self, node: Any, rid: Any, index: int) -> None:
        """Reply to a follower's request: first a heartbeat carrying the commit index, then the index."""
        so = self._so
        transport = so._SyncObj__transport
        prev_idx, prev_term = so._SyncObj__getPrevLogIndexTerm(so._SyncObj__raftNextIndex.get(node, 0))
        if prev_idx is not None:
            transport.send(
                node,
                {
                    "type": "append_entries",
                    "term": so._SyncObj__raftCurrentTerm,
                    "commit_index": so._SyncObj__raftCommitIndex,
                    "entries": [],
                    "prevLogIdx": prev_idx,
                    "prevLogTerm": prev_term,
                },
            )
        transport.send(node, {"type": REPLY, "rid": rid, "index": index})

    def _release_applied(self) -> None:
        waits = self._applied_waits
        if not waits:
            return
        applied = int(self._so._SyncObj__raftLastApplied)
        while waits and waits[0][0] <= applied:
            _, _, w = heapq.heappop(waits)
            if w.callback is not None:
                cb, w.callback = w.callback, None
                self._finish(cb, None)

    def on_message(self, node: Any, message: Any) -> bool:
        """Handle ``message`` if it is one of ReadIndex's; False leaves it to the others."""
        if not isinstance(message, dict):
            return False
        kind = message.get("type")
        if kind == PROBE:
            self._on_probe(node, message)
        elif kind == ACK:
            self._on_ack(node, message)
        elif kind == REQUEST:
            self._on_request(node, message)
        elif kind == REPLY:
            self._on_reply(node, message)
        else:
            return False
        return True

    def _on_probe(self, node: Any, m: dict[str, Any]) -> None:
        """Follower: echo a probe if ``node`` is the leader it follows in its current term, that term."""
        so = self._so
        term, seq = m.get("term"), m.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool):
            return
        if term == so._SyncObj__raftCurrentTerm and so._SyncObj__raftLeader == node:
            so._SyncObj__transport.send(node, {"type": ACK, "term": term, "seq": seq})

    def after_append_entries(self, node: Any, message: dict[str, Any]) -> None:
        """Follower: echo a heartbeat's ``read_seq`` (how a leader of the first version asked; a
        cluster runs one version, but the check costs one look-up) if it accepted ``node`` as
        leader of its term."""
        seq = message.get("read_seq")
        if seq is None:
            return
        so = self._so
        term = message.get("term")
        if term == so._SyncObj__raftCurrentTerm and so._SyncObj__raftLeader == node:
            so._SyncObj__transport.send(node, {"type": ACK, "term": term, "seq": seq})

    def _on_ack(self, node: Any, m: dict[str, Any]) -> None:
        so = self._so
        if so._SyncObj__raftState != _RAFT_STATE.LEADER or m.get("term") != so._SyncObj__raftCurrentTerm:
            return
        seq = m.get("seq")
        if not isinstance(seq, int):
            return
        if self._acks_term != m["term"]:
            self._acks, self._acks_term = {}, m["term"]
        if seq > self._acks.get(node, 0):
            self._acks[node] = seq
        self._confirm()

    def _on_request(self, node: Any, m: dict[str, Any]) -> None:
        so = self._so
        rid = m.get("rid")
        if not (
            (isinstance(rid, int) and not isinstance(rid, bool))
            or (isinstance(rid, str) and len(rid) <= _MAX_RID_CHARS)
        ):
            return  # not a request id a follower makes: nothing to echo it back to
        if so._SyncObj__raftState != _RAFT_STATE.LEADER:
            so._SyncObj__transport.send(node, {"type": REPLY, "rid": rid, "error": "NOT_LEADER"})
            return
        if len(self._queued_remote) + sum(len(r.remote) for r in self._rounds) >= MAX_PENDING_READS:
            so._SyncObj__transport.send(node, {"type": REPLY, "rid": rid, "error": "TOO_MANY_READS"})
            return
        self._queue(_monotonic())
        self._queued_remote.append((node, rid))
        self._start_round(_monotonic())

    def _on_reply(self, node: Any, m: dict[str, Any]) -> None:
        rid = m.get("rid")
        if not isinstance(rid, str):
            return  # not an id this run made (an unhashable one must not raise on the tick thread)
        asked = self._asked.get(rid)
        if asked is None or asked.leader != node:
            return  # expired, or not ours: only the leader asked may answer
        del self._asked[rid]
        cb = asked.callback
        index = m.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            self._finish(cb, str(m.get("error") or "READ_FAILED")[:200])
            return
        self._wait_applied(index, cb, _monotonic())
        self._release_applied()


def _fan_out(callbacks: list[ReadCallback]) -> ReadCallback:
    def call(err: str | None) -> None:
        for cb in callbacks:
            try:
                cb(err)
            except Exception:
                log.exception("read callback failed")

    return call
