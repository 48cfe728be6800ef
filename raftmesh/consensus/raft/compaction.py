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

from typing import Any

from pysyncobj import SyncObj

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
