"""The chaos report: everything a reader needs to judge a run, and to replay it.

Built by the runner, printed as text and optionally written as JSON (same content).
Sections: the faults, the DAG workload and its invariants, the KV workload (its
linearizability verdict: an inconclusive search is shown as such and is not a
violation), the locks (log and counter invariants) and, if it ran, the unfenced
experiment side by side with the fenced counter.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .audit_check import AuditCheck
from .checker import CheckResult, Invariant, Phases, ReplayCheck, Stall
from .coord_check import KvCheck, LockCheck
from .message_check import MessageCheck
from .nemesis import FaultRecord
from .runs_watch import WatchCheck

STALLS_OVER_S = 1.0
"""The report lists every window with no task completing longer than this (seconds)."""


@dataclass
class Report:
    seed: int
    nodes: int
    net: str
    net_reason: str
    duration_min: float
    clients: int
    node_down_after_s: float
    replay_command: str
    not_injected: dict[str, str]
    phases: Phases
    faults: list[FaultRecord]
    check: CheckResult
    throughput: dict[str, float]
    stall: Stall
    digests: dict[str, tuple[int, str]]
    replays: list[ReplayCheck]
    log_stats: dict[str, int] = field(default_factory=dict)
    """What the audited log shows was exercised: attempts, re-runs, stale results rejected."""
    operations: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data_dir: str = ""
    workloads: dict[str, Any] = field(default_factory=dict)
    """What ran: DAG clients (0: --no-dag), KV clients and keys, lock clients, names and TTL."""
    kv: KvCheck | None = None
    locks: LockCheck | None = None
    kv_throughput: dict[str, float] = field(default_factory=dict)
    """Acknowledged KV operations per second before, during and after the faults."""
    kv_stall: Stall | None = None
    kv_history: list[dict[str, Any]] = field(default_factory=list)
    lock_history: list[dict[str, Any]] = field(default_factory=list)
    messages: MessageCheck | None = None
    message_history: list[dict[str, Any]] = field(default_factory=list)
    audit_timelines: AuditCheck | None = None
    """Every finished run's GetAudit timeline: complete on some node and coherent."""
    watches: list[WatchCheck] = field(default_factory=list)
    """What the ``watch_runs`` watcher and the dashboard's event-stream consumer saw, each judged
    against the final state."""
    stalls: list[Stall] = field(default_factory=list)
    """Every window with no task completing while a majority could form over ``STALLS_OVER_S``."""

    @property
    def violations(self) -> int:
        return (
            self.check.violations
            + (self.kv.violations if self.kv else 0)
            + (self.locks.violations if self.locks else 0)
            + (self.messages.violations if self.messages else 0)
            + (self.audit_timelines.violations if self.audit_timelines else 0)
            + sum(w.violations for w in self.watches)
        )

    @property
    def ok(self) -> bool:
        return self.violations == 0

    def to_json(self) -> dict[str, Any]:
        o = self.check.outcomes
        return {
            "ok": self.ok,
            "violations": self.violations,
            "seed": self.seed,
            "replay_command": self.replay_command,
            "config": {
                "nodes": self.nodes,
                "net": self.net,
                "net_reason": self.net_reason,
                "duration_min": self.duration_min,
                "clients": self.clients,
                "node_down_after_s": self.node_down_after_s,
            },
            "not_injected": self.not_injected,
            "phases_ms": vars(self.phases),
            "faults": [f.to_json() for f in self.faults],
            "operations": {
                "ok": o.ok,
                "failed": o.failed,
                "unknown": o.unknown,
                "ok_succeeded": o.ok_succeeded,
                "ok_failed_with_reason": o.ok_failed_with_reason,
                "unknown_exists_terminal": o.unknown_exists_terminal,
                "unknown_exists_running": o.unknown_exists_running,
                "unknown_absent": o.unknown_absent,
                "unknown_runs": o.unknown_runs,
                "dead_letters_retried": o.dead_letters,
                "retry_calls": o.retry_calls,
                "retry_requeued": o.retry_requeued,
                "retry_already_requeued": o.retry_already,
                "retry_unknown": o.retry_unknown,
                "workflows": o.workflows,
                "staged": o.staged,
                "budget_overspend_max": o.budget_overspend_max,
                "by_client_kind": o.by_driver,
            },
            "throughput_tasks_per_s": self.throughput,
            "largest_stall": vars(self.stall),
            "stalls_over_s": STALLS_OVER_S,
            "stalls": [vars(x) for x in self.stalls],
            "invariants": {
                i.name: {"count": i.count, "examples": i.examples, "unchecked": i.unchecked}
                for i in self.check.invariants.values()
            },
            "digests": {n: {"revision": r, "digest": d} for n, (r, d) in self.digests.items()},
            "journal_replays": [{**vars(r), "ok": r.ok} for r in self.replays],
            "log_stats": self.log_stats,
            "workloads": self.workloads,
            "kv": None
            if self.kv is None
            else {
                **self.kv.to_json(),
                "throughput_ops_per_s": self.kv_throughput,
                "largest_stall": vars(self.kv_stall) if self.kv_stall else None,
            },
            "locks": None if self.locks is None else self.locks.to_json(),
            "messages": None if self.messages is None else self.messages.to_json(),
            "audit_timelines": None if self.audit_timelines is None else self.audit_timelines.to_json(),
            "watches": [w.to_json() for w in self.watches],
            "notes": self.notes,
            "data_dir": self.data_dir,
            "history": self.operations,
            "kv_history": self.kv_history,
            "lock_history": self.lock_history,
            "message_history": self.message_history,
        }


