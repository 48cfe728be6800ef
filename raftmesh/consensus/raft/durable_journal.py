"""The Raft journal made durable: group-commit fsync off the Raft thread, term/vote synced before use.

pysyncobj's ``FileJournal`` writes entries into an mmap and its ``.meta`` file (term,
vote, commit index) with a rename; nothing is ever fsynced, so a power cut on every
node can lose acknowledged writes and let a node vote twice in one term.
``DurableJournal`` wraps it:

- Appends and truncations are numbered (``mutations``); one fdatasync covers all of them
  (group commit). On the leader ``start_sync`` hands it to the fsync thread and returns at
  once, so pysyncobj's thread goes on taking acks and commands and sending while the disk works
  (it blocked in the fsync: ~22% of the leader's Raft-thread samples under puts); one fsync is
  in flight at a time and the next covers everything appended meanwhile. When it is done that
  thread wakes the tick, whose ``collect`` advances ``synced_mutations`` / ``synced_index`` to
  what the fsync covered and then releases what waited for it (``on_synced``). ``sync`` fsyncs
  inline (followers, whose ack waits for it anyway, and term/vote).
- ``setCurrentTerm`` (term and vote) and the once-a-second commit index go through
  ``DurableMetaStore``: write a temp file, fsync it, rename, fsync the directory, so the
  vote is on disk before pysyncobj sends the grant (it stores before it sends). Both sync
  the entries first: a stored commit index never covers entries that are not on disk.
- Before the journal drops entries a snapshot now holds (compaction, snapshot install),
  the directory is fsynced: pysyncobj renamed the snapshot into place (it lives next to
  the journal) and that rename must not be lost while the truncation survives. Compaction,
  snapshot install and a follower's conflict truncation write the journal's new content to a new
  file renamed over the journal (pysyncobj rewrote it in place: a crash mid-way lost entries or
  left a journal that does not load, and records it dropped stayed past the end); an install's
  rename waits for the next sync (its ``clear`` and ``add``s arrive as separate calls), so the
  journal file is always the old one or the new one, whole. The leader
  counts itself for the rewritten entries only once an fsync begun after the rewrite is done.
- Appends still write in place, and a power cut can leave the journal's tail torn (the header's
  end offset on disk, a record's pages not). ``repair_journal``, run before pysyncobj opens the
  file, keeps the whole records before the first one that is not and cuts the rest: entries past
  the last fsync, none of them acknowledged. So that what shows through a record's lost page is
  never an old whole record, appends write only over zeros: every truncation rewrites the file,
  and a journal that opens with bytes past its end is rewritten before anything is appended.

The ordering contract, kept by ``member._SyncObj`` and ``transport.WarmTransport``:

- A message that acknowledges log entries (any outgoing message but ``append_entries`` and
  the others in ``transport.SENT_BEFORE_SYNC``/``NEVER_HELD``) is held, tagged with the
  journal's mutation count when it was sent, until an fsync *started* after that count is done.
- The leader counts its own log toward the commit quorum only up to ``synced_index``
  (``hold_back_commit``): with the fsync off its thread, pysyncobj's rule (the leader always
  counts) would commit an entry one follower holds and the leader has not yet synced.

``fsync=False`` (``--unsafe-no-fsync``) keeps pysyncobj's old behaviour: nothing is
synced and nothing waits.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

from pysyncobj import pickle as _so_pickle
from pysyncobj.journal import FIRST_RECORD_OFFSET, LAST_RECORD_OFFSET_OFFSET, FileJournal
from pysyncobj.syncobj import _RAFT_STATE

log = logging.getLogger(__name__)

FSYNC_FAILED_EXIT = 74
"""Process exit status when the journal cannot be fsynced (EX_IOERR)."""

REWRITE_SUFFIX = ".compact"
"""The journal's new file during a compaction or snapshot install, renamed over the journal."""


def fsync_path(path: str, directory: bool = False, data_only: bool = False) -> None:
    """fsync ``path``; ``data_only`` uses fdatasync (contents and size, not timestamps)."""
    fd = os.open(path, (os.O_RDONLY | os.O_DIRECTORY) if directory else os.O_RDONLY)
    try:
        (os.fdatasync if data_only else os.fsync)(fd)
    finally:
        os.close(fd)


