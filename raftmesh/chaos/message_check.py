"""Judge the message workload of a chaos run: pure functions of what the senders saw, the
handler effects committed in the KV, the dead letters and (if the log was audited) the
messaging audit of the committed log (``raftmesh.verify.message_audit``).

Every message carries a logical id, its sender, its path (``durable`` or ``fast``) and a
sequence number per (sender, path). The chaos actor (``raftmesh.chaos.agents.ChaosLog``)
records each turn as one KV record written in the turn's ack, keyed by the address and the
turn's ordinal ``n`` (kept in ``ctx.state``, saved in the same ack): so the records are
exactly the committed turns, their ``mod_revision`` is the commit order, and ``n`` shows
whether the actor's state continued from the last committed turn.

Invariants (each must be 0):

- durable messages lost: an acknowledged durable send or request with no committed effect,
  no dead letter, and not still in its mailbox; one still queued once the cluster was whole
  again and drained is counted on its own (handled late is not lost, but never is a bug);
- effects applied twice: a durable message with two effects, a record written twice (an ack
  re-applied), or a fast message handled twice by one activation (its receiver's dedup
  failed). A fast message handled again after its target moved to another node (or its
  node restarted) is the fast path's at-least-once: counted, not a violation;
- reordering per sender, on each path: of two acknowledged messages of one sender to one
  target, the one acknowledged before the other was sent must take effect first;
- double activations: effects of one address whose epoch went down in commit order, turns
  of an older epoch that started after a newer epoch's turn and still committed (two
  activations handling at once), two committed turns from one state (the same ``n``), and
  from the log: an applied ack of a stale epoch, a grant while another lease still ran;
- acknowledged fast messages lost: a fast send or request is acknowledged only once its
  handler took it (its turn's ack committed), so one acknowledged with no effect and no
  dead letter is lost, whichever node died (a message whose sending node died is not
  acknowledged: its call's outcome is unknown);
- expired messages delivered: a turn that started after its message's expiry (fast: with
  ``FAST_EXPIRY_SLACK_MS`` for the steps between the host's check and the handler's first
  line; durable: none, the ack commits after the turn started), or a durable ack the log
  applied past the message's expiry;
- replies without their effect: a request answered while its effect (the reply's turn) is not
  committed, or answered with another epoch than that turn's;
- effects of messages never sent, or refused;
- actor state not continuing from the last committed turn: an address's ordinals, in commit
  order, must be 1, 2, 3, ...
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..verify.message_audit import MessageAudit
from .agents import relayed_id
from .checker import Invariant

Path = Literal["durable", "fast"]
MsgOutcome = Literal["ok", "failed", "unknown"]

MSG_LOST = "acknowledged durable messages lost"
MSG_TWICE = "handler effects applied twice"
MSG_REORDERED_DURABLE = "per-sender reordering on the durable path"
MSG_REORDERED_FAST = "per-sender reordering on the fast path"
MSG_DOUBLE = "double activations"
MSG_FAST_LOST = "acknowledged fast messages lost"
MSG_EXPIRED = "expired messages delivered"
MSG_REPLY = "replies to requests whose effect did not commit"
MSG_PHANTOM = "effects of messages never sent or refused"
MSG_STATE = "actor state not continuing from the last committed turn"
MSG_STUCK = "acknowledged durable messages still queued after the drain"
MESSAGE_INVARIANTS = (
    MSG_LOST,
    MSG_STUCK,
    MSG_TWICE,
    MSG_REORDERED_DURABLE,
    MSG_REORDERED_FAST,
    MSG_DOUBLE,
    MSG_FAST_LOST,
    MSG_EXPIRED,
    MSG_REPLY,
    MSG_PHANTOM,
    MSG_STATE,
)
_LOG_INVARIANT_PARTS = "the log's half of double activations and expired deliveries"

FAST_EXPIRY_SLACK_MS = 50
"""A fast message's TTL is checked by the receiving host just before the turn; the handler's
first line (where the turn's start is taken) comes a few scheduling steps later."""
KILL_KINDS = ("kill-node", "kill-leader")


@dataclass
class MessageCall:
    """One send or request as its sender saw it."""

    sender: str
    path: Path
    kind: str
    """``send`` or ``request``."""
    seq: int
    """Per (sender, path): 1, 2, 3, ... in call order."""
    mid: str
    """The logical id (in the payload; also the message id of a send)."""
    target: str
    call_ms: int
    ttl_ms: int = 0
    return_ms: int = 0
    outcome: MsgOutcome = "unknown"
    error: str = ""
    reply: Any = None
    """A request's reply payload (the handler's ``{"n", "epoch", "node"}``)."""
    reply_epoch: int = 0
    """The reply message's epoch (the answering activation's)."""

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None and v != ""}


