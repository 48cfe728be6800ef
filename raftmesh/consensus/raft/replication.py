"""Log replication: pysyncobj's AppendEntries, both ends, redone to Raft's rules.

``_SyncObj`` routes three pysyncobj paths here (``member.py``); everything else is pysyncobj's.

Receiving (pysyncobj 0.3.17 ``SyncObj.__onMessageReceived``, the ``append_entries`` branch,
syncobj.py lines 945-1035). pysyncobj deleted every entry after ``prevLogIdx`` whenever it had
any (line 991) and appended the batch again, so a re-sent older batch left a follower's log
shorter than what it had acknowledged; and it set the commit index to min(leaderCommit, last
log index) (line 1033), which can cover entries no message of this leader has verified (a
stale tail, or any tail during a snapshot transfer). Here, as Raft §5.3 says: an existing
entry is deleted, with all that follow it, only if it conflicts with a new one (same index,
different term); and commitIndex = min(leaderCommit, index of the last new entry), never lowered.

Sending (``SyncObj.__sendAppendEntries``, lines 1251-1337). pysyncobj pickled an entry longer
than ``appendEntriesBatchSizeBytes`` and sent the pickle in chunks, but chose the last chunk by
the length of the raw command (line 1281), which its pickle exceeds (up to twice, for bytes
>= 0x80): the follower unpickled a truncated entry (``EOFError`` in its tick thread), the
leader re-sent the whole entry every heartbeat, queued tens of MB and lost its term, again and
again. A batch whose last entry was large went out as one message of unbounded size. Here an
entry larger than ``APPEND_BATCH_BYTES`` is streamed alone as numbered chunks of its raw bytes
(offset and total size in every chunk, so the follower knows when it has all of it), with at
most ``STREAM_WINDOW_BYTES`` queued per peer and ``STREAM_BUDGET_S`` spent per tick. A follower
forwards a large command to the leader (pysyncobj's ``apply_command``, one message) the same
way. So every Raft frame raftmesh sends is under ``MAX_SENT_FRAME_BYTES``.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pysyncobj import SyncObj
from pysyncobj.config import FAIL_REASON
from pysyncobj.monotonic import monotonic as _monotonic
from pysyncobj.syncobj import _RAFT_STATE

from .wire import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

APPEND_BATCH_BYTES = 512 * 1024
"""Commands' bytes (plus ``ENTRY_OVERHEAD_BYTES`` each) in one AppendEntries message; a larger entry is streamed."""

ENTRY_OVERHEAD_BYTES = 64
"""What one entry's (index, term, framing) adds to a message, counted against the batch budget."""

APPEND_BATCH_ENTRIES = 5000
"""At most this many entries in one AppendEntries message."""

CHUNK_BYTES = 256 * 1024
"""Raw bytes of a streamed entry (or forwarded command) in one chunk message."""

STREAM_BUDGET_S = 0.05
"""Time one tick may spend queueing chunks (beyond its first chunk).

The transport pickles and zlib-compresses every message on the tick thread, ~25 ms for a chunk
of non-ASCII text: an entry queued all at once starved the heartbeats to other followers for
seconds, and they elected a new leader. Streams continue on the next tick, most advanced
first, so one follower (a majority of 3) has the entry as soon as possible.
"""

STREAM_WINDOW_BYTES = 2 * 1024 * 1024
"""Another chunk is queued to a peer only while less than this is still unsent on its link.

pysyncobj's connection copies its whole send buffer on every partial send; a bounded queue
keeps a large entry from costing time quadratic in its size on the leader's tick thread.
"""

MAX_SENT_FRAME_BYTES = 2 * max(APPEND_BATCH_BYTES, CHUNK_BYTES) + 64 * 1024
"""Bound on any AppendEntries, chunk or forwarded-command frame raftmesh sends: pysyncobj's pickle
(protocol 2) at most doubles bytes, a chunk goes as text only when that is smaller, zlib adds
< 0.1%. The receiver accepts ``wire.MAX_FRAME_BYTES`` (32 MiB).

A peer refuses to assemble a streamed entry or command larger than ``wire.MAX_MESSAGE_BYTES``
(64 MiB). The largest legal entry is ~33 MB: one command at the 16 MiB gRPC message limit (a KV
transaction of UTF-8 text), doubled by pysyncobj's pickle. Measured: it commits in 3-5 s.
"""

