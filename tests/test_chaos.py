"""The chaos harness: its checker on synthetic histories (pure, fast), then real seeded runs.

The unit tests build histories by hand: a lost acknowledged run, a duplicate, an
unexpected run, and a committed result from a fenced attempt fed to the audit as
command batches; for the KV and lock workloads, a non-linearizable KV history,
overlapping lock holds, a stale holder's fenced write let through by a broken
machine, and counters that lost increments. The end-to-end tests run
``scripts/chaos.py`` as a subprocess and expect exit 0 with no violation; the netns
one needs root and is skipped otherwise. The unfenced experiment runs without
faults and must show lost increments on the unfenced counter and none on the fenced one.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from raftmesh.chaos.agents import compensation_key
from raftmesh.chaos.checker import (
    APPROVAL,
    ARCHIVE,
    AUDIT_MISSING,
    BAD_OUTPUT,
    BUDGET,
    COMPENSATION,
    DIVERGED,
    DUPLICATED_RUNS,
    EARLY,
    FENCED,
    LOST,
    PHANTOM,
    REPLAY,
    REQUEUED_TWICE,
    RETRY_LOST,
    SPAWN,
    STAGED,
    STAGES_LEFT,
    UNEXPECTED,
    UNFINISHED,
    USAGE,
    VOTE,
    Invariant,
    KvEntryRecord,
    Phases,
    ReplayCheck,
    RunRecord,
    TaskRecord,
    check_history,
    largest_stall,
    stalls,
    throughput,
)
from raftmesh.chaos.coord_check import (
    COUNTER_LOST,
    COUNTER_ORDER,
    KV_COUNTER_LOST,
    KV_ILLEGAL,
    KV_REVISIONS,
    LOCK_OVERLAP,
    LOCK_STALE,
    LOCK_TOKENS,
    LOCK_UNLOGGED,
    check_kv,
    check_locks,
)
from raftmesh.chaos.kv_workload import HistoryClock, KvRecord
from raftmesh.chaos.lock_workload import FencedCounter, LockRecord, UnfencedCounter
from raftmesh.chaos.nemesis import (
    DURATION_S,
    FaultKind,
    FaultRecord,
    available_faults,
    plan_schedule,
    quorum_possible,
)
from raftmesh.chaos.netns import (
    bridge,
    groups_reachability,
    is_supported,
    majorities_ring,
    resolve_reachability,
)
from raftmesh.chaos.workload import (
    APPROVER,
    COST_UNIT,
    DOOMED,
    DOOMED_AGENT,
    EARLY_JOBS,
    SLEEP_AGENTS,
    STAGED_SHARE,
    WORKFLOW_SHARE,
    ApproveCall,
    Job,
    Operation,
    RetryCall,
    Workload,
    make_job,
    make_staged_job,
    make_workflow_job,
    next_job,
)
from raftmesh.client._client import task_pb
from raftmesh.consensus import kv_commands, limits, runs, tasks
from raftmesh.consensus.codes import Code
from raftmesh.consensus.commands import (
    Assign,
    Assignment,
    Command,
    Complete,
    Completion,
    Fence,
    KvOp,
    KvTxn,
    LockAcquire,
    LockRelease,
    NodeDown,
    RegisterNode,
    StageRun,
    SubmitRun,
    TaskSpec,
    Tick,
    encode_batch,
)
from raftmesh.consensus.context import ApplyContext
from raftmesh.consensus.dag import validate
from raftmesh.consensus.machine import PROCESSORS, StateMachine
from raftmesh.consensus.results import Rejected, ReportResult, Result
from raftmesh.consensus.state import TaskStatus
from raftmesh.node.convert import task_specs_from_pb
from raftmesh.proto.raftmesh.v1 import cluster_pb2 as pb
from raftmesh.verify.audit import Audit, FencedWrite, LockHold, overlapping_holds, token_regressions

ROOT = Path(__file__).resolve().parent.parent
CHAOS = ROOT / "scripts" / "chaos.py"


# ---- synthetic histories ---------------------------------------------------------------


def op(key: str, outcome: str = "ok", run_id: str = "", expected: dict[str, Any] | None = None) -> Operation:
    o = Operation(0, 0, key, "chain", 1, expected if expected is not None else {"a": 1}, call_ms=1)
    o.outcome = outcome  # type: ignore[assignment]
    o.run_id = run_id or f"r-{key}"
    return o


def run(key: str, run_id: str = "", status: str = "SUCCEEDED", output: Any = 1) -> RunRecord:
    return RunRecord(run_id or f"r-{key}", key, status, "", {"a": TaskRecord(status, output, 1, "n1", 10)})


def check(ops: list[Operation], runs: list[RunRecord], audit: Audit | None = None, **kw: Any) -> Any:
    return check_history(ops, {r.run_id: r for r in runs}, audit or Audit(), kw.get("digests", {}))


def test_a_clean_history_has_no_violation() -> None:
    ops = [op("k1"), op("k2"), op("k3", "unknown"), op("k4", "unknown")]
    result = check(ops, [run("k1"), run("k2"), run("k3")])
    assert result.ok, {n: i.examples for n, i in result.invariants.items() if i.count}
    out = result.outcomes
    assert (out.ok, out.unknown, out.ok_succeeded) == (2, 2, 2)
    assert (out.unknown_exists_terminal, out.unknown_absent) == (1, 1)
    assert out.unknown_runs == {"k3": "run r-k3 SUCCEEDED", "k4": "never created"}


def test_a_lost_acknowledged_run_is_reported() -> None:
    result = check([op("k1"), op("k2")], [run("k1")])
    assert result.invariants[LOST].count == 1
    assert "k2" in result.invariants[LOST].examples[0]
    assert not result.ok


def test_a_duplicate_run_is_reported() -> None:
    result = check([op("k1")], [run("k1"), run("k1", run_id="r-other")])
    assert result.invariants[DUPLICATED_RUNS].count >= 1
    assert not result.ok


def test_a_duplicate_in_the_log_is_reported_even_if_the_state_lost_one() -> None:
    audit = Audit()
    audit.runs_by_key["k1"] = ["r-k1", "r-again"]
    result = check([op("k1")], [run("k1")], audit)
    assert result.invariants[DUPLICATED_RUNS].count == 1


def test_an_unexpected_run_is_reported() -> None:
    result = check([op("k1")], [run("k1"), run("nobody-submitted-this")])
    assert result.invariants[UNEXPECTED].count == 1
    assert not result.ok


def test_wrong_outputs_unfinished_runs_and_phantoms_are_reported() -> None:
    ops = [op("k1"), op("k2"), op("k3", "failed")]
    result = check(ops, [run("k1", output=2), run("k2", status="RUNNING"), run("k3")])
    assert result.invariants[BAD_OUTPUT].count == 1
    assert result.invariants[UNFINISHED].count == 1
    assert result.invariants[PHANTOM].count == 1


def test_a_failed_run_with_a_recorded_reason_is_not_a_violation() -> None:
    failed = RunRecord("r-k1", "k1", "FAILED", "task 'a' failed: boom", {"a": TaskRecord("FAILED", None)})
    result = check([op("k1")], [failed])
    assert result.ok
    assert len(result.outcomes.ok_failed_with_reason) == 1


def _retried(key: str, outcome: str = "ok") -> Operation:
    o = op(key, expected={"a": 1, DOOMED: {"times": 2}})
    o.doomed = True
    o.retries = [RetryCall("rq", 1, 2, outcome, requeued=True)]  # type: ignore[arg-type]
    return o


def _doomed_run(key: str, status: str = "SUCCEEDED") -> RunRecord:
    tasks = {"a": TaskRecord(status, 1), DOOMED: TaskRecord(status, {"times": 2})}
    return RunRecord(f"r-{key}", key, status, "", tasks)


def test_an_acknowledged_retry_must_requeue_exactly_once_and_its_run_succeed() -> None:
    audit = Audit()
    audit.requeues.update({("r-k1", DOOMED): 1, ("r-k3", DOOMED): 1, ("r-k4", DOOMED): 2})
    ops = [_retried("k1"), _retried("k2"), _retried("k3"), _retried("k4"), _retried("k5", "unknown")]
    runs = [_doomed_run("k1"), _doomed_run("k2"), _doomed_run("k3", "FAILED"), _doomed_run("k4")]
    runs.append(_doomed_run("k5", "FAILED"))  # retried with no answer: may stay failed
    result = check(ops, runs, audit)
    lost = result.invariants[RETRY_LOST]
    assert lost.count == 3, lost.examples  # k2 never requeued, k3 did not succeed, k4 twice
    assert (
        result.invariants[REQUEUED_TWICE].count == 1
        and "r-k4" in result.invariants[REQUEUED_TWICE].examples[0]
    )
    assert (result.outcomes.dead_letters, result.outcomes.retry_unknown) == (5, 1)
    clean = check([_retried("k1")], [_doomed_run("k1")], audit)
    assert clean.invariants[RETRY_LOST].count == 0 and clean.invariants[REQUEUED_TWICE].count == 1


def test_usage_must_sum_per_run_and_match_the_one_accepted_report() -> None:
    o = op("k1")
    o.usage = {"a": (3, 1, 0.25)}
    good = RunRecord(
        "r-k1", "k1", "SUCCEEDED", "", {"a": TaskRecord("SUCCEEDED", 1, usage=(3, 1, 0.25))}, (3, 1, 0.25)
    )
    assert check([o], [good]).ok
    twice = RunRecord(
        "r-k1", "k1", "SUCCEEDED", "", {"a": TaskRecord("SUCCEEDED", 1, usage=(6, 2, 0.5))}, (6, 2, 0.5)
    )
    bad_sum = RunRecord(
        "r-k1", "k1", "SUCCEEDED", "", {"a": TaskRecord("SUCCEEDED", 1, usage=(3, 1, 0.25))}, (4, 1, 0.25)
    )
    for rec in (twice, bad_sum):
        assert check([o], [rec]).invariants[USAGE].count == 1


def test_diverged_replicas_and_a_bad_replay_are_reported() -> None:
    result = check_history(
        [], {}, Audit(), {"n1": (5, "aa"), "n2": (5, "bb")}, [ReplayCheck("n1", 10, 5, "cc", "aa")]
    )
    assert result.invariants[DIVERGED].count == 2
    assert result.invariants[REPLAY].count == 1


def test_a_missing_audit_is_a_violation_unless_the_run_says_why() -> None:
    missing = check_history([op("k1")], {"r-k1": run("k1")}, None, {})
    assert missing.invariants[AUDIT_MISSING].count == 1 and not missing.ok
    compacted = check_history([op("k1")], {"r-k1": run("k1")}, None, {}, (), "every journal was compacted")
    assert compacted.ok
    assert compacted.invariants[FENCED].unchecked and compacted.invariants[EARLY].unchecked


def test_a_gap_or_a_disagreement_in_the_archives_is_a_violation() -> None:
    problems = ["no archive holds log entries 120-130", "archives disagree on entry 200"]
    result = check_history([], {}, Audit(), {}, (), "", problems)
    assert result.invariants[ARCHIVE].count == 2 and not result.ok
    assert check_history([], {}, Audit(), {}, (), "", []).ok


def test_snapshot_mode_is_validated_and_replayable() -> None:
    from raftmesh.chaos.runner import ChaosConfig, replay_command
    from raftmesh.errors import InvalidArgument

    cfg = ChaosConfig(seed=3, snapshot_entries=300)
    assert replay_command(cfg).endswith("--snapshot-every 300")
    assert "--snapshot-every" not in replay_command(ChaosConfig(seed=3))
    with pytest.raises(InvalidArgument, match="--snapshot-every"):
        ChaosConfig(snapshot_entries=1)


# ---- the audit on hand-made command batches --------------------------------------------


def _unfenced_complete(ctx: ApplyContext, cmd: Complete) -> Result:
    """Broken: any result for a RUNNING task is accepted, whatever its attempt, token or node."""
    hits = []
    for c in cmd.items:
        t = ctx.state.task(c.run_id, c.task_id)
        if t is not None and t.status is TaskStatus.RUNNING:
            hits.append((ctx.state.runs[c.run_id], t, c.output))
    if not hits:
        return Rejected(Code.ABORTED, "not running")
    rev = ctx.advance()
    for r, t, output in hits:
        tasks.succeed(ctx, r, t, output, rev)
    return ReportResult(len(hits))


def UnfencedMachine() -> StateMachine:
    return StateMachine(processors={**PROCESSORS, Complete: _unfenced_complete})


def _fenced_history(audit: Audit) -> None:
    """n1 runs attempt 1, is marked down, n2 runs attempt 2, then n1's stale result arrives."""

    def feed(*cmds: Command) -> None:
        audit.feed(encode_batch(list(cmds)))

    feed(
        RegisterNode(
            "reg1", 1, node_id="n1", grpc="h:1", raft="h:2", agents=("sum",), slots=4, incarnation="a"
        ),
        RegisterNode(
            "reg2", 2, node_id="n2", grpc="h:3", raft="h:4", agents=("sum",), slots=4, incarnation="b"
        ),
        SubmitRun("sub", 3, run_id="r1", idempotency_key="k1", tasks=(TaskSpec("t1", "sum", {"value": 1}),)),
    )
    feed(Assign("as1", 4, (Assignment("r1", "t1", "n1", 1),)))
    stale = audit.latest_start[("r1", "t1")]
    assert (stale.attempt, stale.node) == (1, "n1")
    feed(NodeDown("down", 5, node_id="n1", incarnation="a", reason="test"))
    feed(Assign("as2", 6, (Assignment("r1", "t1", "n2", 2),)))
    feed(Complete("late", 7, node_id="n1", items=(Completion("r1", "t1", 1, stale.token, 1),)))