@dataclass(frozen=True)
class Effect:
    """One committed turn of a chaos actor, as its KV record shows it."""

    address: str
    n: int
    mid: str
    sender: str
    path: str
    seq: int
    epoch: int
    node: str
    start_ms: int
    expires_ms: int
    revision: int
    """The record's mod_revision: the commit order."""
    version: int = 1
    """More than 1: the record was written again (a turn applied twice)."""
    to: str = ""
    """A relay's turn: where it sent the message on (durably, with its ack)."""


@dataclass(frozen=True)
class DeadRecord:
    mid: str
    reason: str
    node: str = ""
    recorded_ms: int = 0


@dataclass(frozen=True)
class Kill:
    node: str
    at_ms: int


@dataclass
class MessageCheck:
    invariants: dict[str, Invariant]
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def violations(self) -> int:
        return sum(i.count for i in self.invariants.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "violations": self.violations,
            "stats": self.stats,
            "invariants": {
                i.name: {"count": i.count, "examples": i.examples, "unchecked": i.unchecked}
                for i in self.invariants.values()
            },
        }


def relayed_calls(effects: Iterable[Effect]) -> list[MessageCall]:
    """The durable sends the relays' committed turns made, as calls of the relay (its sequence
    is the turn's ``n``): each committed with its turn, before the relay's next turn began."""
    return [
        MessageCall(
            e.address, "durable", "send", e.n, relayed_id(e.mid), e.to, e.start_ms, 0, e.start_ms, "ok"
        )
        for e in effects
        if e.to
    ]


def kills_of(faults: Iterable[Any]) -> list[Kill]:
    """The kill -9s of a fault timeline (``FaultRecord``s)."""
    return [Kill(n, f.start_ms) for f in faults if f.kind in KILL_KINDS for n in f.targets]


def check_messages(
    calls: Sequence[MessageCall],
    effects: Sequence[Effect],
    dead: Sequence[DeadRecord],
    kills: Sequence[Kill] = (),
    audit: MessageAudit | None = None,
    audit_unavailable: str = "",
    fast_slack_ms: int = FAST_EXPIRY_SLACK_MS,
    queued: Iterable[str] = (),
) -> MessageCheck:
    """Every message invariant (see the module docstring). ``queued``: the logical ids of the
    durable messages still in a mailbox at the end (from the audited log's final state)."""
    inv = {name: Invariant(name) for name in MESSAGE_INVARIANTS}
    out = MessageCheck(inv)
    relayed = relayed_calls(effects)
    client_calls, calls = calls, [*calls, *relayed]
    by_mid: dict[str, list[Effect]] = {}
    for e in effects:
        by_mid.setdefault(e.mid, []).append(e)
    for es in by_mid.values():
        es.sort(key=lambda e: e.revision)
    dead_by_mid: dict[str, list[DeadRecord]] = {}
    for d in dead:
        dead_by_mid.setdefault(d.mid, []).append(d)
    by_address: dict[str, list[Effect]] = {}
    for e in effects:
        by_address.setdefault(e.address, []).append(e)
    for es in by_address.values():
        es.sort(key=lambda e: e.revision)

    stats: dict[str, Any] = {
        "calls": dict(Counter(f"{c.path} {c.kind} {c.outcome}" for c in client_calls)),
        "effects": len(effects),
        "addresses": len(by_address),
        "epochs": sum(len({e.epoch for e in es}) for es in by_address.values()),
        "dead_letters": dict(Counter(d.reason.split(":")[0] for d in dead)),
        "dead_lettered_acknowledged": Counter(),
        "unknown_with_effect": 0,
        "unknown_without_effect": 0,
        "fast_redelivered_after_move": 0,
        "fast_redelivered_examples": [],
        "latest_fast_start_after_expiry_ms": 0,
        "ordered_pairs_checked": Counter(),
        "relayed": len(relayed),
    }
    known = {c.mid: c for c in calls}
    _check_calls(calls, by_mid, dead_by_mid, set(queued), kills, inv, stats)
    _check_order(calls, by_mid, inv, stats)
    _check_addresses(by_address, inv)
    expired: dict[str, str] = {}
    for e in effects:
        if e.mid not in known:
            inv[MSG_PHANTOM].add(f"{e.address} n={e.n}: effect of {e.mid!r}, which no sender sent")
        if not e.expires_ms:
            continue
        late = e.start_ms - e.expires_ms
        slack = fast_slack_ms if e.path == "fast" else 0
        if e.path == "fast" and 0 < late <= slack:
            stats["latest_fast_start_after_expiry_ms"] = max(stats["latest_fast_start_after_expiry_ms"], late)
        if late > slack:
            expired.setdefault(
                e.mid, f"{e.mid} ({e.path}) handled at {e.address} by {e.node} {late} ms after it expired"
            )
    if audit is None:
        why = audit_unavailable or "no journal could be read and replayed"
        stats["log"] = f"not audited: {why}"
        stats["unchecked"] = f"{_LOG_INVARIANT_PARTS}: {why}"
    else:
        for a in audit.expired_acks:
            expired.setdefault(a.logical_id, f"{a.describe()}, past its expiry {a.expires_ms}")
        for a in audit.stale_acks:
            inv[MSG_DOUBLE].add(f"stale epoch's turn committed: {a.describe()}")
        for why in audit.early_grants + audit.epoch_regressions:
            inv[MSG_DOUBLE].add(why)
        for a in audit.unqueued_acks:
            inv[MSG_TWICE].add(f"durable ack applied for a seq not queued: {a.describe()}")
        stats["log"] = {
            "activations": len(audit.spans),
            "activations_ended_by": dict(Counter(s.end_reason or "still active" for s in audit.spans)),
            "acks_applied": len(audit.acks),
            "acks_rejected_stale": audit.acks_rejected,
            "acks_not_applied": audit.acks_not_applied,
        }
    for why in expired.values():
        inv[MSG_EXPIRED].add(why)
    stats["dead_lettered_acknowledged"] = dict(stats["dead_lettered_acknowledged"])
    stats["ordered_pairs_checked"] = dict(stats["ordered_pairs_checked"])
    out.stats = stats
    return out


