"""The audit archive of applied entries: LMDB round trip, merging, and a real cluster crossing snapshots.

The unit tests write archives directly; the end-to-end test runs three nodes with
``--archive-applied`` and snapshots every 30 entries, makes a follower install a
snapshot, and checks that the union of the archives is the whole log and replays to
the converged state, while the follower's own archive has a gap.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from raftmesh import DAG
from raftmesh.consensus.commands import Tick, encode_batch
from raftmesh.consensus.raft import batch_payload
from raftmesh.localcluster import LocalCluster
from raftmesh.storage.archive import AppliedArchive, ArchiveContents, merge_archives, read_archive
from raftmesh.verify.audit import Audit


def test_entries_round_trip_and_a_different_entry_at_an_index_is_a_conflict(tmp_path: Path) -> None:
    a = AppliedArchive(str(tmp_path))
    a.record(2, b"two")
    a.record(3, b"three")
    a.record(3, b"three")  # re-applied after a restart: the same bytes, nothing new
    a.record(4, b"four")
    a.record(4, b"FOUR")  # the same committed index with other bytes: a safety violation
    a.close()
    got = read_archive(str(tmp_path))
    assert got.entries == {2: b"two", 3: b"three", 4: b"four"}
    assert got.conflicts == [(4, b"FOUR")]


def test_record_never_raises_and_counts_what_it_could_not_write(tmp_path: Path) -> None:
    a = AppliedArchive(str(tmp_path))
    a.close()
    a.record(2, b"late")  # after close (a node stopping while pysyncobj still applies)
    assert a.failures == 1


def test_snapshot_events_say_written_loaded_or_installed(tmp_path: Path) -> None:
    class Files:
        def write(self, path: str, raft_meta: bytes, state: bytes) -> None:
            Path(path).write_bytes(raft_meta + state)

        def read(self, path: str) -> tuple[bytes, bytes]:
            return b"", Path(path).read_bytes()

    a = AppliedArchive(str(tmp_path / "node"))
    snap = str(tmp_path / "snap")
    io = a.snapshot_io(Files(), snapshot_at_start=True)
    io.write(snap, b"m", b"s")
    io.read(snap)  # the node's own snapshot, loaded as it starts
    a.record(2, b"x")
    io.read(snap)  # a leader's snapshot replacing the state
    fresh = a.snapshot_io(Files(), snapshot_at_start=False)  # a wiped node: its first read is an install
    fresh.read(snap)
    a.close()
    got = read_archive(str(tmp_path / "node"))
    kinds = [e["kind"] for e in got.events]
    assert kinds == ["snapshot_written", "snapshot_loaded", "snapshot_installed", "snapshot_installed"]
    assert got.events[2]["after_index"] == 2


def test_merge_reports_gaps_and_disagreements() -> None:
    n1 = ArchiveContents(entries={2: b"a", 3: b"b", 4: b"c", 8: b"g"})
    n2 = ArchiveContents(entries={2: b"a", 5: b"d", 8: b"G"}, conflicts=[(5, b"e")])
    n3 = ArchiveContents(entries={8: b"G"})
    m = merge_archives({"n1": n1, "n2": n2, "n3": n3}, 2, 10)
    assert [i for i, _ in m.entries] == [2, 3, 4, 5, 8]
    assert m.gaps == [(6, 7), (9, 10)]
    assert m.disagreements == {8: [["n2", "n3"], ["n1"]]}
    assert dict(m.entries)[8] == b"G"  # the version most archives hold
    assert m.conflicts == {"n2": [5]}
    whole = merge_archives({"n1": n1, "n2": ArchiveContents(entries={5: b"d", 6: b"e", 7: b"f"})}, 2, 8)
    assert whole.gaps == [] and whole.disagreements == {}


def test_a_missing_archive_says_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="--archive-applied"):
        read_archive(str(tmp_path))


def test_batch_payload_reads_regular_entries_only() -> None:
    from pysyncobj import pickle as so_pickle

    payload = encode_batch([Tick("t-1", 5)])
    regular = b"\x00" + so_pickle.dumps((0, (payload,)))
    assert batch_payload(regular) == payload
    assert batch_payload(b"\x01" + so_pickle.dumps(3)) is None  # a pysyncobj no-op/version entry
    assert batch_payload(b"") is None


def _chain(n: int, name: str) -> DAG:
    dag = DAG(name)
    prev = None
    for i in range(n):
        prev = dag.task(f"t{i}", "sum", input={"value": i}, deps=[prev] if prev else [])
    return dag


@pytest.mark.e2e
def test_the_union_of_archives_is_the_whole_log_across_snapshot_installs(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    c = make_cluster(
        3, extra_args=["--archive-applied", "--snapshot-entries", "30", "--node-down-after", "3"]
    )
    leader = c.wait_ready()
    victim = next(i for i in c.nodes if i != leader)
    client = c.client(retry_deadline_s=60)
    client.run(_chain(10, "before"), timeout_s=60)
    c.stop_node(victim)
    for i in range(4):
        client.run(_chain(20, f"while-down-{i}"), timeout_s=60)
    c.start_node(victim)
    c.wait_ready(timeout_s=60)
    client.run(_chain(5, "after"), timeout_s=60)
    converged = c.wait_converged_statuses(timeout_s=60)
    for i in c.nodes:
        c.stop_node(i)
    archives = {i: read_archive(n.data_dir) for i, n in c.nodes.items()}
    last = max(st.last_applied for st in converged.values())
    merged = merge_archives(archives, 2, last)
    assert merged.gaps == [] and merged.disagreements == {} and merged.conflicts == {}
    # the victim took a leader's snapshot instead of the entries it missed
    assert set(range(2, last + 1)) - set(archives[victim].entries), "the victim's archive has no gap"
    assert sum(a.count("snapshot_written") for a in archives.values()) >= 2
    assert archives[victim].count("snapshot_installed") >= 1
    audit = Audit()
    for index, entry in merged.entries:
        if index > converged[leader].last_applied:
            break
        payload = batch_payload(entry)
        if payload is not None:
            audit.feed(payload)
    assert audit.machine.digest() == converged[leader].digest
    assert audit.duplicated == [] and audit.early_starts == []
    # an entry no archive holds is reported, not skipped
    for a in archives.values():
        a.entries.pop(last // 2, None)
    assert merge_archives(archives, 2, last).gaps == [(last // 2, last // 2)]
    assert os.path.isdir(os.path.join(c.nodes[victim].data_dir, "applied.lmdb"))


def test_terms_are_recorded_merged_from_the_chosen_entry_and_optional(tmp_path: Path) -> None:
    """A replay of the archives refuses a leader's decision from another term as the live nodes
    did (``members.leader_term_error``), so each entry keeps its Raft term; an archive from
    before terms were recorded reads with none."""
    a = AppliedArchive(str(tmp_path / "a"))
    a.record(1, b"one", 3)
    a.record(2, b"two", 4)
    a.record(2, b"other", 5)  # a conflict keeps the first entry's term
    a.record(3, b"three")  # term unknown
    a.close()
    got = read_archive(str(tmp_path / "a"))
    assert got.terms == {1: 3, 2: 4}
    minority = ArchiveContents(entries={2: b"stray"}, terms={2: 9})
    merged = merge_archives({"n1": got, "n2": ArchiveContents(entries={2: b"two"}), "n3": minority}, 1, 3)
    assert [e for _, e in merged.entries] == [b"one", b"two", b"three"]
    assert merged.terms == {1: 3, 2: 4}  # from a holder of the chosen entry, never the stray's
    old = ArchiveContents(entries={1: b"one"})
    assert merge_archives({"n1": old}, 1, 1).terms == {}


def test_an_entry_archived_before_terms_gets_its_term_when_applied_again(tmp_path: Path) -> None:
    a = AppliedArchive(str(tmp_path))
    a.record(1, b"one")  # archived by a node from before terms were recorded
    a.record(1, b"one", 3)  # applied again after a restart, with its term
    a.record(1, b"one", 5)  # a later replay never changes a recorded term
    a.close()
    assert read_archive(str(tmp_path)).terms == {1: 3}
