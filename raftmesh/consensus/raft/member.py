"""The Raft member: pysyncobj's ``SyncObj`` driving the state machine.

``RaftMember`` runs a pysyncobj ``SyncObj`` whose single ``@replicated`` entry
point takes the bytes of one batch of commands and applies it to a
``StateMachine``. pysyncobj drives it from its own thread; the node talks to it
through ``propose`` (callback-based, thread-safe) and reads state under ``lock``.

Hazards handled here or documented for the caller:

- pysyncobj's failure codes (LEADER_CHANGED, NOT_LEADER, DISCARDED, UNKNOWN_OUTCOME,
  ...) do not mean "not applied": every failure is reported as ``unknown outcome``
  and the caller retries with the same request ids (the state machine dedups).
- Callbacks can be lost (e.g. after a snapshot install); callers time out.
- ``apply`` never raises (``StateMachine.apply_batch`` turns errors into results).
- ``useFork=False``: grpcio does not survive fork.
- Snapshots go through the serializer hooks into one file (``SnapshotIO``), which
  pysyncobj ships to lagging followers; loading one replaces the live state.
- Durability (``durable_journal``): entries are fsynced, once for all appended meanwhile (the
  leader's on an fsync thread), before they are acknowledged or counted toward a commit;
  ``fsync=False`` opts out.
- Nothing from the network or a snapshot is unpickled but through ``wire.loads``.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj import pickle as _so_pickle
from pysyncobj.config import FAIL_REASON
from pysyncobj.journal import FileJournal
from pysyncobj.syncobj import _RAFT_STATE

from ..commands import decode_batch
from ..machine import Applied, StateMachine
from ..results import Event, Result
from ..state import ClusterState
from . import wire
from .compaction import SizeCompaction, keep_entries_after_snapshot
from .durable_journal import FSYNC_FAILED_EXIT, CommitGate, DurableJournal, fsync_path, repair_journal
from .election import Election
from .read_index import ReadCallback, ReadIndex
from .replication import Replication
from .transport import WarmTransport

log = logging.getLogger(__name__)

_FAIL_NAMES = {v: k for k, v in vars(FAIL_REASON).items() if not k.startswith("_")}


class SnapshotIO(Protocol):
    """Writes and reads the single snapshot file (implemented on LMDB by raftmesh.storage)."""

    def write(self, path: str, raft_meta: bytes, state: bytes) -> None: ...

    def read(self, path: str) -> tuple[bytes, bytes]: ...


class AppliedArchive(Protocol):
    """Records every log entry as it is applied (implemented on LMDB by raftmesh.storage).

    ``record`` runs on pysyncobj's thread before the entry is applied and must never raise.
    """

    def record(self, index: int, entry: bytes, term: int | None = None) -> None: ...


class AuditSink(Protocol):
    """Takes what each applied batch changed (``raftmesh.storage.audit``), off the apply lock.

    Both run on pysyncobj's thread and must be quick (hand off to a writer) and never raise.
    """

    def applied(self, trail: list[Applied], size: int = 0) -> None:
        """``size``: the log entry's bytes (the sink bounds what it queues by them)."""

    def restored(self, state: ClusterState) -> None:
        """The state was replaced by a snapshot (called with the apply lock held)."""


APPLY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Upper bounds (seconds) of the apply-time histogram's buckets; above the last is +Inf."""


class ApplyTimes:
    """Seconds per applied log entry, as a histogram and the longest seen (read without a lock:
    one writer, pysyncobj's thread; a scrape may see one entry half-counted)."""

    __slots__ = ("counts", "max", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(APPLY_BUCKETS) + 1)
        self.sum = 0.0
        self.max = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(APPLY_BUCKETS, seconds)] += 1
        self.sum += seconds
        if seconds > self.max:
            self.max = seconds


