"""The Node.js client (examples/node-client/, README "Other languages") against real clusters.

It is built from the shipped ``cluster.proto`` with @grpc/grpc-js and @grpc/proto-loader from
npm, so these tests prove the .proto is the contract: what it does is checked here through the
Python SDK, independently of what it prints.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from raftmesh.client import Client
from raftmesh.localcluster import LocalCluster, free_ports, wait_until
from raftmesh.security import certs
from raftmesh.security.tokens import add_token

from .test_tls import tls_cluster

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "node-client"

REQUIRE_NODE = "RAFTMESH_REQUIRE_NODE"
"""Set (CI sets it): a missing node or npm fails these tests instead of skipping them."""

NETWORK_ERRORS = ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "ENETUNREACH")


def _require(why: str) -> None:
    if os.environ.get(REQUIRE_NODE):
        pytest.fail(f"{why}, and {REQUIRE_NODE} is set")
    pytest.skip(why)


def _tools() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _require(
            "node or npm is not installed (Debian: apt-get install nodejs npm; scripts/test.sh does as root)"
        )
    assert node is not None and npm is not None
    return node, npm


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, pathlib.Path]:
    """A copy of the example outside the repository (so it finds the .proto through the installed
    package), its pinned dependencies installed by ``npm ci`` from the lock file."""
    node, npm = _tools()
    base = tmp_path_factory.mktemp("node-client")
    work = base / "node-client"
    shutil.copytree(EXAMPLE, work, ignore=shutil.ignore_patterns("node_modules"))
    env = {**os.environ, "npm_config_cache": str(base / "npm-cache"), "npm_config_update_notifier": "false"}
    r = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    if r.returncode != 0:
        if any(e in r.stderr for e in NETWORK_ERRORS):
            _require(f"npm ci cannot reach the npm registry: {r.stderr.strip()[-500:]}")
        pytest.fail(f"npm ci failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return node, work


def run_client(
    example: tuple[str, pathlib.Path], env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    node, work = example
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAFTMESH_")}
    return subprocess.run(
        [node, "main.js", *args],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=180,
        # PYTHON: the interpreter that has raftmesh installed, where the client finds cluster.proto.
        env={**clean, "PYTHON": sys.executable, **env},
    )


def check_summary(r: subprocess.CompletedProcess[str], client: Client, key: str) -> dict[str, Any]:
    """The client's run succeeded, its resubmit got the same run and its KV value reads back,
    each checked through the Python SDK."""
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    run_id = out["run_id"]
    assert out["created"] is True
    assert out["resubmitted"] == {"run_id": run_id, "created": False}
    assert f"submitted again with the same key: the same run {run_id} (created: false)" in r.stderr
    # A fast run may have ended by the watch's first snapshot ("snapshot: run SUCCEEDED").
    assert "snapshot: run " in r.stderr and "run SUCCEEDED" in r.stderr

    run = client.get(run_id)
    assert run.status == "SUCCEEDED"
    assert run_outputs(run) == {
        "seed": 1,
        "p1": 2,
        "p2": 3,
        "p3": 4,
        "p4": 5,
        "total": 14,
    }
    assert client.submit({"tasks": [{"id": "x", "agent": "echo"}]}, idempotency_key=key) == run_id

    entry = client.kv.get(f"node-client/{run_id}")
    assert entry is not None
    assert (
        entry.value
        == out["kv"]["value"]
        == {"run_id": run_id, "status": "SUCCEEDED", "outputs": run_outputs(run)}
    )
    assert entry.mod_revision == out["kv"]["mod_revision"]
    return out


def run_outputs(run: Any) -> dict[str, Any]:
    return {t: info.output for t, info in run.tasks.items()}


def test_ci_fails_rather_than_skips_without_node(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REQUIRE_NODE, "1")
    with pytest.raises(pytest.fail.Exception, match=REQUIRE_NODE):
        _require("node is missing")
    monkeypatch.delenv(REQUIRE_NODE)
    with pytest.raises(pytest.skip.Exception):
        _require("node is missing")
    assert f"export {REQUIRE_NODE}=1" in (ROOT / ".ci" / "run").read_text()
    # The .proto is the contract: the example loads the shipped file, it keeps no copy.
    assert not [p for p in EXAMPLE.rglob("*.proto") if "node_modules" not in p.parts]


@pytest.mark.e2e
def test_plain_cluster_with_failover_and_a_failed_run(
    example: tuple[str, pathlib.Path], cluster3: LocalCluster, tmp_path: pathlib.Path
) -> None:
    (dead,) = free_ports(1)
    # Nothing listens at the first address: the client fails over to the next on UNAVAILABLE.
    addresses = ",".join([f"127.0.0.1:{dead}", *cluster3.addresses])
    key = f"node-{uuid.uuid4().hex}"
    r = run_client(example, {"RAFTMESH_ADDRESSES": addresses}, "--json", "--key", key)
    assert f"failover: 127.0.0.1:{dead}: UNAVAILABLE" in r.stderr
    with cluster3.client() as client:
        check_summary(r, client, key)

        dag = tmp_path / "fails.json"
        dag.write_text(
            json.dumps({"tasks": [{"id": "f", "agent": "fail", "input": {"times": 9}, "retries": 0}]})
        )
        r = run_client(example, {"RAFTMESH_ADDRESSES": addresses}, "--json", "--dag", str(dag))
        assert r.returncode == 1, r.stderr
        out = json.loads(r.stdout)
        assert f"node-client: run {out['run_id']} ended FAILED: task 'f' failed" in r.stderr
        assert client.get(out["run_id"]).status == "FAILED"

    r = run_client(example, {"RAFTMESH_ADDRESSES": addresses}, "--dag", str(tmp_path / "missing.json"))
    assert r.returncode == 2 and "cannot read the DAG file" in r.stderr


@pytest.mark.e2e
def test_a_watch_moves_to_another_node_when_its_node_dies(
    example: tuple[str, pathlib.Path], cluster3: LocalCluster, tmp_path: pathlib.Path
) -> None:
    dag = tmp_path / "slow.json"
    sleep = {"agent": "sleep", "input": {"seconds": 3}}
    dag.write_text(
        json.dumps(
            {
                "tasks": [
                    {"id": "a", **sleep},
                    {"id": "b", **sleep, "deps": ["a"]},
                    {"id": "c", "agent": "sum", "deps": ["b"]},
                ]
            }
        )
    )
    first = cluster3.nodes["n1"].grpc  # the client starts at the first address
    node, work = example
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAFTMESH_")}
    env = {**clean, "PYTHON": sys.executable, "RAFTMESH_ADDRESSES": ",".join(cluster3.addresses)}
    stderr_path = tmp_path / "stderr"
    with open(stderr_path, "w") as err:
        proc = subprocess.Popen(
            [node, "main.js", "--json", "--dag", str(dag)],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        wait_until(lambda: "snapshot:" in stderr_path.read_text(), 60, "the client's first snapshot")
        cluster3.kill("n1")
        stdout, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    progress = stderr_path.read_text()
    assert proc.returncode == 0, progress
    before, after = progress.split(f"failover: {first}: UNAVAILABLE", 1)
    assert "snapshot:" in before and "snapshot:" in after  # the stream reopened on another node
    assert "task c SUCCEEDED" in after and "run SUCCEEDED" in after
    run_id = json.loads(stdout)["run_id"]
    with cluster3.client(cluster3.addresses[1:]) as client:
        assert client.get(run_id).status == "SUCCEEDED"


@pytest.mark.e2e
def test_tls_and_token_cluster_and_a_refused_token(
    example: tuple[str, pathlib.Path], make_cluster: Callable[..., LocalCluster], tmp_path: pathlib.Path
) -> None:
    issued = certs.init(str(tmp_path / "tls"), ["n1", "n2", "n3"])
    tokens = str(tmp_path / "tokens.yaml")
    admin = add_token(tokens, "admin", "admin")[1]
    # client auth "require": the client presents the certificate too (mutual TLS)
    cluster = tls_cluster(
        make_cluster, issued, 3, "require", token=admin, extra_args=["--tokens-file", tokens]
    )
    env = {
        "RAFTMESH_ADDRESSES": ",".join(cluster.addresses),
        "RAFTMESH_CA": issued.ca,
        "RAFTMESH_CERT": issued.client[0],
        "RAFTMESH_KEY": issued.client[1],
        "RAFTMESH_TOKEN": admin,
    }
    idem = f"node-{uuid.uuid4().hex}"
    r = run_client(example, env, "--json", "--key", idem)
    with cluster.client() as client:
        out = check_summary(r, client, idem)
        assert client.get(out["run_id"]).submitter == "token:admin"

    r = run_client(example, {**env, "RAFTMESH_TOKEN": "rmt_not_a_token_of_this_cluster"})
    assert r.returncode == 7, r.stderr
    assert "node-client: refused: UNAUTHENTICATED: the token is not known" in r.stderr
    assert "check RAFTMESH_TOKEN" in r.stderr and "--token" not in r.stderr, r.stderr  # it has no such flag
    assert r.stdout == ""
