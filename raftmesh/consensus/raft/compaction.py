"""Log compaction by size, in addition to pysyncobj's count and period.

pysyncobj compacts the log (snapshot, then drop the applied entries) after
``logCompactionMinEntries`` entries or ``logCompactionMinTime`` seconds. Its journal file
stores record offsets in 32 bits: a journal that grows past 4 GiB fails on every append (a
``struct.error`` in the tick thread), and with entries of up to ~32 MB (a command at the gRPC
message limit, doubled by pysyncobj's pickle) 4 GiB fits in far fewer entries than the count
and in less time than the period. So a journal holding more than ``JOURNAL_COMPACT_BYTES`` is
compacted at once.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from pysyncobj import SyncObj

from .durable_journal import FSYNC_FAILED_EXIT

log = logging.getLogger(__name__)

JOURNAL_COMPACT_BYTES = 1024 * 1024 * 1024
"""Compact once the journal holds this much (a quarter of what its format can address)."""


def journal_bytes(journal: Any) -> int | None:
    """Bytes of records in pysyncobj's ``FileJournal`` (None for a journal without a file)."""
    journal = getattr(journal, "_inner", journal)  # durable_journal.DurableJournal wraps it
    offset = getattr(journal, "_FileJournal__currentOffset", None)
    return None if offset is None else int(offset)


class SizeCompaction:
    """Forces pysyncobj's log compaction when the journal is large (call ``on_tick`` each tick)."""

    def __init__(self, so: SyncObj) -> None:
        self._so: Any = so

    def on_tick(self) -> None:
        size = journal_bytes(self._so._SyncObj__raftLog)
        if size is not None and size > JOURNAL_COMPACT_BYTES:
            # pysyncobj runs it when no snapshot is being written, once the applied entries allow.
            self._so.forceLogCompaction()


def keep_entries_after_snapshot(journal: Any, raft_meta: Any) -> None:
    """Compact ``journal`` to the snapshot pysyncobj is loading at start, keeping later entries.

    pysyncobj writes the snapshot (renamed into place) and compacts the journal a tick later;
    at start it keeps the journal only if it *begins* with the snapshot's two boundary entries,
    else it clears it. A crash between the two steps therefore dropped every entry after the
    snapshot, entries this node had acknowledged and a leader had counted toward commits (a
    whole-cluster power cut in that window could lose committed entries). Raft's rule (§7):
    a log holding the snapshot's last entry (same index and term) keeps what follows it. So
    when the journal holds both boundary entries with their index and term, it is compacted
    here as that tick would have done, and pysyncobj then finds it beginning with them. A
    journal that contradicts the snapshot, or ends before it (a crash during a snapshot install,
    between the snapshot's rename and the journal's), is left for pysyncobj to replace: its
    ``clear`` and two ``add``s, which ``DurableJournal`` writes to a new file renamed over it.

    ``raft_meta`` is what the snapshot stores for pysyncobj: (last applied entry, the entry
    before it, cluster), each entry (command, index, term).
    """
    try:
        last, prev = raft_meta[0], raft_meta[1]
        first = int(journal[0][1])
        pos = int(prev[1]) - first
        if pos <= 0 or pos + 1 >= len(journal):
            return  # already compacted to it (pos 0), or not both boundary entries held
        held_prev, held_last = journal[pos], journal[pos + 1]
        if (int(held_prev[1]), int(held_prev[2])) != (int(prev[1]), int(prev[2])):
            return
        if (int(held_last[1]), int(held_last[2])) != (int(last[1]), int(last[2])):
            return
    except (IndexError, TypeError, ValueError):
        return  # not a shape this knows: pysyncobj's own check decides
    try:
        journal.deleteEntriesTo(pos)  # DurableJournal: a new file renamed over, after a directory fsync
    except Exception:
        # pysyncobj's loader swallows every error (a bare except) and would go on with the state
        # restored but its applied index unset, applying entries twice: stop instead; the old
        # journal is whole on disk and the next start tries again.
        log.critical(
            "keeping the journal entries after the snapshot failed: stopping the node", exc_info=True
        )
        os._exit(FSYNC_FAILED_EXIT)