@dataclass(frozen=True, slots=True)
class RaftTimings:
    """pysyncobj periods, tuned so an idle cluster commits in about a millisecond."""

    heartbeat_s: float = 0.1
    election_min_s: float = 0.6
    """Followers pre-vote (``election.py``) after a random election_min_s..election_max_s without
    the leader, and refuse pre-votes while they heard it within election_min_s. Pre-vote is what
    makes these shorter than pysyncobj's usual seconds safe: a follower whose timer fires late on a
    loaded machine asks first and, while its peers still hear the leader, changes nothing."""
    election_max_s: float = 1.2
    leader_fallback_s: float = 2.0
    """Check-quorum: a leader that hears from no majority for this long steps down."""
    connection_timeout_s: float = 3.0
    connection_retry_s: float = 0.5
    poll_s: float = 0.02
    log_compaction_entries: int = 20_000
    log_compaction_s: float = 600.0


@dataclass(frozen=True, slots=True)
class RaftConfig:
    self_addr: str
    peer_addrs: tuple[str, ...]
    journal_path: str
    snapshot_path: str
    password: str | None = None
    """Cluster secret: Raft frames are encrypted and authenticated (AES-GCM, wire.py) when set."""
    fsync: bool = True
    """fsync the journal before acknowledging entries; False is ``--unsafe-no-fsync``."""
    timings: RaftTimings = RaftTimings()


ProposeCallback = Callable[[list[Result] | None, str | None], None]
"""(results, None) once applied locally, or (None, reason) when the outcome is unknown."""


_PICKLED_COMMANDS = (b"\x00", b"\x02", b"\x03")
"""pysyncobj command kinds whose payload it unpickles: REGULAR, MEMBERSHIP, VERSION."""


LEADER_FSYNC_THREAD = False
"""Whether the leader's journal fsync runs on the fsync thread (``_SyncObj._sync_appended``). Off:
on this 2-CPU machine the leader is CPU-bound, and the thread made its Raft thread tick ~56% more
often per put and commit sooner, so the proposer sent smaller batches (16-22% more entries per
put), with two thread hand-offs per fsync on top (futex calls per put 1.9x): 16 clients' puts
0.80x and leader CPU per put 1.27x against inline (py-spy, strace; bench_kv side by side). With
it off, ``CommitGate`` finds the leader synced at every tick and changes nothing. Worth measuring
again on machines with more cores."""


