"""Judge a chaos history: pure functions from what clients saw and what the cluster holds.

Inputs are plain records (no I/O): the workload's operations, the runs the cluster
reports after the drain, the audit of the committed log, the replicas' digests and
the fault timeline. Each invariant is checked on its own and reported with a count
and a few examples, so a violation names the key, run or task to look up in the
node logs.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..verify.audit import Audit
from .nemesis import FaultRecord
from .workload import DOOMED, Operation

EXAMPLES_MAX = 5

# Invariant names, in report order. Each must have a count of 0.
LOST = "acknowledged runs lost"
WRONG = "acknowledged runs with a wrong end"
DUPLICATED_RUNS = "idempotency keys with more than one run"
UNEXPECTED = "unexpected runs"
PHANTOM = "refused submits that created a run"
UNFINISHED = "runs not terminal after the drain"
BAD_OUTPUT = "runs with a wrong output"
DUPLICATED_RESULTS = "tasks with more than one committed result"
FENCED = "committed results from fenced attempts"
EARLY = "tasks started before their dependencies"
DIVERGED = "replicas with a different digest"
REPLAY = "journal replay differs from the live state"
AUDIT_MISSING = "committed log not audited"
ARCHIVE = "archived log with a gap or a disagreement"
REQUEUED_TWICE = "dead letters requeued more than once"
RETRY_LOST = "acknowledged retries not requeued once, or whose run did not succeed"
USAGE = "runs whose usage is not the sum of what their accepted attempts reported"

INVARIANTS = (
    LOST,
    WRONG,
    DUPLICATED_RUNS,
    UNEXPECTED,
    PHANTOM,
    UNFINISHED,
    BAD_OUTPUT,
    DUPLICATED_RESULTS,
    FENCED,
    EARLY,
    DIVERGED,
    REPLAY,
    AUDIT_MISSING,
    ARCHIVE,
    REQUEUED_TWICE,
    RETRY_LOST,
    USAGE,
)

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "COMPENSATED", "COMPENSATION_FAILED"})


Usage = tuple[int, int, float]
"""(tokens_in, tokens_out, cost)"""


@dataclass(frozen=True)
class TaskRecord:
    status: str
    output: Any
    attempt: int = 0
    node: str = ""
    finished_ms: int = 0
    error: str = ""
    usage: Usage = (0, 0, 0.0)


@dataclass(frozen=True)
class RunRecord:
    """A run as the cluster reports it after the drain."""

    run_id: str
    key: str
    status: str
    error: str = ""
    tasks: Mapping[str, TaskRecord] = field(default_factory=dict)
    usage: Usage = (0, 0, 0.0)


@dataclass(frozen=True)
class ReplayCheck:
    """The journal of ``node`` (or the union of the archives) replayed up to its applied index."""

    node: str
    entries: int
    revision: int
    digest: str
    live_digest: str
    source: str = "journal"
    """``journal``: this node's; ``archives``: the union of every node's archive of applied entries."""

    @property
    def ok(self) -> bool:
        return self.digest == self.live_digest


@dataclass
class Invariant:
    name: str
    count: int = 0
    examples: list[str] = field(default_factory=list)
    unchecked: str = ""
    """Why this invariant could not be checked in this run ("" if it was)."""

    def add(self, example: str) -> None:
        self.count += 1
        if len(self.examples) < EXAMPLES_MAX:
            self.examples.append(example)


@dataclass
class Outcomes:
    """What became of the submits, by what the client saw."""

    ok: int = 0
    failed: int = 0
    unknown: int = 0
    ok_succeeded: int = 0
    ok_failed_with_reason: list[str] = field(default_factory=list)
    unknown_exists_terminal: int = 0
    unknown_exists_running: int = 0
    unknown_absent: int = 0
    unknown_runs: dict[str, str] = field(default_factory=dict)
    """Each unknown-outcome key -> what became of it: its run's status, or "never created"."""
    dead_letters: int = 0
    """Acknowledged runs whose doomed task was found dead and retried."""
    retry_calls: int = 0
    retry_requeued: int = 0
    """Retry calls answered "requeued" (a repeat with the same request id repeats the answer)."""
    retry_already: int = 0
    """Retry calls answered "already requeued"."""
    retry_unknown: int = 0


@dataclass
class CheckResult:
    invariants: dict[str, Invariant]
    outcomes: Outcomes

    @property
    def violations(self) -> int:
        return sum(i.count for i in self.invariants.values())

    @property
    def ok(self) -> bool:
        return self.violations == 0