def _check_calls(
    calls: Sequence[MessageCall],
    by_mid: Mapping[str, list[Effect]],
    dead_by_mid: Mapping[str, list[DeadRecord]],
    queued: set[str],
    kills: Sequence[Kill],
    inv: dict[str, Invariant],
    stats: dict[str, Any],
) -> None:
    for c in calls:
        effs = by_mid.get(c.mid, [])
        for e in effs:
            if e.version > 1:
                inv[MSG_TWICE].add(
                    f"{c.mid} ({c.path}): its record {e.address} n={e.n} written {e.version} times"
                )
        if len(effs) > 1:
            _duplicates(c, effs, kills, inv, stats)
        if c.outcome == "failed":
            if effs:
                inv[MSG_PHANTOM].add(f"{c.mid} ({c.path} {c.kind}) was refused ({c.error}) yet took effect")
            continue
        if c.outcome == "unknown":
            stats["unknown_with_effect" if effs else "unknown_without_effect"] += 1
            continue
        if c.kind == "request":
            _check_reply(c, effs, inv)
        if effs:
            continue
        dl = dead_by_mid.get(c.mid)
        if dl:
            stats["dead_lettered_acknowledged"][f"{c.path}: {dl[0].reason.split(':')[0]}"] += 1
            continue
        if c.path == "durable" and c.mid in queued:
            inv[MSG_STUCK].add(f"{c.mid} to {c.target} ({c.kind}, acknowledged at {c.return_ms})")
            continue
        if c.path == "durable":
            inv[MSG_LOST].add(
                f"{c.mid} to {c.target} ({c.kind}, acknowledged at {c.return_ms}): no effect, no dead letter"
            )
            continue
        inv[MSG_FAST_LOST].add(
            f"{c.mid} to {c.target} (fast {c.kind}, acknowledged at {c.return_ms}): no effect, no dead letter"
        )


def _duplicates(
    c: MessageCall,
    effs: list[Effect],
    kills: Sequence[Kill],
    inv: dict[str, Invariant],
    stats: dict[str, Any],
) -> None:
    where = ", ".join(f"{e.node} epoch {e.epoch} n={e.n}" for e in effs)
    if c.path == "durable":
        inv[MSG_TWICE].add(f"{c.mid} (durable {c.kind} to {c.target}) took effect {len(effs)} times: {where}")
        return
    for a, b in itertools.pairwise(effs):
        moved = a.node != b.node or any(
            k.node == a.node and a.start_ms <= k.at_ms <= b.start_ms for k in kills
        )
        if moved and a.epoch != b.epoch:
            stats["fast_redelivered_after_move"] += 1
            if len(stats["fast_redelivered_examples"]) < 5:
                stats["fast_redelivered_examples"].append(f"{c.mid} to {c.target}: {where}")
        else:
            inv[MSG_TWICE].add(
                f"{c.mid} (fast {c.kind} to {c.target}) handled twice by one node's activations: {where}"
            )


