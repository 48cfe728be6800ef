"""The audit timeline: per run, who changed what and when, in an LMDB environment per node.

The Raft thread hands each applied batch's ``Applied`` list (command with its ``origin``,
result, events, notes, revision, state time) to ``AuditArchive.applied``, which only queues
it; a writer thread turns it into timeline rows and writes them in one LMDB write
transaction per batch (``sync=False``: an audit aid, not durability). Nothing here raises
into apply: a failure is logged and counted, and the runs it touched are marked incomplete.

A run's timeline is *complete* on this node when the node saw it submitted and saw every
change since. Rows can be missed three ways, and each marks the runs that may have missed some
incomplete: a snapshot installed (or loaded at a restart) over a revision gap marks the runs
open in it or changed in the gap (``RunState.revision``: a run that ended, was reopened by a
retry and ended again within the gap is one); a queue overflow and a failed write mark the runs
their lost batches touched. Runs open on this node at the gap are marked too. Rows are keyed by (run, revision,
index), so a log re-applied after a restart rewrites the same rows.

Bounded: at most ``max_runs`` runs and about ``max_bytes`` of rows; past either the oldest
runs (by first sight) are dropped whole, so another node may still answer for them.

Redaction: a row's ``detail`` never holds task inputs, outputs or error texts (they may
carry secrets); only ids, counts, statuses and principals.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import queue
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import lmdb
import msgpack

from ..consensus.commands import (
    ApproveTask,
    CancelRun,
    Command,
    Complete,
    Fail,
    NodeDown,
    PauseRun,
    Preempt,
    RerunTask,
    ResumeRun,
    RetryTask,
    SubmitRun,
    SuspectNode,
    Tick,
    Usage,
)
from ..consensus.machine import Applied
from ..consensus.results import (
    ApproveTaskResult,
    AssignResult,
    CancelRunResult,
    PreemptResult,
    ReportResult,
    RunChanged,
    SubmitRunResult,
    TaskChanged,
)
from ..consensus.state import TERMINAL_RUN, ClusterState, RunStatus, TaskStatus

log = logging.getLogger(__name__)

AUDIT_DIR = "audit.lmdb"
DEFAULT_MAX_RUNS = 10_000
DEFAULT_MAX_BYTES = 256 * 1024**2
QUEUE_BATCHES = 10_000
"""Applied batches waiting for the writer; past it a batch is dropped and open runs marked incomplete."""
QUEUE_BYTES = 64 * 1024**2
"""Their log entries' bytes waiting for the writer (the decoded batches take a few times that)."""
RUN_SHARE = 4
"""One run's rows take at most ``max_bytes / RUN_SHARE``: past it the run's timeline is cut (a
``truncated`` row, then incomplete), so one huge run cannot crowd out the rest or fill the map."""
MAP_SLACK = 4
"""The LMDB map is ``MAP_SLACK x max_bytes`` (+64 MiB): room for keys, metadata and free pages."""
COMPENSATION_SUFFIX = "~compensate"
WRITE_DELAY_S = 0.05
"""How long the writer lets applied batches gather before it writes them (one transaction)."""
WRITE_COALESCE = 4096
"""Queued batches the writer puts in one LMDB transaction at most."""
MAX_GAP_RUNS = 100_000
"""Run ids remembered for one overflow or failed write; past it every archived run is marked."""


@dataclass(slots=True)
class AuditRow:
    """One timeline entry (``GetAudit``'s ``AuditEvent``).

    Not frozen: the writer fills in a row's trace and duration in place before encoding it
    (a frozen dataclass's ``__init__`` sets each of its 10 fields through ``object.__setattr__``,
    and the copies the writer made cost as much again: the largest item of the audit writer's
    samples in a fan-out's profile). Nothing changes a row once it is written or read back."""

    revision: int
    time_ms: int
    kind: str
    task_id: str = ""
    attempt: int = 0
    node: str = ""
    principal: str = ""
    request_id: str = ""
    trace_id: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        data: bytes = msgpack.packb(
            [
                self.revision,
                self.time_ms,
                self.kind,
                self.task_id,
                self.attempt,
                self.node,
                self.principal,
                self.request_id,
                self.trace_id,
                self.detail,
            ],
            use_bin_type=True,
        )
        return data

    @classmethod
    def decode(cls, b: bytes) -> AuditRow:
        v = msgpack.unpackb(b, raw=False)
        return cls(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9])


