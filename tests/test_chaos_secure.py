"""Chaos against a secured cluster (``scripts/chaos.py --secure``): mutual TLS, a tokens file and
node identity by the cluster secret, under a client-link cut and a leader kill, with the same
checks at 0 violations; and what the checker must expect of such a cluster.

The real run uses the proxy mode (no root, kept under 40 s); the netns mode with ``--secure``
(partitions and pauses too) is run by hand (README, Chaos testing).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from raftmesh.chaos.checker import APPROVAL, check_history
from raftmesh.chaos.runner import SECURE_SUBJECT, ChaosConfig, replay_command
from raftmesh.chaos.workload import APPROVER
from raftmesh.verify.audit import Audit
from tests.test_chaos import _approved, _flow_run, _run_chaos, _workflow_jobs


def test_secure_is_replayed_and_the_approver_is_the_principal_when_secured() -> None:
    assert replay_command(ChaosConfig(seed=3, secure=True)).endswith(" --secure")
    assert "--secure" not in replay_command(ChaosConfig(seed=3))
    job = next(j for j in _workflow_jobs("flow", 200) if not j.workflow["approval"]["reject"])
    ops = [_approved(job, ("rq", True, "approved"))]
    run = _flow_run(job)
    gate = run.tasks["gate"]
    assert gate.gate is not None
    # Secured, the node records the caller's principal as the decider, not the ``by`` it sent.
    by_token = replace(
        run, tasks={**run.tasks, "gate": replace(gate, gate=(*gate.gate[:2], "token:chaos", 100))}
    )
    principal = f"token:{SECURE_SUBJECT}"
    for r, approver, violations in (
        (run, APPROVER, 0),
        (by_token, APPROVER, 1),
        (by_token, principal, 0),
        (run, principal, 1),
    ):
        inv = check_history(ops, {r.run_id: r}, Audit(), {}, approver=approver).invariants[APPROVAL]
        assert inv.count == violations, (approver, inv.examples)


@pytest.mark.e2e
def test_secure_chaos_under_a_client_link_cut_and_a_leader_kill(tmp_path: Path) -> None:
    """Every workload (DAGs with workflows, KV, locks, messages) and every checker read over mutual
    TLS with the admin token; nodes authenticate each other by the cluster secret. Seed 348's
    12 s schedule cuts a client link, then kills the leader (the restarted node rejoins over TLS)."""
    data, log = _run_chaos(
        tmp_path,
        *("--net", "proxy", "--nodes", "3", "--duration", "0.2", "--seed", "348", "--secure"),
        *("--warmup", "2", "--cooldown", "3", "--clients", "2"),
        *("--kv-clients", "2", "--lock-clients", "2", "--message-clients", "2"),
        timeout_s=120,
    )
    assert data["workloads"]["secure"] is True
    assert "--secure" in data["replay_command"]
    assert "secure: mutual TLS" in log and "every node refuses a call without a token" in log
    assert data["operations"]["ok"] > 0 and data["kv"]["ops"]["ok"] > 0
    msgs = data["messages"]["stats"]
    # Fast sends to an actor on another node ride the Peer.Exchange streams (node identity over TLS).
    assert msgs["effects"] > 0 and msgs["calls"].get("fast send ok", 0) > 0, msgs["calls"]
    assert {f["kind"] for f in data["faults"]} == {"kill-leader", "client-cut"}, data["faults"]
    wf = data["operations"]["workflows"]
    assert wf.get("gates approved", 0) + wf.get("gates rejected", 0) > 0, wf  # decided by token:chaos
    timelines = data["audit_timelines"]
    assert timelines["runs_checked"] > 0 and timelines["violations"] == 0, timelines
    assert not any((tmp_path / "tmp").glob("raftmesh-chaos-*")), "the data directory was left behind"