def check_history(
    ops: Sequence[Operation],
    runs: Mapping[str, RunRecord],
    audit: Audit | None,
    digests: Mapping[str, tuple[int, str]],
    replays: Sequence[ReplayCheck] = (),
    audit_unavailable: str = "",
    archive_problems: Sequence[str] = (),
) -> CheckResult:
    """Every invariant of the chaos run; ``runs`` are all the runs the cluster holds.

    With no ``audit``, the log invariants are violations (``committed log not audited``)
    unless ``audit_unavailable`` says why they could not be checked; they are then
    reported as unchecked, not as passed. ``archive_problems``: what the merge of the nodes'
    archives of applied entries found (gaps, disagreements); each is a violation.
    """
    inv = {name: Invariant(name) for name in INVARIANTS}
    out = Outcomes()
    by_key: dict[str, list[RunRecord]] = {}
    for r in runs.values():
        by_key.setdefault(r.key, []).append(r)
    ops_by_key = {op.key: op for op in ops}

    for key, rs in sorted(by_key.items()):
        if key not in ops_by_key:
            for r in rs:
                inv[UNEXPECTED].add(f"run {r.run_id} (key {key!r}) is in no operation of the history")
        elif len(rs) > 1:
            inv[DUPLICATED_RUNS].add(f"key {key}: runs {sorted(r.run_id for r in rs)}")
    if audit is not None:
        for key, run_ids in audit.duplicated_runs.items():
            if len(by_key.get(key, ())) <= 1:  # not already counted from the live runs
                inv[DUPLICATED_RUNS].add(f"key {key}: the log created runs {run_ids}")

    for op in ops:
        rs = by_key.get(op.key, [])
        run = rs[0] if rs else None
        if op.outcome == "ok":
            out.ok += 1
            _check_acknowledged(op, run, inv, out)
        elif op.outcome == "failed":
            out.failed += 1
            if run is not None:
                inv[PHANTOM].add(
                    f"{op.key}: refused ({op.error_code}: {op.error}) yet run {run.run_id} exists"
                )
        else:
            out.unknown += 1
            out.unknown_runs[op.key] = f"run {run.run_id} {run.status}" if run else "never created"
            if run is None:
                out.unknown_absent += 1
            elif run.status in TERMINAL:
                out.unknown_exists_terminal += 1
            else:
                out.unknown_exists_running += 1
        if run is not None:
            if run.status not in TERMINAL:
                inv[UNFINISHED].add(f"{op.key}: run {run.run_id} is {run.status}")
            elif run.status == "SUCCEEDED":
                _check_outputs(op, run, inv)
            if run.status in TERMINAL:
                _check_usage(op, run, inv)
        _check_retries(op, run, audit, inv, out)
    if audit is not None:
        for (run_id, task_id), n in sorted(audit.requeues.items()):
            if n > 1:
                inv[REQUEUED_TWICE].add(f"{run_id}/{task_id}: requeued {n} times by the log")

    if audit is None and audit_unavailable:
        for name in (DUPLICATED_RESULTS, FENCED, EARLY):
            inv[name].unchecked = audit_unavailable
    elif audit is None:
        inv[AUDIT_MISSING].add("no journal could be read and replayed")
    else:
        for run_id, task_id in audit.duplicated:
            inv[DUPLICATED_RESULTS].add(f"{run_id}/{task_id}: {audit.results[(run_id, task_id)]} results")
        for f in audit.fenced:
            inv[FENCED].add(
                f"{f.run_id}/{f.task_id}: {f.command} from attempt {f.reported.attempt} on "
                f"{f.reported.node} (token {f.reported.token}); latest start {f.latest}"
            )
        for run_id, task_id in audit.early_starts:
            inv[EARLY].add(f"{run_id}/{task_id}")

    if len(set(digests.values())) > 1:
        for node, (rev, dig) in sorted(digests.items()):
            inv[DIVERGED].add(f"{node}: revision {rev} digest {dig[:16]}")
    for rp in replays:
        if not rp.ok:
            inv[REPLAY].add(
                f"{rp.node}: {rp.entries} entries to revision {rp.revision} give {rp.digest[:16]}, "
                f"live {rp.live_digest[:16]} ({rp.source})"
            )
    for problem in archive_problems:
        inv[ARCHIVE].add(problem)
    return CheckResult(inv, out)


def _check_acknowledged(
    op: Operation, run: RunRecord | None, inv: dict[str, Invariant], out: Outcomes
) -> None:
    if run is None:
        inv[LOST].add(f"{op.key}: acknowledged as {op.run_id}, no run has this key")
        return
    if run.run_id != op.run_id:
        inv[DUPLICATED_RUNS].add(f"{op.key}: acknowledged as {op.run_id}, the key's run is {run.run_id}")
    if run.status == "SUCCEEDED":
        out.ok_succeeded += 1
    elif run.status == "FAILED" and run.error:
        out.ok_failed_with_reason.append(f"{op.key} ({run.run_id}): {run.error}")
    elif run.status in TERMINAL:
        inv[WRONG].add(f"{op.key}: run {run.run_id} ended {run.status} ({run.error or 'no reason recorded'})")


def _check_outputs(op: Operation, run: RunRecord, inv: dict[str, Invariant]) -> None:
    wrong = [
        f"{tid}={run.tasks[tid].output!r} (expected {want!r})" if tid in run.tasks else f"{tid} missing"
        for tid, want in sorted(op.expected.items())
        if tid not in run.tasks or run.tasks[tid].output != want or run.tasks[tid].status != "SUCCEEDED"
    ]
    extra = sorted(set(run.tasks) - set(op.expected))
    if wrong or extra:
        inv[BAD_OUTPUT].add(
            f"{op.key} ({run.run_id}): {', '.join(wrong + [f'{t} unexpected' for t in extra])}"
        )


