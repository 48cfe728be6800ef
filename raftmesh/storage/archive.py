"""The audit archive: every log entry a node applies, by log index, in an LMDB environment.

Opt-in (``raftmesh node --archive-applied``). A journal loses its prefix at every
snapshot, so an audit that replays the whole log (the chaos runner's, with frequent
snapshots) reads the archives instead: the union of the nodes' archives is the whole
committed log, because every entry was applied one by one on some node before any
snapshot could cover it (a node that installs a snapshot skips those entries, so
one archive alone has gaps; the union must not, and the reader reports any gap).

Written from pysyncobj's apply thread, one small write transaction per entry,
synchronously, so that an entry is archived before any snapshot can cover it:
``sync=False`` keeps it off the disk's critical path (an entry survives a kill -9
of the node, not a power cut: this is an audit aid, not durability). The cost is
tens of microseconds per entry (see ``tests/test_archive.py``). ``record`` never
raises: a failure is logged, counted and shows up as a gap for the reader.

Layout: ``entries`` (8-byte big-endian log index -> the raw pysyncobj entry),
``conflicts`` (index + sequence -> a *different* entry seen at an archived index:
on one node the same committed index must always hold the same entry, so any row
here is a safety violation), ``events`` (sequence -> JSON: snapshots written,
loaded at start, installed while running), ``terms`` (log index -> the entry's Raft term, 8
bytes: a replay applies a leader's liveness decision only in its own term, as the live nodes
did; an archive from before it has none, and its entries replay unchecked).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import lmdb

log = logging.getLogger(__name__)

ARCHIVE_DIR = "applied.lmdb"
MAP_SIZE = 16 * 1024**3
"""Address space only (the file grows as written); past it ``record`` fails and the reader sees a gap."""


def _key(index: int) -> bytes:
    return index.to_bytes(8, "big")


class _SnapshotIO(Protocol):
    def write(self, path: str, raft_meta: bytes, state: bytes) -> None: ...

    def read(self, path: str) -> tuple[bytes, bytes]: ...


class AppliedArchive:
    """Implements ``raftmesh.consensus.raft.AppliedArchive`` (one per node process)."""

    def __init__(self, data_dir: str) -> None:
        self.path = os.path.join(data_dir, ARCHIVE_DIR)
        os.makedirs(self.path, exist_ok=True)
        self._env = lmdb.open(self.path, map_size=MAP_SIZE, max_dbs=4, sync=False, metasync=False)
        self._entries = self._env.open_db(b"entries")
        self._conflicts = self._env.open_db(b"conflicts")
        self._events = self._env.open_db(b"events")
        self._terms = self._env.open_db(b"terms")
        self._lock = threading.Lock()
        self._last_index = 0
        """Last index recorded by this process (noted with each event)."""
        self.failures = 0
        self.recorded = 0

    def record(self, index: int, entry: bytes, term: int | None = None) -> None:
        """Archive the entry at ``index`` with its Raft ``term`` if known (again after a restart:
        the same bytes are a no-op)."""
        try:
            key = _key(index)
            with self._lock, self._env.begin(write=True) as txn:
                old = txn.get(key, db=self._entries)
                if old is None or old == entry:
                    if old is None:
                        txn.put(key, entry, db=self._entries)
                    if term is not None:  # also for an entry archived before terms were recorded
                        txn.put(key, _key(term), db=self._terms, overwrite=old is None)
                else:
                    n = txn.stat(self._conflicts)["entries"]
                    txn.put(key + _key(n), entry, db=self._conflicts)
                    log.error("applied entry %d differs from the one archived before at that index", index)
                self._last_index = index
                self.recorded += 1
        except Exception:  # never into pysyncobj's apply loop
            self.failures += 1
            log.exception("could not archive applied entry %d", index)

    def note(self, kind: str) -> None:
        """Record an event (``snapshot_written``, ``snapshot_loaded``, ``snapshot_installed``)."""
        try:
            with self._lock, self._env.begin(write=True) as txn:
                n = txn.stat(self._events)["entries"]
                body = {"kind": kind, "after_index": self._last_index, "ms": int(time.time() * 1000)}
                txn.put(_key(n), json.dumps(body).encode(), db=self._events)
        except Exception:
            log.exception("could not archive event %s", kind)

    def snapshot_io(self, inner: _SnapshotIO, snapshot_at_start: bool) -> RecordingSnapshotIO:
        """``inner`` with every snapshot written or read noted in this archive.

        ``snapshot_at_start``: the node's own snapshot file exists as it starts, so pysyncobj's
        first read is loading it (once, at start); every other read installs a leader's snapshot.
        """
        return RecordingSnapshotIO(inner, self, snapshot_at_start)

    def close(self) -> None:
        with self._lock:
            self._env.close()


class RecordingSnapshotIO:
    """A ``SnapshotIO`` that notes each snapshot in the archive: written, loaded at start (the
    node's own), or installed (a leader's, replacing the state)."""

    def __init__(self, inner: _SnapshotIO, archive: AppliedArchive, snapshot_at_start: bool) -> None:
        self._inner = inner
        self._archive = archive
        self._load_pending = snapshot_at_start

    def write(self, path: str, raft_meta: bytes, state: bytes) -> None:
        self._inner.write(path, raft_meta, state)
        self._archive.note("snapshot_written")

    def read(self, path: str) -> tuple[bytes, bytes]:
        out = self._inner.read(path)
        self._archive.note("snapshot_loaded" if self._load_pending else "snapshot_installed")
        self._load_pending = False
        return out


@dataclass
class ArchiveContents:
    """What one stopped node's archive holds."""

    entries: dict[int, bytes] = field(default_factory=dict)
    terms: dict[int, int] = field(default_factory=dict)
    """Log index -> the entry's Raft term, where recorded."""
    conflicts: list[tuple[int, bytes]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    def count(self, kind: str) -> int:
        return sum(1 for e in self.events if e.get("kind") == kind)


def read_archive(data_dir: str) -> ArchiveContents:
    """Read the archive of a *stopped* node (``data_dir`` as given to the node)."""
    path = os.path.join(data_dir, ARCHIVE_DIR)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no archive in {data_dir} (was the node run with --archive-applied?)")
    env = lmdb.open(path, readonly=True, lock=False, map_size=MAP_SIZE, max_dbs=4)
    out = ArchiveContents()
    try:
        entries, conflicts, events = (
            env.open_db(n, create=False) for n in (b"entries", b"conflicts", b"events")
        )
        try:
            terms = env.open_db(b"terms", create=False)
        except lmdb.NotFoundError:  # an archive written before terms were recorded
            terms = None
        with env.begin() as txn:
            out.entries = {int.from_bytes(k, "big"): bytes(v) for k, v in _items(txn, entries)}
            if terms is not None:
                out.terms = {
                    int.from_bytes(k, "big"): int.from_bytes(v, "big") for k, v in _items(txn, terms)
                }
            out.conflicts = [(int.from_bytes(k[:8], "big"), bytes(v)) for k, v in _items(txn, conflicts)]
            out.events = [json.loads(bytes(v)) for _k, v in _items(txn, events)]
    finally:
        env.close()
    return out


@dataclass
class MergedLog:
    """The union of several nodes' archives over ``first..last`` (log indexes)."""

    first: int
    last: int
    entries: list[tuple[int, bytes]]
    """(index, raw entry) for every index some archive holds, in order; where archives
    disagree, the entry most of them hold (the committed one, if a minority applied another)."""
    gaps: list[tuple[int, int]]
    """Inclusive index ranges no archive holds: the audit cannot vouch for them."""
    disagreements: dict[int, list[list[str]]]
    """Index -> the nodes holding each version, most held first (any is a safety violation)."""
    conflicts: dict[str, list[int]]
    """Per node, indexes where it applied two different entries over time (a safety violation)."""
    terms: dict[int, int] = field(default_factory=dict)
    """Index -> the Raft term a holder of the chosen entry recorded (absent: none recorded)."""


def merge_archives(archives: dict[str, ArchiveContents], first: int, last: int) -> MergedLog:
    """Merge archives into one log from ``first`` to ``last`` and say what does not add up."""
    entries: list[tuple[int, bytes]] = []
    terms: dict[int, int] = {}
    gaps: list[tuple[int, int]] = []
    disagreements: dict[int, list[list[str]]] = {}
    gap_start: int | None = None
    for index in range(first, last + 1):
        holders: dict[bytes, list[str]] = {}
        for node, a in sorted(archives.items()):
            entry = a.entries.get(index)
            if entry is not None:
                holders.setdefault(entry, []).append(node)
        if not holders:
            gap_start = index if gap_start is None else gap_start
            continue
        if gap_start is not None:
            gaps.append((gap_start, index - 1))
            gap_start = None
        versions = sorted(holders.items(), key=lambda kv: (-len(kv[1]), kv[1]))
        if len(versions) > 1:
            disagreements[index] = [nodes for _, nodes in versions]
        entries.append((index, versions[0][0]))
        term = next((t for n in versions[0][1] if (t := archives[n].terms.get(index)) is not None), None)
        if term is not None:
            terms[index] = term
    if gap_start is not None:
        gaps.append((gap_start, last))
    conflicts = {n: sorted({i for i, _ in a.conflicts}) for n, a in archives.items() if a.conflicts}
    return MergedLog(first, last, entries, gaps, disagreements, conflicts, terms)


def _items(txn: Any, db: Any) -> Iterator[tuple[bytes, bytes]]:
    with txn.cursor(db=db) as cur:
        yield from cur.iternext(keys=True, values=True)
