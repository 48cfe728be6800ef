"""Run the planner example on a local cluster, end to end, with one command:

    python -m examples.planner [--nodes 3] [--json]

It starts the fake OpenAI-compatible server with ``fake_llm_script.json`` (unless
``RAFTMESH_LLM_BASE_URL`` is set: then the nodes call that endpoint with
``RAFTMESH_LLM_API_KEY``, and the model is ``RAFTMESH_LLM_MODEL`` or gpt-4o-mini), a local
cluster, submits ``workflow.yaml``, waits, prints the plan (the scripted model's first plan
names an agent type no node offers: the planner feeds the error back and spawns the
repaired plan) and every task, and stops everything it started.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from raftmesh import DAG
from raftmesh.localcluster import LocalCluster
from raftmesh.testing import FakeLLM

HERE = os.path.dirname(os.path.abspath(__file__))
WORKFLOW = os.path.join(HERE, "workflow.yaml")
FAKE_SCRIPT = os.path.join(HERE, "fake_llm_script.json")
DEFAULT_REAL_MODEL = "gpt-4o-mini"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m examples.planner", description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print the run as JSON")
    p.add_argument("--timeout-s", type=float, default=300.0)
    a = p.parse_args(argv)
    say = (lambda *x: print(*x, file=sys.stderr)) if a.json else print
    fake: FakeLLM | None = None
    cluster: LocalCluster | None = None
    try:
        env: dict[str, str] = {}
        if os.environ.get("RAFTMESH_LLM_BASE_URL"):
            env["RAFTMESH_LLM_MODEL"] = os.environ.get("RAFTMESH_LLM_MODEL", DEFAULT_REAL_MODEL)
            say(f"== using {os.environ['RAFTMESH_LLM_BASE_URL']} (model {env['RAFTMESH_LLM_MODEL']})")
        else:
            fake = FakeLLM(script_path=FAKE_SCRIPT)
            env |= {"RAFTMESH_LLM_BASE_URL": fake.base_url, "RAFTMESH_LLM_MODEL": "fake-gpt"}
            say(f"== fake OpenAI-compatible server on {fake.base_url} (pid {fake.pid})")
        say(f"== starting {a.nodes} nodes")
        cluster = LocalCluster(a.nodes, env=env).start()
        with cluster.client() as client:
            run = client.run(DAG.from_file(WORKFLOW), timeout_s=a.timeout_s)
        if a.json:
            print(json.dumps(_as_json(run), indent=2, default=str))
        else:
            _print(run)
        return 0 if run.status == "SUCCEEDED" else 1
    finally:
        if cluster is not None:
            cluster.close()
        if fake is not None:
            fake.stop()


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
                "usage": t.usage.to_json(),
            }
            for tid, t in run.tasks.items()
        },
    }


def _print(run: Any) -> None:
    print(f"\n== run {run.run_id}: {run.status}")
    for tid, t in run.tasks.items():
        u = t.usage
        tokens = f"  [{u.tokens_in} tokens in, {u.tokens_out} out]" if u.tokens_in or u.tokens_out else ""
        shown = json.dumps(t.output) if t.status == "SUCCEEDED" else t.error
        print(f"  {tid:8} {t.status:9} attempt {t.attempt} on {t.node}{tokens}  {shown}")


if __name__ == "__main__":
    sys.exit(main())
