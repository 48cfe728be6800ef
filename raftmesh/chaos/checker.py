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

from ..consensus.commands import Tick
from ..consensus.machine import StateMachine
from ..consensus.state import ClusterState
from ..verify.audit import Audit
from ..verify.stage_audit import ADOPTED, DROPPED, EXPIRED
from .agents import compensation_key, spawned_id
from .nemesis import FaultRecord
from .workload import APPROVER, DOOMED, Operation

EXAMPLES_MAX = 5
STAGE_EXPIRY_SLACK_MS = 10_000
"""How far the final state's clock may be past a stage's expiry before the leader's tick drops it
(a tick is proposed as soon as a deadline is due; the slack covers an election)."""

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
SPAWN = "spawned tasks lost or duplicated"
COMPENSATION = "compensations not applied exactly once"
BUDGET = "budgets overspent by more than the attempts running when reached"
VOTE = "votes not fused from committed results"
APPROVAL = "approvals not applied exactly once"
STAGED = "staged submits not created exactly once, whole, invisible until their last entry"
STAGES_LEFT = "stages left behind past their expiry"

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
    SPAWN,
    COMPENSATION,
    BUDGET,
    VOTE,
    APPROVAL,
    STAGED,
    STAGES_LEFT,
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
    gate: tuple[int, str, str, int] | None = None
    """Its approval gate once opened: (id, decision ("" while open), by, decided_ms)."""
    history: tuple[tuple[int, str, int], ...] = ()
    """Its ended attempts: (attempt, outcome, started_ms)."""
    started_ms: int = 0


@dataclass(frozen=True)
class KvEntryRecord:
    """A KV entry the workflow checks read (the compensations' records)."""

    value: Any
    version: int
    create_revision: int


@dataclass(frozen=True)
class RunRecord:
    """A run as the cluster reports it after the drain."""

    run_id: str
    key: str
    status: str
    error: str = ""
    tasks: Mapping[str, TaskRecord] = field(default_factory=dict)
    usage: Usage = (0, 0, 0.0)
    reason: str = ""
    compensations: tuple[str, ...] = ()
    """The task ids of the run's compensation record, one per step, in its order."""
    kv: Mapping[str, KvEntryRecord] = field(default_factory=dict)
    """The KV entries under ``chaos/comp/<run>/`` (saga runs), by key."""


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
    workflows: dict[str, int] = field(default_factory=dict)
    """What the workflow checks covered: runs of each shape, spawned tasks, votes,
    compensations (and how many were run again after a lost attempt), budgets reached."""
    budget_overspend_max: float = 0.0
    """The largest ``usage.cost - max_cost`` of a run stopped by its budget."""
    staged: dict[str, int] = field(default_factory=dict)
    """The staged submits (``STAGED``): the staged jobs' submits by outcome; from the log (every
    run staged, a ``+large`` job over 512 KiB of inputs too): stages adopted, expired or
    dropped, parts applied, resumed by a retry, answered with the key's run or refused; and the
    stages pending expiry at the end, each proven to go at a tick at its expiry."""
    by_driver: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per client kind (``sync``: ``raftmesh.Client``, ``aio``: ``raftmesh.aio.Client``): its
    clients, submits by outcome, acknowledged runs that SUCCEEDED, approve and retry calls."""

    def count(self, what: str, n: int = 1) -> None:
        self.workflows[what] = self.workflows.get(what, 0) + n


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
    approver: str = APPROVER,
) -> CheckResult:
    """Every invariant of the chaos run; ``runs`` are all the runs the cluster holds.

    With no ``audit``, the log invariants are violations (``committed log not audited``)
    unless ``audit_unavailable`` says why they could not be checked; they are then
    reported as unchecked, not as passed. ``archive_problems``: what the merge of the nodes'
    archives of applied entries found (gaps, disagreements); each is a violation.
    ``approver``: who a gate applied by the workload's approve calls must name as its decider
    (the ``by`` they send on an open cluster; the authenticated principal on a secured one).
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
                if op.workflow:
                    _check_workflow(op, run, inv, out, approver)
        _check_retries(op, run, audit, inv, out)
    out.by_driver = by_driver(ops, by_key)
    _check_staged(ops, by_key, audit, inv, out)
    _check_stages_left(audit, audit_unavailable, inv, out)
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


