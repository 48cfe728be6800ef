"""Reading a stopped node's journal (audits, chaos replay, tests)."""

from __future__ import annotations

import shutil
import tempfile

from pysyncobj.journal import FileJournal

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
        journal = FileJournal(copy)
        try:
            commit = int(journal.getRaftCommitIndex())
            out: list[tuple[int, int, bytes]] = []
            for i in range(len(journal)):
                command, idx, term = journal[i]
                data = bytes(command)
                if not data or data[0] != 0:  # not a REGULAR command (no-op, membership, version)
                    continue
                call = loads(data[1:])  # a journal holds what peers sent: no code runs
                if isinstance(call, tuple) and len(call) == 2 and call[1]:
                    out.append((int(idx), int(term), bytes(call[1][0])))
        finally:
            journal._destroy()
    return out, commit
