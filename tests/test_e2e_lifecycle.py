"""Dead letters, `raftmesh retry` and priority preemption through the CLI, against real nodes."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable
from typing import Any

import pytest

from raftmesh.localcluster import LocalCluster, wait_until

from .test_cli import cli

pytestmark = pytest.mark.e2e


def test_dead_letters_and_retry_exactly_once(cluster3: LocalCluster, tmp_path: pathlib.Path) -> None:
    addrs = ",".join(cluster3.addresses)
    dag = tmp_path / "dead.yaml"
    # attempts 1 and 2 fail (one retry): x becomes a dead letter; y is cancelled with the run.
    dag.write_text(
        "tasks:\n"
        "  - {id: x, agent: fail, input: {times: 2}, retries: 1}\n"
        "  - {id: y, agent: echo, input: 1, deps: [x]}\n"
    )
    res = cli("submit", str(dag), "--wait", "--json", addresses=addrs)
    assert res.returncode == 1, res.stderr
    run = json.loads(res.stdout)
    run_id = run["run_id"]
    assert (run["status"], run["tasks"]["y"]["status"]) == ("FAILED", "CANCELLED")
    assert run["usage"] == {"tokens_in": 0, "tokens_out": 0, "cost": 0.0}
    assert run["tasks"]["x"]["preempted_by"] == [] and "usage" in run["tasks"]["x"]

    listed = cli("dead-letters", "--json", "--limit", "10", addresses=addrs)
    assert listed.returncode == 0, listed.stderr
    (dead,) = json.loads(listed.stdout)["dead_letters"]
    assert {k: dead[k] for k in ("run_id", "task_id", "agent", "attempt")} == {
        "run_id": run_id,
        "task_id": "x",
        "agent": "fail",
        "attempt": 2,
    }
    assert "fails on purpose" in dead["error"] and dead["finished_ms"] > 0

    # The same call retried (same request id), then the command run again: requeued once.
    first = cli("retry", run_id, "x", "--request-id", "cli-retry-1", "--json", addresses=addrs)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {
        "run_id": run_id,
        "task_id": "x",
        "requeued": True,
        "already_requeued": False,
        "attempt": 2,
        "status": "READY",
    }
    again = cli("retry", run_id, "x", "--request-id", "cli-retry-1", "--json", addresses=addrs)
    assert again.returncode == 0 and json.loads(again.stdout)["requeued"] is True  # the first answer
    second = cli("retry", run_id, "x", "--json", addresses=addrs)
    assert second.returncode == 0, second.stderr
    out = json.loads(second.stdout)
    assert (out["requeued"], out["already_requeued"], out["attempt"]) == (False, True, 2)
    text = cli("retry", run_id, "x", "--attempt", "2", addresses=addrs)
    assert text.returncode == 0 and "already requeued" in text.stdout

    # Attempt 3 succeeds: the run goes from RUNNING to SUCCEEDED, y (cancelled before) runs too.
    def done() -> dict[str, Any] | None:
        got = json.loads(cli("get", run_id, "--json", addresses=addrs).stdout)
        return got if got["status"] != "RUNNING" else None

    final = wait_until(done, 60.0, "the requeued run to end")
    assert final["status"] == "SUCCEEDED", final
    assert (final["tasks"]["x"]["attempt"], final["tasks"]["y"]["status"]) == (3, "SUCCEEDED")
    assert json.loads(cli("dead-letters", "--json", addresses=addrs).stdout)["dead_letters"] == []

    # Not a dead letter (any more): FAILED_PRECONDITION, exit 5; unknown run or task: exit 3.
    bad = cli("retry", run_id, "y", "--json", addresses=addrs)
    assert bad.returncode == 5 and "not a dead letter" in bad.stderr
    assert cli("retry", run_id, "x", "--attempt", "3", addresses=addrs).returncode == 5
    assert cli("retry", "r-nope", "x", addresses=addrs).returncode == 3
    assert cli("retry", run_id, "nope", addresses=addrs).returncode == 3
    assert cli("dead-letters", "--limit", "5000", addresses=addrs).returncode == 2


def test_a_high_priority_task_preempts_a_running_low_one(
    make_cluster: Callable[..., LocalCluster], tmp_path: pathlib.Path
) -> None:
    cluster = make_cluster(3, slots=1, extra_args=["--preempt-priority", "5"])
    addrs = ",".join(cluster.addresses)
    low = tmp_path / "low.yaml"
    low.write_text(
        "tasks:\n" + "".join(f"  - {{id: s{i}, agent: sleep, input: {{seconds: 600}}}}\n" for i in range(3))
    )
    low_id = cli("submit", str(low), addresses=addrs).stdout.strip()

    def all_running() -> bool:
        got = json.loads(cli("get", low_id, "--json", addresses=addrs).stdout)
        return all(t["status"] == "RUNNING" for t in got["tasks"].values())

    wait_until(all_running, 60.0, "every slot to be busy")
    high = tmp_path / "high.yaml"
    high.write_text("tasks:\n  - {id: h, agent: echo, input: urgent, priority: 9}\n")
    res = cli("submit", str(high), "--wait", "--wait-timeout", "60", "--json", addresses=addrs)
    assert res.returncode == 0, res.stderr
    high_run = json.loads(res.stdout)
    assert high_run["tasks"]["h"]["output"] == "urgent"
    got = json.loads(cli("get", low_id, "--json", addresses=addrs).stdout)
    preempted = {tid: t["preempted_by"] for tid, t in got["tasks"].items() if t["preempted_by"]}
    assert len(preempted) == 1, got  # one victim for one waiting task
    ((tid, (p,)),) = preempted.items()
    assert (p["by_run_id"], p["by_task_id"], p["attempt"]) == (high_run["run_id"], "h", 1)
    assert got["tasks"][tid]["attempt"] >= 1 and got["status"] == "RUNNING"
    cli("cancel", low_id, addresses=addrs)
