"""The chaos harness: its checker on synthetic histories (pure, fast), then real seeded runs.

The unit tests build histories by hand: a lost acknowledged run, a duplicate, an
unexpected run, and a committed result from a fenced attempt fed to the audit as
command batches. The end-to-end tests run ``scripts/chaos.py`` as a subprocess and
expect exit 0 with no violation; the netns one needs root and is skipped otherwise.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from raftmesh.chaos.checker import (
    AUDIT_MISSING,
    BAD_OUTPUT,
    DIVERGED,
    DUPLICATED_RUNS,
    EARLY,
    FENCED,
    LOST,
    PHANTOM,
    REPLAY,
    UNEXPECTED,
    UNFINISHED,
    Phases,
    ReplayCheck,
    RunRecord,
    TaskRecord,
    check_history,
    largest_stall,
    throughput,
)
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
from raftmesh.chaos.workload import Operation, make_job
from raftmesh.consensus.commands import (
    Assign,
    Assignment,
    Command,
    Complete,
    Completion,
    NodeDown,
    RegisterNode,
    SubmitRun,
    TaskSpec,
    encode_batch,
)
from raftmesh.consensus.dag import validate
from raftmesh.consensus.machine import StateMachine
from raftmesh.consensus.state import TaskStatus
from raftmesh.verify.audit import Audit

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


# ---- the audit on hand-made command batches --------------------------------------------


class UnfencedMachine(StateMachine):
    """A state machine whose fencing is broken: any result for a RUNNING task is accepted."""

    def _fenced(self, node_id: str, run_id: str, task_id: str, attempt: int, token: int) -> tuple[str, Any]:
        r = self.state.runs.get(run_id)
        t = r.tasks.get(task_id) if r else None
        if r is None or t is None or t.status is not TaskStatus.RUNNING:
            return "not running", None
        return "", (r, t)


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
    class EagerMachine(StateMachine):
        """Broken: every task is READY at submit, dependencies or not."""

        def _submit(self, cmd: SubmitRun) -> Any:
            res = super()._submit(cmd)
            run = self.state.runs[cmd.run_id]
            for t in run.tasks.values():
                if t.status is TaskStatus.PENDING:
                    self._make_ready(run, t, self.state.revision, 0)
            return res

    audit = Audit(machine=EagerMachine())
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


# ---- workload, schedule and measures ---------------------------------------------------


def test_jobs_are_seeded_valid_and_their_expected_outputs_follow_the_agents() -> None:
    rng_a, rng_b = random.Random("s"), random.Random("s")
    a = [make_job(rng_a, f"k{i}") for i in range(50)]
    b = [make_job(rng_b, f"k{i}") for i in range(50)]
    assert [j.dag.to_dict() for j in a] == [j.dag.to_dict() for j in b]
    shapes = {j.shape.split("+")[0][:3] for j in a}
    assert shapes == {"cha", "fan"}
    for job in a:
        specs = tuple(TaskSpec(**{**t.to_dict(), "deps": tuple(t.deps)}) for t in job.dag.tasks.values())
        validate(specs, {"sum", "sleep", "fail"})
        assert set(job.expected) == set(job.dag.tasks)
        # Recompute each sum from its upstream outputs: value + numeric upstream outputs.
        for tid, t in job.dag.tasks.items():
            if t.agent == "sum":
                ups = [job.expected[d] for d in t.deps]
                assert job.expected[tid] == t.input["value"] + sum(u for u in ups if isinstance(u, int))
            elif t.agent == "fail":
                assert t.retries == 2 and t.input == {"times": 1}
            else:
                assert t.agent == "sleep" and 0.2 <= t.input["seconds"] <= 1.0


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


# ---- real runs -------------------------------------------------------------------------


def _run_chaos(tmp_path: Path, *args: str, timeout_s: float) -> tuple[dict[str, Any], str]:
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
    assert data["operations"]["ok"] > 0 and data["faults"]
    assert "--seed" in data["replay_command"]
    return data, proc.stderr


SUPPORTED, REASON = is_supported()


@pytest.mark.e2e
@pytest.mark.netns
@pytest.mark.skipif(not SUPPORTED, reason=f"netns chaos needs root and netns support: {REASON}")
def test_chaos_netns_seed_7(tmp_path: Path) -> None:
    data, log = _run_chaos(
        tmp_path, "--net", "netns", "--nodes", "3", "--duration", "1.5", "--seed", "7", timeout_s=400
    )
    kinds = {f["kind"] for f in data["faults"]}
    assert kinds & {"halves", "isolate-leader", "isolate-follower", "bridge"}, kinds
    assert len(data["journal_replays"]) == 3 and all(r["ok"] for r in data["journal_replays"])
    lab = re.search(r"netns lab (\S+)", log)
    assert lab is not None, "the run did not name its lab"
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert lab.group(1) not in namespaces, "the chaos run left network namespaces behind"


@pytest.mark.e2e
def test_chaos_process_faults_without_root(tmp_path: Path) -> None:
    data, _ = _run_chaos(
        tmp_path, "--net", "none", "--nodes", "3", "--duration", "0.3", "--seed", "11", timeout_s=240
    )
    assert {f["kind"] for f in data["faults"]} <= {"kill-node", "kill-leader", "pause-node", "pause-leader"}
    assert not any((tmp_path / "tmp").glob("raftmesh-chaos-*")), "the data directory was left behind"