_RECORD_HEAD = struct.Struct("<IQQ")
"""A record of pysyncobj's ``FileJournal`` starts with its size (what follows, before the size
repeated at its end), then the entry's log index and term; the command's bytes fill the rest."""
_RECORD_SIZE = struct.Struct("<I")


def repair_journal(path: str) -> None:
    """Cut a journal a power cut left torn at its first record that is not whole (load path).

    Appends write the journal in place through an mmap, and the kernel writes dirty pages back in
    any order: after a power cut the header, with its end offset, can be on disk without a record
    it counts (zeros or old bytes there), and pysyncobj's load then fails (``struct.error``) or
    reads garbage as an entry. A record is whole when its size fits before the header's end, the
    size repeated at its end matches, and its index follows the previous one with a term no
    lower. Everything from the first record that is not is dropped: it was written after the last
    fsync (an fsync covers the header and every record before it), so no entry there was ever
    acknowledged. The whole prefix goes to a new file renamed over the journal, as a compaction
    does. A header whose end offset falls short of records written drops them as well (pysyncobj
    ignores them too, but kept a record the offset cuts through). A whole journal is only read:
    the records' heads and trailing sizes, not their commands. The format has no checksum: a
    record whose first and last pages reached the disk and a middle one did not passes.
    """
    if not os.path.exists(path):
        return  # pysyncobj creates it
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < FIRST_RECORD_OFFSET:  # created, never synced: pysyncobj cannot mmap an empty file
            header = FileJournal._FileJournal__getDefaultHeader(None)[:LAST_RECORD_OFFSET_OFFSET]
            kept, end, claimed, why = 0, FIRST_RECORD_OFFSET, 0, f"it is {size} bytes, less than a header"
        else:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                kept, end, claimed, why = _whole_records(data)
                header = data[:LAST_RECORD_OFFSET_OFFSET]
        if not why:
            return
        tmp = path + REWRITE_SUFFIX
        with open(tmp, "wb") as out:  # truncates one a crashed rewrite left
            out.write(header + _RECORD_SIZE.pack(end))
            f.seek(FIRST_RECORD_OFFSET)
            left = end - FIRST_RECORD_OFFSET
            while left > 0:
                chunk = f.read(min(left, 1 << 20))
                out.write(chunk)
                left -= len(chunk)
            out.flush()
            os.fsync(out.fileno())
    os.replace(tmp, path)
    fsync_path(os.path.dirname(os.path.abspath(path)) or ".", directory=True)
    log.warning(
        "Raft journal %s: %s; kept its first %d entries (to byte %d) and cut the %d bytes its header "
        "counted after them: written after the last fsync (a power cut), never acknowledged",
        path,
        why,
        kept,
        end,
        max(claimed - end, 0),
    )


def _whole_records(data: mmap.mmap) -> tuple[int, int, int, str]:
    """(whole records, offset where they end, the header's end offset, why the file is not whole or "")."""
    claimed = _RECORD_SIZE.unpack_from(data, LAST_RECORD_OFFSET_OFFSET)[0]
    end = min(claimed, len(data))
    offset = FIRST_RECORD_OFFSET
    count = last_index = last_term = 0
    head, trailer = _RECORD_HEAD.unpack_from, _RECORD_SIZE.unpack_from
    why = ""
    while offset < end:
        if offset + _RECORD_HEAD.size > end:
            why = "is cut off by the end"
            break
        size, index, term = head(data, offset)
        after = offset + size + 8
        if size < 16 or after > end:
            why = f"has size {size}, past the end"
        elif trailer(data, after - 4)[0] != size:
            why = f"does not end with its size {size}"
        elif (index != last_index + 1) if count else (index < 1):
            why = f"holds index {index} after {last_index}"
        elif term < last_term:
            why = f"holds term {term} after {last_term}"
        if why:
            break
        count, last_index, last_term, offset = count + 1, index, term, after
    if why:
        why = (
            f"the record at offset {offset} {why} (the file is {len(data)} bytes, its header's end {claimed})"
        )
    elif offset != claimed:
        why = f"its header's end offset {claimed} is not where its records end ({offset})"
    return count, offset, claimed, why