def by_driver(ops: Sequence[Operation], by_key: Mapping[str, list[RunRecord]]) -> dict[str, dict[str, int]]:
    """``Outcomes.by_driver``: what each client kind did and saw."""
    out: dict[str, dict[str, int]] = {}
    clients: dict[str, set[int]] = {}
    for op in ops:
        d = out.setdefault(
            op.driver,
            dict.fromkeys(
                (
                    "clients",
                    "submits",
                    "ok",
                    "failed",
                    "unknown",
                    "ok_succeeded",
                    "approve_calls",
                    "retry_calls",
                    "one_call",
                ),
                0,
            ),
        )
        clients.setdefault(op.driver, set()).add(op.client)
        d["clients"] = len(clients[op.driver])
        d["submits"] += 1
        d[op.outcome] += 1
        runs = by_key.get(op.key, [])
        d["ok_succeeded"] += op.outcome == "ok" and bool(runs) and runs[0].status == "SUCCEEDED"
        d["approve_calls"] += len(op.approvals)
        d["retry_calls"] += len(op.retries)
        d["one_call"] += op.one_call
    return dict(sorted(out.items()))


def _check_acknowledged(
    op: Operation, run: RunRecord | None, inv: dict[str, Invariant], out: Outcomes
) -> None:
    if run is None:
        inv[LOST].add(f"{op.key}: acknowledged as {op.run_id}, no run has this key")
        return
    if run.run_id != op.run_id:
        inv[DUPLICATED_RUNS].add(f"{op.key}: acknowledged as {op.run_id}, the key's run is {run.run_id}")
    if op.workflow and op.expect_status != "SUCCEEDED":
        return  # a saga or a budget: its own invariant judges how the run ended
    if run.status == "SUCCEEDED":
        out.ok_succeeded += 1
    elif run.status == "FAILED" and run.error:
        out.ok_failed_with_reason.append(f"{op.key} ({run.run_id}): {run.error}")
    elif run.status in TERMINAL:
        inv[WRONG].add(f"{op.key}: run {run.run_id} ended {run.status} ({run.error or 'no reason recorded'})")


def _check_outputs(op: Operation, run: RunRecord, inv: dict[str, Invariant]) -> None:
    wrong = [
        f"{tid}={_clip(run.tasks[tid].output)} (expected {_clip(want)})"
        if tid in run.tasks
        else f"{tid} missing"
        for tid, want in sorted(op.expected.items())
        if tid not in run.tasks or run.tasks[tid].output != want or run.tasks[tid].status != "SUCCEEDED"
    ]
    extra = sorted(t for t in set(run.tasks) - set(op.expected) if not _workflow_owned(op, t))
    if wrong or extra:
        inv[BAD_OUTPUT].add(
            f"{op.key} ({run.run_id}): {', '.join(wrong + [f'{t} unexpected' for t in extra])}"
        )


def _clip(value: Any, chars: int = 120) -> str:
    """``repr(value)``, cut to ``chars`` (a staged or ``+large`` job's output is ~200 KB)."""
    r = repr(value)
    return r if len(r) <= chars else f"{r[:chars]}... ({len(r)} chars)"


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


# ---- staged submits --------------------------------------------------------------------------


