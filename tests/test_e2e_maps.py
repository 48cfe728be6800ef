"""End to end: ``when`` and ``map`` through the SDK, a real 3-node cluster and ``raftmesh get``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from raftmesh import DAG

from . import map_agents

pytestmark = pytest.mark.e2e

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(cluster: Any, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAFTMESH_ADDRESSES": ",".join(cluster.addresses), "PYTHONPATH": REPO}
    return subprocess.run(
        [sys.executable, "-m", "raftmesh.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_when_and_map_in_every_isolation_mode(make_cluster: Any) -> None:
    cluster = make_cluster(3, agents_modules=[map_agents.SOURCE], env={"PYTHONPATH": REPO}, slots=4)
    dag = DAG("when-map")
    src = dag.task("src", "echo", input=["a", {"b": 1}, 3])
    for mode in ("async", "thread", "process"):
        # map= adds src to deps; max_parallel bounds the instances running at once
        dag.task(f"m_{mode}", f"item_{mode}", input={"mode": mode}, map=src, max_parallel=2)
    dag.task("many", "echo", deps=[src], when={"path": "src.2", "op": ">", "value": 2})
    dag.task("few", "echo", deps=[src], when={"path": "src.2", "op": "<=", "value": 2})
    dag.task("after_few", "echo", deps=["few"])
    dag.task("join", "echo", deps=["many", "few"], trigger="any_succeeded")
    dag.task("empty_src", "echo", input=[])
    dag.task("empty", "item_async", map="empty_src")
    c = cluster.client()
    run = c.run(dag, timeout_s=120)
    assert run.status == "SUCCEEDED", run.error

    res = cli(cluster, "get", run.run_id, "--json")
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    tasks = got["tasks"]
    items = ["a", {"b": 1}, 3]
    for mode in ("async", "thread", "process"):
        m = tasks[f"m_{mode}"]
        kids = [f"m_{mode}[{i}]" for i in range(3)]
        assert (m["status"], m["map"], m["max_parallel"], m["children"]) == ("SUCCEEDED", "src", 2, kids)
        assert m["output"] == [
            {"item": item, "index": i, "input": {"mode": mode}, "upstream": ["src"]}
            for i, item in enumerate(items)
        ]
        for i, kid in enumerate(kids):
            k = tasks[kid]
            assert (k["status"], k["parent"], k["origin"], k["index"], k["item"]) == (
                "SUCCEEDED",
                f"m_{mode}",
                "map",
                i,
                items[i],
            )
    assert tasks["many"]["status"] == "SUCCEEDED" and tasks["many"]["when"]["op"] == ">"
    assert tasks["few"]["status"] == tasks["after_few"]["status"] == "SKIPPED"
    assert "when condition is false" in tasks["few"]["error"]
    assert tasks["join"]["status"] == "SUCCEEDED" and tasks["join"]["trigger"] == "any_succeeded"
    assert tasks["empty"]["output"] == [] and tasks["empty"]["children"] == []

    human = cli(cluster, "get", run.run_id)
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    parent = next(i for i, ln in enumerate(lines) if ln.split()[0] == "m_thread")
    assert "children=3/3 ended" in lines[parent]
    assert lines[parent + 1].startswith("    m_thread[0]") and "item=" in lines[parent + 1]
    assert any(ln.split()[:2] == ["few", "SKIPPED"] and "when condition is false" in ln for ln in lines)
