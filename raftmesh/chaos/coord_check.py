"""Judge the KV and lock workloads of a chaos run: pure functions of the histories and the audit.

KV: the history (both workloads' KV calls) must be linearizable for a register per
key (``KvModel``). The search is bounded by a timeout; a search that runs out of
time proves nothing either way, so it is reported as *inconclusive* (the invariant
is marked unchecked), never as a pass and never as a violation. The premise that
makes a mod_revision ``cas`` checkable with a value register (each value comes with
exactly one revision) is checked as its own invariant.

Locks, from the audit of the committed log (``raftmesh.verify.audit.LockAudit``):
exclusive holds never overlap in log order; each lock's tokens grow; every KV
write fenced by a lock token that the machine accepted carried the lock's latest
grant (else a stale holder's write went through); every accepted write to a
counter key raised it by exactly one (else an increment was lost). From the
clients: every grant a client was told of is in the log. From the external
counters: accepted tokens never go down and no accepted write lost an increment.

Why the external counter is not judged against the log's grant times: it learns
of a new grant only when the new holder presents its token. Between the grant and
that moment a stale holder's write is accepted, and that is harmless (the new
holder's fenced read comes after it and sees it). What fencing guarantees there is
what is checked: once a token was presented, no older one gets through, so no
increment is lost. Such late-but-harmless writes are counted for information
(``late_accepted``); the KV counter, fenced inside the log, shows the strict rule.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..verify.audit import Audit, LockHold, overlapping_holds, token_regressions
from ..verify.linearizability import CheckResult, Verdict, check_operations, describe
from ..verify.models import KvModel
from .checker import Invariant
from .kv_workload import KEY_PREFIX, KvRecord
from .lock_workload import COUNTER_PREFIX, FencedCounter, LockRecord

KV_ILLEGAL = "KV keys whose history is not linearizable"
KV_REVISIONS = "KV values read or written with inconsistent mod_revisions"
KV_INVARIANTS = (KV_ILLEGAL, KV_REVISIONS)

LOCK_OVERLAP = "overlapping exclusive lock holds (log order)"
LOCK_TOKENS = "lock grants whose token did not grow"
LOCK_STALE = "accepted lock-fenced KV writes from a stale holder"
LOCK_UNLOGGED = "grants acknowledged to a client but absent from the log"
KV_COUNTER_LOST = "accepted fenced KV counter writes that lost an increment"
COUNTER_ORDER = "external fenced counter writes accepted with a token below one already seen"
COUNTER_LOST = "external fenced counter writes that lost an increment"
LOCK_INVARIANTS = (
    LOCK_OVERLAP,
    LOCK_TOKENS,
    LOCK_STALE,
    LOCK_UNLOGGED,
    KV_COUNTER_LOST,
    COUNTER_ORDER,
    COUNTER_LOST,
)
_LOG_INVARIANTS = (LOCK_OVERLAP, LOCK_TOKENS, LOCK_STALE, LOCK_UNLOGGED, KV_COUNTER_LOST)

LINEARIZABILITY_TIMEOUT_S = 60.0


def _violations(invariants: Mapping[str, Invariant]) -> int:
    return sum(i.count for i in invariants.values())


# ---- KV -------------------------------------------------------------------------------


@dataclass
class KvCheck:
    invariants: dict[str, Invariant]
    keys: list[str]
    ops: Counter[str] = field(default_factory=Counter)
    """outcome -> count (ok, unknown, failed); reads that failed are ``dropped_reads``."""
    by_kind: dict[str, Counter[str]] = field(default_factory=dict)
    """kind -> outcome -> count."""
    dropped_reads: int = 0
    checked_ops: int = 0
    verdict: str = "empty"
    """``ok``, ``illegal``, ``unknown`` (inconclusive: timed out) or ``empty``."""
    elapsed_s: float = 0.0
    timeout_s: float = LINEARIZABILITY_TIMEOUT_S
    partitions: list[dict[str, Any]] = field(default_factory=list)
    explanation: str = ""
    """The checker's ``explain()`` for an ILLEGAL verdict (every operation of the prefix: long)."""
    summary: str = ""
    """The same, cut to the end of each prefix, for the text report."""

    @property
    def violations(self) -> int:
        return _violations(self.invariants)

    @property
    def inconclusive(self) -> bool:
        return self.verdict == "unknown"

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "inconclusive": self.inconclusive,
            "violations": self.violations,
            "keys": self.keys,
            "ops": dict(self.ops),
            "by_kind": {k: dict(v) for k, v in self.by_kind.items()},
            "dropped_reads": self.dropped_reads,
            "checked_ops": self.checked_ops,
            "elapsed_s": round(self.elapsed_s, 3),
            "timeout_s": self.timeout_s,
            "partitions": self.partitions,
            "explanation": self.explanation,
            "invariants": _invariants_json(self.invariants),
        }


EXPLAIN_TAIL = 12
"""Operations of a longest linearizable prefix shown in the text report (the JSON has them all)."""