def _check_staged(
    ops: Sequence[Operation],
    by_key: Mapping[str, list[RunRecord]],
    audit: Audit | None,
    inv: dict[str, Invariant],
    out: Outcomes,
) -> None:
    """A staged submit's run is made once (in the state and in the log), from its stage, with
    every task; acknowledged, it ends SUCCEEDED with every echo's output its input (so every
    input arrived whole); of unknown outcome, it exists whole or not at all; it is never refused
    as invalid (the job is valid: a refusal is the staged path's). From the log:
    no part made its run visible, no stage was adopted twice or with a task missing."""
    staged = [op for op in ops if op.staged]
    counts = out.staged
    for op in staged:
        counts["submits"] = counts.get("submits", 0) + 1
        counts[op.outcome] = counts.get(op.outcome, 0) + 1
        rs = by_key.get(op.key, [])
        logged = audit.runs_by_key.get(op.key, []) if audit is not None else None
        wrong: list[str] = []
        if op.outcome == "failed":  # a valid job by construction: the staged path refused it
            wrong.append(f"refused: {op.error_code}: {op.error[:200]}")
        if op.outcome == "ok" and len(rs) != 1:
            wrong.append(f"acknowledged as {op.run_id}, {len(rs)} runs hold the key")
        if (logged is not None and len(logged) > 1) or (op.outcome == "ok" and logged == []):
            wrong.append(f"the log created {len(logged or [])} runs under the key")
        for run in rs:
            if op.outcome == "ok" and run.run_id != op.run_id:
                wrong.append(f"acknowledged as {op.run_id}, the key's run is {run.run_id}")
            adopted = audit.stages.runs.get(run.run_id) if audit is not None else None
            if audit is not None and (adopted is None or adopted.ended != ADOPTED):
                wrong.append(f"run {run.run_id} was not made from a stage")
            if len(run.tasks) != op.tasks:
                wrong.append(f"run {run.run_id} has {len(run.tasks)} tasks, the job {op.tasks}")
            if op.outcome == "ok" and run.status in TERMINAL and run.status != "SUCCEEDED":
                wrong.append(f"run {run.run_id} ended {run.status} ({run.error})")
            if run.status == "SUCCEEDED":
                bad = [tid for tid, want in sorted(op.expected.items()) if _output(run, tid) != want]
                if bad:
                    wrong.append(f"run {run.run_id}: outputs of {bad} are not the job's inputs")
        if wrong:
            inv[STAGED].add(f"{op.key}: {'; '.join(wrong)}")
    if audit is None:
        return
    trail = audit.stages
    for what in trail.visible:
        inv[STAGED].add(f"a part made its run visible before the last entry: {what}")
    for what in trail.miscounted:
        inv[STAGED].add(f"a stage adopted without all its tasks: {what}")
    for rid, n in sorted(trail.adoptions.items()):
        if n > 1:
            inv[STAGED].add(f"run {rid}: {n} stages adopted into it")
    if not trail.runs:
        return
    ended = [r.ended for r in trail.runs.values()]
    counts.update(
        stages=sum(1 for r in trail.runs.values() if r.parts),
        adopted=ended.count(ADOPTED),
        expired=ended.count(EXPIRED),
        dropped=ended.count(DROPPED),
        parts_applied=sum(r.parts for r in trail.runs.values()),
        parts_resumed=sum(r.resumed for r in trail.runs.values()),
        parts_answered_with_run=sum(r.answered for r in trail.runs.values()),
        parts_refused=sum(r.refused for r in trail.runs.values()),
    )


def _output(run: RunRecord, task_id: str) -> Any:
    t = run.tasks.get(task_id)
    return t.output if t is not None and t.status == "SUCCEEDED" else None