def test_the_real_machine_rejects_a_fenced_result_and_the_audit_agrees() -> None:
    audit = Audit()
    _fenced_history(audit)
    assert audit.fenced == []
    assert audit.stale_rejected == 1
    assert audit.results[("r1", "t1")] == 0
    assert audit.starts[("r1", "t1")] == 2


def test_a_committed_result_from_a_fenced_attempt_is_reported() -> None:
    audit = Audit(machine=UnfencedMachine())
    _fenced_history(audit)
    assert len(audit.fenced) == 1
    f = audit.fenced[0]
    assert (f.reported.attempt, f.reported.node) == (1, "n1")
    assert f.latest is not None and (f.latest.attempt, f.latest.node) == (2, "n2")
    result = check_history([op("k1", run_id="r1")], {}, audit, {})
    assert result.invariants[FENCED].count == 1
    assert not result.ok


def test_a_repeated_completion_is_not_a_second_result() -> None:
    audit = Audit()
    _fenced_history(audit)
    token = audit.latest_start[("r1", "t1")].token
    done = Complete("c2", 8, node_id="n2", items=(Completion("r1", "t1", 2, token, 1),))
    audit.feed(encode_batch([done]))
    audit.feed(encode_batch([done]))  # the same request id again: deduplicated
    assert audit.results[("r1", "t1")] == 1
    assert audit.duplicated == [] and audit.fenced == []


def test_the_audit_still_sees_early_starts() -> None:
    def eager_submit(ctx: ApplyContext, cmd: SubmitRun) -> Result:
        """Broken: every task is READY at submit, dependencies or not."""
        res = runs.submit(ctx, cmd)
        r = ctx.state.runs[cmd.run_id]
        for t in r.tasks.values():
            if t.status is TaskStatus.PENDING:
                tasks.make_ready(ctx, r, t, ctx.state.revision, 0)
        return res

    audit = Audit(machine=StateMachine(processors={**PROCESSORS, SubmitRun: eager_submit}))
    specs = (TaskSpec("a", "sum"), TaskSpec("b", "sum", deps=("a",)))
    audit.feed(
        encode_batch(
            [
                RegisterNode(
                    "r", 1, node_id="n1", grpc="h:1", raft="h:2", agents=("sum",), slots=4, incarnation="a"
                ),
                SubmitRun("s", 2, run_id="r1", idempotency_key="k", tasks=specs),
                Assign("as", 3, (Assignment("r1", "a", "n1", 1), Assignment("r1", "b", "n1", 1))),
            ]
        )
    )
    assert audit.early_starts == [("r1", "b")]


def test_a_spawned_task_may_start_while_its_spawner_waits_for_it() -> None:
    """It reads its spawner's output, final once the spawner's attempt succeeded: not an early start."""
    audit = Audit()
    specs = (TaskSpec("p", "sum"), TaskSpec("after", "sum", deps=("p",)))
    audit.feed(
        encode_batch(
            [
                RegisterNode(
                    "r", 1, node_id="n1", grpc="h:1", raft="h:2", agents=("sum",), slots=4, incarnation="a"
                ),
                SubmitRun("s", 2, run_id="r1", idempotency_key="k", tasks=specs),
                Assign("a1", 3, (Assignment("r1", "p", "n1", 1),)),
            ]
        )
    )
    token = audit.latest_start[("r1", "p")].token
    child = TaskSpec("c", "sum", deps=("p",))
    audit.feed(
        encode_batch(
            [Complete("c1", 4, node_id="n1", items=(Completion("r1", "p", 1, token, 1, spawn=(child,)),))]
        )
    )
    assert audit.machine.state.runs["r1"].tasks["p"].status is TaskStatus.WAITING_CHILDREN
    audit.feed(encode_batch([Assign("a2", 5, (Assignment("r1", "c", "n1", 1),))]))
    assert audit.starts[("r1", "c")] == 1 and audit.early_starts == []


# ---- KV histories ----------------------------------------------------------------------


def kv(
    client: str, kind: str, key: str, call: float, ret: float | None, output: Any = None, **kw: Any
) -> KvRecord:
    """A KV record; ``ret=None`` is an unknown outcome."""
    r = KvRecord(client, 0, kind, key, call, **kw)
    r.output = output
    if ret is None:
        r.outcome = "unknown"
    else:
        r.outcome, r.return_s = "ok", ret
    return r


def test_a_linearizable_kv_history_passes_and_unknown_writes_may_explain_reads() -> None:
    records = [
        kv("a", "put", "chaos-kv/x", 0, 1, value="a-0", revision=5),
        kv("b", "get", "chaos-kv/x", 2, 3, "a-0", revision=5),
        kv("a", "put", "chaos-kv/x", 4, None, value="a-1"),  # timed out: it may have happened...
        kv("b", "get", "chaos-kv/x", 6, 7, "a-1", revision=9),  # ...and this read says it did
        kv("b", "cas", "chaos-kv/x", 8, 9, True, value="b-2", expected="a-1", expected_revision=9),
        kv("c", "get", "chaos-kv/x", 10, None),  # a failed read: dropped
    ]
    result = check_kv(records)
    assert result.verdict == "ok" and result.violations == 0, result.explanation
    assert result.dropped_reads == 1 and result.ops == {"ok": 4, "unknown": 1}