def _clock(ms: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000)) + f".{ms % 1000:03d}"


def _invariant_lines(invariants: Any) -> list[str]:
    lines = []
    for inv in invariants:
        assert isinstance(inv, Invariant)
        if inv.unchecked:
            lines.append(f"  [n/a ] {inv.name}: not checked: {inv.unchecked}")
            continue
        lines.append(f"  [{'ok  ' if inv.count == 0 else 'FAIL'}] {inv.name}: {inv.count}")
        lines += [f"         {e}" for e in inv.examples]
    return lines


def _kv_lines(kv: KvCheck, throughput: dict[str, float], stall: Stall | None) -> list[str]:
    ops = kv.ops
    kinds = ", ".join(
        f"{k} {sum(c.values())} ({c.get('ok', 0)} ok, {c.get('unknown', 0)} unknown, {c.get('failed', 0)} failed)"
        for k, c in sorted(kv.by_kind.items())
    )
    verdicts = {
        "ok": "LINEARIZABLE",
        "illegal": "NOT LINEARIZABLE",
        "unknown": "INCONCLUSIVE (search timed out; not a pass)",
        "empty": "nothing to check",
    }
    lines = [
        f"KV: {sum(ops.values()) + kv.dropped_reads} operations on {len(kv.keys)} keys:"
        f" {ops.get('ok', 0)} ok, {ops.get('unknown', 0)} unknown outcome, {ops.get('failed', 0)} refused;"
        f" {kv.dropped_reads} failed reads dropped",
        f"  by kind: {kinds}",
        f"  linearizability (KvModel, partitioned by key, {kv.checked_ops} operations, timeout {kv.timeout_s:g} s):"
        f" {verdicts.get(kv.verdict, kv.verdict)} in {kv.elapsed_s:.1f} s",
    ]
    lines += [
        f"    {p['key']}: {p['result']} ({p['ops']} operations, {p['unknown_outcome']} with unknown outcome)"
        for p in kv.partitions
    ]
    if throughput:
        lines.append(
            f"  acknowledged KV operations/s: before {throughput['before']}, during {throughput['during']},"
            f" after {throughput['after']}"
        )
    if stall is not None:
        lines.append(
            f"  largest window with no KV operation acknowledged while a majority could form: {stall.seconds} s"
            + (f" (during {'; '.join(stall.faults)})" if stall.faults else "")
        )
    lines.append("KV invariants:")
    lines += _invariant_lines(kv.invariants.values())
    if kv.summary:
        lines += [
            "  checker explanation (the JSON report has the whole prefix):",
            *(f"    {x}" for x in kv.summary.splitlines()),
        ]
    return lines