def _check_stages_left(
    audit: Audit | None, unavailable: str, inv: dict[str, Invariant], out: Outcomes
) -> None:
    """No stage is left in the final state (the replayed log's) past its expiry, nor after its
    key's run was made. One still within its time (a client gave up mid-stage shortly before
    the end) is counted, once a tick at its expiry, applied to a copy, drops it."""
    if audit is None:
        inv[STAGES_LEFT].unchecked = unavailable or "no log was audited"
        return
    st = audit.machine.state
    pending = []
    for rid, s in sorted(st.stages.items()):
        made = audit.runs_by_key.get(s.idempotency_key, []) if s.idempotency_key else []
        if made:
            inv[STAGES_LEFT].add(
                f"stage {rid} (key {s.idempotency_key!r}) left after the key's run {made[0]}"
            )
        elif st.time_ms - s.expires_ms > STAGE_EXPIRY_SLACK_MS:
            inv[STAGES_LEFT].add(
                f"stage {rid} (key {s.idempotency_key!r}, part {s.next_seq} next) left "
                f"{(st.time_ms - s.expires_ms) / 1000:.1f} s past its expiry"
            )
        else:
            pending.append(rid)
    if not pending:
        return
    probe = StateMachine(ClusterState.decode(audit.machine.snapshot()))
    due = max(st.stages[rid].expires_ms for rid in pending)
    probe.apply(Tick("chaos-stage-expiry", max(due, st.time_ms)))
    for rid in pending:
        if rid in probe.state.stages:
            inv[STAGES_LEFT].add(f"stage {rid} not dropped by a tick at its expiry")
    out.staged["left_expired_at_a_tick"] = sum(rid not in probe.state.stages for rid in pending)


# ---- workflows ----------------------------------------------------------------------------


def _workflow_owned(op: Operation, task_id: str) -> bool:
    """Tasks the workflow checks judge (spawner, spawned tasks, replicas), not ``op.expected``."""
    wf = op.workflow
    if "spawn" in wf and (task_id == wf["spawn"]["task"] or _spawned_attempt(task_id) is not None):
        return True
    return "vote" in wf and (task_id == wf["vote"]["task"] or task_id.startswith(wf["vote"]["task"] + "#"))


def _spawned_attempt(task_id: str) -> int | None:
    """The spawner attempt a task id ``sp<attempt>-<i>`` names, or None."""
    head, sep, tail = task_id.partition("-")
    if sep and head[:2] == "sp" and head[2:].isdigit() and tail.isdigit():
        return int(head[2:])
    return None


def _check_workflow(
    op: Operation, run: RunRecord, inv: dict[str, Invariant], out: Outcomes, approver: str = APPROVER
) -> None:
    wf = op.workflow
    out.count(f"{wf['kind']} runs")
    where = f"{op.key} ({run.run_id})"
    for name, check in (
        ("spawn", _check_spawn),
        ("vote", _check_vote),
        ("saga", _check_saga),
        ("budget", _check_budget),
    ):
        if name in wf and (problems := check(wf[name], run, out)):
            inv[{"spawn": SPAWN, "vote": VOTE, "saga": COMPENSATION, "budget": BUDGET}[name]].add(
                f"{where}: {'; '.join(problems)}"
            )
    if "map" in wf and run.status == "SUCCEEDED":  # its instances are in op.expected (BAD_OUTPUT)
        out.count("map instances checked", wf["map"]["items"])
    if "approval" in wf and (problems := _check_approval(op, run, out, approver)):
        inv[APPROVAL].add(f"{where}: {'; '.join(problems)}")