def rows_for(a: Applied) -> list[tuple[str, AuditRow]]:
    """The timeline rows one applied command makes: ``(run_id, row)`` in the order they happened."""
    cmd, res, rev, now = a.cmd, a.result, a.revision, a.time_ms
    o = cmd.origin
    who, request, trace = (o.principal, o.request, o.trace) if o is not None else ("", "", "")
    out: list[tuple[str, AuditRow]] = []

    def add(run_id: str, kind: str, task: str = "", attempt: int = 0, node: str = "", **detail: Any) -> None:
        out.append((run_id, AuditRow(rev, now, kind, task, attempt, node, who, request, trace, detail)))

    if isinstance(cmd, SubmitRun) and isinstance(res, SubmitRunResult) and res.created:
        add(
            res.run_id,
            "submitted",
            namespace=cmd.namespace,
            idempotency_key=cmd.idempotency_key,
            tasks=len(cmd.tasks) + cmd.staged,  # a staged run's other tasks came in StageRun parts
            name=cmd.name,
            submitter=cmd.submitter,
        )
    elif isinstance(cmd, CancelRun) and isinstance(res, CancelRunResult) and res.cancelled:
        add(cmd.run_id, "cancel_requested", reason=cmd.reason)
    elif isinstance(cmd, ApproveTask) and isinstance(res, ApproveTaskResult) and res.applied:
        add(cmd.run_id, res.decision, cmd.task_id, by=res.by, gate=res.gate, comment=res.comment)
    elif isinstance(cmd, RetryTask):
        add(cmd.run_id, "retried", cmd.task_id, cmd.attempt)
    elif isinstance(cmd, RerunTask):
        add(cmd.run_id, "rerun", cmd.task_id)
    if not a.changed and isinstance(cmd, Complete | Fail):
        for it in cmd.items:
            add(
                it.run_id,
                "fenced",
                it.task_id,
                it.attempt,
                cmd.node_id,
                reason=f"stale attempt {it.attempt} (token {it.token})",
            )
        return out
    if isinstance(res, ReportResult | PreemptResult | AssignResult):
        for item in res.rejected:  # a stale token or a refused placement: the node's work was fenced out
            add(
                item.run_id,
                "fenced",
                item.task_id,
                node=getattr(cmd, "node_id", ""),
                reason=item.reason[:200],
            )
    for kind, run_id, task_id, note in a.notes:
        if kind == "child":
            origin, _, parent = note.partition(":")
            add(run_id, "spawned", task_id, origin=origin, parent=parent)
        elif kind == "budget_exceeded":
            add(run_id, "budget_exceeded", why=note[:300])
    reported: dict[tuple[str, str], Usage] = (
        {(it.run_id, it.task_id): it.usage for it in cmd.items} if isinstance(cmd, Complete | Fail) else {}
    )
    for ev in a.events:  # a fan-out's batch has thousands: built here without add()'s keywords
        if isinstance(ev, TaskChanged):
            kind = _task_kind(cmd, ev)  # "" for a transition the timeline leaves out
            if kind:
                detail: dict[str, Any] = {"status": _STATUS_VALUE[ev.status]}
                if ev.task_id.endswith(COMPENSATION_SUFFIX):
                    detail["compensation"] = True
                usage = reported.get((ev.run_id, ev.task_id))
                if usage is not None and kind in _ATTEMPT_ENDS:
                    # What the attempt consumed, as its agent reported it: "why did it cost so much".
                    detail.update(tokens_in=usage.tokens_in, tokens_out=usage.tokens_out, cost=usage.cost)
                node = ev.node
                if not node and (kind in _ATTEMPT_ENDS or kind in _MOVES):
                    node = getattr(cmd, "node_id", "")  # a retry's task is READY: name who ran it
                row = AuditRow(rev, now, kind, ev.task_id, ev.attempt, node, who, request, trace, detail)
                out.append((ev.run_id, row))
        elif isinstance(ev, RunChanged):
            add(ev.run_id, _run_kind(cmd, ev.status), status=ev.status.value)
    return out