class _SyncObj(SyncObj):  # type: ignore[misc]  # pysyncobj ships no type information
    def __init__(
        self, member: RaftMember, self_addr: str, peers: list[str], conf: SyncObjConf, fsync: bool
    ) -> None:
        self._member = member
        self._reset_floor: dict[Any, tuple[int, int]] = {}
        self._replication = Replication(self)
        self.read_index = ReadIndex(self)
        self._election = Election(self, conf.raftMinTimeout)
        self._fsync = fsync
        self.journal: DurableJournal | None = None
        self._commit_gate = CommitGate(self)
        self.leader_term: int | None = None
        """The term this node leads in, None while it does not: set on the Raft thread at the
        state change (``_SyncObj__setState``), one attribute, so any thread reads it whole."""

        def transport(so: Any, me: Any, others: Any) -> WarmTransport:
            return WarmTransport(so, me, others, journal=so.journal)  # set by the journal setter below

        self._loading_own_snapshot = False
        read_snapshot = conf.deserializer
        if read_snapshot is not None:

            def deserialize(path: str) -> Any:
                raft_meta = read_snapshot(path)
                if self._loading_own_snapshot:  # at start: keep what follows it (compaction.py)
                    keep_entries_after_snapshot(self._SyncObj__raftLog, raft_meta)
                return raft_meta

            conf.deserializer = deserialize

        if conf.journalFile:
            repair_journal(conf.journalFile)  # a tail a power cut tore, cut before pysyncobj loads it
        super().__init__(self_addr, peers, conf, transportClass=transport)
        if self.journal is not None:
            notifier = getattr(self, "_SyncObj__pipeNotifier", None)  # made with autoTick
            if notifier is not None:
                self.journal.wake = notifier.notify  # an fsync done ends the poll
            self.addOnTickCallback(self._sync_appended)  # what the leader appended, before polling
        self._replication.check_config()
        self.addOnTickCallback(self._replication.on_tick)
        self.addOnTickCallback(self.read_index.on_tick)
        self.addOnTickCallback(SizeCompaction(self).on_tick)

    # pysyncobj assigns its journal once, in __init__, before it makes the transport or reads
    # term, vote and commit index back; this data descriptor wraps it as it is assigned.
    @property
    def _SyncObj__raftLog(self) -> Any:
        return self.__dict__["_raft_log"]

    @_SyncObj__raftLog.setter
    def _SyncObj__raftLog(self, journal: Any) -> None:
        if isinstance(journal, FileJournal):
            journal = self.journal = DurableJournal(journal, self.conf.journalFile, self._fsync)
        self.__dict__["_raft_log"] = journal

    def _onTick(self, timeToWait: float = 0.0) -> None:
        self._election.before_tick()  # pre-vote before pysyncobj would start an election
        if self.journal is None:
            super()._onTick(timeToWait)
            self._election.after_poll()
            return
        # Group commit (durable_journal): take the fsyncs done, release what they cover; the tick
        # starts with the leader counting its own log only as far as it is synced.
        self.journal.collect()
        try:
            self._commit_gate.hold_back()
            super()._onTick(timeToWait)
        finally:
            self._commit_gate.restore()
        self._election.after_poll()  # pysyncobj's tick ends in its socket poll
        self.journal.collect()
        self._sync_appended()  # the entries appended while polling

    def _sync_appended(self) -> None:
        """Fsync what was appended: inline by default, on every member. With
        ``LEADER_FSYNC_THREAD`` the leader's goes to the fsync thread instead (group commit: it keeps
        taking acks and commands meanwhile; ``CommitGate`` counts it only once synced). A
        follower's always runs inline: its ack, the next thing it sends, waits for it either way."""
        assert self.journal is not None
        if LEADER_FSYNC_THREAD and self._isLeader():
            self.journal.start_sync()
        else:
            self.journal.sync()

    def _SyncObj__doApplyCommand(self, command: bytes) -> Any:
        """Refuse a command pysyncobj would unpickle if it names a global no command uses.

        Entries come from the leader over the wire; with a restricted frame unpickler the
        command bytes inside them are the next place a stranger could put code. Refusing is
        deterministic (every replica refuses the same bytes), so replicas stay identical.

        Every entry pysyncobj applies (its own too, so the archive has no gaps) is recorded
        in the applied archive first, when there is one; pysyncobj applies entry
        ``raftLastApplied + 1`` and advances the counter after this call.

        The entry's term, read from the log at that index, goes with it to ``_apply``
        (``StateMachine.entry_term``): pysyncobj passes only the command's bytes.
        """
        index = int(self.raftLastApplied) + 1
        self._member._entry_term = self._entry_term(index)
        archive = self._member.archive
        if archive is not None:
            try:
                archive.record(index, bytes(command), self._member._entry_term)
            except Exception:  # an archive must not stall the log (the audit then sees a gap)
                log.exception("archive failed")
        if command[:1] in _PICKLED_COMMANDS:
            try:
                wire.loads(command[1:])
            except Exception as exc:
                log.error("refusing log entry: %s", exc)
                return None
        return SyncObj._SyncObj__doApplyCommand(self, command)

    def _SyncObj__setState(self, newState: Any) -> None:
        """pysyncobj's state change, recording ``leader_term`` with it. The term cannot be read
        beside ``is_leader`` instead: a leader that hears a later term stores the new term (a
        journal sync and a meta fsync, GIL released) before it leaves the LEADER state, so for
        those milliseconds ``is_leader`` and ``term`` together name a leadership that never was.
        A candidate raises its term before it becomes leader, so the term read here is its own."""
        # After pysyncobj's own (it runs ``conf.onStateChanged``, which raftmesh does not set: a
        # callback would still see the previous value). Readers may briefly see LEADER with no
        # ``leader_term`` yet: they treat it as not leading (the scheduler decides nothing then).
        SyncObj._SyncObj__setState(self, newState)
        self.leader_term = int(self.raftCurrentTerm) if newState == _RAFT_STATE.LEADER else None

    def _entry_term(self, index: int) -> int | None:
        """The term of log entry ``index`` (pysyncobj's entries are (command, index, term)); None
        if the log does not hold it (never while pysyncobj applies it: it read it from there). O(1)."""
        try:
            raft_log = self._SyncObj__raftLog
            entry = raft_log[index - int(raft_log[0][1])]
            if int(entry[1]) == index:
                return int(entry[2])
        except Exception:  # a lookup must never stall the log
            log.exception("could not read the term of log entry %d", index)
        return None

    # pysyncobj registers its (name-mangled) message handler with the transport in __init__;
    # defining the same mangled name here puts this filter in front of it.
    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> None:
        """Keep log reconciliation from livelocking (seen in 5-node chaos runs, seed 99).

        A leader sends a lagging follower its whole tail as several messages and moves
        ``nextIndex`` ahead optimistically. A diverged follower rejects each one: the first
        rejection says "step back" (a term mismatch), the later ones "jump to my log's end".
        pysyncobj applies every reset in turn, so the last one wins and the walk back to the
        divergence point never progresses. Here a rejection may move ``nextIndex`` down but
        never back above the smallest reset seen since that follower's last success; only a
        success moves it forward, as Raft's decrement rule intends.
        """
        if isinstance(message, dict) and message.get("type") == "next_node_idx" and self._isLeader():
            term = int(self.raftCurrentTerm)
            floor = self._reset_floor.get(node)
            if floor is not None and floor[1] != term:
                floor = None
            if message.get("success"):
                self._reset_floor.pop(node, None)
            elif message.get("reset"):
                nxt = int(message["next_node_idx"])
                if floor is not None and nxt > floor[0]:
                    message = dict(message, next_node_idx=floor[0])
                else:
                    self._reset_floor[node] = (nxt, term)
        if self._election.on_message(node, message):
            return
        if self.read_index.on_message(node, message):
            return
        if not self._replication.on_message(node, message):
            SyncObj._SyncObj__onMessageReceived(self, node, message)
        elif message.get("type") == "append_entries":
            self.read_index.after_append_entries(node, message)
        self._election.after_message(node, message)

    def _SyncObj__loadDumpFile(self, clearJournal: bool) -> None:
        # clearJournal=False: this node's own snapshot, read at start (a leader's install clears).
        self._loading_own_snapshot = not clearJournal
        try:
            SyncObj._SyncObj__loadDumpFile(self, clearJournal)
        finally:
            self._loading_own_snapshot = False

    def _SyncObj__onNodeDisconnected(self, node: Any) -> None:
        SyncObj._SyncObj__onNodeDisconnected(self, node)
        self._election.on_disconnected(node)

    # Replication (AppendEntries both ways, forwarding of large commands) is raftmesh's own:
    # pysyncobj truncated acknowledged entries and could not send a large entry (replication.py).
    def _SyncObj__sendAppendEntries(self) -> None:
        self._replication.send_append_entries()

    def _SyncObj__applyLogEntries(self) -> bool:
        self._commit_gate.restore()  # pysyncobj has counted the commit: real match indexes again
        return self._replication.apply_committed(lambda: bool(SyncObj._SyncObj__applyLogEntries(self)))

    def _applyCommand(self, command: bytes, callback: Any, commandType: int | None = None) -> None:
        if not self._replication.forward_if_large(command, callback, commandType):
            SyncObj._applyCommand(self, command, callback, commandType)

    @replicated  # type: ignore[untyped-decorator]
    def apply_batch(self, payload: bytes) -> list[Result]:
        return self._member._apply(payload)


