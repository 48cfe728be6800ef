"""The node's one read path into its local replica.

pysyncobj applies the log on its own thread, holding the apply lock; every read
from the event loop goes through ``ReadView``, which holds that lock only for
work proportional to the answer and never for encoding:

- ``read(fn)`` runs ``fn`` under the lock. ``fn`` must copy out the few records it
  needs (O(answer)) and return values that apply will not mutate afterwards.
- ``run(run_id)`` copies the run's records (a shallow copy per task: spec, input
  and output are never mutated once applied; a large run's off the lock, kept if
  its revision did not move) and encodes the protobuf outside the lock
  (``run_async``: a large run in a worker thread, off the event loop).
  The encoding is cached by the run's ``revision``, which every change to the
  run or any of its tasks raises, so polling an unchanged run costs O(1).
- ``digest()`` is the state's canonical hash (``ClusterState.digest``) built from
  per-run encodings cached by revision: under the lock it encodes only the runs
  that changed since the last digest and the small mutable tables, takes C-level
  shallow copies of the large append-only ones, and encodes and hashes outside it.
  ``tests/test_reads.py`` checks it equals ``ClusterState.digest`` after every command.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import operator
import threading
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

import msgpack

from ..consensus.state import SNAPSHOT_FORMAT, ClusterState, Gate, RunState, TaskState
from ..proto.raftmesh.v1 import cluster_pb2 as pb
from . import convert

T = TypeVar("T")

RUN_CACHE_ENTRIES = 16
"""Encoded runs kept for repeated GetRun/WatchRun of the same run at the same revision."""
COPY_OFF_LOCK_TASKS = 256
"""Runs with at least this many tasks are copied off the apply lock first (``_take_run``)."""
ENCODE_IN_THREAD_TASKS = 256
"""Runs with at least this many tasks are encoded off the event loop (``run_async``)."""

_TASK_FIELDS = operator.attrgetter(*(f.name for f in dataclasses.fields(TaskState)))
_RUN_FIELDS = tuple(f.name for f in dataclasses.fields(RunState) if f.name != "tasks")
_HISTORY = operator.attrgetter("history")
_CHILDREN = operator.attrgetter("children")
_DEPENDENTS = operator.attrgetter("dependents")
_GATE = operator.attrgetter("gate")
_GATE_FIELDS = operator.attrgetter(*(f.name for f in dataclasses.fields(Gate)))


def _copy_gate(g: Gate | None) -> Gate | None:
    return None if g is None else Gate(*_GATE_FIELDS(g))


def _packb(value: Any) -> bytes:
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


def copy_run(run: RunState, with_tasks: bool = True) -> RunState:
    """A copy that apply will not change: O(tasks) attribute reads, no encoding."""
    return build_run(take_run(run, with_tasks))


RunFields = tuple[dict[str, Any], tuple[list[str], list[tuple[Any, ...]], tuple[list[Any], ...]]]


def take_run(run: RunState, with_tasks: bool = True) -> RunFields:
    """The run's fields and each task's, as tuples: the part of a copy that needs the apply lock
    (C-level attribute fetches per task, a fifth of building the task records under it).

    Apply changes a task's ``history``, ``children``, ``dependents`` and ``gate`` in place, so
    those are copied here too, where the lock (or the revision check of an off-lock copy) covers
    them: an encoding made later from shared ones could see a half-applied task (review found a
    replicated task's new children missing from the copied run's tasks)."""
    tasks = run.tasks if with_tasks else {}
    vals = tasks.values()
    # map() and list() iterate in C: no Python frame per task while apply waits (but the gates').
    mutable = (
        list(map(list, map(_HISTORY, vals))),
        list(map(list, map(_CHILDREN, vals))),
        list(map(list, map(_DEPENDENTS, vals))),
        list(map(_copy_gate, map(_GATE, vals))),
    )
    return {n: getattr(run, n) for n in _RUN_FIELDS}, (list(tasks), list(map(_TASK_FIELDS, vals)), mutable)


def build_run(fields: RunFields) -> RunState:
    """The ``RunState`` copy from ``take_run``'s tuples (no lock needed)."""
    head, (keys, rows, (histories, children, dependents, gates)) = fields
    tasks: dict[str, TaskState] = {}
    for k, row, h, c, d, g in zip(keys, rows, histories, children, dependents, gates, strict=True):
        t = TaskState(*row)
        t.history, t.children, t.dependents, t.gate = h, c, d, g
        tasks[k] = t
    return RunState(**head, tasks=tasks)