ENTRY_CHUNK = "raftmesh_entry_chunk"
COMMAND_CHUNK = "raftmesh_command_chunk"

_INBOUND_COMMANDS_PER_PEER = 8
"""Forwarded commands a leader assembles at once per follower (the proposer has 4 in flight)."""

Entry = tuple[bytes, int, int]
"""pysyncobj's log entry: (command, index, term)."""


@dataclass(eq=False, slots=True)
class _Outbound:
    """A large entry (leader -> follower) or command (follower -> leader) being streamed to ``node``."""

    node: Any
    key: tuple[Any, ...]
    header: dict[str, Any]
    data: bytes
    offset: int = 0


@dataclass(eq=False, slots=True)
class _Inbound:
    key: tuple[Any, ...]
    size: int
    buf: bytearray


class Replication:
    """The replication paths of one pysyncobj ``SyncObj`` (reached through its private names).

    Everything here runs on pysyncobj's tick thread except ``forward_if_large``.
    """

    def __init__(self, so: SyncObj) -> None:
        self._so: Any = so
        self._entry_streams: dict[Any, _Outbound] = {}
        self._command_streams: list[_Outbound] = []
        self._entry_inbound: dict[Any, _Inbound] = {}
        self._command_inbound: dict[Any, collections.OrderedDict[int, _Inbound]] = {}
        self._large_commands: collections.deque[tuple[bytes, Any]] = collections.deque()
        self._large_commands_lock = threading.Lock()
        self._warned_legacy = False
        self._budget_end = 0.0

    def check_config(self) -> None:
        if self._so._SyncObj__conf.dynamicMembershipChange:
            raise ValueError("raftmesh's replication does not support pysyncobj's dynamic membership changes")

    # ---- dispatch (tick thread) ---------------------------------------------------

    def on_message(self, node: Any, message: Any) -> bool:
        """Handle ``message`` if it is one of replication's; False leaves it to pysyncobj."""
        if not isinstance(message, dict):
            return False
        kind = message.get("type")
        if kind == "append_entries":
            self._on_append_entries(node, message)
        elif kind == ENTRY_CHUNK:
            self._on_entry_chunk(node, message)
        elif kind == COMMAND_CHUNK:
            self._on_command_chunk(node, message)
        else:
            return False
        return True

    def on_tick(self) -> None:
        """Queue more chunks of every stream whose peer's link has room; admit queued large commands."""
        self._budget_end = _monotonic() + STREAM_BUDGET_S
        self._admit_large_commands()
        self._pump_entry_streams()
        self._pump_command_streams()

    # ---- follower: AppendEntries ----------------------------------------------------

    def _accept_leader(self, node: Any, message: dict[str, Any]) -> bool:
        """pysyncobj's bookkeeping for a message from a leader (unchanged); False if its term is stale."""
        so = self._so
        term = message["term"]
        if term < so._SyncObj__raftCurrentTerm:
            return False
        if term > so._SyncObj__raftCurrentTerm:
            so._SyncObj__transferInProgress = False  # a new leader supersedes a pending transfer
        if not so._SyncObj__transferInProgress:
            so._SyncObj__raftElectionDeadline = _monotonic() + so._SyncObj__generateRaftTimeout()
        if so._SyncObj__raftLeader != node:
            so._SyncObj__onLeaderChanged()
        so._SyncObj__raftLeader = node
        if term > so._SyncObj__raftCurrentTerm:
            so._SyncObj__setCurrentTerm(term, None)
        so._SyncObj__setState(_RAFT_STATE.FOLLOWER)
        so._SyncObj__leaderCommitIndex = message["commit_index"]
        return True

    def _on_append_entries(self, node: Any, message: dict[str, Any]) -> None:
        so = self._so
        if not self._accept_leader(node, message):
            return
        leader_commit = int(message["commit_index"])
        if "prevLogIdx" in message:
            if message.get("transmission") is not None:
                # pysyncobj's own chunking (a leader not running raftmesh): unreliable, not accepted.
                if not self._warned_legacy:
                    self._warned_legacy = True
                    log.warning(
                        "ignoring pysyncobj chunked append_entries from %s (not sent by raftmesh)", node
                    )
                return
            self._append(
                node, message["prevLogIdx"], message["prevLogTerm"], message.get("entries", []), leader_commit
            )
            return
        # Snapshot transfer: only a loaded snapshot verifies anything.
        verified = None
        if so._SyncObj__serializer.setTransmissionData(message.get("serialized")):
            so._SyncObj__loadDumpFile(clearJournal=True)
            so._SyncObj__sendNextNodeIdx(node, success=True)
            verified = int(so._SyncObj__raftLastApplied)
        self._advance_commit(leader_commit, verified)

    def _prev_matches(self, node: Any, prev_idx: Any, prev_term: Any) -> bool:
        """Raft's consistency check; on failure, pysyncobj's reply that makes the leader step back."""
        so = self._so
        prev = so._SyncObj__getEntries(prev_idx, 1)
        if not prev:
            so._SyncObj__sendNextNodeIdx(node, success=False, reset=True)
            return False
        if prev[0][2] != prev_term:
            so._SyncObj__sendNextNodeIdx(node, nextNodeIdx=prev_idx, success=False, reset=True)
            return False
        return True

    def _append(
        self, node: Any, prev_idx: int, prev_term: int, entries: list[Entry], leader_commit: int
    ) -> None:
        """AppendEntries receiver, Raft §5.3 steps 2-5."""
        so = self._so
        if not self._prev_matches(node, prev_idx, prev_term):
            return
        if any(e[1] != prev_idx + 1 + k for k, e in enumerate(entries)):
            log.error("dropping append_entries from %s: entries do not follow index %d", node, prev_idx)
            return
        existing = so._SyncObj__getEntries(prev_idx + 1, len(entries)) if entries else []
        same = 0
        for have, new in zip(existing, entries, strict=False):
            if have[2] != new[2]:
                break
            same += 1
        if same < len(existing):
            conflict = entries[same][1]
            if conflict <= so._SyncObj__raftCommitIndex or conflict <= so._SyncObj__raftLastApplied:
                # Raft rules this out (a leader holds every committed entry); say so loudly if it happens.
                log.critical(
                    "leader %s replaces committed log entries from index %d (commit index %d, last applied %d)",
                    node,
                    conflict,
                    so._SyncObj__raftCommitIndex,
                    so._SyncObj__raftLastApplied,
                )
            so._SyncObj__deleteEntriesFrom(conflict)
        raft_log = so._SyncObj__raftLog
        for entry in entries[same:]:
            raft_log.add(*entry)
        last_new = prev_idx + len(entries)
        so._SyncObj__sendNextNodeIdx(node, nextNodeIdx=last_new + 1, success=True)
        self._advance_commit(leader_commit, last_new)

    def _advance_commit(self, leader_commit: int, verified: int | None) -> None:
        """commitIndex = min(leaderCommit, last entry this message verified); never lowered."""
        so = self._so
        commit = so._SyncObj__raftCommitIndex
        last = so._SyncObj__getCurrentLogIndex()
        if commit > last:  # kept from pysyncobj: never persist a commit index past the log's end
            commit = last
        if verified is not None and leader_commit > commit:
            commit = max(commit, min(leader_commit, verified))
        so._SyncObj__raftCommitIndex = commit
        so._SyncObj__raftLog.setRaftCommitIndex(commit)

    def _on_entry_chunk(self, node: Any, m: dict[str, Any]) -> None:
        so = self._so
        if not self._accept_leader(node, m):
            return
        key = (m["term"], m["prevLogIdx"], m["prevLogTerm"], m["idx"], m["entry_term"])
        size, offset, data = int(m["size"]), int(m["offset"]), m["data"]
        if offset == 0:
            self._entry_inbound.pop(node, None)
            if size > MAX_MESSAGE_BYTES:
                log.error("refusing a streamed entry of %d bytes from %s", size, node)
                return
            if not self._prev_matches(node, m["prevLogIdx"], m["prevLogTerm"]):
                return
            self._entry_inbound[node] = _Inbound(key, size, bytearray())
        asm = self._entry_inbound.get(node)
        if asm is None or asm.key != key or asm.size != size or offset != len(asm.buf):
            # Out of sequence (a lost link, a superseded stream): the leader's next message fails
            # the consistency check and it streams the entry again from the start.
            self._entry_inbound.pop(node, None)
            return
        asm.buf += _from_wire(data)
        if len(asm.buf) < size:
            so._SyncObj__sendNextNodeIdx(node, success=False, reset=False)  # keeps the leader's quorum alive
            return
        del self._entry_inbound[node]
        if len(asm.buf) != size:
            return
        entry = (bytes(asm.buf), int(m["idx"]), int(m["entry_term"]))
        self._append(node, m["prevLogIdx"], m["prevLogTerm"], [entry], int(m["commit_index"]))

    # ---- leader: AppendEntries ------------------------------------------------------

    def send_append_entries(self) -> None:
        """pysyncobj's ``__sendAppendEntries`` with bounded messages and streamed large entries."""
        so = self._so
        conf = so._SyncObj__conf
        so._SyncObj__newAppendEntriesTime = _monotonic() + conf.appendEntriesPeriod
        start = _monotonic()
        self._budget_end = start + STREAM_BUDGET_S
        raft_log = so._SyncObj__raftLog
        transport = so._SyncObj__transport
        connected = so._SyncObj__connectedNodes
        next_index = so._SyncObj__raftNextIndex
        for node in so._SyncObj__otherNodes | so._SyncObj__readonlyNodes:
            if node not in connected:
                so._SyncObj__serializer.cancelTransmisstion(node)
                self._entry_streams.pop(node, None)
                continue
            if _unsent_bytes(transport, node) >= STREAM_WINDOW_BYTES:
                # A follower catching up after a partition reads slower than a leader compresses
                # its batches: py-spy showed the leader's Raft thread busy for seconds queueing
                # catch-up (commits to the followers it shares a majority with waited). What is
                # queued keeps the link busy; more goes once it drains.
                continue
            send_single = True
            sending_serialized = False
            nxt = next_index[node]
            while nxt <= so._SyncObj__getCurrentLogIndex() or send_single or sending_serialized:
                if nxt > raft_log[0][1]:
                    prev_idx, prev_term = so._SyncObj__getPrevLogIndexTerm(nxt)
                    entries = self._batch(nxt)
                    if len(entries) == 1 and _cost(entries[0]) > APPEND_BATCH_BYTES:
                        if not self._stream_entry(node, prev_idx, prev_term, entries[0]):
                            # The rest is queued on later ticks (on_tick); meanwhile, a heartbeat.
                            self._send_append(node, prev_idx, prev_term, [])
                            break
                        next_index[node] = entries[0][1] + 1
                    else:
                        if entries:
                            next_index[node] = entries[-1][1] + 1
                        self._send_append(node, prev_idx, prev_term, entries)
                        if node not in connected or _unsent_bytes(transport, node) >= STREAM_WINDOW_BYTES:
                            break
                else:  # the follower needs the snapshot: pysyncobj's transfer, unchanged
                    data = so._SyncObj__serializer.getTransmissionData(node)
                    transport.send(
                        node,
                        {
                            "type": "append_entries",
                            "term": so._SyncObj__raftCurrentTerm,
                            "commit_index": so._SyncObj__raftCommitIndex,
                            "serialized": data,
                        },
                    )
                    if node not in connected:
                        break
                    if data is not None and data[2]:
                        next_index[node] = raft_log[1][1] + 1
                        sending_serialized = False
                    else:
                        sending_serialized = data is not None
                nxt = next_index[node]
                send_single = False
                if _monotonic() - start > conf.appendEntriesPeriod:
                    break

    def apply_committed(self, apply: Callable[[], bool]) -> bool:
        """pysyncobj's ``__applyLogEntries`` (``apply``), on a leader after telling the followers.

        pysyncobj applied the newly committed entries on the leader first and only then sent
        the followers the new commit index, so a follower (a task's node, a client's node)
        applied every entry one leader-apply later (timeline: 0.2-0.6 ms an entry, more with
        the GIL shared with the leader's gRPC loop). Sent first, the followers apply while the
        leader does. Returns whether pysyncobj should still send AppendEntries (not again).
        """
        so = self._so
        if (
            so._SyncObj__raftState != _RAFT_STATE.LEADER
            or so._SyncObj__raftCommitIndex <= so._SyncObj__raftLastApplied
        ):
            return apply()
        self.send_append_entries()
        apply()
        return False

    def _send_append(self, node: Any, prev_idx: int, prev_term: int, entries: list[Entry]) -> None:
        so = self._so
        so._SyncObj__transport.send(
            node,
            {
                "type": "append_entries",
                "term": so._SyncObj__raftCurrentTerm,
                "commit_index": so._SyncObj__raftCommitIndex,
                "entries": entries,
                "prevLogIdx": prev_idx,
                "prevLogTerm": prev_term,
            },
        )

    def _batch(self, first: int) -> list[Entry]:
        """Entries from ``first`` within the message budget; an entry over budget comes alone."""
        so = self._so
        if first > so._SyncObj__getCurrentLogIndex():
            return []
        out: list[Entry] = []
        total = 0
        for entry in so._SyncObj__getEntries(first, APPEND_BATCH_ENTRIES):
            cost = _cost(entry)
            if out and total + cost > APPEND_BATCH_BYTES:
                break
            out.append(entry)
            total += cost
            if cost > APPEND_BATCH_BYTES:
                break
        return out

    def _stream_entry(self, node: Any, prev_idx: int, prev_term: int, entry: Entry) -> bool:
        """Queue chunks of ``entry`` to ``node`` while its link has room; True once all are queued."""
        so = self._so
        key = (so._SyncObj__raftCurrentTerm, prev_idx, prev_term, entry[1], entry[2])
        st = self._entry_streams.get(node)
        if st is None or st.key != key:
            header = {
                "type": ENTRY_CHUNK,
                "term": key[0],
                "prevLogIdx": prev_idx,
                "prevLogTerm": prev_term,
                "idx": entry[1],
                "entry_term": entry[2],
            }
            st = self._entry_streams[node] = _Outbound(node, key, header, bytes(entry[0]))
        if self._pump(st, lambda h: dict(h, commit_index=so._SyncObj__raftCommitIndex)):
            del self._entry_streams[node]
            return True
        if node not in so._SyncObj__connectedNodes:
            self._entry_streams.pop(node, None)
        return False

    def _pump_entry_streams(self) -> None:
        so = self._so
        if not self._entry_streams:
            return
        if so._SyncObj__raftState != _RAFT_STATE.LEADER:
            self._entry_streams.clear()
            return
        for node, st in sorted(self._entry_streams.items(), key=lambda item: -item[1].offset):
            entry_idx = st.key[3]
            if st.key[0] != so._SyncObj__raftCurrentTerm or so._SyncObj__raftNextIndex.get(node) != entry_idx:
                del self._entry_streams[node]
                continue
            entries = so._SyncObj__getEntries(entry_idx, 1)
            if not entries or entries[0][2] != st.key[4]:
                del self._entry_streams[node]
                continue
            if self._stream_entry(node, st.key[1], st.key[2], entries[0]):
                so._SyncObj__raftNextIndex[node] = entry_idx + 1
                so._SyncObj__newAppendEntriesTime = 0  # send what follows (and the commit index) next tick

    def _pump(self, st: _Outbound, fill: Callable[[dict[str, Any]], dict[str, Any]]) -> bool:
        """Send chunks of ``st`` while its peer's unsent queue is under the window; True when done."""
        transport = self._so._SyncObj__transport
        size = len(st.data)
        while st.offset < size:
            if st.offset > 0 and (
                _monotonic() >= self._budget_end or _unsent_bytes(transport, st.node) >= STREAM_WINDOW_BYTES
            ):
                return False
            chunk = st.data[st.offset : st.offset + CHUNK_BYTES]
            msg = fill(st.header)
            msg.update(offset=st.offset, size=size, data=_to_wire(chunk))
            if not transport.send(st.node, msg):
                return False
            st.offset += len(chunk)
        return True

    # ---- follower -> leader: forwarded commands ---------------------------------------

    def forward_if_large(self, command: bytes, callback: Any, command_type: int | None) -> bool:
        """Take a large locally proposed command (any thread); False leaves it to pysyncobj.

        pysyncobj forwards a follower's command to the leader in one message; a large one is
        streamed instead (on the tick thread, where the leader is known).
        """
        if isinstance(callback, tuple):  # forwarded to us by a follower: pysyncobj's path
            return False
        if len(command) + 1 <= CHUNK_BYTES:
            return False
        full = command if command_type is None else bytes([command_type]) + command
        with self._large_commands_lock:
            self._large_commands.append((full, callback))
        notifier = getattr(self._so, "_SyncObj__pipeNotifier", None)
        if notifier is not None:
            notifier.notify()
        return True

    def _admit_large_commands(self) -> None:
        so = self._so
        while self._large_commands:
            with self._large_commands_lock:
                command, callback = self._large_commands[0]
            leader = so._SyncObj__raftLeader
            if so._SyncObj__raftState == _RAFT_STATE.LEADER:
                SyncObj._applyCommand(so, command, callback)  # appended to our own log
            elif leader is not None:
                rid = None
                if callback is not None:
                    so._SyncObj__commandsLocalCounter += 1
                    rid = so._SyncObj__commandsLocalCounter
                    so._SyncObj__commandsWaitingReply[rid] = callback
                header = {"type": COMMAND_CHUNK, "request_id": rid}
                self._command_streams.append(_Outbound(leader, (rid,), header, command))
            elif so._SyncObj__conf.commandsWaitLeader:
                return
            elif callback is not None:
                callback(None, FAIL_REASON.MISSING_LEADER)
            with self._large_commands_lock:
                self._large_commands.popleft()

    def _pump_command_streams(self) -> None:
        so = self._so
        keep: list[_Outbound] = []
        for st in sorted(self._command_streams, key=lambda st: -st.offset):
            rid = st.key[0]
            # A leader change fails the command's callback (pysyncobj's __onLeaderChanged): stop.
            if st.node != so._SyncObj__raftLeader or (
                rid is not None and rid not in so._SyncObj__commandsWaitingReply
            ):
                continue
            if not self._pump(st, dict) and st.node in so._SyncObj__connectedNodes:
                keep.append(
                    st
                )  # else the link dropped chunks: the callback times out and the proposer retries
        self._command_streams = keep

    def _on_command_chunk(self, node: Any, m: dict[str, Any]) -> None:
        """Leader side: assemble a forwarded command, then hand it to pysyncobj as ``apply_command``."""
        rid, size, offset = m["request_id"], int(m["size"]), int(m["offset"])
        pending = self._command_inbound.setdefault(node, collections.OrderedDict())
        if offset == 0:
            if size > MAX_MESSAGE_BYTES:
                log.error("refusing a forwarded command of %d bytes from %s", size, node)
                return
            pending[rid] = _Inbound((rid,), size, bytearray())
            while len(pending) > _INBOUND_COMMANDS_PER_PEER:
                pending.popitem(last=False)
        asm = pending.get(rid)
        if asm is None or asm.size != size or offset != len(asm.buf):
            pending.pop(rid, None)  # the follower's callback times out and its proposer retries
            return
        asm.buf += _from_wire(m["data"])
        if len(asm.buf) < size:
            return
        del pending[rid]
        if len(asm.buf) != size:
            return
        message: dict[str, Any] = {"type": "apply_command", "command": bytes(asm.buf)}
        if rid is not None:
            message["request_id"] = rid
        SyncObj._SyncObj__onMessageReceived(self._so, node, message)


