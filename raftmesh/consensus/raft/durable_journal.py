"""The Raft journal made durable: group-commit fsync, and term/vote synced before use.

pysyncobj's ``FileJournal`` writes entries into an mmap and its ``.meta`` file (term,
vote, commit index) with a rename; nothing is ever fsynced, so a power cut on every
node can lose acknowledged writes and let a node vote twice in one term.
``DurableJournal`` wraps it:

- Appends and truncations mark the journal dirty; ``sync`` fsyncs it once for all of
  them (group commit) and then releases what waited for it (``on_synced``).
- ``setCurrentTerm`` (term and vote) and the once-a-second commit index go through
  ``DurableMetaStore``: write a temp file, fsync it, rename, fsync the directory, so the
  vote is on disk before pysyncobj sends the grant (it stores before it sends). Both sync
  the entries first: a stored commit index never covers entries that are not on disk.
- Before the journal drops entries a snapshot now holds (compaction, snapshot install),
  the directory is fsynced: pysyncobj renamed the snapshot into place (it lives next to
  the journal) and that rename must not be lost while the truncation survives.

The ordering contract, kept by ``member._SyncObj`` and ``transport.WarmTransport``:

- A follower's success ack (any outgoing message but ``append_entries``) is held while
  the journal is dirty and sent only after the ``sync`` that covers the entries.
- The leader counts its own log toward the commit quorum at the start of a tick, and
  every tick starts with ``sync``: an entry counts for the leader only once it is synced.

``fsync=False`` (``--unsafe-no-fsync``) keeps pysyncobj's old behaviour: nothing is
synced and nothing waits.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from pysyncobj import pickle as _so_pickle
from pysyncobj.journal import FileJournal

log = logging.getLogger(__name__)

FSYNC_FAILED_EXIT = 74
"""Process exit status when the journal cannot be fsynced (EX_IOERR)."""


def fsync_path(path: str, directory: bool = False, data_only: bool = False) -> None:
    """fsync ``path``; ``data_only`` uses fdatasync (contents and size, not timestamps)."""
    fd = os.open(path, (os.O_RDONLY | os.O_DIRECTORY) if directory else os.O_RDONLY)
    try:
        (os.fdatasync if data_only else os.fsync)(fd)
    finally:
        os.close(fd)


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
        self._dirty = False
        self.synced_index = self._last_index() if fsync else 0
        """Log index of the last entry known to be on disk (0 with ``fsync=False``).

        A leader may count itself toward the commit quorum only for entries up to here.
        """
        self.syncs = 0
        """fsyncs of the journal file so far (for tests and the status page)."""
        self.sync_s_total = 0.0
        self.on_synced: list[Callable[[], None]] = []
        """Run after every ``sync`` (held messages are released here)."""
        if fsync:
            # Whatever a previous run left unsynced is made durable before it is relied on.
            fsync_path(path)
            if os.path.exists(path + ".meta"):
                fsync_path(path + ".meta")
            fsync_path(os.path.dirname(os.path.abspath(path)) or ".", directory=True)

    def _last_index(self) -> int:
        return int(self._inner[-1][1]) if len(self._inner) else 0

    @property
    def dirty(self) -> bool:
        """Entries appended or removed since the last ``sync`` (always False without fsync)."""
        return self._dirty

    def sync(self) -> None:
        """One fsync for everything appended since the last; then release waiters."""
        if not self._dirty:
            return
        covered = self._last_index()
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
        self.sync_s_total += time.perf_counter() - started
        self.syncs += 1
        self.synced_index = covered
        self._dirty = False
        for release in self.on_synced:
            release()

    def _touch(self) -> None:
        if self.fsync:
            self._dirty = True
            # a truncation (conflict, compaction, snapshot) may remove synced entries
            self.synced_index = min(self.synced_index, self._last_index())

    # ---- pysyncobj's Journal interface -------------------------------------------------

    def add(self, command: bytes, idx: int, term: int) -> None:
        self._inner.add(command, idx, term)
        self._touch()

    def _sync_directory(self) -> None:
        if self.fsync:
            fsync_path(os.path.dirname(os.path.abspath(self._path)) or ".", directory=True)

    def clear(self) -> None:
        self._sync_directory()
        self._inner.clear()
        self._touch()

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        self._inner.deleteEntriesFrom(entryFrom)
        self._touch()

    def deleteEntriesTo(self, entryTo: int) -> None:
        self._sync_directory()
        self._inner.deleteEntriesTo(entryTo)
        self._touch()

    def __getitem__(self, item: Any) -> Any:
        return self._inner[item]

    def __len__(self) -> int:
        return len(self._inner)

    def _destroy(self) -> None:
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