def explain_briefly(result: CheckResult, model: KvModel, tail: int = EXPLAIN_TAIL) -> str:
    """``CheckResult.explain`` with each prefix cut to its last ``tail`` operations.

    The full prefix of a chaos history runs to thousands of lines; where the search got
    stuck is at its end: the last operations placed, the state they left, and the
    candidates none of which fits.
    """
    lines = [f"{result.result.name} ({len(result.partitions)} partitions, {result.elapsed_s:.3f}s)"]
    for report in result.failures:
        prefix = report.linearization
        lines.append(f"partition {report.label}: {len(report.operations)} operations")
        lines.append(
            f"  longest linearizable prefix: {len(prefix)} operations; its last {min(tail, len(prefix))}:"
        )
        lines.extend(f"    {describe(model, op)}" for op in prefix[-tail:])
        lines.append(f"  state after it: {report.state}")
        lines.append("  none of these can be linearized next:")
        lines.extend(f"    {describe(model, op)}" for op in report.stuck)
    return "\n".join(lines)


def check_kv(records: Sequence[KvRecord], timeout_s: float = LINEARIZABILITY_TIMEOUT_S) -> KvCheck:
    """Linearizability of the KV history (by key), and the value/revision premise."""
    inv = {name: Invariant(name) for name in KV_INVARIANTS}
    out = KvCheck(inv, sorted({r.key for r in records}), timeout_s=timeout_s)
    ops = []
    for r in records:
        out.by_kind.setdefault(r.kind, Counter())[r.outcome] += 1
        if r.kind == "get" and r.outcome != "ok":
            out.dropped_reads += 1
            continue
        out.ops[r.outcome] += 1
        op = r.to_operation()
        if op is not None:
            ops.append(op)
    out.checked_ops = len(ops)
    _check_revisions(records, inv[KV_REVISIONS])
    if not ops:
        inv[KV_ILLEGAL].unchecked = "no KV operation was recorded"
        return out
    model = KvModel()
    result = check_operations(model, ops, timeout_s=timeout_s)
    out.elapsed_s = result.elapsed_s
    out.verdict = result.result.value
    out.partitions = [
        {
            "key": p.label,
            "result": p.result.value,
            "ops": len(p.operations),
            "unknown_outcome": sum(1 for o in p.operations if o.outcome_unknown),
        }
        for p in result.partitions
    ]
    for p in result.failures:
        inv[KV_ILLEGAL].add(
            f"{p.label}: {len(p.operations)} operations, longest linearizable prefix "
            f"{len(p.linearization)}, then none of {len(p.stuck)} candidates fits (state {p.state})"
        )
    if result.result is Verdict.ILLEGAL:
        out.explanation = result.explain(model)
        out.summary = explain_briefly(result, model)
    elif result.result is Verdict.UNKNOWN:
        undecided = [p.label for p in result.partitions if p.result is Verdict.UNKNOWN]
        inv[KV_ILLEGAL].unchecked = (
            f"inconclusive: the search did not finish within {timeout_s:g} s ({', '.join(undecided)} "
            "undecided); this is not a pass"
        )
    return out


def _check_revisions(records: Sequence[KvRecord], inv: Invariant) -> None:
    """Each unique value of the KV workload's keys must come with one mod_revision, and vice versa."""
    rev_of: dict[tuple[str, Any], int] = {}
    value_of: dict[tuple[str, int], Any] = {}
    for r in records:
        if r.outcome != "ok" or not r.key.startswith(KEY_PREFIX):
            continue
        if r.kind == "get" and r.output is not None:
            value, rev = r.output, r.revision
        elif r.kind == "put":
            value, rev = r.value, r.revision
        else:
            continue
        seen = rev_of.setdefault((r.key, value), rev)
        if seen != rev:
            inv.add(f"{r.key}: value {value!r} seen at mod_revision {seen} and {rev} ({r.client} #{r.index})")
        other = value_of.setdefault((r.key, rev), value)
        if other != value:
            inv.add(f"{r.key}: mod_revision {rev} seen with {other!r} and {value!r} ({r.client} #{r.index})")


# ---- locks ----------------------------------------------------------------------------


@dataclass
class LockCheck:
    invariants: dict[str, Invariant]
    stats: dict[str, Any] = field(default_factory=dict)
    counters: list[dict[str, Any]] = field(default_factory=list)
    """The external fenced counters' summaries."""
    unfenced: list[dict[str, Any]] = field(default_factory=list)
    """The unfenced experiment's counters ([] if it did not run)."""

    @property
    def violations(self) -> int:
        return _violations(self.invariants)

    def experiment(self) -> dict[str, dict[str, int]] | None:
        """Totals over every lock, fenced vs unfenced, for the side-by-side table."""
        if not self.unfenced:
            return None
        keys = ("writes", "accepted", "rejected", "final", "lost_increments", "stale_accepted")
        return {
            "fenced": {k: sum(int(c[k]) for c in self.counters) for k in keys},
            "unfenced": {k: sum(int(c[k]) for c in self.unfenced) for k in keys},
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "violations": self.violations,
            "stats": self.stats,
            "counters": self.counters,
            "unfenced_experiment": self.experiment(),
            "unfenced_counters": self.unfenced,
            "invariants": _invariants_json(self.invariants),
        }


