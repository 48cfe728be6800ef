"""The Raft member: the only package that imports pysyncobj.

- ``member``: ``RaftMember``, the ``SyncObj`` subclass with the one ``@replicated`` entry point.
- ``transport``: pysyncobj's TCP transport with link pings and connect timeouts.
- ``journal``: reading a stopped node's journal (or archived entries) for audits and replay.
- ``replication``: AppendEntries both ways (Raft §5.3), large entries streamed in chunks.
- ``compaction``: log compaction when the journal grows large.
"""

from .journal import batch_payload, read_journal
from .member import AppliedArchive, RaftConfig, RaftMember, RaftTimings, SnapshotIO

__all__ = [
    "AppliedArchive",
    "RaftConfig",
    "RaftMember",
    "RaftTimings",
    "SnapshotIO",
    "batch_payload",
    "read_journal",
]