class RaftMember:
    def __init__(
        self,
        config: RaftConfig,
        machine: StateMachine,
        on_applied: Callable[[list[Event]], None],
        snapshot_io: SnapshotIO,
        on_restored: Callable[[], None] | None = None,
        archive: AppliedArchive | None = None,
        audit: AuditSink | None = None,
    ) -> None:
        self.config = config
        self.archive = archive
        self.audit = audit
        self.machine = machine
        self.lock = threading.RLock()
        """Held while applying; hold it to read ``machine.state`` from another thread."""
        self._on_applied = on_applied
        self._on_restored = on_restored
        self._snapshot_io = snapshot_io
        self._ready = threading.Event()
        self._entry_term: int | None = None
        """The term of the log entry pysyncobj is applying (``_SyncObj__doApplyCommand``)."""
        self.snapshots_loaded = 0
        # O(1) counters for the node's metrics (read from other threads without the lock).
        self.applied_entries = 0
        self.applied_bytes = 0
        self.snapshots_written = 0
        self.snapshot_write_seconds = 0.0
        self.snapshot_bytes = 0
        self.encode_state: Callable[[], bytes] | None = None
        """``machine.snapshot()``'s bytes, taken holding the lock as briefly as it can (the node's
        ``ReadView.snapshot``); None: encoded whole under the lock."""
        self.apply_seconds = ApplyTimes()
        """Per log entry: how long the apply thread spent on it (decoding, waiting for the
        apply lock, applying)."""
        t = config.timings
        conf = SyncObjConf(
            autoTick=True,
            autoTickPeriod=t.poll_s,
            appendEntriesUseBatch=False,  # send at once: ~1 ms commits; we batch per log entry ourselves
            appendEntriesPeriod=t.heartbeat_s,
            raftMinTimeout=t.election_min_s,
            raftMaxTimeout=t.election_max_s,
            leaderFallbackTimeout=t.leader_fallback_s,
            connectionTimeout=t.connection_timeout_s,
            connectionRetryTime=t.connection_retry_s,
            commandsWaitLeader=False,  # fail fast with MISSING_LEADER; the proposer retries
            journalFile=config.journal_path,
            fullDumpFile=config.snapshot_path,
            serializer=self._serialize,
            deserializer=self._deserialize,
            useFork=False,
            logCompactionMinEntries=t.log_compaction_entries,
            logCompactionMinTime=t.log_compaction_s,
            password=config.password,
            onReady=self._ready.set,
            dynamicMembershipChange=False,
            # pysyncobj would otherwise listen on 0.0.0.0 whatever host the address names.
            bindAddress=config.self_addr,
        )
        peers = [p for p in config.peer_addrs if p != config.self_addr]
        self._so = _SyncObj(self, config.self_addr, peers, conf, fsync=config.fsync)

    # ---- called on pysyncobj's thread --------------------------------------

    def _apply(self, payload: bytes) -> list[Result]:
        audit = self.audit
        trail: list[Applied] | None = [] if audit is not None else None
        start = time.perf_counter()
        # Decoded before the lock: decoding a large submit costs about as much as applying it,
        # and readers need not wait for it.
        commands = decode_batch(payload)
        with self.lock:
            results, events = self.machine.apply_batch(commands, trail, self._entry_term)
        self.apply_seconds.observe(time.perf_counter() - start)
        self.applied_entries += 1
        self.applied_bytes += len(payload)
        if audit is not None and trail:
            audit.applied(trail, len(payload))
        try:
            self._on_applied(events)
        except Exception:  # the node's bookkeeping must never stall the log
            log.exception("on_applied callback failed")
        return results

    def _serialize(self, path: str, raft_data: Any) -> None:
        start = time.perf_counter()
        if self.encode_state is not None:
            state = self.encode_state()
        else:
            with self.lock:
                state = self.machine.snapshot()
        self._snapshot_io.write(path, _so_pickle.dumps(raft_data), state)
        self.snapshots_written += 1
        self.snapshot_bytes = len(state)
        self.snapshot_write_seconds += time.perf_counter() - start

    def _deserialize(self, path: str) -> Any:
        if self.config.fsync:
            # A snapshot received from the leader was renamed into place unsynced; it must be on
            # disk before pysyncobj clears the journal and acknowledges the install.
            try:
                fsync_path(path)
                fsync_path(os.path.dirname(os.path.abspath(path)), directory=True)
            except OSError as exc:
                # pysyncobj's install swallows an exception and acknowledges: stop instead, as for
                # a failed journal fsync (a retry could "succeed" for lost data).
                log.critical("fsync of the snapshot %s failed (%s): stopping the node", path, exc)
                os._exit(FSYNC_FAILED_EXIT)
        meta, state = self._snapshot_io.read(path)
        raft_meta = wire.loads(meta)  # refused before anything is restored
        with self.lock:
            self.machine.restore(state)
            if self.audit is not None:
                self.audit.restored(self.machine.state)
        self.snapshots_loaded += 1
        if self._on_restored is not None:
            try:
                self._on_restored()
            except Exception:
                log.exception("on_restored callback failed")
        return raft_meta

    # ---- API for the node (any thread) ---------------------------------------

    def propose(self, payload: bytes, callback: ProposeCallback) -> None:
        """Append one batch to the log; ``callback`` runs on pysyncobj's thread (or inline)."""

        def done(res: Any, err: int) -> None:
            if err == FAIL_REASON.SUCCESS:
                callback(res, None)
            else:
                callback(None, _FAIL_NAMES.get(err, f"FAIL_{err}"))

        self._so.apply_batch(payload, callback=done)

    def read_index(self, callback: ReadCallback) -> None:
        """Start a linearizable read with no log entry (ReadIndex, ``read_index.py``).

        ``callback(None)`` runs (on pysyncobj's thread) once this replica has applied every entry
        committed before the call; ``callback(reason)`` if that could not be confirmed (retry).
        """
        self._so.read_index.request(callback)

    @property
    def read_rounds(self) -> int:
        """Heartbeat rounds this node sent as leader to confirm reads (a metric)."""
        return int(self._so.read_index.rounds_sent)

    @property
    def leader_addr(self) -> str | None:
        leader = self._so._getLeader()
        return None if leader is None else str(leader.address)

    @property
    def leader_known(self) -> bool:
        """Whether this node knows a leader it can still hear (``Election.leader_known``): one it
        leads as, or follows with the link up or heard within the longest election timeout.
        ``leader_addr`` keeps naming a leader whose every link closed with a reset."""
        return self._so._election.leader_known(self.config.timings.election_max_s)

    @property
    def is_leader(self) -> bool:
        return bool(self._so._isLeader())

    @property
    def term(self) -> int:
        return int(self._so.raftCurrentTerm)

    @property
    def leader_term(self) -> int | None:
        """The term this node leads in, None while it does not lead (``_SyncObj.leader_term``): a
        leader-only decision is stamped with it, never with ``term`` read beside ``is_leader``."""
        value: int | None = self._so.leader_term
        return value

    @property
    def commit_index(self) -> int:
        return int(self._so.raftCommitIndex)

    @property
    def last_applied(self) -> int:
        return int(self._so.raftLastApplied)

    @property
    def has_quorum(self) -> bool:
        return bool(self._so.hasQuorum)

    @property
    def ready(self) -> bool:
        """Caught up with the leader's commit index at least once since start."""
        return self._ready.is_set()

    @property
    def log_entries(self) -> int:
        return int(self._so._getRaftLogSize())

    def response_ages(self) -> dict[str, float]:
        """Raft address -> seconds since this leader last heard that peer answer (``Election``)."""
        return self._so._election.response_ages()

    def connected_addrs(self) -> set[str]:
        return {str(n.address) for n in self._so.otherNodes if self._so.isNodeConnected(n)}

    @property
    def journal_syncs(self) -> int:
        """fsyncs of the journal since start (0 with ``fsync=False``)."""
        journal = self._so.journal
        return journal.syncs if journal is not None else 0

    def force_snapshot(self) -> None:
        self._so.forceLogCompaction()

    def destroy(self) -> None:
        self._so.destroy_synchronous()