def _bytes_past_end(path: str, end: int) -> bool:
    """Whether the journal file holds anything but zeros after its records' end ``end``.

    pysyncobj grows the file by doubling, so the tail can be as large as the records: only its
    data extents are read (``SEEK_DATA``/``SEEK_HOLE``; holes read as zeros), where the
    filesystem can say where they are."""
    zeros = bytes(1 << 20)
    with open(path, "rb") as f:
        fd, size, pos = f.fileno(), os.fstat(f.fileno()).st_size, end
        while pos < size:
            try:
                pos = os.lseek(fd, pos, os.SEEK_DATA)
                stop = os.lseek(fd, pos, os.SEEK_HOLE)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    return False  # nothing but a hole from here to the end
                stop = size  # no extent map: read it all
            f.seek(pos)
            while pos < stop:
                chunk = f.read(min(len(zeros), stop - pos))
                if not chunk:
                    return False
                if chunk != zeros[: len(chunk)]:
                    return True
                pos += len(chunk)
    return False


class DurableMetaStore:
    """pysyncobj's ``MetaStorer`` with the fsyncs an atomic replace needs."""

    def __init__(self, path: str, fsync: bool) -> None:
        self._path = path
        self._fsync = fsync

    def getMeta(self) -> dict[str, Any]:  # pysyncobj's interface
        try:
            with open(self._path, "rb") as f:
                meta = _so_pickle.loads(f.read())
        except (OSError, EOFError, ValueError, TypeError, _so_pickle.pickle.UnpicklingError):
            return {}
        return meta if isinstance(meta, dict) else {}

    def storeMeta(self, meta: dict[str, Any]) -> None:
        tmp = self._path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(_so_pickle.dumps(meta))
            f.flush()
            if self._fsync:
                os.fsync(f.fileno())
        os.replace(tmp, self._path)
        if self._fsync:
            fsync_path(os.path.dirname(os.path.abspath(self._path)) or ".", directory=True)

    def getPath(self) -> str:
        return self._path


