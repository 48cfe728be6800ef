"""End to end: competing replicas voting on a real 3-node cluster (separate processes)."""

from __future__ import annotations

import json

import pytest

from raftmesh import DAG
from raftmesh.errors import InvalidArgument
from raftmesh.localcluster import LocalCluster

from .test_cli import cli

pytestmark = pytest.mark.e2e


def test_three_replicas_vote_on_three_nodes(cluster3: LocalCluster) -> None:
    client = cluster3.client()
    dag = DAG("vote")
    # quorum 3: every replica must answer, so all three run; sleeping keeps them side by side
    q = dag.task("q", "sleep", input={"seconds": 0.3}, replicas=3, fusion="vote", quorum=3, retries=0)
    dag.task("after", "echo", input="done", deps=[q])
    run = client.run(dag, timeout_s=60)
    assert run.status == "SUCCEEDED", run.error
    out = run.tasks["q"].output
    assert out["answer"] == {"seconds": 0.3} and out["votes"] == 3
    nodes = [e["node"] for e in out["replicas"]]
    assert sorted(nodes) == sorted(cluster3.nodes), f"the replicas ran on {nodes}"
    assert all(e["vote"] == 0 and e["status"] == "SUCCEEDED" for e in out["replicas"])
    assert {run.tasks[f"q#{i}"].node for i in range(3)} == set(nodes)

    got = cli("get", run.run_id, "--json", addresses=",".join(cluster3.addresses))
    assert got.returncode == 0, got.stderr
    shown = json.loads(got.stdout)["tasks"]["q"]["fusion"]
    assert shown["rule"] == "vote" and shown["count"] == 3 and shown["quorum"] == 3
    assert [(r["id"], r["status"], r["vote"]) for r in shown["replicas"]] == [
        (f"q#{i}", "SUCCEEDED", 0) for i in range(3)
    ]
    assert shown["tally"] == [{"answer": {"seconds": 0.3}, "votes": 3, "replicas": ["q#0", "q#1", "q#2"]}]
    human = cli("get", run.run_id, addresses=",".join(cluster3.addresses))
    assert human.returncode == 0, human.stderr
    assert "fusion vote, quorum 3 of 3: q#0 SUCCEEDED vote=0 on " in human.stdout

    # a replica that fails for good is outvoted, not fatal: echo, echo and fail compete
    dag = DAG("vote-with-a-failure")
    dag.task("q", "echo", input={"times": 9}, replicas=3, fusion="vote", agents=["echo", "echo", "fail"])
    run = client.run(dag, timeout_s=60)
    assert run.status == "SUCCEEDED", run.error
    out = run.tasks["q"].output
    assert out["answer"] == {"times": 9}
    assert run.tasks["q#2"].status in ("FAILED", "CANCELLED")  # it may lose the race to the quorum

    bad = DAG("no-rule")
    bad.task("q", "echo", replicas=3)
    with pytest.raises(InvalidArgument, match="replicas need a fusion rule"):
        client.submit(bad)
    cluster3.wait_converged()