_ATTEMPT_ENDS = frozenset({"completed", "failed", "retry_scheduled"})
_STARTS = frozenset({"placed", "running"})
_MOVES = frozenset({"lost", "suspect_moved"})
"""An attempt moved off its member: node-down, or the leader's suspicion (the member still up)."""
_ENDS = frozenset(
    {"completed", "failed", "retry_scheduled", "timed_out", "lost", "suspect_moved", "preempted", "cancelled"}
)
_STATUS_VALUE = {s: s.value for s in TaskStatus}
"""``.value`` of an enum member is a descriptor call; this is a dict lookup."""
_KINDS: dict[tuple[type[Command], TaskStatus], str] = {}
"""``_task_kind`` by (command type, status): for every command but ``Fail`` it depends on nothing
else. At most (command types x statuses) entries."""


def _task_kind(cmd: Command, ev: TaskChanged) -> str:
    if isinstance(cmd, Fail):
        return _task_kind_of(cmd, ev)
    key = (type(cmd), ev.status)
    kind = _KINDS.get(key)
    if kind is None:
        kind = _KINDS[key] = _task_kind_of(cmd, ev)
    return kind


def _task_kind_of(cmd: Command, ev: TaskChanged) -> str:
    s = ev.status
    if s is TaskStatus.RUNNING:
        return "placed"  # by an Assign, or in the apply that readied it or freed a slot
    if s is TaskStatus.SUCCEEDED:
        return "completed"
    if s is TaskStatus.WAITING_CHILDREN:
        return "completed" if isinstance(cmd, Complete) else "waiting_children"
    if isinstance(cmd, Preempt) and s in (TaskStatus.READY, TaskStatus.PENDING):
        return "preempted"
    if isinstance(cmd, Fail) and s in (TaskStatus.READY, TaskStatus.PENDING) and _names(cmd, ev):
        return "retry_scheduled"
    if isinstance(cmd, Tick | NodeDown) and s in (TaskStatus.READY, TaskStatus.FAILED):
        return "timed_out" if isinstance(cmd, Tick) else "lost"
    if isinstance(cmd, SuspectNode) and s is TaskStatus.READY:
        return "suspect_moved"  # SuspectNode.requeue: only readies the attempts it moves
    if s is TaskStatus.FAILED:
        return "failed"
    # READY / PENDING of a task no command named (a dependency ended, a rerun reset it) are left
    # out: they follow from the rows around them, and a wide fan-out would triple the timeline.
    return {
        TaskStatus.CANCELLED: "cancelled",
        TaskStatus.SKIPPED: "skipped",
        TaskStatus.WAITING_APPROVAL: "awaiting_approval",
    }.get(s, "")


def _names(cmd: Fail, ev: TaskChanged) -> bool:
    return any(i.run_id == ev.run_id and i.task_id == ev.task_id for i in cmd.items)


def _run_kind(cmd: Command, status: RunStatus) -> str:
    if status in TERMINAL_RUN:
        return "run_finished"
    if status is RunStatus.PAUSED:
        return "paused"
    if status is RunStatus.COMPENSATING:
        return "compensating"
    if isinstance(cmd, SubmitRun):
        return "run_started"
    return "resumed" if isinstance(cmd, ResumeRun | PauseRun) else "reopened"


def _ekey(run_id: str, a: Applied, i: int) -> bytes:
    """Ordered by revision; a fenced report that changed nothing sorts after its revision's change
    (keyed by its request id: re-applying it writes the same row)."""
    tail = b"\0" if a.changed else b"\1" + zlib.crc32(a.cmd.request_id.encode()).to_bytes(4, "big")
    return run_id.encode() + b"\0" + a.revision.to_bytes(8, "big") + tail + i.to_bytes(4, "big")


def _prefix(run_id: str) -> bytes:
    return run_id.encode() + b"\0"


@dataclass(slots=True)
class _Meta:
    seq: int
    """Order of first sight (the eviction order)."""
    size: int = 0
    submitted: bool = False
    gap: bool = False
    ended: bool = False
    trace: str = ""
    """The run's trace (its submission's): rows of the node's own commands (placements, ticks,
    a node declared down) carry no trace of their own and are filed under it."""
    namespace: str = ""
    """The run's namespace, kept for GetAudit's check when the run has left the state."""
    known_namespace: bool = False
    truncated: bool = False
    """Rows past ``max_run_bytes`` were not kept: the timeline is incomplete."""

    def encode(self) -> bytes:
        return json.dumps(
            [
                self.seq,
                self.size,
                self.submitted,
                self.gap,
                self.ended,
                self.trace,
                self.namespace,
                self.known_namespace,
                self.truncated,
            ]
        ).encode()

    @classmethod
    def decode(cls, b: bytes) -> _Meta:
        v = json.loads(b)
        return cls(*v[:9])  # an archive written before trace/namespace has five fields