def _lock_lines(lc: LockCheck, w: dict[str, Any]) -> list[str]:
    s = lc.stats
    out = s.get("outcomes", {})
    lines = [
        f"locks: {s.get('acquisitions', 0)} acquisitions: {out.get('granted', 0)} granted,"
        f" {out.get('refused', 0)} refused (wait timed out), {out.get('unknown', 0)} unknown,"
        f" {out.get('aborted', 0)} aborted; {s.get('lease_iterations', 0)} held with keep-alive"
        f" ({s.get('leases_lost', 0)} leases lost)",
        f"  releases: {_counts(s.get('releases', {}))}; stalled past the ttl: {s.get('stalled', 0)}"
        f" (their counter writes: {_counts(s.get('stalled_counter_writes', {}))};"
        f" their fenced KV writes: {_counts(s.get('stalled_kv_writes', {}))})",
    ]
    log = s.get("log")
    if log:
        lines.append(
            f"  log: {log['holds']} holds, ended by {_counts(log['ended_by'])};"
            f" lock-fenced KV writes {log['fenced_writes_accepted']} accepted,"
            f" {log['fenced_writes_rejected']} rejected as stale by the state machine"
        )
    for c in lc.counters:
        lines.append(
            f"  fenced counter {c['name']}: {c['accepted']} writes accepted, {c['rejected']} rejected"
            f" (stale token), final {c['final']}, lost increments {c['lost_increments']}"
        )
    if "late_accepted" in s:
        lines.append(
            f"  counter writes accepted after the writer's hold had ended in the log: {s['late_accepted']}"
            " (harmless: no newer token had reached the counter yet; see coord_check's docstring)"
        )
    lines.append("lock invariants:")
    lines += _invariant_lines(lc.invariants.values())
    exp = lc.experiment()
    if exp is not None:
        f, u = exp["fenced"], exp["unfenced"]
        rows = [
            ("writes", "writes"),
            ("accepted", "writes accepted"),
            ("rejected", "writes rejected (stale token)"),
            ("stale_accepted", "stale writes accepted"),
            ("final", "final counter value"),
            ("lost_increments", "lost increments (accepted - final)"),
        ]
        lines += [
            "",
            "unfenced experiment: the same holders, in the same critical sections, incremented a fenced and an"
            " unfenced counter",
            f"  (holders stalled past their ttl with keep-alive off: {s.get('stalled', 0)})",
            f"  {'':<38}{'fenced':>10}{'unfenced':>10}",
            *(f"  {label:<38}{f[k]:>10}{u[k]:>10}" for k, label in rows),
        ]
        if u["lost_increments"] > 0:
            lines.append(
                f"  => without fencing {u['lost_increments']} increment(s) were lost; with fencing"
                f" {f['lost_increments']} (expected corruption, not a violation)"
            )
        else:
            lines.append(
                "  => no stale write overlapped another holder in this run: the experiment showed nothing"
            )
    return lines


def _message_lines(mc: MessageCheck, w: dict[str, Any]) -> list[str]:
    s = mc.stats
    calls: dict[str, int] = s.get("calls", {})

    def n(path: str, outcome: str) -> int:
        return sum(v for k, v in calls.items() if k.startswith(path) and k.endswith(outcome))

    lines = [
        f"messages: {sum(calls.values())} calls by {w.get('message_clients', 0)} senders to"
        f" {w.get('message_targets', 0)} chaos_log and as many chaos_relay actors: durable {n('durable', 'ok')} ok, {n('durable', 'unknown')} unknown,"
        f" {n('durable', 'failed')} refused; fast {n('fast', 'ok')} ok, {n('fast', 'unknown')} unknown,"
        f" {n('fast', 'failed')} refused",
        f"  by kind: {_counts(calls)}",
        f"  committed turns {s.get('effects', 0)} on {s.get('addresses', 0)} actors over {s.get('epochs', 0)}"
        f" activations (epochs), {s.get('relayed', 0)} of them a relay's durable send on;"
        f" unknown-outcome calls that took effect {s.get('unknown_with_effect', 0)},"
        f" that did not {s.get('unknown_without_effect', 0)}",
        f"  dead letters: {_counts(s.get('dead_letters', {}))}; acknowledged messages dead-lettered instead of"
        f" handled: {_counts(s.get('dead_lettered_acknowledged', {}))}",
        f"  fast messages handled again after their target moved (at least once):"
        f" {s.get('fast_redelivered_after_move', 0)}",
        *(f"    {x}" for x in s.get("fast_redelivered_examples", [])),
        f"  ordered pairs checked: {_counts(s.get('ordered_pairs_checked', {}))}; latest fast turn start after"
        f" its expiry within the slack: {s.get('latest_fast_start_after_expiry_ms', 0)} ms",
    ]
    log = s.get("log")
    if isinstance(log, dict):
        lines.append(
            f"  log: {log['activations']} activations (ended by {_counts(log['activations_ended_by'])});"
            f" acks {log['acks_applied']} applied, {log['acks_rejected_stale']} rejected as stale,"
            f" {log['acks_not_applied']} answered not-applied (redeliveries)"
        )
    elif log:
        lines.append(f"  log: {log}")
    lines.append("message invariants:")
    lines += _invariant_lines(mc.invariants.values())
    return lines