class DurableJournal:
    """Wraps the ``FileJournal`` pysyncobj opened; pysyncobj sees the same interface."""

    def __init__(self, inner: FileJournal, path: str, fsync: bool) -> None:
        self._inner = inner
        self._path = path
        self.fsync = fsync
        # pysyncobj's MetaStorer is private to FileJournal; this is the one place it is replaced.
        inner._FileJournal__metaStorer = DurableMetaStore(path + ".meta", fsync)
        self.mutations = 0
        """Appends and truncations so far (with ``fsync=False`` nothing is counted)."""
        self.synced_mutations = 0
        """Every append and truncation up to this count is on disk."""
        self._truncations = 0
        self.synced_index = self._last_index() if fsync else 0
        """Log index of the last entry known to be on disk (0 with ``fsync=False``).

        A leader may count itself toward the commit quorum only for entries up to here.
        """
        self.syncs = 0
        """fsyncs of the journal file so far (for tests and the status page)."""
        self.sync_s_total = 0.0
        self.on_synced: list[Callable[[], None]] = []
        """Run on pysyncobj's thread after ``synced_mutations`` advanced (held messages are released here)."""
        self.wake: Callable[[], None] | None = None
        """Called from the fsync thread when a background fsync is done (wakes pysyncobj's poll)."""
        self._lock = threading.Lock()
        self._request = threading.Condition(self._lock)
        self._asked: tuple[int, int, int] | None = None
        """(mutations, last index, truncations) the fsync thread is to cover next."""
        self._done: list[tuple[int, int, int, float]] = []
        """Background fsyncs finished and not yet collected: (mutations, last index, truncations, seconds)."""
        self._in_flight = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._rewriting = False
        """A compaction or snapshot install wrote the journal's new file, not yet renamed over it."""
        if fsync:
            if os.path.exists(path + REWRITE_SUFFIX):
                os.unlink(path + REWRITE_SUFFIX)  # a rewrite a crash cut short: the journal is whole
            # Whatever a previous run left unsynced is made durable before it is relied on.
            fsync_path(path)
            if os.path.exists(path + ".meta"):
                fsync_path(path + ".meta")
            fsync_path(os.path.dirname(os.path.abspath(path)) or ".", directory=True)
            if _bytes_past_end(path, int(inner._FileJournal__currentOffset)):
                # Records dropped in place (a truncation by pysyncobj: an older raftmesh or
                # --unsafe-no-fsync) or appended and not counted (the header's page lost in a
                # power cut) lie past the end, where the next appends write in place: one of
                # them could show through after a power cut (see deleteEntriesFrom). The
                # entries go to a new file, with nothing past its end, before any append.
                log.info("Raft journal %s: bytes past its end; rewriting its entries to a new file", path)
                self._begin_rewrite(inner[:])
                self._finish_rewrite()

    def _last_index(self) -> int:
        return int(self._inner[-1][1]) if len(self._inner) else 0

    @property
    def dirty(self) -> bool:
        """Entries appended or removed and not yet on disk (always False without fsync)."""
        return self.synced_mutations < self.mutations

    def _fdatasync(self) -> float:
        started = time.perf_counter()
        try:
            # fdatasync: the journal's records and its size are what a restart reads; the mtime
            # that every mmap write dirties would cost a filesystem journal commit per sync.
            fsync_path(self._path, data_only=True)
        except OSError as exc:
            # After a failed fsync the kernel may mark the lost pages clean, so a retry can
            # "succeed" without the data: the only safe answer is to stop (as etcd does).
            log.critical("fsync of the Raft journal %s failed (%s): stopping the node", self._path, exc)
            os._exit(FSYNC_FAILED_EXIT)
        return time.perf_counter() - started

    def _synced(self, mutations: int, covered: int, truncations: int, seconds: float) -> bool:
        """Record an fsync that covered the journal as it was at ``mutations``; True if that is news."""
        self.sync_s_total += seconds
        self.syncs += 1
        if truncations == self._truncations:
            # A truncation since the fsync began may have replaced entries up to ``covered``.
            self.synced_index = max(self.synced_index, min(covered, self._last_index()))
        if mutations <= self.synced_mutations:
            return False
        self.synced_mutations = mutations
        return True

    def _released(self) -> None:
        for release in self.on_synced:
            release()

    def sync(self) -> None:
        """One fsync, inline, for everything appended since the last; then release waiters."""
        self._finish_rewrite()
        if not self.dirty:
            return
        if self._synced(self.mutations, self._last_index(), self._truncations, self._fdatasync()):
            self._released()

    def start_sync(self) -> None:
        """Hand one fsync covering everything so far to the fsync thread, unless one is in flight
        (``collect`` starts the next when it is done). Returns at once. pysyncobj's thread."""
        self._finish_rewrite()  # inline: the fsync thread syncs the journal file, not the new one
        if not self.dirty or self._in_flight:
            return
        with self._lock:
            if self._closed:
                return
            self._asked = (self.mutations, self._last_index(), self._truncations)
            self._in_flight = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._fsync_loop, name="raft-fsync", daemon=True)
                self._thread.start()
            self._request.notify()

    def collect(self) -> None:
        """Take the background fsyncs that finished, release what they cover, start the next one.

        pysyncobj's thread (every tick, and ``member`` wakes the tick when an fsync is done).
        """
        if not self._done:
            return
        with self._lock:
            done, self._done = self._done, []
            self._in_flight = False  # one at a time: the one asked is among these
        news = False
        for mutations, covered, truncations, seconds in done:
            news = self._synced(mutations, covered, truncations, seconds) or news
        if news:
            self._released()
        self.start_sync()

    def _fsync_loop(self) -> None:
        while True:
            with self._lock:
                while self._asked is None and not self._closed:
                    self._request.wait()
                if self._asked is None:
                    return
                asked, self._asked = self._asked, None
            seconds = self._fdatasync()  # outside the lock: appends go on meanwhile
            with self._lock:
                self._done.append((*asked, seconds))
            wake = self.wake
            if wake is not None:
                try:
                    wake()
                except Exception:  # a full wake-up pipe: the tick collects within its poll period
                    pass

    def _touch(self, truncated: bool = False) -> None:
        if self.fsync:
            self.mutations += 1
            if truncated:
                self._truncations += 1
            # a truncation (conflict, compaction, snapshot) may remove synced entries
            self.synced_index = min(self.synced_index, self._last_index())

    # ---- pysyncobj's Journal interface -------------------------------------------------

    def add(self, command: bytes, idx: int, term: int) -> None:
        self._inner.add(command, idx, term)
        self._touch()

    def _sync_directory(self) -> None:
        if self.fsync:
            try:
                fsync_path(os.path.dirname(os.path.abspath(self._path)) or ".", directory=True)
            except OSError as exc:
                # As for a journal fsync: a retry could "succeed" for lost data, and an exception
                # here would reach pysyncobj's install, which swallows it and acknowledges.
                log.critical("fsync of the Raft journal's directory failed (%s): stopping the node", exc)
                os._exit(FSYNC_FAILED_EXIT)

    def _rewritten(self) -> None:
        """Every kept record was written again at a new offset (``clear``, ``deleteEntriesTo``,
        ``deleteEntriesFrom``): none of them is on disk until an fsync that begins after this, so
        ``synced_index`` drops below the first kept entry (``_touch`` alone would keep it at the
        last index, which a compaction does not change, and the leader would count itself for
        page-cache entries)."""
        self._touch(truncated=True)
        if self.fsync:
            first = int(self._inner[0][1]) if len(self._inner) else 1
            self.synced_index = min(self.synced_index, first - 1)

    def clear(self) -> None:
        """A snapshot install (pysyncobj's ``__loadDumpFile``: ``clear`` then ``add`` of the
        snapshot's two boundary entries). With fsync the journal file is left whole: the entries
        go to a new file, renamed over it before anything is synced (``_finish_rewrite``)."""
        self._sync_directory()
        if self.fsync:
            self._begin_rewrite([])
        else:
            self._inner.clear()  # pysyncobj rewrites the file in place
        self._rewritten()

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        """A follower drops the suffix a new leader's entries conflict with (Raft §5.3).

        pysyncobj only moves the header's end offset back: the dropped records' bytes stayed in the
        file past it and new records were written over them in place. A power cut that wrote the
        header back and not a new record's page could then show an old record, whole, where the
        new one was, with an index that follows and a term no lower: ``repair_journal`` kept it
        and the log held an entry the node had deleted (log matching broken). With fsync the kept
        entries go to a new file renamed over the journal, as a compaction does: the journal file
        never holds a dropped record's bytes again (past its end there are only zeros), and a
        crash before the rename leaves the old journal, whose suffix no ack had yet dropped. Rare
        (a leader change with uncommitted entries), and the journal is size-compacted."""
        if self.fsync:
            self._begin_rewrite(self._inner[:entryFrom])
            self._finish_rewrite()
        else:
            self._inner.deleteEntriesFrom(entryFrom)  # pysyncobj moves the end offset back
        self._rewritten()

    def deleteEntriesTo(self, entryTo: int) -> None:
        self._sync_directory()
        if self.fsync:
            self._begin_rewrite(self._inner[entryTo:])
            self._finish_rewrite()
        else:
            self._inner.deleteEntriesTo(entryTo)  # pysyncobj clears the file and re-adds the kept entries
        self._rewritten()

    def _begin_rewrite(self, kept: list[Any]) -> None:
        """Compaction and snapshot install made crash-atomic, first half: ``kept`` goes to a new
        file, which becomes the journal pysyncobj reads and appends to, and ``_finish_rewrite``
        renames it over the journal file (the directory fsynced) before any fsync counts.

        pysyncobj rewrites in place, from the start of the file, and a crash mid-way (the kernel
        writes the pages back in any order) could leave a header past the records written or
        records half old, half new: a journal that loses acknowledged entries or does not load.
        Until the rename the journal file is the old one, untouched; after it, the new one."""
        tmp = self._path + REWRITE_SUFFIX
        try:
            if os.path.exists(tmp):
                os.unlink(tmp)  # left by a crash mid-rewrite (the journal itself is whole), or
                # a rewrite not yet finished (a second clear): its file is replaced as a whole
            fresh = FileJournal(tmp)
            for entry in kept:
                fresh.add(*entry)
        except OSError as exc:
            self._rewrite_failed(exc)
        self._swap_inner(fresh)
        self._rewriting = True

    def _finish_rewrite(self) -> None:
        """Second half: fdatasync the new file, rename it over the journal, fsync the directory,
        reopen it by its name (pysyncobj's file grows by reopening its path). A no-op unless a
        rewrite is pending. Before every fsync and meta store, so nothing is counted as on disk,
        acknowledged or covered by a stored commit index while it is only in the new file."""
        if not self._rewriting:
            return
        self._rewriting = False
        tmp = self._path + REWRITE_SUFFIX
        try:
            fsync_path(tmp, data_only=True)
            os.replace(tmp, self._path)  # the new file stays mapped until reopened below
            self._sync_directory()
            reopened = FileJournal(self._path)
        except OSError as exc:
            self._rewrite_failed(exc)
        self._swap_inner(reopened)

    def _rewrite_failed(self, exc: OSError | ValueError) -> NoReturn:
        # As for a failed journal fsync: the journal file is whole (old or new), a restart resumes.
        log.critical("rewriting the Raft journal %s failed (%s): stopping the node", self._path, exc)
        os._exit(FSYNC_FAILED_EXIT)

    def _swap_inner(self, inner: FileJournal) -> None:
        """``inner`` replaces the open journal; the in-memory meta (commit index not yet stored)
        and its ``DurableMetaStore`` carry over."""
        old = self._inner
        inner._FileJournal__meta, inner._FileJournal__metaSaved = (
            old._FileJournal__meta,
            old._FileJournal__metaSaved,
        )
        inner._FileJournal__metaStorer = old._FileJournal__metaStorer
        self._inner = inner  # first: a failed close below must not leave a destroyed journal open
        try:
            old._destroy()  # an msync: a write-back error it reports would be lost to a later fsync
        except (OSError, ValueError) as exc:
            self._rewrite_failed(exc)

    def __getitem__(self, item: Any) -> Any:
        return self._inner[item]

    def __len__(self) -> int:
        return len(self._inner)

    def _destroy(self) -> None:
        with self._lock:
            self._closed = True
            self._request.notify()
        # An fsync still running on the thread after the journal is closed (and perhaps removed,
        # as a test's temp dir is) would fail and stop the process: wait for it first.
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self.sync()
        self._inner._destroy()

    def flush(self) -> None:
        self._inner.flush()

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:
        self._inner.setRaftCommitIndex(raftCommitIndex)

    def getRaftCommitIndex(self) -> int:
        return int(self._inner.getRaftCommitIndex())

    def setCurrentTerm(self, term: int, votedForNodeId: Any) -> None:
        self.sync()  # the meta written with the vote also holds the commit index
        self._inner.setCurrentTerm(term, votedForNodeId)  # stores through DurableMetaStore

    def getCurrentTerm(self) -> int:
        return int(self._inner.getCurrentTerm())

    def getVotedForNodeId(self) -> Any:
        return self._inner.getVotedForNodeId()

    def onOneSecondTimer(self) -> None:
        # The commit index stored here must never cover entries not yet on disk.
        self.sync()
        self._inner.onOneSecondTimer()