def _check_reply(c: MessageCall, effs: list[Effect], inv: dict[str, Invariant]) -> None:
    r = c.reply if isinstance(c.reply, dict) else {}
    n, epoch = r.get("n"), r.get("epoch")
    match = [e for e in effs if e.n == n and e.epoch == epoch]
    if not match:
        inv[MSG_REPLY].add(
            f"{c.mid} ({c.path} request to {c.target}) answered n={n} epoch {epoch}; committed:"
            f" {[(e.n, e.epoch) for e in effs] or 'nothing'}"
        )
    elif c.reply_epoch and c.reply_epoch != epoch:
        inv[MSG_REPLY].add(f"{c.mid}: the reply message says epoch {c.reply_epoch}, its turn ran at {epoch}")


def _check_order(
    calls: Sequence[MessageCall],
    by_mid: Mapping[str, list[Effect]],
    inv: dict[str, Invariant],
    stats: dict[str, Any],
) -> None:
    """Per (sender, path, target), over acknowledged calls in call order: a call acknowledged
    before the next one was made must take effect (its first effect) before it."""
    streams: dict[tuple[str, str, str], list[MessageCall]] = {}
    for c in calls:
        if c.outcome == "ok":
            streams.setdefault((c.sender, c.path, c.target), []).append(c)
    for (sender, path, target), cs in streams.items():
        cs.sort(key=lambda c: c.seq)
        returned: list[tuple[int, int, str]] = []  # heap of (return_ms, first effect revision, mid)
        # The latest-committing earlier call that had returned before the current one was made.
        latest: tuple[int, str] | None = None
        for c in cs:
            while returned and returned[0][0] <= c.call_ms:
                _, rev, mid = heapq.heappop(returned)
                if latest is None or rev > latest[0]:
                    latest = (rev, mid)
            effs = by_mid.get(c.mid)
            if not effs:
                continue
            rev = effs[0].revision
            if latest is not None:
                stats["ordered_pairs_checked"][path] += 1
                if rev < latest[0]:
                    name = MSG_REORDERED_DURABLE if path == "durable" else MSG_REORDERED_FAST
                    inv[name].add(
                        f"{sender} -> {target}: {c.mid} (seq {c.seq}) took effect at revision {rev}, before"
                        f" {latest[1]} (revision {latest[0]}), which was acknowledged before {c.mid} was sent"
                    )
            heapq.heappush(returned, (c.return_ms, rev, c.mid))


def _check_addresses(by_address: Mapping[str, list[Effect]], inv: dict[str, Invariant]) -> None:
    """Per address, in commit order: epochs never go down, an older epoch's turn never started
    after a newer epoch's committed turn, one committed turn per ordinal, ordinals 1, 2, 3, ..."""
    for address, es in by_address.items():
        top = 0
        latest_start: dict[int, int] = {}
        seen_n: dict[int, Effect] = {}
        expect = 1
        for e in es:
            if e.epoch < top:
                inv[MSG_DOUBLE].add(
                    f"{address}: {e.mid} committed by epoch {e.epoch} ({e.node}) after epoch {top}'s turns"
                )
            top = max(top, e.epoch)
            older = [s for ep, s in latest_start.items() if ep < e.epoch and s > e.start_ms]
            if older:
                inv[MSG_DOUBLE].add(
                    f"{address}: a turn of an older epoch started at {max(older)}, after epoch {e.epoch}'s turn"
                    f" ({e.mid} on {e.node}, started {e.start_ms}), and both committed"
                )
            latest_start[e.epoch] = max(latest_start.get(e.epoch, 0), e.start_ms)
            other = seen_n.get(e.n)
            if other is not None and other.mid != e.mid:
                inv[MSG_DOUBLE].add(
                    f"{address}: two committed turns from one state n={e.n}: {other.mid} ({other.node} epoch"
                    f" {other.epoch}) and {e.mid} ({e.node} epoch {e.epoch})"
                )
            seen_n.setdefault(e.n, e)
            if e.n != expect and other is None:
                inv[MSG_STATE].add(
                    f"{address}: turn {e.mid} ({e.node} epoch {e.epoch}) committed ordinal {e.n}, expected {expect}"
                )
            expect = max(expect, e.n + 1)