def _counts(c: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(c.items())) or "none"


def format_report(r: Report) -> str:
    """The human-readable report."""
    o, p = r.check.outcomes, r.phases
    lines = [
        "=" * 78,
        f"raftmesh chaos report: seed {r.seed}, {r.nodes} nodes, --net {r.net} ({r.net_reason})",
        f"fault phase {r.duration_min} min, {r.clients} clients, node-down-after {r.node_down_after_s} s",
        f"warm-up {_clock(p.start_ms)}  faults {_clock(p.faults_start_ms)} - {_clock(p.faults_end_ms)}"
        f"  cool-down until {_clock(p.end_ms)}",
        "",
        f"faults ({len(r.faults)}):",
    ]
    for f in r.faults:
        rec = "did not recover" if f.recovery_s is None else f"whole again {f.recovery_s} s later"
        lines.append(
            f"  {_clock(f.start_ms)} - {_clock(f.end_ms)}  {f.kind:<16} {','.join(f.targets):<14}"
            f" {f.detail}; {rec}"
            + ("" if f.quorum else "; NO QUORUM POSSIBLE")
            + (f"; ERROR {f.error}" if f.error else "")
        )
    if r.not_injected:
        lines.append("faults not injected:")
        by_reason: dict[str, list[str]] = {}
        for kind, why in r.not_injected.items():
            by_reason.setdefault(why, []).append(kind)
        lines += [f"  {', '.join(kinds)}: {why}" for why, kinds in by_reason.items()]
    w = r.workloads
    lines += [
        "",
        f"workloads: DAG {w.get('dag_clients', r.clients)} clients ({w.get('aio_clients', 0)} on raftmesh.aio)"
        + (f", {len(w['runs_watchers'])} runs watchers" if w.get("runs_watchers") else "")
        + f", KV {w.get('kv_clients', 0)} clients on"
        f" {w.get('kv_keys', 0)} keys, locks {w.get('lock_clients', 0)} clients on {w.get('lock_names', 0)}"
        f" names (ttl {w.get('lock_ttl_s', 0):g} s)"
        + (", unfenced experiment" if w.get("unfenced_experiment") else ""),
        "",
    ]
    t = r.throughput
    if w.get("dag_clients", r.clients):
        lines += [
            "DAG workload:",
            f"operations: {o.ok + o.failed + o.unknown} submits: {o.ok} ok, {o.failed} failed,"
            f" {o.unknown} unknown",
            f"  ok: {o.ok_succeeded} SUCCEEDED, {len(o.ok_failed_with_reason)} FAILED with a recorded reason",
            f"  unknown: {o.unknown_exists_terminal} exist and ended, {o.unknown_exists_running} exist"
            f" unfinished, {o.unknown_absent} never created",
        ]
        lines.append(
            f"  dead letters retried: {o.dead_letters} ({o.retry_calls} retry calls: {o.retry_requeued}"
            f" requeued, {o.retry_already} already requeued, {o.retry_unknown} unknown or refused)"
        )
        lines += [
            f"  {kind} clients ({'raftmesh.aio.Client' if kind == 'aio' else 'raftmesh.Client'}):"
            f" {d['clients']}, {d['submits']} submits ({d['ok']} ok, {d['failed']} failed,"
            f" {d['unknown']} unknown), {d['ok_succeeded']} acknowledged runs SUCCEEDED,"
            f" {d['approve_calls']} approve and {d['retry_calls']} retry calls,"
            f" {d.get('one_call', 0)} submitted and waited for in one call (Client.run)"
            for kind, d in o.by_driver.items()
        ]
        if o.workflows:
            lines.append(
                f"  workflows: {_counts(o.workflows)}; largest budget overspend {o.budget_overspend_max:g}"
            )
        if o.staged:
            lines.append(f"  staged submits: {_counts(o.staged)}")
        lines += [f"    {x}" for x in o.ok_failed_with_reason[:5]]
        lines += [f"    unknown {k}: {v}" for k, v in list(o.unknown_runs.items())[:10]]
        lines += [
            f"throughput (tasks completed/s): before {t['before']}, during {t['during']}, after {t['after']}",
            f"largest window with no task completing while a majority could form: {r.stall.seconds} s"
            f" ({_clock(r.stall.start_ms)} - {_clock(r.stall.end_ms)}"
            + (f", during {'; '.join(r.stall.faults)}" if r.stall.faults else "")
            + ")",
            f"windows over {STALLS_OVER_S:g} s: {len(r.stalls)}"
            + (
                f" ({', '.join(f'{x.seconds:g}' for x in sorted(r.stalls, key=lambda x: -x.seconds))} s)"
                if r.stalls
                else ""
            ),
        ]
    else:
        lines.append("DAG workload: not run (--no-dag)")
    lines += ["", "cluster and DAG invariants:"]
    lines += _invariant_lines(r.check.invariants.values())
    if r.kv is not None:
        lines += ["", *_kv_lines(r.kv, r.kv_throughput, r.kv_stall)]
    if r.locks is not None:
        lines += ["", *_lock_lines(r.locks, w)]
    if r.messages is not None:
        lines += ["", *_message_lines(r.messages, w)]
    if r.audit_timelines is not None:
        lines += ["", *r.audit_timelines.lines()]
    for watch in r.watches:
        lines += ["", *watch.lines()]
    lines.append("")
    digests = {d for _, d in r.digests.values()}
    lines.append(
        f"replicas: {len(r.digests)} live, {len(digests)} distinct digest(s)"
        + (f" ({next(iter(digests))[:16]}...)" if len(digests) == 1 else "")
    )
    for rp in r.replays:
        what = f"journal {rp.node}" if rp.source == "journal" else f"archives up to {rp.node}'s applied index"
        lines.append(
            f"  {what}: {rp.entries} entries replayed to revision {rp.revision}:"
            f" {'equal to' if rp.ok else 'DIFFERS from'} the live digest"
        )
    if r.log_stats and "commands" in r.log_stats:
        s = r.log_stats
        lines.append(
            f"audited log: {s['commands']} commands; {s['tasks_started']} tasks started in {s['attempts']}"
            f" attempts ({s['attempts_again']} re-runs after a failure or a lost node);"
            f" {s['stale_results_rejected']} stale results rejected by fencing;"
            f" {s.get('dead_letters_requeued', 0)} dead letters requeued,"
            f" {s.get('attempts_preempted', 0)} attempts preempted"
        )
    if r.log_stats and "snapshots_written" in r.log_stats:
        s = r.log_stats
        lines.append(
            f"snapshots: {s['snapshots_written']} written, {s['snapshots_installed']} installed from a leader,"
            f" {s['snapshots_loaded']} loaded at a node's start; the audit read"
            f" {s.get('archived_entries', 0)} archived log entries"
        )
    lines += [f"note: {n}" for n in r.notes]
    if r.data_dir:
        lines.append(f"node data and logs kept in {r.data_dir}")
    lines += [
        "",
        f"RESULT: {'OK' if r.ok else 'VIOLATIONS'}: {r.violations} violation(s); seed {r.seed}",
        f"replay: {r.replay_command}",
        "=" * 78,
    ]
    return "\n".join(lines)