@dataclass(frozen=True)
class RunRead:
    revision: int
    """The replica's revision when the run was read: every event above it is news to the reader."""
    run: pb.Run


class ReadView:
    def __init__(self, lock: AbstractContextManager[Any], state: Callable[[], ClusterState]) -> None:
        self._lock = lock
        self._state = state
        self._runs_pb: OrderedDict[tuple[str, bool], tuple[int, pb.Run]] = OrderedDict()
        self._encoded: dict[str, tuple[int, bytes]] = {}
        """run id -> (revision, msgpack of RunState.encode()) for ``digest``."""
        self._cache_lock = threading.Lock()

    def read(self, fn: Callable[[ClusterState], T]) -> T:
        """``fn(state)`` under the apply lock; ``fn`` copies out O(answer) and encodes nothing."""
        with self._lock:
            return fn(self._state())

    def restored(self) -> None:
        """A snapshot replaced the state: cached encodings may describe runs that no longer exist."""
        with self._cache_lock:
            self._runs_pb.clear()
            self._encoded.clear()

    def run(self, run_id: str, with_tasks: bool = True) -> RunRead | None:
        """The run as protobuf, and the replica's revision at the same instant (for watches)."""
        got = self._take_run(run_id, with_tasks)
        return got if got is None or isinstance(got, RunRead) else self._encode_run(*got)

    async def run_async(self, run_id: str, with_tasks: bool = True) -> RunRead | None:
        """``run``, encoding a large run in a worker thread so the event loop keeps serving."""
        got = self._take_run(run_id, with_tasks)
        if got is None or isinstance(got, RunRead):
            return got
        if len(got[3][1][0]) >= ENCODE_IN_THREAD_TASKS:
            return await asyncio.to_thread(self._encode_run, *got)
        return self._encode_run(*got)

    def _take_run(
        self, run_id: str, with_tasks: bool
    ) -> RunRead | tuple[tuple[str, bool], int, int, RunFields] | None:
        """The cached encoding if the run has not changed, else a copy to encode.

        A large run is copied off the lock and kept only if its revision did not move meanwhile
        (every change to a run or its tasks raises it, and apply holds the lock for a whole
        entry, so an unchanged revision after the copy means no apply touched it during the
        copy): the lock is held O(1). If it moved, the copy is taken again under the lock."""
        key = (run_id, with_tasks)
        with self._lock:
            st = self._state()
            run = st.runs.get(run_id)
            if run is None:
                return None
            with self._cache_lock:
                hit = self._runs_pb.get(key)
            if hit is not None and hit[0] == run.revision:
                return RunRead(st.revision, hit[1])
            state_revision, revision = st.revision, run.revision
            if not with_tasks or len(run.tasks) < COPY_OFF_LOCK_TASKS:
                return key, state_revision, revision, take_run(run, with_tasks)
        try:
            fields: RunFields | None = take_run(run, with_tasks)
        except RuntimeError:  # the tasks dict grew while being read (a spawn, a map)
            fields = None
        with self._lock:
            st = self._state()
            cur = st.runs.get(run_id)
            if fields is not None and cur is run and run.revision == revision:
                return key, state_revision, revision, fields
            if cur is None:
                return None
            return key, st.revision, cur.revision, take_run(cur, with_tasks)

    def _encode_run(
        self, key: tuple[str, bool], state_revision: int, revision: int, fields: RunFields
    ) -> RunRead:
        msg = convert.run_to_pb(build_run(fields), with_tasks=key[1])
        with self._cache_lock:
            self._runs_pb[key] = (revision, msg)
            self._runs_pb.move_to_end(key)
            while len(self._runs_pb) > RUN_CACHE_ENTRIES:
                self._runs_pb.popitem(last=False)
        return RunRead(state_revision, msg)

    def digest(self) -> tuple[int, str]:
        """(revision, digest) of the local replica, equal to ``ClusterState.digest``.

        O(state) work outside the lock: callers on the event loop run it in a worker thread.
        """
        revision, pieces = self._pieces()
        h = hashlib.sha256()
        for piece in pieces:
            h.update(piece)
        return revision, h.hexdigest()

    def snapshot(self) -> bytes:
        """The state's canonical encoding (``ClusterState.encode``: what a snapshot stores).

        The lock is held only to encode what changed since the last digest or snapshot (a
        finished run is encoded once) and to copy the large tables: a node's snapshot of a
        state with many retained runs no longer stops apply for an encoding of all of them."""
        return b"".join(self._pieces()[1])

    def _pieces(self) -> tuple[int, list[bytes]]:
        """The revision, and msgpack pieces whose concatenation is ``ClusterState.encode()``."""
        with self._cache_lock:
            cached = dict(self._encoded)
        # Runs not cached at their revision are encoded off the lock first, each labelled with
        # the revision it had before (any apply that touches a run raises its revision and
        # completes before the lock is taken again, so a torn encoding never matches below).
        with self._lock:
            st = self._state()
            todo = [
                (rid, run, run.revision)
                for rid, run in st.runs.items()
                if cached.get(rid, (-1,))[0] != run.revision
            ]
        for rid, run, rev in todo:
            try:
                cached[rid] = (rev, _packb(run.encode()))
            except RuntimeError:  # its tasks changed while being read: encoded under the lock
                pass
        fresh: dict[str, tuple[int, list[Any]]] = {}
        with self._lock:
            st = self._state()
            revision = st.revision
            head = [SNAPSHOT_FORMAT, st.revision, st.time_ms, st.seq]
            members = [st.members[k].encode() for k in sorted(st.members)]
            run_ids = sorted(st.runs)
            for rid in run_ids:
                run = st.runs[rid]
                hit = cached.get(rid)
                if hit is None or hit[0] != run.revision:
                    fresh[rid] = (run.revision, run.encode())
            # C-level shallow copies of the large tables, whose records apply replaces rather than
            # changes (dedup results, finished ids, KV entries and history events, ended lock
            # requests); the small mutable ones (members, held and waited locks, leases) are
            # encoded here. This mirrors ClusterState.encode, and test_reads checks it equals it.
            idempotency = sorted(st.idempotency.items())
            dedup = list(st.dedup.items())
            finished = list(st.finished)
            lt = st.locks
            locks_live = [lt.locks[k].encode() for k in sorted(lt.locks)]
            waiting = [lt.waiting[k].encode() for k in sorted(lt.waiting)]
            ended = list(lt.ended.items())
            lock_seq = lt.seq
            kv = st.kv
            entries = sorted(kv.entries.items())
            leases = [kv.leases[k].encode() for k in sorted(kv.leases)]
            history = list(kv.history)
            compacted = kv.compacted
            # Mailboxes change in place (queued, acknowledged): encoded under the lock.
            messages = st.messages.encode()
            # Stages are few and short-lived, and their tasks change in place: under the lock.
            stages = st.encode_stages() if st.stages else None
        locks = [locks_live, waiting, [[k, v] for k, v in ended], lock_seq]
        kv_body = [[[k, e.encode()] for k, e in entries], leases, [e.encode() for e in history], compacted]
        encoded = {rid: (rev, _packb(body)) for rid, (rev, body) in fresh.items()}
        encoded.update((rid, cached[rid]) for rid, _, _ in todo if rid in cached and rid not in encoded)
        packer = msgpack.Packer(use_bin_type=True)
        # msgpack is compositional: an array is its header followed by its elements' encodings.
        pieces = [packer.pack_array_header(12 if stages is None else 13)]
        pieces += [_packb(scalar) for scalar in head]
        pieces.append(_packb(members))
        pieces.append(packer.pack_array_header(len(run_ids)))
        pieces += [encoded[rid][1] if rid in encoded else cached[rid][1] for rid in run_ids]
        pieces.append(_packb(idempotency))
        pieces.append(_packb([[rid, ts, tag, res] for rid, (ts, tag, res) in dedup]))
        pieces += [_packb(part) for part in (finished, locks, kv_body, messages)]
        if stages is not None:
            pieces.append(_packb(stages))
        with self._cache_lock:
            live = set(run_ids)
            self._encoded = {rid: e for rid, e in {**self._encoded, **encoded}.items() if rid in live}
        return revision, pieces