_HIGH_BYTES = bytes(range(0x80, 0x100))


def _to_wire(chunk: bytes) -> bytes | str:
    """``chunk`` in the form pysyncobj's transport pickles smaller.

    Its pickle (protocol 2) writes each byte >= 0x80 of a ``bytes`` as two, and each character of
    a ``str`` as its UTF-8. A command holding non-ASCII text is mostly valid UTF-8 (doubled once
    already, by pysyncobj's own pickle of the call), so as text it goes out at about its own size
    instead of twice it, and the transport's zlib, the leader's main cost, has half the input.
    Lossless: undecodable bytes become lone surrogates and come back (``_from_wire``).
    """
    text = chunk.decode("utf-8", "surrogateescape")
    as_bytes = 2 * len(chunk) - len(chunk.translate(None, _HIGH_BYTES))
    return text if len(text.encode("utf-8", "surrogatepass")) < as_bytes else chunk


def _from_wire(data: bytes | str) -> bytes:
    return data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data


def _cost(entry: Entry) -> int:
    return len(entry[0]) + ENTRY_OVERHEAD_BYTES


def _unsent_bytes(transport: Any, node: Any) -> int:
    """Bytes queued on ``node``'s link and not yet written to the socket (pysyncobj's TCP transport)."""
    conn = getattr(transport, "_connections", {}).get(node)
    return int(conn.getSendBufferSize()) if conn is not None else 0