def test_a_non_linearizable_kv_history_is_reported_illegal_with_an_explanation() -> None:
    records = [
        kv("a", "put", "chaos-kv/x", 0, 1, value="a-0", revision=5),
        kv("a", "put", "chaos-kv/x", 2, 3, value="a-1", revision=6),
        kv("b", "get", "chaos-kv/x", 4, 5, "a-0", revision=5),  # a stale read
        kv("b", "get", "chaos-kv/y", 4, 5, None),  # another key, fine
    ]
    result = check_kv(records)
    assert result.verdict == "illegal"
    assert result.invariants[KV_ILLEGAL].count == 1 and result.violations == 1
    assert "chaos-kv/x" in result.invariants[KV_ILLEGAL].examples[0]
    assert "ILLEGAL" in result.explanation and "get('chaos-kv/x') -> 'a-0'" in result.explanation
    assert "ILLEGAL" in result.summary and "state after it: value='a-1'" in result.summary


def test_a_timed_out_linearizability_search_is_inconclusive_not_a_pass_nor_a_violation() -> None:
    records = [kv("a", "put", "chaos-kv/x", 0, 1, value="a-0"), kv("b", "get", "chaos-kv/x", 2, 3, "a-0")]
    result = check_kv(records, timeout_s=1e-9)
    assert result.verdict == "unknown" and result.inconclusive
    assert result.violations == 0
    assert "inconclusive" in result.invariants[KV_ILLEGAL].unchecked


def test_a_value_seen_with_two_revisions_is_reported() -> None:
    records = [
        kv("a", "put", "chaos-kv/x", 0, 1, value="a-0", revision=5),
        kv("b", "get", "chaos-kv/x", 2, 3, "a-0", revision=7),
    ]
    assert check_kv(records).invariants[KV_REVISIONS].count == 1


# ---- lock holds, fenced writes and counters -------------------------------------------------


def hold(
    owner: str, start: int, end: float, token: int, mode: str = "exclusive", lock: str = "L"
) -> LockHold:
    return LockHold(lock, owner, mode, token, start, token, 0, end, 0, 0, "released")


def lock_audit(holds: list[LockHold], writes: tuple[FencedWrite, ...] | list[FencedWrite] = ()) -> Audit:
    """An audit whose lock records are set by hand (no log replayed)."""
    a = Audit()
    a.locks.holds = list(holds)
    a.locks.fenced_writes = list(writes)
    return a


def test_an_overlapping_grant_pair_is_reported() -> None:
    a, b = hold("a", 1, 10, 1), hold("b", 5, 20, 5)
    assert overlapping_holds([a, b]) == [(a, b)]
    result = check_locks([], [], lock_audit([a, b]))
    assert result.invariants[LOCK_OVERLAP].count == 1 and result.violations == 1
    assert "overlaps" in result.invariants[LOCK_OVERLAP].examples[0]


def test_handovers_shared_holds_and_other_locks_do_not_overlap() -> None:
    holds = [
        hold("a", 1, 5, 1),
        hold("b", 5, 9, 5),  # granted by the command that released a's hold
        hold("c", 9, 12, 9, mode="shared"),
        hold("d", 10, 15, 10, mode="shared"),
        hold("e", 2, math.inf, 2, lock="M"),
    ]
    assert overlapping_holds(holds) == []
    assert overlapping_holds([*holds, hold("f", 14, 16, 14)])  # exclusive while d (shared) holds
    assert token_regressions(holds) == []
    regressed = [hold("a", 1, 2, 4), hold("b", 3, 4, 3)]
    assert token_regressions(regressed)
    assert check_locks([], [], lock_audit(regressed)).invariants[LOCK_TOKENS].count == 1


def test_a_stale_accepted_write_is_reported() -> None:
    stale = FencedWrite(7, 20, "L", 3, 9, True, "")
    refused = FencedWrite(8, 20, "L", 3, 9, False, "ABORTED")
    current = FencedWrite(9, 21, "L", 9, 9, True, "", (("chaos-lockctr/l0", 4, 5),))
    result = check_locks([], [], lock_audit([], [stale, refused, current]))
    assert result.invariants[LOCK_STALE].count == 1
    assert "token 3" in result.invariants[LOCK_STALE].examples[0]
    assert result.invariants[KV_COUNTER_LOST].count == 0
    lost = FencedWrite(10, 22, "L", 9, 9, True, "", (("chaos-lockctr/l0", 5, 5),))
    assert check_locks([], [], lock_audit([], [lost])).invariants[KV_COUNTER_LOST].count == 1


def _unfenced_txn(ctx: ApplyContext, cmd: KvTxn) -> Result:
    """Broken: KV writes fenced by a lock token are never refused (the fence is dropped)."""
    return kv_commands.txn(ctx, replace(cmd, fence=None))


def UnfencedKvMachine() -> StateMachine:
    return StateMachine(processors={**PROCESSORS, KvTxn: _unfenced_txn})


def _stale_holder_log(audit: Audit) -> tuple[int, int]:
    """a holds L (ttl 1 s), expires, b takes L, then a's late fenced write arrives; then b releases."""

    def feed(*cmds: Command) -> Any:
        audit.feed(encode_batch(list(cmds)))

    feed(LockAcquire("acq-a", 1_000, owner="a", items=(("L", "exclusive"),), ttl_ms=1_000))
    token_a = audit.locks.max_granted["L"]
    feed(LockAcquire("acq-b", 1_100, owner="b", items=(("L", "exclusive"),), ttl_ms=1_000, wait_ms=5_000))
    feed(Tick("tick", 2_500))  # a's lease ran out: b is granted in the same command
    token_b = audit.locks.max_granted["L"]
    put = KvOp("put", "chaos-lockctr/l0", 1)
    feed(KvTxn("late-a", 2_600, success=(put,), fence=Fence("L", token_a)))
    feed(LockRelease("rel-b", 2_700, owner="b", name="L", token=token_b))
    return token_a, token_b


def test_the_audit_turns_the_log_into_lock_holds() -> None:
    audit = Audit()
    token_a, token_b = _stale_holder_log(audit)
    holds = audit.locks.holds
    assert [(h.owner, h.token, h.end_reason) for h in holds] == [
        ("a", token_a, "expired"),
        ("b", token_b, "released"),
    ]
    a, b = holds
    assert a.end == b.start and token_b > token_a
    assert a.start_ms == 1_000 and a.end_ms == 2_500
    assert overlapping_holds(holds) == []
    # The real machine refused a's late write, and the audit saw it do so.
    [w] = audit.locks.fenced_writes
    assert (w.accepted, w.code, w.token, w.latest_grant) == (False, "ABORTED", token_a, token_b)
    assert audit.locks.stale_writes == []


def test_a_stale_holders_write_let_through_by_the_machine_is_reported() -> None:
    audit = Audit(machine=UnfencedKvMachine())
    token_a, token_b = _stale_holder_log(audit)
    [w] = audit.locks.stale_writes
    assert (w.token, w.latest_grant) == (token_a, token_b)
    result = check_locks([], [], audit)
    assert result.invariants[LOCK_STALE].count == 1 and result.violations == 1


def test_a_grant_the_log_does_not_have_is_reported() -> None:
    audit = Audit()
    token_a, _ = _stale_holder_log(audit)
    ok = LockRecord("c0", 0, "L", "a", "raw", 0.0, 0, outcome="granted", token=token_a)
    ghost = LockRecord("c0", 1, "L", "ghost", "raw", 0.0, 0, outcome="granted", token=99)
    result = check_locks([ok, ghost], [], audit)
    assert result.invariants[LOCK_UNLOGGED].count == 1
    assert "ghost" in result.invariants[LOCK_UNLOGGED].examples[0]


def test_the_fenced_counter_refuses_a_stale_holder_and_the_unfenced_one_loses_increments() -> None:
    clock = HistoryClock()
    fenced, unfenced = FencedCounter("L", clock), UnfencedCounter("L", clock)
    for c in (fenced, unfenced):
        a = c.read(5)  # a holds token 5, reads, then stalls past its TTL
        for _ in range(3):  # b (token 7) increments three times meanwhile
            c.write(c.read(7) + 1, 7, "b")
        c.write(a + 1, 5, "a")  # a wakes up and writes what it computed before
    assert fenced.value == 3 and fenced.summary()["lost_increments"] == 0
    assert fenced.summary()["rejected"] == 1
    assert unfenced.value == 1 and unfenced.summary()["lost_increments"] == 3
    assert unfenced.summary()["stale_accepted"] == 1
    result = check_locks([], [fenced], None, "no journal in this test", unfenced=[unfenced])
    assert result.violations == 0
    assert result.invariants[LOCK_OVERLAP].unchecked == "no journal in this test"
    exp = result.experiment()
    assert (
        exp is not None and exp["fenced"]["lost_increments"] == 0 and exp["unfenced"]["lost_increments"] == 3
    )


