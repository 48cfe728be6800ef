"""The planner example, run as a user runs it: one command, a real local cluster, the fake model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.e2e


def test_planner_example_repairs_its_plan_and_runs_it() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAFTMESH_LLM_", "OPENAI_"))}
    p = subprocess.run(
        [sys.executable, "-m", "examples.planner", "--json", "--nodes", "3"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    run = json.loads(p.stdout)
    tasks = run["tasks"]
    assert run["status"] == "SUCCEEDED", {t: v["error"] for t, v in tasks.items()}
    plan = tasks["plan"]["output"]
    assert plan["repairs"] == 1  # the first plan named an agent type the example does not allow
    assert plan["plan"] == ["north", "south", "west", "total", "summary"]
    assert tasks["total"]["output"] == 120 + 80 + 45
    assert tasks["plan"]["usage"]["tokens_in"] == 310 + 420
    assert tasks["notify"]["status"] == "SUCCEEDED"
