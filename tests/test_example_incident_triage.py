"""The incident-triage example, run as a user runs it: one command, a real local cluster, the fake model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import raftmesh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not hasattr(raftmesh, "agent"),
        reason="the example's module uses @raftmesh.agent and --agents-module (the deploy part of issue 8)",
    ),
]


def test_incident_triage_runs_end_to_end() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAFTMESH_LLM_", "OPENAI_"))}
    p = subprocess.run(
        [sys.executable, "-m", "examples.incident_triage", "--json", "--nodes", "3"],
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
    assert tasks["alert"]["output"]["body"]["id"] == "INC-1042"
    assert "connection pool exhausted" in tasks["logs_analyst"]["output"]
    assert "v2.14.0" in tasks["deploy_analyst"]["output"]
    review = tasks["reviewer"]["output"]  # response_format json_object: parsed
    assert review["confidence"] == "high" and "pool" in review["root_cause"]
    assert tasks["writer"]["output"].startswith("# INC-1042")
    assert tasks["writer"]["attempt"] == 1  # its scripted 429 was backed off inside the attempt
    filed = tasks["file_report"]["output"]
    assert filed["status"] == 201 and filed["body"]["id"] == "INC-1042/report/1"