@dataclass(frozen=True, slots=True)
class Timeline:
    run_id: str
    rows: list[AuditRow]
    complete: bool
    known: bool
    """False: this archive holds nothing of the run (never seen here, or dropped by the bound)."""
    namespace: str | None = None
    """The run's namespace if this archive knows it (its submission, or the state it restored)."""


_RESTORED = object()


@dataclass(slots=True)
class _Gap:
    """Queued in place of dropped batches: the writer marks the runs open at that point in the
    order and the runs the dropped batches touched (filled in under ``_idle`` until the writer
    takes it or a batch is queued after it)."""

    runs: set[str] = field(default_factory=set)
    everything: bool = False
    """Too many runs to name: every archived run is marked."""

    def add(self, runs: set[str]) -> None:
        if not self.everything:
            self.runs |= runs
            if len(self.runs) > MAX_GAP_RUNS:
                self.everything, self.runs = True, set()


def runs_touched(a: Applied) -> set[str]:
    """The runs ``rows_for(a)`` makes rows for, or more, read from the command, its result, events
    and notes without building the rows (it runs on the Raft thread when a batch is dropped)."""
    out = {ev.run_id for ev in a.events if isinstance(ev, TaskChanged | RunChanged)}
    out.update(note[1] for note in a.notes)
    for obj in (a.cmd, a.result):
        run_id = getattr(obj, "run_id", "")
        if isinstance(run_id, str) and run_id:
            out.add(run_id)
    for items in (getattr(a.cmd, "items", ()), getattr(a.result, "rejected", ())):
        for it in items or ():
            run_id = getattr(it, "run_id", "")
            if isinstance(run_id, str) and run_id:
                out.add(run_id)
    return out


def _lost_runs(items: list[Any], gap: _Gap) -> None:
    """What the runs of queued items a failed transaction lost were (into ``gap``)."""
    for item in items:
        if isinstance(item, _Gap):
            if item.everything:
                gap.everything = True
            gap.add(item.runs)
        elif isinstance(item, tuple) and item and item[0] is _RESTORED:
            gap.add({r[0] for r in item[2]})
        elif isinstance(item, list):
            for a in item:
                gap.add(runs_touched(a))


