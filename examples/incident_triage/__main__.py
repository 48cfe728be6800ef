"""Run the incident-triage workflow on a local cluster, end to end, with one command:

    python -m examples.incident_triage [--nodes 3] [--json]

It starts the incident API (a local stand-in, no network needed), the fake OpenAI-compatible
server (unless ``RAFTMESH_LLM_BASE_URL`` is set: then the nodes call that endpoint with
``RAFTMESH_LLM_API_KEY``, and the model is ``RAFTMESH_LLM_MODEL`` or gpt-4o-mini), a local
cluster whose nodes load ``agents.py``, submits the run, waits, prints what each agent
concluded and the filed report, and stops everything it started.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from raftmesh.localcluster import LocalCluster
from raftmesh.testing import FakeLLM

from . import workflow
from .incident_api import IncidentAPI

HERE = os.path.dirname(os.path.abspath(__file__))
AGENTS_MODULE = os.path.join(HERE, "agents.py")
FAKE_SCRIPT = os.path.join(HERE, "fake_llm_script.json")
DEFAULT_REAL_MODEL = "gpt-4o-mini"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m examples.incident_triage", description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print the run as JSON")
    p.add_argument("--timeout-s", type=float, default=300.0)
    a = p.parse_args(argv)
    say = (lambda *x: print(*x, file=sys.stderr)) if a.json else print
    api = IncidentAPI().start()
    fake: FakeLLM | None = None
    cluster: LocalCluster | None = None
    try:
        env = {"INCIDENT_API_URL": api.url}
        if os.environ.get("RAFTMESH_LLM_BASE_URL"):
            env["RAFTMESH_LLM_MODEL"] = os.environ.get("RAFTMESH_LLM_MODEL", DEFAULT_REAL_MODEL)
            say(
                f"== using the endpoint {os.environ['RAFTMESH_LLM_BASE_URL']} (model {env['RAFTMESH_LLM_MODEL']})"
            )
        else:
            fake = FakeLLM(script_path=FAKE_SCRIPT)
            env |= {
                "RAFTMESH_LLM_BASE_URL": fake.base_url,
                "RAFTMESH_LLM_MODEL": "fake-gpt",
                "RAFTMESH_LLM_API_KEY": "not-a-real-key",
            }
            say(
                f"== fake OpenAI-compatible server on {fake.base_url} (pid {fake.pid}); "
                "set RAFTMESH_LLM_BASE_URL and RAFTMESH_LLM_API_KEY to use a real one"
            )
        say(f"== incident API on {api.url}; starting {a.nodes} nodes with {AGENTS_MODULE}")
        cluster = LocalCluster(a.nodes, env=env, agents_modules=[AGENTS_MODULE]).start()
        with cluster.client() as client:
            run = client.run(workflow.build(api.url), timeout_s=a.timeout_s)
        if a.json:
            print(json.dumps(_as_json(run), indent=2, default=str))
        else:
            _print(run, api)
        return 0 if run.status == "SUCCEEDED" else 1
    finally:
        if cluster is not None:
            cluster.close()
        if fake is not None:
            fake.stop()
        api.stop()


def _usage(x: Any) -> str:
    u = getattr(x, "usage", None)  # summed per task and run by the cluster (the lifecycle part of issue 8)
    if u is None or not (u.tokens_in or u.tokens_out):
        return ""
    return f"  [{u.tokens_in} tokens in, {u.tokens_out} out]"


def _as_json(run: Any) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "status": run.status,
        "tasks": {
            tid: {
                "status": t.status,
                "attempt": t.attempt,
                "node": t.node,
                "output": t.output,
                "error": t.error,
                "usage": t.usage.to_json() if hasattr(t, "usage") else None,
            }
            for tid, t in run.tasks.items()
        },
    }


def _print(run: Any, api: IncidentAPI) -> None:
    print(f"\n== run {run.run_id}: {run.status}{_usage(run)}")
    for tid in (
        "alert",
        "logs_analyst",
        "deploy_analyst",
        "metrics_analyst",
        "reviewer",
        "writer",
        "file_report",
    ):
        t = run.tasks[tid]
        print(
            f"  {tid:16} {t.status:9} attempt {t.attempt} on {t.node}{_usage(t)}"
            + (f"  {t.error}" if t.error else "")
        )
    if run.status != "SUCCEEDED":
        return
    for tid in ("logs_analyst", "deploy_analyst", "metrics_analyst"):
        print(f"\n-- {tid}\n{run.tasks[tid].output}")
    print("\n-- reviewer (JSON)\n" + json.dumps(run.tasks["reviewer"].output, indent=2))
    print("\n-- writer\n" + str(run.tasks["writer"].output))
    filed = run.tasks["file_report"].output
    print(f"\n== filed as {filed['body']['id']} (HTTP {filed['status']}); reports stored: {len(api.reports)}")


if __name__ == "__main__":
    sys.exit(main())