def _check_approval(op: Operation, run: RunRecord, out: Outcomes, approver: str = APPROVER) -> list[str]:
    """The gate's decision is the client's first acknowledged one and every answer agrees; one
    call applied it; the task ran only after an approval, succeeding at most once."""
    w = op.workflow["approval"]
    t = run.tasks.get(w["task"])
    if t is None:
        return [f"the gated task {w['task']} is missing"]
    calls = op.approvals
    out.count("approve calls", len(calls))
    acked = [c for c in calls if c.outcome == "ok"]
    applied = {c.request_id for c in acked if c.applied}
    if len(acked) < len(calls):
        out.count("approve calls unknown or refused", len(calls) - len(acked))
    problems = []
    if t.gate is None:
        if acked:
            problems.append(f"an approve call was answered {acked[0].decision} but {w['task']} has no gate")
        elif t.attempt or t.history:
            problems.append(f"{w['task']} ran without a gate ({t.status}, attempt {t.attempt})")
        return problems
    gid, decision, by, decided_ms = t.gate
    if decision:
        out.count(f"gates {decision}" + (" by timeout" if by == "timeout" else ""))
    if acked:
        first = acked[0].decision
        if decision != first or any(c.decision != first or c.gate != gid for c in acked):
            problems.append(
                f"gate {gid} decided {decision or 'nothing'!r} by {by!r}; the client's answers"
                f" {[(c.request_id, c.decision, c.gate) for c in acked]}"
            )
        if first != ("rejected" if w["reject"] else "approved"):
            problems.append(f"the client asked reject={w['reject']}, its first answer was {first!r}")
    if len(applied) > 1:
        problems.append(f"applied by {len(applied)} request ids: {sorted(applied)}")
    if applied and by != approver:
        problems.append(f"a call was answered applied but gate {gid} was decided by {by!r}")
    starts = [s for _, _outcome, s in t.history] + ([t.started_ms] if t.started_ms else [])
    succeeded = sum(1 for _, outcome, _ in t.history if outcome == "SUCCEEDED")
    if decision != "approved":
        if t.attempt or t.history or t.status == "SUCCEEDED":
            problems.append(
                f"{w['task']} ran (attempt {t.attempt}, {t.status}) though its gate is {decision!r}"
            )
        if decision == "rejected" and (run.status != "FAILED" or run.reason != "APPROVAL_REJECTED"):
            problems.append(f"rejected, yet the run ended {run.status} (reason {run.reason!r})")
    else:
        if any(s < decided_ms for s in starts):
            problems.append(f"{w['task']} started at {min(starts)} before its approval at {decided_ms}")
        if succeeded > 1:
            problems.append(f"{w['task']} succeeded {succeeded} times")
    return problems


def _check_spawn(w: dict[str, Any], run: RunRecord, out: Outcomes) -> list[str]:
    """Exactly the spawner's committed attempt's tasks, each once; on success each with its output."""
    spawner = run.tasks.get(w["task"])
    spawned = {tid for tid in run.tasks if _spawned_attempt(tid) is not None}
    if spawner is None:
        return [f"the spawner {w['task']} is missing"]
    if spawner.status != "SUCCEEDED":
        # A failed or fenced attempt spawns nothing; a spawner cancelled with its run (while it
        # waited for its children) keeps what its last, successful attempt spawned.
        a = spawner.attempt if spawner.status != "FAILED" else None
        stray = sorted(t for t in spawned if _spawned_attempt(t) != a or t not in _ids(a, w))
        return (
            [f"{stray} exist but the spawner ended {spawner.status} at attempt {spawner.attempt}"]
            if stray
            else []
        )
    a = spawner.attempt
    want = [spawned_id(a, i) for i in range(len(w["outputs"]))]
    problems = []
    got = spawner.output if isinstance(spawner.output, dict) else {}
    if got.get("attempt") != a or got.get("spawned") != want:
        problems.append(f"spawner output {spawner.output!r} (committed attempt {a}, expected spawned {want})")
    if lost := sorted(set(want) - spawned):
        problems.append(f"lost {lost}")
    if stray := sorted(spawned - set(want)):
        problems.append(f"spawned by another attempt than the committed {a}: {stray}")
    if run.status == "SUCCEEDED":
        for tid, expected in zip(want, w["outputs"], strict=True):
            t = run.tasks.get(tid)
            if t is not None and (t.status != "SUCCEEDED" or t.output != expected):
                problems.append(f"{tid} {t.status} with {t.output!r} (expected {expected!r})")
        out.count("spawned tasks checked", len(want))
    return problems


def _ids(attempt: int | None, w: dict[str, Any]) -> list[str]:
    return [] if attempt is None else [spawned_id(attempt, i) for i in range(len(w["outputs"]))]


