"""The chaos report: everything a reader needs to judge a run, and to replay it.

Built by the runner, printed as text and optionally written as JSON (same content).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .checker import CheckResult, Phases, ReplayCheck, Stall
from .nemesis import FaultRecord


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

    @property
    def violations(self) -> int:
        return self.check.violations

    @property
    def ok(self) -> bool:
        return self.check.ok

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
            },
            "throughput_tasks_per_s": self.throughput,
            "largest_stall": vars(self.stall),
            "invariants": {
                i.name: {"count": i.count, "examples": i.examples, "unchecked": i.unchecked}
                for i in self.check.invariants.values()
            },
            "digests": {n: {"revision": r, "digest": d} for n, (r, d) in self.digests.items()},
            "journal_replays": [{**vars(r), "ok": r.ok} for r in self.replays],
            "log_stats": self.log_stats,
            "notes": self.notes,
            "data_dir": self.data_dir,
            "history": self.operations,
        }


def _clock(ms: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000)) + f".{ms % 1000:03d}"


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
    lines += [
        "",
        f"operations: {o.ok + o.failed + o.unknown} submits: {o.ok} ok, {o.failed} failed, {o.unknown} unknown",
        f"  ok: {o.ok_succeeded} SUCCEEDED, {len(o.ok_failed_with_reason)} FAILED with a recorded reason",
        f"  unknown: {o.unknown_exists_terminal} exist and ended, {o.unknown_exists_running} exist unfinished,"
        f" {o.unknown_absent} never created",
    ]
    lines += [f"    {x}" for x in o.ok_failed_with_reason[:5]]
    lines += [f"    unknown {k}: {v}" for k, v in list(o.unknown_runs.items())[:10]]
    t = r.throughput
    lines += [
        f"throughput (tasks completed/s): before {t['before']}, during {t['during']}, after {t['after']}",
        f"largest window with no task completing while a majority could form: {r.stall.seconds} s"
        f" ({_clock(r.stall.start_ms)} - {_clock(r.stall.end_ms)}"
        + (f", during {'; '.join(r.stall.faults)}" if r.stall.faults else "")
        + ")",
        "",
        "invariants:",
    ]
    for inv in r.check.invariants.values():
        if inv.unchecked:
            lines.append(f"  [n/a ] {inv.name}: not checked: {inv.unchecked}")
            continue
        lines.append(f"  [{'ok  ' if inv.count == 0 else 'FAIL'}] {inv.name}: {inv.count}")
        lines += [f"         {e}" for e in inv.examples]
    digests = {d for _, d in r.digests.values()}
    lines.append(
        f"replicas: {len(r.digests)} live, {len(digests)} distinct digest(s)"
        + (f" ({next(iter(digests))[:16]}...)" if len(digests) == 1 else "")
    )
    for rp in r.replays:
        lines.append(
            f"  journal {rp.node}: {rp.entries} entries replayed to revision {rp.revision}:"
            f" {'equal to' if rp.ok else 'DIFFERS from'} the live digest"
        )
    if r.log_stats:
        s = r.log_stats
        lines.append(
            f"audited log: {s['commands']} commands; {s['tasks_started']} tasks started in {s['attempts']}"
            f" attempts ({s['attempts_again']} re-runs after a failure or a lost node);"
            f" {s['stale_results_rejected']} stale results rejected by fencing"
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