class AuditArchive:
    """Implements ``raftmesh.consensus.raft.member.AuditSink`` (one per node process)."""

    def __init__(
        self, data_dir: str, max_runs: int = DEFAULT_MAX_RUNS, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        if max_runs < 1 or max_bytes < 1:
            raise ValueError("audit bounds must be positive")
        self.path = os.path.join(data_dir, AUDIT_DIR)
        os.makedirs(self.path, exist_ok=True)
        self.max_runs = max_runs
        self.max_bytes = max_bytes
        self._env = lmdb.open(
            self.path, map_size=MAP_SLACK * max_bytes + 64 * 1024**2, max_dbs=5, sync=False, metasync=False
        )
        self._rows = self._env.open_db(b"rows")
        self._runs = self._env.open_db(b"runs")
        self._order = self._env.open_db(b"order")
        self._info = self._env.open_db(b"info")
        self._started = self._env.open_db(b"started")
        """``run\0task`` -> the state time its current attempt started (for ``seconds`` at its end)."""
        self.max_run_bytes = max(max_bytes // RUN_SHARE, 1)
        with self._env.begin() as txn:
            self._total = int(txn.get(b"bytes", b"0", db=self._info))
            self._last_revision = int(txn.get(b"revision", b"0", db=self._info))
            self._next_seq = int(txn.get(b"seq", b"0", db=self._info))
            self._count = txn.stat(self._runs)["entries"]
        self._committed_revision = self._last_revision
        """The last revision whose rows are committed (readers see them)."""
        # Unbounded as a queue.Queue: ``_put`` bounds the batches itself so that a gap marker always
        # finds room right after the batches it follows (guarded by ``_idle``).
        self._queue: queue.Queue[Any] = queue.Queue()
        self._queued = 0
        self._sizes: collections.deque[int] = collections.deque()
        """Each queued batch's log entry bytes, in queue order (``_queued_bytes`` is their sum)."""
        self._queued_bytes = 0
        self._gap: _Gap | None = None
        """The queue's last item is this gap marker, still open: further drops add to it (``_idle``)."""
        self._failed = False
        """A write transaction failed (its batches are lost): the writer marks open runs and the runs
        the lost batches touched (``_failed_runs``). Writer-only."""
        self._failed_runs = _Gap()
        self.failures = 0
        self.written = 0
        self._idle = threading.Condition()
        self._pending = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    # ---- pysyncobj's thread -------------------------------------------------

    def applied(self, trail: list[Applied], size: int = 0) -> None:
        """``size``: the applied log entry's bytes (the queue is bounded by them too)."""
        self._put(trail, size)

    def restored(self, state: ClusterState) -> None:
        """A snapshot replaced the state: runs open in it, or changed past what this archive holds,
        may have missed changes here (the writer compares each run's revision with the last one
        it archived; ``_committed_revision`` is at most that, so nothing it needs is left out)."""
        since = self._committed_revision
        runs = [
            (r, run.trace_id, run.namespace, run.revision, run.status not in TERMINAL_RUN)
            for r, run in state.runs.items()
            if run.status not in TERMINAL_RUN or run.revision > since
        ]
        self._put((_RESTORED, state.revision, runs))

    def _put(self, item: Any, size: int = 0) -> None:
        with self._idle:
            if self._queued >= QUEUE_BATCHES or (self._queued and self._queued_bytes + size > QUEUE_BYTES):
                # Dropped: the runs open after the batches queued before it missed a change, and so
                # did the runs it touched (an ended run a retry reopened and ended again, within the
                # dropped batches, has no open moment to be marked at). The marker goes after those
                # batches (not before: a run submitted in one of them and finished in the dropped
                # batch must be marked too).
                first = self._gap is None
                if self._gap is None:
                    self._gap = _Gap()
                    self._pending += 1
                    self._queue.put_nowait(self._gap)
                if isinstance(item, list):
                    for a in item:
                        self._gap.add(runs_touched(a))
                elif isinstance(item, tuple) and item and item[0] is _RESTORED:
                    self._gap.add({r[0] for r in item[2]})
            else:
                first = False
                self._gap = None  # the marker queued before this batch is complete
                self._queued += 1
                self._sizes.append(size)
                self._queued_bytes += size
                self._pending += 1
                self._queue.put_nowait(item)
        if first:
            log.error("audit queue full: batches are dropped, the runs open then are marked incomplete")

    # ---- the writer -------------------------------------------------------------

    def _run(self) -> None:
        while True:
            items = [self._queue.get()]
            if items[0] is not None:
                # Wake at most every WRITE_DELAY_S: a thread that woke for every applied batch would
                # take the GIL from the Raft thread and the event loop at each commit (convoys).
                time.sleep(WRITE_DELAY_S)
            # What queued up meanwhile goes in the same transaction: under load the writer makes
            # few large transactions instead of one per applied batch (~100 us each).
            while len(items) < WRITE_COALESCE:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(i is None for i in items)
            items = [i for i in items if i is not None]
            with self._idle:  # drops after this point go to a new marker
                if any(i is self._gap for i in items):
                    self._gap = None
            try:
                self._transaction(items)
                self.written += sum(1 for i in items if not isinstance(i, _Gap))
                self._committed_revision = self._last_revision
            except Exception:
                self.failures += 1
                log.exception("could not write the audit timeline")
                self._reload()
                self._failed = True
                _lost_runs(items, self._failed_runs)
                self._mark_after_failure()
            finally:
                with self._idle:
                    self._pending -= len(items)
                    for _ in range(sum(1 for i in items if not isinstance(i, _Gap))):
                        self._queued -= 1
                        self._queued_bytes -= self._sizes.popleft()
                    self._idle.notify_all()
            if stop:
                return

    def _transaction(self, items: list[Any]) -> None:
        with self._env.begin(write=True) as txn:
            if self._failed:  # the lost batches came before these
                self._mark_open(txn, None, [], self._failed_runs)
            metas: dict[str, _Meta] = {}  # decoded once per transaction, put back at its end
            for item in items:
                if isinstance(item, _Gap):
                    self._put_metas(txn, metas)
                    self._mark_open(txn, None, [], item)  # complete: ``_run`` detached it from ``_put``
                elif isinstance(item, tuple) and item and item[0] is _RESTORED:
                    self._put_metas(txn, metas)
                    _, revision, runs = item
                    if revision > self._last_revision:  # entries this node never applied
                        self._mark_open(txn, revision, runs)
                else:
                    self._write(txn, item, metas)
            self._put_metas(txn, metas)
            self._evict(txn)
            txn.put(b"bytes", str(self._total).encode(), db=self._info)
            txn.put(b"revision", str(self._last_revision).encode(), db=self._info)
            txn.put(b"seq", str(self._next_seq).encode(), db=self._info)
        self._failed = False
        self._failed_runs = _Gap()

    def _mark_after_failure(self) -> None:
        """Mark now rather than at the next batch: a reader must not take a run for complete
        while its lost rows are missing (if this fails too, the next transaction marks first)."""
        try:
            with self._env.begin(write=True) as txn:
                self._mark_open(txn, None, [], self._failed_runs)
            self._failed = False
            self._failed_runs = _Gap()
        except Exception:
            log.exception("could not mark the audit timelines incomplete after a failed write")

    def _reload(self) -> None:
        try:
            with self._env.begin() as txn:
                self._total = int(txn.get(b"bytes", b"0", db=self._info))
                self._last_revision = int(txn.get(b"revision", b"0", db=self._info))
                self._next_seq = int(txn.get(b"seq", b"0", db=self._info))
                self._count = txn.stat(self._runs)["entries"]
        except Exception:
            log.exception("could not reload the audit archive's counters")

    def _meta(self, txn: Any, run_id: str) -> _Meta:
        raw = txn.get(run_id.encode(), db=self._runs)
        if raw is not None:
            return _Meta.decode(raw)
        meta = _Meta(self._next_seq)
        self._next_seq += 1
        self._count += 1
        txn.put(meta.seq.to_bytes(8, "big"), run_id.encode(), db=self._order)
        return meta

    def _put_metas(self, txn: Any, metas: dict[str, _Meta]) -> None:
        for run_id, meta in metas.items():
            txn.put(run_id.encode(), meta.encode(), db=self._runs)
        metas.clear()

    def _write(self, txn: Any, trail: list[Applied], metas: dict[str, _Meta]) -> None:
        for a in trail:
            if a.revision < self._last_revision:
                continue  # re-applied after a restart: already archived (at the last revision: same keys)
            # A change past the last archived revision has no row yet (its keys carry the revision,
            # and the counters are committed with the rows): no look-up per row (a fan-out's batch
            # has thousands). A fenced report (no change) shares its revision: it is looked up.
            fresh = a.changed and a.revision > self._last_revision
            for i, (run_id, row) in enumerate(rows_for(a)):
                meta = metas.get(run_id)
                if meta is None:
                    meta = metas[run_id] = self._meta(txn, run_id)
                if row.kind == "submitted":
                    meta.trace = row.trace_id
                    meta.namespace, meta.known_namespace = str(row.detail.get("namespace", "")), True
                elif not row.trace_id and meta.trace:
                    row.trace_id = meta.trace  # the row is this writer's own (rows_for made it)
                key = _ekey(run_id, a, i)
                # Already there: re-applied after a restart at the last archived revision (the
                # same row; kept as written, with the figures derived when it was first written).
                if fresh or txn.get(key, db=self._rows) is None:
                    if row.task_id:
                        self._timed(txn, run_id, row)
                    data = row.encode()
                    if meta.size + len(data) + len(key) > self.max_run_bytes:
                        if not meta.truncated:
                            meta.truncated = True
                            self._cut(txn, run_id, meta, a)
                    else:
                        meta.size += len(data) + len(key)
                        self._total += len(data) + len(key)
                        txn.put(key, data, db=self._rows)
                if row.kind == "submitted":
                    meta.submitted = True
                elif row.kind == "run_finished":
                    meta.ended = True
                elif row.kind in ("reopened", "rerun", "retried"):
                    meta.ended = False
            self._last_revision = max(self._last_revision, a.revision)

    def _timed(self, txn: Any, run_id: str, row: AuditRow) -> None:
        """An attempt's end row gets ``seconds`` since its start (state time), in its own detail
        (``rows_for`` makes a fresh one per row)."""
        skey = run_id.encode() + b"\0" + row.task_id.encode()
        if row.kind in _STARTS:
            txn.put(skey, row.time_ms.to_bytes(8, "big", signed=True), db=self._started)
        elif row.kind in _ENDS:
            raw = txn.pop(skey, db=self._started)
            if raw is not None:
                row.detail["seconds"] = max(0, row.time_ms - int.from_bytes(raw, "big", signed=True)) / 1000

    def _cut(self, txn: Any, run_id: str, meta: _Meta, a: Applied) -> None:
        """The run reached its share: one last ``truncated`` row says so (the rest are not kept)."""
        cut = AuditRow(
            a.revision,
            a.time_ms,
            "truncated",
            trace_id=meta.trace,
            detail={"limit_bytes": self.max_run_bytes},
        )
        data, key = cut.encode(), _ekey(run_id, a, 0xFFFFFFFF)
        txn.put(key, data, db=self._rows)
        meta.size += len(data) + len(key)
        self._total += len(data) + len(key)
        log.warning("audit: run %s reached its %d bytes; later rows are not kept", run_id, self.max_run_bytes)

    def _mark_open(
        self,
        txn: Any,
        revision: int | None,
        restored_runs: list[tuple[str, str, str, int, bool]],
        touched: _Gap | None = None,
    ) -> None:
        """Runs that missed changes: archived and not ended; in a restored state, open or changed
        past the last archived revision; touched by lost batches (``touched``)."""
        restored = {
            run_id: (trace, ns)
            for run_id, trace, ns, run_revision, is_open in restored_runs
            if is_open or run_revision > self._last_revision
        }
        marked = set(restored)
        if touched is not None:  # only runs this archive holds: one it never saw is incomplete anyway
            marked |= {r for r in touched.runs if txn.get(r.encode(), db=self._runs) is not None}
        everything = touched is not None and touched.everything
        with txn.cursor(db=self._runs) as cur:
            for k, v in cur.iternext(keys=True, values=True):
                if everything or not _Meta.decode(v).ended:
                    marked.add(bytes(k).decode())
        for run_id in marked:
            meta = self._meta(txn, run_id)
            meta.gap = True
            if run_id in restored and not meta.known_namespace:  # a run this node never saw submitted
                meta.trace, meta.namespace = restored[run_id]
                meta.known_namespace = True
            txn.put(run_id.encode(), meta.encode(), db=self._runs)
        if revision is not None:
            self._last_revision = revision

    def _evict(self, txn: Any) -> None:
        while self._count > self.max_runs or (self._total > self.max_bytes and self._count > 1):
            with txn.cursor(db=self._order) as cur:
                if not cur.first():
                    return
                seq_key, run_b = bytes(cur.key()), bytes(cur.value())
            txn.delete(seq_key, db=self._order)
            raw = txn.get(run_b, db=self._runs)
            if raw is not None:
                self._total -= _Meta.decode(raw).size
                txn.delete(run_b, db=self._runs)
                self._count -= 1
            prefix = run_b + b"\0"
            for db in (self._rows, self._started):
                with txn.cursor(db=db) as cur:
                    if cur.set_range(prefix):
                        while bytes(cur.key()).startswith(prefix):
                            if not cur.delete():
                                break
            log.info("audit: dropped the timeline of run %s (bound)", run_b.decode(errors="replace"))

    # ---- readers (any thread) -------------------------------------------------

    def flush(self, timeout: float = 10.0, revision: int | None = None) -> bool:
        """Wait until every batch handed over so far is written, or (``revision``) every change up
        to that revision: a reader that saw it applied then finds it here, even under steady load."""
        with self._idle:
            return self._idle.wait_for(
                lambda: self._pending == 0 or (revision is not None and self._committed_revision >= revision),
                timeout,
            )

    def timeline(self, run_id: str, limit: int = 1000) -> Timeline:
        with self._env.begin() as txn:
            raw = txn.get(run_id.encode(), db=self._runs)
            if raw is None:
                return Timeline(run_id, [], False, False)
            meta = _Meta.decode(raw)
            rows: list[AuditRow] = []
            prefix = _prefix(run_id)
            with txn.cursor(db=self._rows) as cur:
                if cur.set_range(prefix):
                    for k, v in _iter(cur):
                        if not k.startswith(prefix) or len(rows) >= limit:
                            break
                        rows.append(AuditRow.decode(v))
        namespace = meta.namespace if meta.known_namespace else None
        complete = meta.submitted and not meta.gap and not meta.truncated
        return Timeline(run_id, rows, complete, True, namespace)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout=10)
        self._env.close()


def _iter(cur: Any) -> Iterator[tuple[bytes, bytes]]:
    while True:
        yield bytes(cur.key()), bytes(cur.value())
        if not cur.next():
            return