def _check_vote(w: dict[str, Any], run: RunRecord, out: Outcomes) -> list[str]:
    """The fused answer is the majority of the replicas' committed outputs, as the output lists them."""
    t = run.tasks.get(w["task"])
    if t is None:
        return [f"the replicated task {w['task']} is missing"]
    if t.status != "SUCCEEDED":
        return [f"{w['task']} ended {t.status} in a SUCCEEDED run"] if run.status == "SUCCEEDED" else []
    o = t.output if isinstance(t.output, dict) else {}
    listed = o.get("replicas") or []
    problems = []
    ids = [f"{w['task']}#{i}" for i in range(len(w["agents"]))]
    if [e.get("id") for e in listed] != ids:
        return [f"the output lists replicas {[e.get('id') for e in listed]}, expected {ids}"]
    committed: list[Any] = []
    for e, agent in zip(listed, w["agents"], strict=True):
        r = run.tasks.get(e["id"])
        if r is None:
            problems.append(f"replica {e['id']} is not a task of the run")
            continue
        own = w["answer"] + (1 if agent == "slow_sum_off" else 0)
        if r.status == "SUCCEEDED":
            committed.append(r.output)
            if r.output != own:
                problems.append(
                    f"replica {e['id']} ({agent}) committed {r.output!r}, its agent answers {own}"
                )
        if e.get("status") != r.status or (r.status == "SUCCEEDED" and e.get("output") != r.output):
            problems.append(
                f"the output lists {e['id']} {e.get('status')} with {e.get('output')!r};"
                f" the replica task is {r.status} with {r.output!r}"
            )
        if e.get("status") != "SUCCEEDED" and e.get("vote") is not None:
            problems.append(f"{e['id']} {e.get('status')} has a vote")
    majority = len(ids) // 2 + 1
    if o.get("answer") != w["answer"] or committed.count(w["answer"]) < majority:
        problems.append(
            f"answer {o.get('answer')!r}, expected {w['answer']!r} from a majority of {majority};"
            f" committed replica outputs {committed}"
        )
    out.count("votes checked")
    return problems


def _check_saga(w: dict[str, Any], run: RunRecord, out: Outcomes) -> list[str]:
    """One compensation per succeeded compensable step, its KV record written once, in reverse order."""
    problems = []
    done = [s for s in w["steps"] if s in run.tasks and run.tasks[s].status == "SUCCEEDED"]
    if run.status not in ("COMPENSATED", "COMPENSATION_FAILED") and done:
        problems.append(f"ended {run.status} with succeeded compensable steps {done}")
    if run.status == "COMPENSATION_FAILED":
        failed = [
            s
            for s in done
            if (c := run.tasks.get(f"{s}~compensate")) is not None and c.status == "FAILED" and c.error
        ]
        if not failed:
            problems.append("ended COMPENSATION_FAILED with no compensation failed for a recorded reason")
        out.count("sagas ended COMPENSATION_FAILED")
    if sorted(run.compensations) != sorted(done):
        problems.append(f"compensation record {list(run.compensations)} for succeeded steps {done}")
    comps = sorted(t for t in run.tasks if t.endswith("~compensate"))
    if comps != sorted(f"{s}~compensate" for s in done):
        problems.append(f"compensation tasks {comps} for succeeded steps {done}")
    created: dict[str, int] = {}
    for s in w["steps"]:
        key = compensation_key(run.run_id, s)
        e = run.kv.get(key)
        c = run.tasks.get(f"{s}~compensate")
        if s not in done:
            if e is not None:
                problems.append(f"{s} was not compensable yet {key} was written")
            continue
        if c is None:
            continue
        out.count("compensations checked")
        if e is None:
            if c.status == "SUCCEEDED":
                problems.append(f"{s}~compensate SUCCEEDED but {key} was never written")
            continue
        created[s] = e.create_revision
        writer = e.value.get("attempt") if isinstance(e.value, dict) else None
        if e.version != 1:
            problems.append(f"{key} written {e.version} times (last by attempt {writer})")
        if c.status == "SUCCEEDED":
            by = c.output.get("by_attempt") if isinstance(c.output, dict) else None
            if by != writer or not isinstance(writer, int) or writer > c.attempt:
                problems.append(
                    f"{s}~compensate committed attempt {c.attempt} says applied by {by!r}; {key} says {writer!r}"
                )
            elif writer < c.attempt:
                out.count("compensations found applied by a lost attempt")
    # Reverse dependency order: a step is undone only after the steps that ran after it.
    steps = [s for s in w["steps"] if s in created]
    for earlier, later in itertools.pairwise(steps):
        if created[earlier] < created[later]:
            problems.append(
                f"{earlier} undone (revision {created[earlier]}) before {later} ({created[later]})"
            )
    return problems