class CommitGate:
    """A leader counts its own log toward a commit only for entries its fsync covered.

    pysyncobj's leader counts itself for every entry it appended (``SyncObj._onTick``: ``count =
    1``), which was right while each tick began with an inline fsync. With the fsync on its own
    thread, an entry one follower acknowledged and the leader has not synced yet must wait for a
    second follower or for the leader's fsync. ``hold_back`` (before pysyncobj's tick) lowers, for
    pysyncobj's commit count only, every follower's match index above the highest index a
    majority holds on disk, the leader counted only up to ``synced_index``; ``restore`` (as soon
    as the count is done, before any message is handled) puts the real values back.
    """

    def __init__(self, so: Any) -> None:
        self._so = so
        self._saved: dict[Any, int] = {}

    def hold_back(self) -> None:
        so = self._so
        journal: DurableJournal | None = so.journal
        if journal is None or not journal.fsync or so._SyncObj__raftState != _RAFT_STATE.LEADER:
            return
        others = so._SyncObj__otherNodes
        if not others:
            journal.sync()  # a single member is its own quorum: it counts once on disk, as before
            return
        last = int(so._SyncObj__getCurrentLogIndex())
        synced = min(journal.synced_index, last)
        if synced >= last:
            return  # everything it would count itself for is on disk: pysyncobj's rule holds
        match = so._SyncObj__raftMatchIndex
        held = sorted([synced, *(min(int(match.get(n, 0)), last) for n in others)], reverse=True)
        quorum = (len(others) + 1) // 2 + 1
        allowed = max(int(so._SyncObj__raftCommitIndex), held[quorum - 1])
        for n in others:
            value = match.get(n, 0)
            if value > allowed:
                self._saved[n] = value
                match[n] = allowed

    def restore(self) -> None:
        if not self._saved:
            return
        match = self._so._SyncObj__raftMatchIndex
        for n, value in self._saved.items():
            if match.get(n, 0) < value:
                match[n] = value
        self._saved = {}