def check_locks(
    records: Sequence[LockRecord],
    counters: Sequence[FencedCounter],
    audit: Audit | None,
    audit_unavailable: str = "",
    unfenced: Sequence[FencedCounter] = (),
) -> LockCheck:
    """Every lock invariant; the log ones need ``audit`` (else unchecked, with the reason)."""
    inv = {name: Invariant(name) for name in LOCK_INVARIANTS}
    out = LockCheck(inv)
    out.stats = _client_stats(records)
    for c in counters:
        _check_counter(c, inv)
        out.counters.append(c.summary())
    out.unfenced = [c.summary() for c in unfenced]

    if audit is None:
        why = audit_unavailable or "no journal could be read and replayed"
        for name in _LOG_INVARIANTS:
            inv[name].unchecked = why
        return out
    la = audit.locks
    out.stats["log"] = {
        "holds": len(la.holds),
        "ended_by": dict(Counter(h.end_reason or "still held" for h in la.holds)),
        "fenced_writes_accepted": sum(1 for w in la.fenced_writes if w.accepted),
        "fenced_writes_rejected": sum(1 for w in la.fenced_writes if not w.accepted),
    }
    for a, b in overlapping_holds(la.holds):
        inv[LOCK_OVERLAP].add(f"{a.describe()} overlaps {b.describe()}")
    for a, b in token_regressions(la.holds):
        inv[LOCK_TOKENS].add(f"{a.describe()} then {b.describe()}")
    for w in la.stale_writes:
        inv[LOCK_STALE].add(
            f"log #{w.index} (revision {w.revision}): write fenced by {w.lock!r} token {w.token} accepted "
            f"while the lock's latest grant was {w.latest_grant or 'none'}"
        )
    for w in la.fenced_writes:
        if not w.accepted:
            continue
        for key, before, after in w.puts:
            if not key.startswith(COUNTER_PREFIX):
                continue
            prev = before if isinstance(before, int) else 0
            if after != prev + 1:
                inv[KV_COUNTER_LOST].add(
                    f"log #{w.index}: {key} {before!r} -> {after!r} by token {w.token} of {w.lock!r}"
                )
    granted = {(h.lock, h.owner, h.token) for h in la.holds}
    for r in records:
        if r.outcome == "granted" and (r.lock, r.owner, r.token) not in granted:
            inv[LOCK_UNLOGGED].add(
                f"{r.owner} was granted {r.lock!r} token {r.token}; the log has no such hold"
            )
    holds_by_owner = {(h.lock, h.owner): h for h in la.holds}
    late = [
        w
        for c in counters
        for w in c.writes
        if w.accepted and _ended_before(holds_by_owner.get((c.name, w.owner)), w.at_ms)
    ]
    out.stats["late_accepted"] = len(late)
    return out


def _ended_before(h: LockHold | None, at_ms: int) -> bool:
    return h is not None and h.end != math.inf and h.end_ms < at_ms


def _check_counter(c: FencedCounter, inv: dict[str, Invariant]) -> None:
    highest = 0
    for w in c.writes:
        if not w.accepted:
            continue
        if w.token < highest:
            inv[COUNTER_ORDER].add(
                f"{c.name}: {w.owner} token {w.token} accepted after token {highest} had been seen"
            )
        if w.value != w.previous + 1:
            inv[COUNTER_LOST].add(
                f"{c.name}: {w.owner} token {w.token} wrote {w.value} over {w.previous} (an increment lost)"
            )
        highest = max(highest, w.token)


def _client_stats(records: Sequence[LockRecord]) -> dict[str, Any]:
    granted = [r for r in records if r.outcome == "granted"]
    stalled = [r for r in granted if r.stall_s]
    return {
        "acquisitions": len(records),
        "outcomes": dict(Counter(r.outcome for r in records)),
        "lease_iterations": sum(1 for r in granted if r.api == "lease"),
        "leases_lost": sum(1 for r in granted if r.lease_lost),
        "releases": dict(Counter(r.release for r in granted if r.release)),
        "counter_writes": dict(Counter(r.counter_write for r in granted if r.counter_write)),
        "kv_writes": dict(Counter(r.kv_write for r in granted if r.kv_write)),
        "stalled": len(stalled),
        "stalled_counter_writes": dict(Counter(r.counter_write for r in stalled if r.counter_write)),
        "stalled_kv_writes": dict(Counter(r.kv_write for r in stalled if r.kv_write)),
    }


def _invariants_json(invariants: Mapping[str, Invariant]) -> dict[str, Any]:
    return {
        i.name: {"count": i.count, "examples": i.examples, "unchecked": i.unchecked}
        for i in invariants.values()
    }