def _check_budget(w: dict[str, Any], run: RunRecord, out: Outcomes) -> list[str]:
    """Reached (its fan always reaches it), stopped by the command that reached it, and overspent
    by at most what could be in flight at once; nothing started after it."""
    max_cost, cost = w["max_cost"], run.usage[2]
    if run.status != "FAILED" or run.reason != "BUDGET_EXCEEDED":
        return [f"ended {run.status} (reason {run.reason!r}), expected FAILED BUDGET_EXCEEDED at cost {cost}"]
    out.count("budgets reached")
    over = cost - max_cost
    out.budget_overspend_max = max(out.budget_overspend_max, over)
    problems = []
    if over < 0:
        problems.append(f"stopped at cost {cost} below max_cost {max_cost}")
    if over > w["bound"]:
        problems.append(f"cost {cost} overspends max_cost {max_cost} by more than the fan's {w['bound']}")
    # The command whose reports reached the limit charges every report it carries (each attempt
    # was running when the limit was reached: its work is done); a later command charges none.
    # One command's items end at one state time, so "later" is a later finished_ms.
    reports = sorted((t.finished_ms, t.usage[2], tid) for tid, t in run.tasks.items() if t.usage[2] > 0)
    total, reached_ms = 0.0, None
    for at, c, _ in reports:
        total += c
        if total >= max_cost:
            reached_ms = at
            break
    late = [f"{tid} at {at}" for at, _, tid in reports if reached_ms is not None and at > reached_ms]
    if late:
        problems.append(f"reports debited after max_cost {max_cost} was reached at {reached_ms}: {late}")
    never = run.tasks.get(w["never"])
    if never is not None and never.status == "SUCCEEDED":
        problems.append(f"{w['never']} ran after the budget was reached")
    return problems


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


def stalls(
    done_ms: Sequence[int], phases: Phases, faults: Sequence[FaultRecord], over_s: float = 0.0
) -> list[Stall]:
    """Every time with no task completing, counted while a majority could form, over ``over_s``
    seconds, in time order (each with the faults active during it).

    Measured from the start of the warm-up to the end of the cool-down (the workload
    runs throughout), so a stall at either end counts too.
    """
    no_quorum = [(f.start_ms, f.end_ms or phases.end_ms) for f in faults if not f.quorum]
    points = [phases.start_ms, *(t for t in done_ms if phases.start_ms <= t <= phases.end_ms), phases.end_ms]
    out = []
    for a, b in itertools.pairwise(points):
        lost = sum(max(0, min(b, y) - max(a, x)) for x, y in no_quorum)
        seconds = round((b - a - lost) / 1000, 3)
        if seconds > over_s:
            active = tuple(
                f"{f.kind} {','.join(f.targets)}" for f in faults if f.start_ms < b and _until(f, b) > a
            )
            out.append(Stall(a, b, seconds, active))
    return out


def largest_stall(done_ms: Sequence[int], phases: Phases, faults: Sequence[FaultRecord]) -> Stall:
    """The longest time with no task completing while a majority could form (``stalls``); the
    earliest of equal ones."""
    best = Stall(phases.start_ms, phases.start_ms, 0.0, ())
    for s in stalls(done_ms, phases, faults):
        if s.seconds > best.seconds:
            best = s
    return best


def _until(f: FaultRecord, default_ms: int) -> int:
    """When a fault's effect ended: its heal plus the cluster's recovery."""
    if not f.end_ms:
        return default_ms
    return f.end_ms + int((f.recovery_s or 0.0) * 1000)