def test_a_counter_that_accepts_an_older_token_is_reported() -> None:
    class Broken(FencedCounter):
        def _accepts(self, token: int) -> bool:
            return True

    c = Broken("L", HistoryClock())
    a = c.read(5)
    c.write(c.read(7) + 1, 7, "b")
    c.write(a + 1, 5, "a")
    result = check_locks([], [c], None, "no journal")
    assert result.invariants[COUNTER_ORDER].count == 1
    assert result.invariants[COUNTER_LOST].count == 1


def test_invariant_examples_are_bounded() -> None:
    inv = Invariant("x")
    for i in range(20):
        inv.add(str(i))
    assert inv.count == 20 and len(inv.examples) == 5


# ---- staged submits ---------------------------------------------------------------------

STAGE_T0 = 1_000


def _staged_log(audit: Audit, key: str = "K", run_id: str = "rk-1") -> Operation:
    """A staged submit as the node proposes it, fed to ``audit``: part 0 (``e0``, ``e1``), the
    same part again from a retry (a leader change), then the submit with the last part (``e2``,
    ``total`` on ``e2``). Returns the client's operation, acknowledged."""
    cmds: list[Command] = [RegisterNode("reg", STAGE_T0, "n1", "n1:1", "n1:2", ("echo", "sum"), 4, "i1")]
    echoes = [TaskSpec(id=f"e{i}", agent="echo", input={"text": f"t{i}" * 50}) for i in range(3)]
    total = TaskSpec(id="total", agent="sum", input={"value": 7}, deps=("e2",))
    part0 = StageRun(f"g-{run_id}-0-a", STAGE_T0, run_id=run_id, seq=0, tasks=tuple(echoes[:2]),
                     idempotency_key=key, node_id="n1")  # fmt: skip
    cmds += [part0, replace(part0, request_id=f"g-{run_id}-0-b", node_id="n2")]
    cmds.append(SubmitRun(f"s-{key}", STAGE_T0, run_id, key, (echoes[2], total), 0, "", "alice", staged=2))
    audit.feed(encode_batch(cmds))
    expected: dict[str, Any] = {t.id: t.input for t in echoes} | {"total": 7}
    o = Operation(0, 0, key, "staged3", 4, expected, call_ms=1, outcome="ok", run_id=run_id, staged=True)
    return o


def _ran(audit: Audit, run_id: str, key: str, expected: dict[str, Any]) -> RunRecord:
    """The run as the drain reads it, its tasks those the log made, each ended with its output."""
    tasks = {
        tid: TaskRecord("SUCCEEDED", expected.get(tid)) for tid in audit.machine.state.runs[run_id].tasks
    }
    return RunRecord(run_id, key, "SUCCEEDED", "", tasks)


def test_a_staged_submit_made_once_whole_from_its_stage_passes() -> None:
    audit = Audit()
    o = _staged_log(audit)
    result = check_history([o], {"rk-1": _ran(audit, "rk-1", "K", o.expected)}, audit, {})
    assert result.ok, {n: i.examples for n, i in result.invariants.items() if i.count}
    assert result.outcomes.staged == {
        "submits": 1, "ok": 1, "stages": 1, "adopted": 1, "expired": 0, "dropped": 0,
        "parts_applied": 1, "parts_resumed": 1, "parts_answered_with_run": 0, "parts_refused": 0,
    }  # fmt: skip


def test_a_staged_run_with_a_task_lost_or_an_input_cut_or_made_twice_is_reported() -> None:
    audit = Audit()
    o = _staged_log(audit)
    whole = _ran(audit, "rk-1", "K", o.expected)
    cut = dict(whole.tasks) | {"e1": TaskRecord("SUCCEEDED", {"text": o.expected["e1"]["text"][:-1]})}
    lost = {tid: t for tid, t in whole.tasks.items() if tid != "e0"}
    for tasks_, why in ((cut, "outputs of ['e1']"), (lost, "has 3 tasks")):
        result = check_history([o], {"rk-1": replace(whole, tasks=tasks_)}, audit, {})
        assert result.invariants[STAGED].count == 1 and why in result.invariants[STAGED].examples[0]
    # A valid staged job refused as invalid: the staged path broke it.
    refused = replace(o, outcome="failed", error_code="INVALID_ARGUMENT", error="unknown dependency")
    result = check_history([refused], {}, Audit(), {})
    assert "refused: INVALID_ARGUMENT" in result.invariants[STAGED].examples[0]
    # A retry under another run id after the run was made: answered the key's run, nothing made.
    _staged_log(audit, run_id="rk-2")
    assert audit.runs_by_key == {"K": ["rk-1"]} and audit.stages.runs["rk-2"].answered == 2
    assert check_history([o], {"rk-1": whole}, audit, {}).ok
    # Had the log made a second run under the key, the staged check says so too.
    audit.runs_by_key["K"].append("rk-2")
    result = check_history([o], {"rk-1": whole}, audit, {})
    assert "the log created 2 runs" in result.invariants[STAGED].examples[0]
    # A run of the key that no stage made (e.g. submitted in one entry) is not a staged submit.
    plain = Audit()
    plain.runs_by_key["K"] = ["rk-1"]
    result = check_history([o], {"rk-1": whole}, plain, {})
    assert "not made from a stage" in result.invariants[STAGED].examples[0]


def test_a_machine_that_adopts_a_stage_without_all_its_tasks_is_reported() -> None:
    """A deliberately broken staged path: the submit drops the stage's last task (and fixes the
    count, so the machine's own check lets it through)."""

    def lossy_submit(ctx: ApplyContext, cmd: SubmitRun) -> Result:
        stage = ctx.state.stages.get(cmd.run_id)
        if stage is not None and cmd.staged:
            stage.tasks.pop(next(reversed(stage.tasks)))
            cmd = replace(cmd, staged=cmd.staged - 1)
        return runs.submit(ctx, cmd)

    audit = Audit(machine=StateMachine(processors={**PROCESSORS, SubmitRun: lossy_submit}))
    o = _staged_log(audit)
    result = check_history([o], {"rk-1": _ran(audit, "rk-1", "K", o.expected)}, audit, {})
    examples = result.invariants[STAGED].examples
    assert result.invariants[STAGED].count == 2, examples
    assert "has 3 tasks, the job 4" in examples[0] and "without all its tasks" in examples[1]


def test_a_stage_left_past_its_expiry_is_reported_and_one_still_due_is_proven_to_go() -> None:
    def abandoned(audit: Audit, tick_ms: int) -> Operation:
        o = _staged_log(Audit())  # (the operation only)
        part0 = StageRun("g-x-0", STAGE_T0, run_id="rk-x", seq=0, tasks=(TaskSpec(id="a", agent="echo"),),
                         idempotency_key="X", node_id="n1")  # fmt: skip
        reg = RegisterNode("reg", STAGE_T0, "n1", "n1:1", "n1:2", ("echo", "sum"), 4, "i1")
        audit.feed(encode_batch([reg, part0, Tick("t", tick_ms)]))
        return replace(o, key="X", run_id="", outcome="unknown", expected={})

    expiry = STAGE_T0 + limits.STAGE_TTL_MS
    real = Audit()
    o = abandoned(real, expiry + 20_000)
    result = check_history([o], {}, real, {})
    assert result.ok and result.outcomes.staged["expired"] == 1

    # A machine whose ticks never drop a stage: left 20 s past its expiry.
    def sticky(ctx: ApplyContext, cmd: Tick) -> Result:
        kept = dict(ctx.state.stages)
        res = PROCESSORS[Tick](ctx, cmd)
        ctx.state.stages.update(kept)
        return res

    broken = Audit(machine=StateMachine(processors={**PROCESSORS, Tick: sticky}))
    o = abandoned(broken, expiry + 20_000)
    result = check_history([o], {}, broken, {})
    assert result.invariants[STAGES_LEFT].count == 1
    assert "20.0 s past its expiry" in result.invariants[STAGES_LEFT].examples[0]
    # Still within its time at the end (a client gave up shortly before): a tick drops it.
    due = Audit()
    o = abandoned(due, expiry - 5_000)
    result = check_history([o], {}, due, {})
    assert result.ok and result.outcomes.staged["left_expired_at_a_tick"] == 1
    assert list(due.machine.state.stages) == ["rk-x"]  # the audit's own state is left as it was
    # Without an audit it is not checked (and not passed).
    unaudited = check_history([o], {}, None, {}, (), "every journal was compacted")
    assert unaudited.invariants[STAGES_LEFT].unchecked


def test_staged_jobs_are_a_small_seeded_share_staged_by_the_node_in_parts() -> None:
    from raftmesh.consensus.dag import stage_parts
    from raftmesh.node.staging import _heavy

    mixed = [next_job(random.Random("s"), f"k{i}") for i in range(1000)]
    staged = [j for j in mixed if j.staged]
    assert 0.3 * STAGED_SHARE * 1000 <= len(staged) <= 1.5 * STAGED_SHARE * 1000
    for job in staged[:5] + [make_staged_job(random.Random(f"x{i}"), f"x{i}") for i in range(5)]:
        specs = task_specs_from_pb(pb.SubmitRunRequest(tasks=[task_pb(t) for t in job.dag.tasks.values()]))
        validate(specs, CHAOS_AGENTS)
        assert all(len(t.input["text"]) <= limits.MAX_TASK_INPUT_BYTES for t in specs if t.agent == "echo")
        cmd = SubmitRun("s", 0, "r", job.key, specs, 0, "", "")
        assert _heavy(cmd) and len(stage_parts(specs)) >= 2  # the node stages it
        assert set(job.expected) == set(job.dag.tasks) and 4 <= len(specs) <= 5
        assert all(job.expected[t.id] == t.input for t in specs if t.agent == "echo")
        assert job.expected["total"] == job.dag.tasks["total"].input["value"]


