"""Reading a stopped node's journal (audits, chaos replay, tests)."""

from __future__ import annotations

import shutil
import tempfile

from pysyncobj.journal import FileJournal

from .durable_journal import repair_journal
from .wire import loads


def read_journal(path: str) -> tuple[list[tuple[int, int, bytes]], int]:
    """The batches in a *stopped* node's journal, as (log index, term, payload), and its commit index.

    For audits and tests: replaying the payloads through a fresh ``StateMachine``
    reproduces every applied event. Entries before the last snapshot are gone.
    """
    with tempfile.TemporaryDirectory() as tmp:
        copy = f"{tmp}/journal"
        shutil.copyfile(path, copy)
        try:
            shutil.copyfile(path + ".meta", copy + ".meta")
        except FileNotFoundError:
            pass
        repair_journal(copy)  # a torn tail (power cut) is cut as a restart would
        journal = FileJournal(copy)
        try:
            commit = int(journal.getRaftCommitIndex())
            out: list[tuple[int, int, bytes]] = []
            for i in range(len(journal)):
                command, idx, term = journal[i]
                payload = batch_payload(bytes(command))
                if payload is not None:
                    out.append((int(idx), int(term), payload))
        finally:
            journal._destroy()
    return out, commit


def batch_payload(entry: bytes) -> bytes | None:
    """The batch a raw pysyncobj log entry carries, or None for its own entries (no-op,
    membership, version). Unpickled with the restricted unpickler: a journal holds what peers sent."""
    if not entry or entry[0] != 0:  # not a REGULAR command
        return None
    call = loads(entry[1:])
    if isinstance(call, tuple) and len(call) == 2 and call[1]:
        return bytes(call[1][0])
    return None
