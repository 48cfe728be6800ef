"""The CLI contract (flags, --json shapes, exit codes) and scripts/cluster.sh, against real nodes."""

from __future__ import annotations

import json
import os
import pathlib
import random
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from raftmesh.localcluster import LocalCluster

pytestmark = pytest.mark.e2e


@pytest.fixture
def cluster3(module_cluster3: LocalCluster) -> LocalCluster:
    """The module's shared cluster: the two contract tests touch different runs, keys and locks."""
    return module_cluster3


ROOT = pathlib.Path(__file__).resolve().parent.parent


def cli(*args: str, addresses: str | None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("RAFTMESH_ADDRESSES", None)
    if addresses is not None:
        env["RAFTMESH_ADDRESSES"] = addresses
    return subprocess.run(
        [sys.executable, "-m", "raftmesh.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_cli_contract(cluster3: LocalCluster, tmp_path: pathlib.Path) -> None:
    addrs = ",".join(cluster3.addresses)
    st = cli("status", "--json", addresses=addrs)
    assert st.returncode == 0, st.stderr
    status = json.loads(st.stdout)
    assert status["leader"] in {"n1", "n2", "n3"}
    assert isinstance(status["term"], int)
    assert {m["id"] for m in status["members"]} == {"n1", "n2", "n3"}
    assert all({"id", "grpc", "up"} <= set(m) and m["up"] for m in status["members"])
    assert [m["suspect"] for m in status["members"]] == [False] * 3  # a healthy cluster flags none

    # --addresses wins over the environment
    st2 = cli("--addresses", cluster3.addresses[1], "status", "--json", addresses="127.0.0.1:1")
    assert st2.returncode == 0, st2.stderr

    dag = tmp_path / "dag.json"
    dag.write_text(
        json.dumps(
            {
                "tasks": [
                    {"id": "a", "agent": "sum", "input": {"value": 2}},
                    {"id": "b", "agent": "sum", "input": {"value": 3}, "deps": ["a"]},
                    {"id": "c", "agent": "fail", "input": {"times": 1}, "retries": 1, "deps": ["a"]},
                ]
            }
        )
    )
    sub = cli("submit", str(dag), "--wait", "--json", addresses=addrs)
    assert sub.returncode == 0, sub.stderr
    run = json.loads(sub.stdout)
    assert run["status"] == "SUCCEEDED"
    assert run["tasks"]["b"]["output"] == 5
    assert run["tasks"]["c"]["attempt"] == 2
    assert set(run["tasks"]["a"]) >= {"status", "output", "node", "attempt", "error"}

    got = cli("get", run["run_id"], "--json", addresses=addrs)
    assert got.returncode == 0 and json.loads(got.stdout)["run_id"] == run["run_id"]

    # without --wait it prints the run id
    plain = cli("submit", str(dag), addresses=addrs)
    assert plain.returncode == 0 and plain.stdout.strip().startswith("r-")

    # a run that fails exits 1
    failing = tmp_path / "fail.yaml"
    failing.write_text("tasks:\n  - {id: x, agent: fail, input: {times: 5}, retries: 1}\n")
    res = cli("submit", str(failing), "--wait", "--json", addresses=addrs)
    assert res.returncode == 1
    assert json.loads(res.stdout)["status"] == "FAILED"

    # bad input exits 2 with a message that says what is wrong
    cyc = tmp_path / "cycle.yaml"
    cyc.write_text("tasks:\n  - {id: a, agent: echo, deps: [b]}\n  - {id: b, agent: echo, deps: [a]}\n")
    res = cli("submit", str(cyc), "--wait", addresses=addrs)
    assert res.returncode == 2 and "cycle" in res.stderr
    assert cli("submit", str(tmp_path / "missing.yaml"), addresses=addrs).returncode == 2
    assert cli("status", addresses=None).returncode == 2

    # unknown run exits 3
    assert cli("get", "r-nope", "--json", addresses=addrs).returncode == 3


def test_status_json_shows_the_leaders_suspect_flag() -> None:
    """``Member.suspect`` (proto field 9) reaches ``status --json``."""
    from raftmesh.client._types import ClusterInfo
    from raftmesh.proto.raftmesh.v1 import cluster_pb2 as pb

    info = ClusterInfo.from_pb(
        pb.ClusterStatusResponse(
            leader="n1",
            members=[pb.Member(id="n1", up=True), pb.Member(id="n2", up=True, suspect=True)],
        )
    )
    assert [(m["id"], m["suspect"]) for m in info.to_json()["members"]] == [("n1", False), ("n2", True)]


def test_cli_kv_and_lock_contract(cluster3: LocalCluster) -> None:
    addrs = ",".join(cluster3.addresses)
    put = cli("kv", "put", "cfg/a", '{"n": 1}', "--json", addresses=addrs)
    assert put.returncode == 0, put.stderr
    rev = json.loads(put.stdout)["mod_revision"]
    got = json.loads(cli("kv", "get", "cfg/a", "--json", addresses=addrs).stdout)
    assert got == {
        "key": "cfg/a",
        "value": {"n": 1},
        "mod_revision": rev,
        "create_revision": rev,
        "version": 1,
        "lease": 0,
    }
    assert [
        e["key"] for e in json.loads(cli("kv", "list", "cfg/", "--json", addresses=addrs).stdout)["entries"]
    ] == ["cfg/a"]
    assert cli("kv", "get", "cfg/missing", addresses=addrs).returncode == 3
    acq = cli("lock", "acquire", "db:orders", "--owner", "me", "--json", addresses=addrs)
    assert acq.returncode == 0, acq.stderr
    token, lease = json.loads(acq.stdout)["token"], json.loads(acq.stdout)["lease"]
    assert len(lease) == 32
    busy = cli("lock", "acquire", "db:orders", "--owner", "you", "--json", addresses=addrs)
    assert busy.returncode == 4 and json.loads(busy.stdout)["granted"] is False
    listed = json.loads(cli("lock", "list", "--json", addresses=addrs).stdout)["locks"]
    assert listed[0]["holders"][0]["owner"] == "me" and listed[0]["last_token"] == token
    assert lease not in json.dumps(listed)  # the handle is the holder's secret
    release = ["lock", "release", "db:orders", "--owner", "me"]
    stale = cli(*release, "--token", str(token - 1), "--lease", lease, addresses=addrs)
    assert stale.returncode == 6 and "stale token" in stale.stderr
    wrong = cli(*release, "--token", str(token), "--lease", "0" * 32, addresses=addrs)
    assert wrong.returncode == 7 and "lease handle" in wrong.stderr
    assert cli(*release, "--token", str(token), "--lease", lease, addresses=addrs).returncode == 0
    fenced = cli(
        "kv", "put", "cfg/a", "2", "--fence-lock", "db:orders", "--fence-token", "1", addresses=addrs
    )
    assert fenced.returncode == 6 and "newer grant" in fenced.stderr


def _free_base() -> int:
    for _ in range(50):
        base = random.randrange(20000, 40000, 100)
        ok = True
        for p in [base + k for k in (1, 2, 3, 51, 52, 53, 101, 102, 103, 201, 202, 203)]:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
        if ok:
            return base
    raise RuntimeError("no free port range")


def test_cluster_script_refuses_ports_in_use(tmp_path: pathlib.Path) -> None:
    """A second cluster too close to a first (or any listener on one of its ports): `up` says which
    ports and how far apart base ports must be, and starts no node."""
    script = str(ROOT / "scripts" / "cluster.sh")
    d = tmp_path / "c"
    env = {**os.environ, "RAFTMESH_BIN": f"{sys.executable} -m raftmesh.cli.main"}
    base = _free_base()
    with socket.socket() as raft, socket.socket() as board:
        raft.bind(("127.0.0.1", base + 52))
        raft.listen()
        board.bind(("0.0.0.0", base + 203))  # a wildcard listener takes the loopback port too
        board.listen()
        up = subprocess.run(
            [script, "up", "3", "--base-port", str(base), "--dir", str(d)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
    assert up.returncode == 1, up
    assert f"port in use: {base + 52} (n2 Raft), {base + 203} (n3 dashboard)" in up.stderr, up.stderr
    assert "at least 250 away" in up.stderr, up.stderr
    assert not list(d.glob("n*/pid")) and not (d / "env").exists(), list(d.rglob("*"))


def test_cluster_script(tmp_path: pathlib.Path) -> None:
    script = str(ROOT / "scripts" / "cluster.sh")
    d = str(tmp_path / "c")
    env = {**os.environ, "RAFTMESH_BIN": f"{sys.executable} -m raftmesh.cli.main"}

    def sh(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [script, *args, "--dir", d], capture_output=True, text=True, timeout=120, env=env
        )

    try:
        up = sh("up", "3", "--base-port", str(_free_base()))
        assert up.returncode == 0, up.stderr
        line = [ln for ln in up.stdout.splitlines() if ln.startswith("RAFTMESH_ADDRESSES=")][-1]
        addrs = line.split("=", 1)[1]
        env_lines = pathlib.Path(d, "env").read_text().splitlines()
        assert env_lines[0] == line
        # metrics are on by default: RAFTMESH_METRICS in DIR/env and printed, one URL a node, serving
        metrics_line = [ln for ln in up.stdout.splitlines() if ln.startswith("RAFTMESH_METRICS=")][-1]
        assert metrics_line in env_lines
        urls = metrics_line.split("=", 1)[1].split(",")
        assert len(urls) == 3
        for url in urls:
            with urllib.request.urlopen(url, timeout=5) as resp:
                assert b"raftmesh_raft_term " in resp.read()
        # the dashboard too: RAFTMESH_DASHBOARD, node nI on P+200+I, each answering its API
        board_line = [ln for ln in up.stdout.splitlines() if ln.startswith("RAFTMESH_DASHBOARD=")][-1]
        assert board_line in env_lines
        boards = board_line.split("=", 1)[1].split(",")
        assert [
            int(u.rsplit(":", 1)[1]) - int(a.rsplit(":", 1)[1])
            for u, a in zip(boards, line.split("=", 1)[1].split(","), strict=True)
        ] == [200] * 3
        for i, url in enumerate(boards, 1):
            with urllib.request.urlopen(f"{url}/api/v1/whoami", timeout=5) as resp:
                assert json.loads(resp.read())["node_id"] == f"n{i}"
        status = json.loads(cli("status", "--json", addresses=addrs).stdout)
        ids = sorted(m["id"] for m in status["members"])
        assert ids == ["n1", "n2", "n3"]
        # the cluster secret: private to its owner, handed to every node by path, never on argv
        secret_file = pathlib.Path(d, "raft.secret")
        assert secret_file.stat().st_mode & 0o777 == 0o600
        secret = secret_file.read_text().strip()
        assert len(secret) == 64
        for n in ("n1", "n2", "n3"):
            node_pid = pathlib.Path(d, n, "pid").read_text().strip()
            argv = pathlib.Path(f"/proc/{node_pid}/cmdline").read_bytes().split(b"\0")
            assert str(secret_file).encode() in argv and secret.encode() not in b" ".join(argv)
        victim = "n2"
        pid = int(pathlib.Path(d, victim, "pid").read_text())
        assert sh("kill", victim).returncode == 0
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        rs = sh("restart", victim)
        assert rs.returncode == 0, rs.stderr
        st = sh("status")
        assert st.returncode == 0 and "n2 running" in st.stdout
    finally:
        down = sh("down")
        assert down.returncode == 0, down.stderr
    for n in ("n1", "n2", "n3"):
        assert not pathlib.Path(d, n, "pid").exists()


def test_cluster_script_restarts_a_crashed_cluster_node_by_node(tmp_path: pathlib.Path) -> None:
    """kill -9 of every node, then `restart` one by one: each returns once that node serves,
    or, before a majority runs, once it answers, saying that there is no quorum yet."""
    script = str(ROOT / "scripts" / "cluster.sh")
    d = str(tmp_path / "c")
    env = {**os.environ, "RAFTMESH_BIN": f"{sys.executable} -m raftmesh.cli.main"}

    def sh(*args: str, **extra_env: str) -> tuple[subprocess.CompletedProcess[str], float]:
        t0 = time.monotonic()
        res = subprocess.run(
            [script, *args, "--dir", d], capture_output=True, text=True, timeout=120, env={**env, **extra_env}
        )
        return res, time.monotonic() - t0

    try:
        up, _ = sh("up", "3", "--base-port", str(_free_base()), "--no-metrics", "--no-dashboard")
        assert up.returncode == 0, up.stderr
        assert "RAFTMESH_METRICS" not in up.stdout + pathlib.Path(d, "env").read_text()
        assert "RAFTMESH_DASHBOARD" not in up.stdout + pathlib.Path(d, "env").read_text()
        assert "--http" not in pathlib.Path(d, "n1", "cmd").read_text()
        addrs = [ln for ln in up.stdout.splitlines() if ln.startswith("RAFTMESH_ADDRESSES=")][-1].split(
            "=", 1
        )[1]
        for n in ("n1", "n2", "n3"):
            assert sh("kill", n)[0].returncode == 0
        # --wait waits for a ready cluster, which cannot exist with one node of three
        waited, _ = sh("restart", "n1", "--wait", CLUSTER_WAIT_S="3")
        assert waited.returncode == 1 and "did not become ready" in waited.stderr, waited
        first, _ = sh("restart", "n1")
        assert first.returncode == 0, first.stderr
        assert "no quorum yet: 1 of 3 nodes running, a majority needs 2" in first.stdout, first.stdout
        assert cli("health", addresses=addrs.split(",")[0]).returncode != 0  # it answers, not SERVING
        second, _ = sh("restart", "n2")
        assert second.returncode == 0, second.stderr
        assert "it serves (2 of 3 nodes running)" in second.stdout, second.stdout
        third, _ = sh("restart", "n3", "--wait")
        assert third.returncode == 0 and "the cluster is ready" in third.stdout, third
        assert cli("health", addresses=addrs).returncode == 0
        dag = tmp_path / "dag.yaml"
        dag.write_text("tasks:\n  - {id: a, agent: sum, input: {value: 2}}\n")
        run = cli("submit", str(dag), "--wait", "--json", addresses=addrs)
        assert run.returncode == 0 and json.loads(run.stdout)["status"] == "SUCCEEDED", run.stderr
        assert sh("up", "3", "--wait")[0].returncode == 1  # --wait belongs to restart
    finally:
        down, _ = sh("down")
        assert down.returncode == 0, down.stderr