# ---- workload, schedule and measures ---------------------------------------------------


def test_jobs_are_seeded_valid_and_their_expected_outputs_follow_the_agents() -> None:
    rng_a, rng_b = random.Random("s"), random.Random("s")
    a = [make_job(rng_a, f"k{i}") for i in range(50)]
    b = [make_job(rng_b, f"k{i}") for i in range(50)]
    assert [j.dag.to_dict() for j in a] == [j.dag.to_dict() for j in b]
    shapes = {j.shape.split("+")[0][:3] for j in a}
    assert shapes == {"cha", "fan"}
    assert 1 <= sum("+large" in j.shape for j in a) <= 15
    assert 3 <= sum(j.doomed for j in a) <= 20
    for job in a:  # every sum task reports its usage; the job knows what one attempt reports
        sums = {tid for tid, t in job.dag.tasks.items() if t.agent == "sum"}
        assert set(job.usage) == sums
        for tid in sums:
            u = job.dag.tasks[tid].input["usage"]
            assert (u["tokens_in"], u["tokens_out"], u["cost"]) == job.usage[tid]
    for job in a:
        # retries/timeout_ms left None take the agent's default at the API (0 for the built-ins)
        specs = tuple(
            TaskSpec(
                **{
                    **t.to_dict(),
                    "deps": tuple(t.deps),
                    "retries": t.retries or 0,
                    "timeout_ms": t.timeout_ms or 0,
                }
            )
            for t in job.dag.tasks.values()
        )
        validate(specs, {"sum", "sleep", "sleep_thread", "sleep_process", "fail", "fail_breaker", "echo"})
        assert set(job.expected) == set(job.dag.tasks)
        # Recompute each sum from its upstream outputs: value + numeric upstream outputs.
        for tid, t in job.dag.tasks.items():
            if t.agent == "sum":
                ups = [job.expected[d] for d in t.deps]
                assert job.expected[tid] == t.input["value"] + sum(u for u in ups if isinstance(u, int))
            elif t.agent == DOOMED_AGENT and tid == DOOMED:  # fails both attempts: a dead letter
                assert job.doomed and t.retries == 1 and t.input == {"times": 2}
            elif t.agent == "fail":
                assert t.retries == 2 and t.input == {"times": 1}
            elif t.agent == "echo":  # large non-ASCII text, near the input limit
                assert job.expected[tid] == t.input and 40_000 <= len(t.input["text"]) <= 85_000
                assert all(ord(ch) >= 0x4E00 for ch in t.input["text"])
            else:
                assert t.agent in SLEEP_AGENTS and 0.2 <= t.input["seconds"] <= 1.0
                assert job.expected[tid] == t.input
    # every isolation mode is drawn: the chaos nodes run sleeps on the loop, in threads, in workers
    assert {t.agent for j in a for t in j.dag.tasks.values() if "sleep" in t.agent} == set(SLEEP_AGENTS)


CHAOS_AGENTS = {
    "sum", "sleep", "sleep_thread", "sleep_process", "fail", "fail_breaker", "echo",
    "spawner", "slow_sum", "slow_sum_off", "spend", "undo_once", "item_sum",
}  # fmt: skip


def test_workflow_jobs_are_a_seeded_share_and_leave_the_other_draws_unchanged() -> None:
    rng_plain, rng_next = random.Random("s"), random.Random("s")
    plain = [make_job(rng_plain, f"k{i}") for i in range(200)]
    mixed = [next_job(rng_next, f"k{i}") for i in range(200)]
    workflows = [j for j in mixed if j.workflow]
    assert 0.5 * WORKFLOW_SHARE * 200 <= len(workflows) <= 1.5 * WORKFLOW_SHARE * 200
    assert {j.workflow["kind"] for j in workflows} == {"flow", "saga", "budget"}
    for p, m in zip(plain, mixed, strict=True):  # a workflow replaces its plain job, nothing else moves
        if not m.workflow and not m.staged:
            assert p.dag.to_dict() == m.dag.to_dict()
    again = [next_job(random.Random("s"), "k-same") for _ in range(2)]
    assert again[0].dag.to_dict() == again[1].dag.to_dict()