def _check_retries(
    op: Operation, run: RunRecord | None, audit: Audit | None, inv: dict[str, Invariant], out: Outcomes
) -> None:
    if not op.retries:
        return
    out.dead_letters += 1
    out.retry_calls += len(op.retries)
    out.retry_requeued += sum(1 for r in op.retries if r.outcome == "ok" and r.requeued)
    out.retry_already += sum(1 for r in op.retries if r.outcome == "ok" and not r.requeued)
    out.retry_unknown += sum(1 for r in op.retries if r.outcome != "ok")
    if not op.retry_acknowledged:
        return
    requeues = audit.requeues.get((op.run_id, DOOMED), 0) if audit is not None else 1
    if requeues != 1:
        inv[RETRY_LOST].add(f"{op.key} ({op.run_id}): retry acknowledged, the log requeued {requeues} times")
    elif run is None or run.status != "SUCCEEDED":
        status = run.status if run else "missing"
        inv[RETRY_LOST].add(f"{op.key} ({op.run_id}): retry acknowledged, the run ended {status}")


def _check_usage(op: Operation, run: RunRecord, inv: dict[str, Invariant]) -> None:
    """Run usage == the sum of its tasks'; a SUCCEEDED sum task's == its one accepted report."""
    total = (
        sum(t.usage[0] for t in run.tasks.values()),
        sum(t.usage[1] for t in run.tasks.values()),
        sum(t.usage[2] for t in run.tasks.values()),
    )
    wrong = [] if total == tuple(run.usage) else [f"run {run.usage} != sum of tasks {total}"]
    for tid, want in sorted(op.usage.items()):
        t = run.tasks.get(tid)
        if t is not None and t.status == "SUCCEEDED" and tuple(t.usage) != tuple(want):
            wrong.append(f"{tid} {t.usage} (reported once: {want})")
        elif (
            t is not None
            and t.status != "SUCCEEDED"
            and any(a > b for a, b in zip(t.usage, want, strict=True))
        ):
            wrong.append(f"{tid} {t.status} {t.usage}: more than one accepted report {want}")
    if wrong:
        inv[USAGE].add(f"{op.key} ({run.run_id}): {'; '.join(wrong)}")


# ---- timeline measures -------------------------------------------------------------------


@dataclass(frozen=True)
class Phases:
    """Wall-clock ms: warm-up [start, faults_start), faults [faults_start, faults_end), cool-down."""

    start_ms: int
    faults_start_ms: int
    faults_end_ms: int
    end_ms: int


def completions_ms(runs: Mapping[str, RunRecord], keys: set[str]) -> list[int]:
    """When each task of the workload's runs succeeded, sorted."""
    return sorted(
        t.finished_ms
        for r in runs.values()
        if r.key in keys
        for t in r.tasks.values()
        if t.status == "SUCCEEDED" and t.finished_ms
    )


def throughput(done_ms: Sequence[int], phases: Phases) -> dict[str, float]:
    """Completed tasks per second before, during and after the faults."""
    spans = {
        "before": (phases.start_ms, phases.faults_start_ms),
        "during": (phases.faults_start_ms, phases.faults_end_ms),
        "after": (phases.faults_end_ms, phases.end_ms),
    }
    out = {}
    for name, (a, b) in spans.items():
        n = sum(1 for t in done_ms if a <= t < b)
        out[name] = round(n / ((b - a) / 1000), 2) if b > a else 0.0
    return out


@dataclass(frozen=True)
class Stall:
    start_ms: int
    end_ms: int
    seconds: float
    """The window's length minus any time in it when no majority could form."""
    faults: tuple[str, ...]
    """The faults active during the window."""


def largest_stall(done_ms: Sequence[int], phases: Phases, faults: Sequence[FaultRecord]) -> Stall:
    """The longest time with no task completing while a majority could form.

    Measured from the start of the warm-up to the end of the cool-down (the workload
    runs throughout), so a stall at either end counts too.
    """
    no_quorum = [(f.start_ms, f.end_ms or phases.end_ms) for f in faults if not f.quorum]
    points = [phases.start_ms, *(t for t in done_ms if phases.start_ms <= t <= phases.end_ms), phases.end_ms]
    best = Stall(phases.start_ms, phases.start_ms, 0.0, ())
    for a, b in itertools.pairwise(points):
        lost = sum(max(0, min(b, y) - max(a, x)) for x, y in no_quorum)
        seconds = round((b - a - lost) / 1000, 3)
        if seconds > best.seconds:
            active = tuple(
                f"{f.kind} {','.join(f.targets)}" for f in faults if f.start_ms < b and _until(f, b) > a
            )
            best = Stall(a, b, seconds, active)
    return best


def _until(f: FaultRecord, default_ms: int) -> int:
    """When a fault's effect ended: its heal plus the cluster's recovery."""
    if not f.end_ms:
        return default_ms
    return f.end_ms + int((f.recovery_s or 0.0) * 1000)