def test_the_workloads_first_jobs_are_one_of_each_kind_whatever_the_seed() -> None:
    """A short run on a loaded machine submits few jobs (once 47 with no budget job): the first
    jobs, dealt to the clients in turn, are one workflow of each kind (the flow's gate approved),
    a dead letter and an urgent run, each replacing its plain job only; the same seed gives the
    same jobs."""
    assert EARLY_JOBS == ("flow", "saga", "budget", "dead", "urgent", "staged")
    n = len(EARLY_JOBS)
    for seed in (11, 20261201, 3, 7):
        for clients in (1, 2, 4):
            w = Workload(["127.0.0.1:1"], seed, clients=clients, urgent_priority=5)
            firsts = {c: list(itertools.islice(w.jobs(c), n)) for c in range(clients)}
            early = [firsts[k % clients][k // clients] for k in range(n)]
            assert [j.key for j in early] == [f"chaos-{seed}-{k % clients}-{k // clients}" for k in range(n)]
            flow, saga, budget, dead, urgent, staged = early
            kinds = [j.workflow.get("kind") for j in early]
            assert kinds == ["flow", "saga", "budget", None, None, None], seed
            assert staged.staged and [j.staged for j in early[:-1]] == [False] * 5
            assert flow.expect_status == "SUCCEEDED" and not flow.workflow["approval"]["reject"]
            assert (saga.expect_status, budget.expect_status) == ("COMPENSATED", "FAILED")
            assert dead.doomed and DOOMED in dead.dag.tasks and dead.expect_status == "SUCCEEDED"
            assert urgent.dag.priority == 5 and urgent.shape.endswith("+urgent")
            for c, jobs in firsts.items():  # the client's RNG drew what it always draws
                rng = random.Random(f"{seed}-client-{c}")
                plain = [next_job(rng, f"chaos-{seed}-{c}-{i}", 5) for i in range(n)]
                for i, (p, j) in enumerate(zip(plain, jobs, strict=True)):
                    if c + clients * i >= n:
                        assert p.dag.to_dict() == j.dag.to_dict()
            again = {c: list(itertools.islice(w.jobs(c), n)) for c in range(clients)}
            assert {c: [j.dag.to_dict() for j in js] for c, js in again.items()} == {
                c: [j.dag.to_dict() for j in js] for c, js in firsts.items()
            }


def _workflow_jobs(kind: str, n: int = 30) -> list[Job]:
    jobs = [make_workflow_job(random.Random(f"wf{i}"), f"k{i}") for i in range(200)]
    return [j for j in jobs if j.workflow["kind"] == kind][:n]


def test_workflow_jobs_are_valid_and_know_what_each_task_must_end_with() -> None:
    for kind in ("flow", "saga", "budget"):
        jobs = _workflow_jobs(kind)
        assert jobs, kind
        for job in jobs:
            specs = task_specs_from_pb(
                pb.SubmitRunRequest(tasks=[task_pb(t) for t in job.dag.tasks.values()])
            )
            validate(specs, CHAOS_AGENTS)
            assert {t.partition("[")[0] for t in job.expected} <= set(job.dag.tasks)  # map instances: ID[i]
    for job in _workflow_jobs("flow"):
        spec = job.dag.tasks["spawn"].input["tasks"]
        outs = job.workflow["spawn"]["outputs"]
        assert 2 <= len(spec) <= 4 and len(outs) == len(spec)
        for i, s in enumerate(spec):  # sum semantics: value + the outputs of its fragment deps
            assert all(d < i for d in s["deps"]) and outs[i] == s["value"] + sum(outs[d] for d in s["deps"])
        vote = job.dag.tasks["vote"]
        assert (vote.replicas, vote.fusion) == (3, "vote")
        assert sorted(vote.agents) == ["slow_sum", "slow_sum", "slow_sum_off"]
        assert job.workflow["vote"]["answer"] == vote.input["value"] + job.expected["w0"]
        each, items = job.dag.tasks["each"], job.dag.tasks["items"].input
        assert (each.map, each.max_parallel, each.agent) == ("items", 2, "item_sum") and 2 <= len(items) <= 4
        assert job.expected["each"] == [each.input["value"] + it for it in items]
        assert [job.expected[f"each[{i}]"] for i in range(len(items))] == job.expected["each"]
        gate, reject = job.dag.tasks["gate"], job.workflow["approval"]["reject"]
        assert gate.approval is not None and gate.approval["on_timeout"] == "reject"
        assert job.expect_status == ("FAILED" if reject else "SUCCEEDED")
        assert ("gate" in job.expected) == (not reject)
    flows = _workflow_jobs("flow", 200)
    assert 0 < sum(j.workflow["approval"]["reject"] for j in flows) < len(flows) / 2
    for job in _workflow_jobs("saga"):
        assert job.expect_status == "COMPENSATED"
        assert [t.compensate is not None for t in job.dag.tasks.values()] == [True, True, False]
        assert job.dag.tasks["s3"].input == {"times": 1000} and job.dag.tasks["s3"].retries == 0
    for job in _workflow_jobs("budget"):
        w, costs = job.workflow["budget"], {t: u[2] for t, u in job.usage.items()}
        fan = [c for t, c in costs.items() if t.startswith("f")]
        # Always reached inside the fan: above src's cost, at most src's plus the fan's.
        assert costs["src"] < w["max_cost"] <= costs["src"] + sum(fan)
        assert job.dag.budget == {"max_cost": w["max_cost"]}
        assert w["bound"] == max(sum(fan), costs["src"], costs["sink"])
        assert all(c / COST_UNIT == int(c / COST_UNIT) for c in costs.values())


def _wf_op(job: Job) -> Operation:
    o = op(job.key, expected=job.expected)
    o.workflow, o.expect_status, o.usage = job.workflow, job.expect_status, job.usage
    return o


def _flow_run(job: Job, attempt: int = 2, **changes: Any) -> RunRecord:
    """The run a correct cluster ends the flow job with (the spawner's committed attempt given)."""
    w = job.workflow
    tasks = {tid: TaskRecord("SUCCEEDED", out, 1) for tid, out in job.expected.items()}
    ids = [f"sp{attempt}-{i}" for i in range(len(w["spawn"]["outputs"]))]
    tasks["spawn"] = TaskRecord("SUCCEEDED", {"attempt": attempt, "spawned": ids}, attempt)
    tasks.update(
        {tid: TaskRecord("SUCCEEDED", o, 1) for tid, o in zip(ids, w["spawn"]["outputs"], strict=True)}
    )
    answer, listed = w["vote"]["answer"], []
    for i, agent in enumerate(w["vote"]["agents"]):
        own = answer + (agent == "slow_sum_off")
        tasks[f"vote#{i}"] = TaskRecord("SUCCEEDED", own, 1)
        listed.append({"id": f"vote#{i}", "status": "SUCCEEDED", "output": own, "vote": 0})
    tasks["vote"] = TaskRecord("SUCCEEDED", {"answer": answer, "replicas": listed})
    if "gate" in job.expected:  # approved at 100, ran at 150
        gate = (7, "approved", APPROVER, 100)
        tasks["gate"] = TaskRecord(
            "SUCCEEDED", job.expected["gate"], 1, gate=gate, history=((1, "SUCCEEDED", 150),)
        )
    tasks.update(changes)
    return RunRecord(f"r-{job.key}", job.key, "SUCCEEDED", "", tasks)


def test_spawned_tasks_must_be_the_committed_attempts_each_once_with_its_output() -> None:
    job = _workflow_jobs("flow")[0]
    assert check([_wf_op(job)], [_flow_run(job)]).ok
    r = _flow_run(job)
    lost = replace(r, tasks={t: v for t, v in r.tasks.items() if t != "sp2-0"})
    dup = replace(r, tasks={**r.tasks, "sp1-0": TaskRecord("SUCCEEDED", 1)})
    wrong = replace(r, tasks={**r.tasks, "sp2-1": TaskRecord("SUCCEEDED", -1)})
    for bad, what in ((lost, "lost ['sp2-0']"), (dup, "another attempt"), (wrong, "sp2-1 SUCCEEDED with -1")):
        result = check([_wf_op(job)], [bad])
        assert result.invariants[SPAWN].count == 1 and what in result.invariants[SPAWN].examples[0], what
    failed = RunRecord(
        r.run_id, job.key, "FAILED", "x", {"spawn": TaskRecord("FAILED", None), "sp1-0": r.tasks["sp2-0"]}
    )
    assert check([_wf_op(job)], [failed]).invariants[SPAWN].count == 1  # a failed attempt spawns nothing
    # Cancelled with its run while it waited for its children: they stay, from its attempt only.
    kept = {t: v for t, v in r.tasks.items() if t.startswith("sp2-")}
    cancelled = RunRecord(
        r.run_id, job.key, "FAILED", "x", {"spawn": TaskRecord("CANCELLED", None, 2), **kept}
    )
    assert check([_wf_op(job)], [cancelled]).invariants[SPAWN].count == 0
    stray = replace(cancelled, tasks={**cancelled.tasks, "sp1-0": TaskRecord("CANCELLED", None)})
    assert check([_wf_op(job)], [stray]).invariants[SPAWN].count == 1


def test_a_vote_must_be_fused_from_the_replicas_committed_outputs() -> None:
    job = _workflow_jobs("flow")[0]
    r = _flow_run(job)
    vote = r.tasks["vote"].output
    off = next(i for i, a in enumerate(job.workflow["vote"]["agents"]) if a == "slow_sum_off")
    # The dissenter cancelled once the quorum was reached: still a clean vote.
    listed = [dict(e) for e in vote["replicas"]]
    listed[off] |= {"status": "CANCELLED", "output": None, "vote": None}
    cancelled = replace(
        r,
        tasks={
            **r.tasks,
            f"vote#{off}": TaskRecord("CANCELLED", None),
            "vote": TaskRecord("SUCCEEDED", {**vote, "replicas": listed}),
        },
    )
    assert check([_wf_op(job)], [cancelled]).ok
    bad_answer = replace(r, tasks={**r.tasks, "vote": TaskRecord("SUCCEEDED", {**vote, "answer": -5})})
    # The fused output lists a replica output its task never committed.
    other = listed[(off + 1) % 3]["id"]
    forged = replace(r, tasks={**r.tasks, other: TaskRecord("CANCELLED", None)})
    for bad in (bad_answer, forged):
        assert check([_wf_op(job)], [bad]).invariants[VOTE].count == 1


def _approved(job: Job, *answers: tuple[str, bool, str]) -> Operation:
    """The flow's op with the client's approve calls: (request id, applied, decision) each answered."""
    o = _wf_op(job)
    o.approvals = [ApproveCall(rid, 1, 2, "ok", applied, decision, 7) for rid, applied, decision in answers]
    return o


def test_an_approval_must_be_applied_once_as_first_acknowledged_and_run_only_after_it() -> None:
    job = next(j for j in _workflow_jobs("flow", 200) if not j.workflow["approval"]["reject"])
    calls = (("rq", True, "approved"), ("rq", True, "approved"), ("rq-again", False, "approved"))
    result = check([_approved(job, *calls)], [_flow_run(job)])
    assert result.ok, {n: i.examples for n, i in result.invariants.items() if i.count}
    assert result.outcomes.workflows["gates approved"] == 1
    gate_t = _flow_run(job).tasks["gate"]
    flipped = _flow_run(job, gate=replace(gate_t, gate=(7, "rejected", APPROVER, 100)))
    twice = _approved(job, ("rq", True, "approved"), ("rq-again", True, "approved"))
    early = _flow_run(job, gate=replace(gate_t, history=((1, "SUCCEEDED", 50),)))
    again = _flow_run(job, gate=replace(gate_t, history=((1, "SUCCEEDED", 150), (2, "SUCCEEDED", 160))))
    for o, r, what in (
        (_approved(job, *calls), flipped, "decided 'rejected'"),
        (twice, _flow_run(job), "applied by 2 request ids"),
        (_approved(job, *calls), early, "before its approval"),
        (_approved(job, *calls), again, "succeeded 2 times"),
    ):
        inv = check([o], [r]).invariants[APPROVAL]
        assert inv.count == 1 and what in inv.examples[0], (what, inv.examples)
    rejected = next(j for j in _workflow_jobs("flow", 200) if j.workflow["approval"]["reject"])
    r = _flow_run(rejected)
    ran = replace(r, status="FAILED", reason="APPROVAL_REJECTED", tasks={**r.tasks, "gate": TaskRecord(
        "SUCCEEDED", 1, 1, gate=(7, "rejected", APPROVER, 100), history=((1, "SUCCEEDED", 150),))})  # fmt: skip
    inv = check([_approved(rejected, ("rq", True, "rejected"))], [ran]).invariants[APPROVAL]
    assert inv.count == 1 and "ran" in inv.examples[0]
    clean = replace(
        ran, tasks={**ran.tasks, "gate": TaskRecord("FAILED", None, 0, gate=(7, "rejected", APPROVER, 100))}
    )
    assert check([_approved(rejected, ("rq", True, "rejected"))], [clean]).invariants[APPROVAL].count == 0


def _saga(
    job: Job, status: str = "COMPENSATED", writes: dict[str, tuple[int, int]] | None = None
) -> RunRecord:
    """s1, s2 succeeded, s3 failed; each compensation committed at attempt 2, the KV written as ``writes``
    says (step -> (writer attempt, version)); s2 undone first."""
    run_id = f"r-{job.key}"
    writes = writes if writes is not None else {"s1": (1, 1), "s2": (2, 1)}
    tasks = {
        "s1": TaskRecord("SUCCEEDED", job.expected["s1"], 1),
        "s2": TaskRecord("SUCCEEDED", job.expected["s2"], 1),
        "s3": TaskRecord("FAILED", None, 1, error="failed"),
    }
    kv = {}
    for rev, s in ((20, "s1"), (10, "s2")):
        tasks[f"{s}~compensate"] = TaskRecord(
            "SUCCEEDED", {"undone": s, "by_attempt": writes.get(s, (2, 1))[0]}, 2
        )
        if s in writes:
            kv[compensation_key(run_id, s)] = KvEntryRecord({"attempt": writes[s][0]}, writes[s][1], rev)
    return RunRecord(run_id, job.key, status, "task s3 failed", tasks, reason="TASK_FAILED",
                     compensations=("s2", "s1"), kv=kv)  # fmt: skip


def test_each_compensation_must_be_applied_once_in_reverse_order() -> None:
    job = _workflow_jobs("saga")[0]
    result = check([_wf_op(job)], [_saga(job)])
    assert result.ok, {n: i.examples for n, i in result.invariants.items() if i.count}
    assert result.outcomes.workflows["compensations found applied by a lost attempt"] == 1
    twice = _saga(job, writes={"s1": (1, 2), "s2": (2, 1)})
    missing = _saga(job, writes={"s1": (1, 1)})
    ended = _saga(job, status="FAILED")
    for bad, what in ((twice, "written 2 times"), (missing, "never written"), (ended, "ended FAILED")):
        inv = check([_wf_op(job)], [bad]).invariants[COMPENSATION]
        assert inv.count == 1 and what in inv.examples[0], (what, inv.examples)
    r = _saga(job)
    out_of_order = replace(
        r, kv={k: replace(e, create_revision=30 - e.create_revision) for k, e in r.kv.items()}
    )
    assert "before" in check([_wf_op(job)], [out_of_order]).invariants[COMPENSATION].examples[0]


def test_a_budget_is_overspent_at_most_by_the_attempts_in_flight() -> None:
    job = _workflow_jobs("budget")[0]
    w, u = job.workflow["budget"], job.usage
    # src, then the fan one report at a time (finished at 10, 11, ...) until the cost reaches
    # max_cost: the report that reached it ends it; the fan's last task reports in that same
    # command (it was running: charged too).
    tasks, cost = {"src": TaskRecord("SUCCEEDED", 0, 1, finished_ms=1, usage=u["src"])}, u["src"][2]
    fan = sorted(t for t in u if t.startswith("f"))
    at = 10
    for tid in fan[:-1]:
        if cost >= w["max_cost"]:
            tasks[tid] = TaskRecord("CANCELLED", None)
            continue
        at += 1
        tasks[tid] = TaskRecord("SUCCEEDED", 0, 1, finished_ms=at, usage=u[tid])
        cost += u[tid][2]
    tasks[fan[-1]] = TaskRecord("SUCCEEDED", 0, 1, finished_ms=at, usage=u[fan[-1]])
    total = tuple(sum(t.usage[i] for t in tasks.values()) for i in range(3))
    good = RunRecord(
        f"r-{job.key}", job.key, "FAILED", "BUDGET_EXCEEDED: ...", tasks, total, "BUDGET_EXCEEDED"
    )  # type: ignore[arg-type]
    result = check([_wf_op(job)], [good])
    assert result.ok, {n: i.examples for n, i in result.invariants.items() if i.count}
    assert result.outcomes.workflows["budgets reached"] == 1
    # Every fan report debited, each in a command of its own after the limit was reached, and
    # the sink started.
    late = {t: TaskRecord("SUCCEEDED", 0, 1, finished_ms=i, usage=v) for i, (t, v) in enumerate(u.items())}
    total = tuple(sum(t.usage[i] for t in late.values()) for i in range(3))
    over = RunRecord(good.run_id, job.key, "FAILED", "x", late, total, "BUDGET_EXCEEDED")  # type: ignore[arg-type]
    inv = check([_wf_op(job)], [over]).invariants[BUDGET]
    assert (
        inv.count == 1 and "sink ran after" in inv.examples[0] and "reports debited after" in inv.examples[0]
    )
    succeeded = replace(good, status="SUCCEEDED", reason="")
    assert check([_wf_op(job)], [succeeded]).invariants[BUDGET].count == 1


def test_urgent_jobs_change_only_their_priority() -> None:
    plain = [make_job(random.Random("s"), f"k{i}") for i in range(40)]
    urgent = [make_job(random.Random("s"), f"k{i}", urgent_priority=7) for i in range(40)]
    assert [j.dag.tasks for j in plain] == [j.dag.tasks for j in urgent]
    priorities = [j.dag.priority for j in urgent]
    assert set(priorities) == {0, 7} and 3 <= priorities.count(7) <= 20
    assert all(("+urgent" in j.shape) == (j.dag.priority == 7) for j in urgent)


def test_the_schedule_is_seeded_fits_the_phase_and_covers_every_kind() -> None:
    kinds, skipped = available_faults("netns", 5)
    assert FaultKind.MAJORITIES_RING in kinds and FaultKind.CLIENT_CUT in skipped
    s1 = plan_schedule(7, 300, kinds)
    assert s1 == plan_schedule(7, 300, kinds)
    assert s1 != plan_schedule(8, 300, kinds)
    assert {f.kind for f in s1[: len(kinds)]} == set(kinds)
    assert sum(f.duration_s + f.gap_after_s for f in s1[:-1]) + s1[-1].duration_s <= 300
    for f in s1:
        lo, hi = DURATION_S[f.kind]
        assert lo <= f.duration_s <= hi
    assert FaultKind.MAJORITIES_RING in available_faults("netns", 3)[1]
    proxy_kinds, proxy_skipped = available_faults("proxy", 3)
    assert FaultKind.CLIENT_DELAY in proxy_kinds and FaultKind.ISOLATE_LEADER in proxy_skipped
    assert "pysyncobj" in proxy_skipped[FaultKind.HALVES]


def test_quorum_is_possible_under_every_minority_fault() -> None:
    nodes = ["n1", "n2", "n3", "n4", "n5"]

    def reach(allowed: Any) -> dict[str, Any]:
        return dict(resolve_reachability(nodes, allowed))

    assert quorum_possible(nodes, nodes, reach(groups_reachability(nodes, [{"n1", "n2"}])))
    assert quorum_possible(nodes, nodes, reach(bridge(["n1", "n2"], ["n3", "n4"], "n5")))
    assert quorum_possible(nodes, nodes, reach(majorities_ring(nodes)))
    assert not quorum_possible(nodes, nodes, reach(groups_reachability(nodes, [{"n1", "n2"}, {"n3", "n4"}])))
    full = reach(groups_reachability(nodes, []))
    assert quorum_possible(nodes, ["n1", "n2", "n3"], full)
    assert not quorum_possible(nodes, ["n1", "n2"], full)
    one_way = {"n1": ["n2", "n3"], "n2": [], "n3": []}
    assert not quorum_possible(["n1", "n2", "n3"], ["n1", "n2", "n3"], one_way)


def test_throughput_and_the_largest_stall_skip_time_without_quorum() -> None:
    phases = Phases(0, 10_000, 20_000, 30_000)
    done = [1_000, 5_000, 9_000, 19_000, 21_000, 25_000, 29_000]
    assert throughput(done, phases) == {"before": 0.3, "during": 0.1, "after": 0.3}
    stall = largest_stall(done, phases, [])
    assert (stall.start_ms, stall.end_ms, stall.seconds) == (9_000, 19_000, 10.0)
    no_quorum = FaultRecord("halves", ["n1"], "", 6.0, 12_000, 18_000, quorum=False)
    stall = largest_stall(done, phases, [no_quorum])
    assert stall.seconds == 4.0 and stall.start_ms == 1_000


def test_every_stall_over_a_bound_is_listed_in_time_order_with_its_faults() -> None:
    phases = Phases(0, 10_000, 20_000, 30_000)
    done = [1_000, 9_000, 19_000, 21_000, 29_000]
    pause = FaultRecord("pause-leader", ["n2"], "", 3.0, 10_000, 13_000, recovery_s=1.0)
    out = stalls(done, phases, [pause], over_s=3.5)
    assert [(x.start_ms, x.end_ms, x.seconds, x.faults) for x in out] == [
        (1_000, 9_000, 8.0, ()),
        (9_000, 19_000, 10.0, ("pause-leader n2",)),
        (21_000, 29_000, 8.0, ()),
    ]
    assert stalls(done, phases, [pause], over_s=10.0) == []
    assert largest_stall(done, phases, [pause]) == out[1]


# ---- real runs -------------------------------------------------------------------------


def _run_chaos(
    tmp_path: Path, *args: str, timeout_s: float, faults: bool = True
) -> tuple[dict[str, Any], str]:
    report = tmp_path / "report.json"
    (tmp_path / "tmp").mkdir()
    proc = subprocess.run(
        [sys.executable, str(CHAOS), *args, "--json", str(report)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmp_path / "tmp")},
    )
    print(proc.stdout)
    print(proc.stderr[-20_000:], file=sys.stderr)
    assert proc.returncode == 0, f"chaos.py exited {proc.returncode}; see the report above"
    data: dict[str, Any] = json.loads(report.read_text())
    assert data["ok"] and data["violations"] == 0
    assert all(v["count"] == 0 for v in data["invariants"].values())
    assert bool(data["faults"]) == faults
    if data["workloads"]["dag_clients"]:
        assert data["operations"]["ok"] > 0
        # Client.run (SubmitAndWatchRun) under the faults too, held to the same invariants.
        assert sum(d["one_call"] for d in data["operations"]["by_client_kind"].values()) > 0
    assert "--seed" in data["replay_command"]
    if data["workloads"]["kv_clients"] or data["workloads"]["lock_clients"]:
        kv = data["kv"]
        assert kv["verdict"] == "ok", f"KV linearizability: {kv['verdict']} (inconclusive is not a pass here)"
        assert kv["ops"]["ok"] > 0 and all(v["count"] == 0 for v in kv["invariants"].values())
    if data["workloads"]["lock_clients"]:
        locks = data["locks"]
        assert all(v["count"] == 0 and not v["unchecked"] for v in locks["invariants"].values())
        assert locks["stats"]["outcomes"]["granted"] > 0
        assert locks["stats"]["stalled"] >= 1, "no holder stalled past its TTL"
        assert all(c["lost_increments"] == 0 and c["accepted"] > 0 for c in locks["counters"])
    if data["workloads"].get("message_clients"):
        msgs = data["messages"]
        assert all(v["count"] == 0 for v in msgs["invariants"].values()), msgs["invariants"]
        assert isinstance(msgs["stats"]["log"], dict), msgs["stats"]["log"]  # the log was audited
    return data, proc.stderr


SUPPORTED, REASON = is_supported()
# The e2e runs below pass --warmup 2 --cooldown 2: every fault falls in the fault phase, and the
# 6 s minimum of the defaults (sized for soaks) added 8 s per run that no check relies on.


@pytest.mark.e2e
@pytest.mark.netns
@pytest.mark.skipif(not SUPPORTED, reason=f"netns chaos needs root and netns support: {REASON}")
def test_chaos_netns_every_partition_kind(tmp_path: Path) -> None:
    # Seed 2880 plans the four partition kinds first (28.5 s with their gaps); 42 s leaves room for
    # their recoveries, so every kind netns adds over --net none is injected (seed 7 needed 90 s to
    # reach its first partition, after the process faults the other runs inject).
    data, log = _run_chaos(
        tmp_path,
        *("--net", "netns", "--nodes", "3", "--duration", "0.7", "--seed", "2880"),
        *("--warmup", "2", "--cooldown", "2"),
        timeout_s=400,
    )
    kinds = {f["kind"] for f in data["faults"]}
    assert {"halves", "isolate-leader", "isolate-follower", "bridge"} <= kinds, kinds
    assert data["workloads"]["kv_clients"] == 3 and data["workloads"]["lock_clients"] == 3
    # Stalled holders' late writes were refused by the state machine's fencing.
    assert data["locks"]["stats"]["log"]["fenced_writes_rejected"] > 0
    assert len(data["journal_replays"]) == 3 and all(r["ok"] for r in data["journal_replays"])
    lab = re.search(r"netns lab (\S+)", log)
    assert lab is not None, "the run did not name its lab"
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert lab.group(1) not in namespaces, "the chaos run left network namespaces behind"


@pytest.mark.e2e
def test_chaos_process_faults_without_root(tmp_path: Path) -> None:
    """Also the lifecycle under faults: dead letters retried (requeued once each, checked against
    the log), urgent runs preempting attempts on 2-slot nodes (never a fenced result), and the
    workflow shapes (spawn, votes, approvals, sagas, budgets) held to their invariants."""
    data, _ = _run_chaos(
        tmp_path,
        *("--net", "none", "--nodes", "3", "--duration", "0.3", "--seed", "11", "--preempt-priority", "5"),
        *("--warmup", "2", "--cooldown", "2"),
        timeout_s=240,
    )
    assert {f["kind"] for f in data["faults"]} <= {"kill-node", "kill-leader", "pause-node", "pause-leader"}
    # At most one requeue per retried dead letter (a retry whose every call timed out may have none).
    assert 0 < data["log_stats"]["dead_letters_requeued"] <= data["operations"]["dead_letters_retried"]
    assert data["log_stats"]["attempts_preempted"] > 0
    # The workflow shapes ran under the faults and were checked (their invariants are 0 above).
    wf = data["operations"]["workflows"]
    for what in (
        "flow runs",
        "saga runs",
        "budget runs",
        "spawned tasks checked",
        "votes checked",
        "gates approved",
    ):
        assert wf.get(what, 0) > 0, (what, wf)
    assert wf.get("compensations checked", 0) > 0 and wf.get("budgets reached", 0) > 0, wf
    assert not any((tmp_path / "tmp").glob("raftmesh-chaos-*")), "the data directory was left behind"


@pytest.mark.e2e
def test_chaos_with_frequent_snapshots(tmp_path: Path) -> None:
    """Snapshots every 100 entries under process faults: taken and installed, every check runs
    (the replay audit on the union of the nodes' archives of applied entries)."""
    data, _ = _run_chaos(
        tmp_path,
        # Seed 23 plans one leader kill (4.4 s) for any phase of 12 s or more: 12 s is enough.
        *("--net", "none", "--nodes", "3", "--duration", "0.2", "--seed", "23", "--snapshot-every", "100"),
        *("--warmup", "2", "--cooldown", "2"),
        timeout_s=240,
    )
    stats = data["log_stats"]
    assert stats["snapshots_written"] >= 3, stats
    assert stats["snapshots_installed"] >= 1, stats  # the restarted node lagged past a snapshot
    assert stats["commands"] > 0 and stats["archived_entries"] > 0
    assert len(data["journal_replays"]) == 3
    assert all(r["ok"] and r["source"] == "archives" for r in data["journal_replays"])
    assert data["workloads"]["snapshot_entries"] == 100
    # The staged submit (the workload's early one at least) went through the log in parts.
    staged = data["operations"]["staged"]
    assert staged.get("submits", 0) >= 1 and staged.get("adopted", 0) >= 1, staged
    assert staged["parts_applied"] >= staged["adopted"], staged


@pytest.mark.e2e
def test_the_unfenced_experiment_loses_increments_and_the_fenced_counter_none(tmp_path: Path) -> None:
    """No faults, locks only: stalled holders (keep-alive off) write after their lease ran out."""
    data, _ = _run_chaos(
        tmp_path,
        *("--net", "none", "--nodes", "3", "--seed", "5", "--no-faults", "--no-dag", "--kv-clients", "0"),
        *("--duration", "0.1", "--warmup", "2", "--cooldown", "2", "--unfenced-experiment"),
        timeout_s=60,
        faults=False,
    )
    exp = data["locks"]["unfenced_experiment"]
    fenced, unfenced = exp["fenced"], exp["unfenced"]
    assert unfenced["lost_increments"] > 0 and unfenced["stale_accepted"] > 0, exp
    assert fenced["lost_increments"] == 0 and fenced["stale_accepted"] == 0 and fenced["rejected"] > 0, exp
    assert fenced["writes"] == unfenced["writes"]  # the same holders wrote both
    assert data["locks"]["stats"]["log"]["fenced_writes_rejected"] > 0


@pytest.mark.e2e
@pytest.mark.parametrize("keep_on_window_s", [0.5, 3600.0])
def test_keep_on_window_keeps_the_data_dir_only_past_the_bound(
    tmp_path: Path, keep_on_window_s: float
) -> None:
    """No DAG workload: no task completes, so the whole run is one window (over 0.5 s, not 3600 s)."""
    data, log = _run_chaos(
        tmp_path,
        *("--net", "none", "--nodes", "3", "--seed", "5", "--no-faults", "--no-dag", "--lock-clients", "0"),
        *("--kv-clients", "1", "--duration", "0.05", "--warmup", "1", "--cooldown", "1"),
        *("--keep-on-window", str(keep_on_window_s)),
        timeout_s=60,
        faults=False,
    )
    assert data["largest_stall"]["seconds"] > 3
    assert [s["seconds"] for s in data["stalls"]] == [data["largest_stall"]["seconds"]]
    left = list((tmp_path / "tmp").glob("raftmesh-chaos-*"))
    if keep_on_window_s < 1:
        assert [str(p) for p in left] == [data["data_dir"]]
        assert (left[0] / "n1" / "node.log").stat().st_size > 0
        assert f"keeping {data['data_dir']}" in log
        assert any(data["data_dir"] in n and "--keep-on-window" in n for n in data["notes"])
    else:
        assert not left and not data["data_dir"], "the data directory was left behind"


@pytest.mark.e2e
def test_chaos_messages_under_process_faults(tmp_path: Path) -> None:
    """Message senders only, under kills and pauses: both paths, sends and requests, each
    acknowledged message taking effect once and in order, activations moving between nodes."""
    data, _ = _run_chaos(
        tmp_path,
        # Seed 7's 12 s schedule kills the leader first (activations must move), then pauses one.
        *("--net", "none", "--nodes", "3", "--duration", "0.2", "--seed", "7", "--no-dag"),
        *("--warmup", "2", "--cooldown", "2"),
        *("--kv-clients", "0", "--lock-clients", "0", "--message-clients", "3"),
        timeout_s=300,
    )
    stats = data["messages"]["stats"]
    calls = stats["calls"]
    for path in ("durable", "fast"):
        for kind in ("send", "request"):
            assert calls.get(f"{path} {kind} ok", 0) > 0, calls
    assert stats["effects"] > 0 and stats["log"]["acks_applied"] == stats["effects"]  # one record per turn
    assert stats["ordered_pairs_checked"]["durable"] > 0 and stats["ordered_pairs_checked"]["fast"] > 0
    assert stats["log"]["activations"] > data["workloads"]["message_targets"], "no activation moved"
    assert len(data["message_history"]) == sum(calls.values())
