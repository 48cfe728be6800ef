"""Prometheus metrics: names and labels (units), an in-process node's registry and HTTP endpoint,
``promtool check metrics`` on every node of a real 3-node cluster, a real Prometheus scraping
one, and the Grafana dashboard's PromQL naming only metrics the nodes export."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from raftmesh import DAG, Client
from raftmesh.consensus.codes import Code
from raftmesh.consensus.commands import Usage
from raftmesh.consensus.kv import KvEvent
from raftmesh.consensus.results import KvChanged, LockChanged, RunChanged, TaskChanged
from raftmesh.consensus.state import RunStatus, TaskStatus
from raftmesh.errors import InvalidArgument, NotFound
from raftmesh.localcluster import LocalCluster, free_ports, wait_until
from raftmesh.node.config import Peer, build_config
from raftmesh.node.metrics import (
    MAX_SCRAPES_IN_FLIGHT,
    OTHER,
    AgentLabels,
    NodeMetrics,
    parse_address,
    split_method,
)
from raftmesh.node.runtime import NodeRuntime
from raftmesh.security.roles import METHOD_ROLES

from .inprocess import in_process_node

ROOT = pathlib.Path(__file__).resolve().parent.parent
NAME_RE = re.compile(r"^raftmesh_[a-z][a-z0-9_]*$")
FORBIDDEN_LABELS = {"run_id", "task_id", "key", "address", "addr", "request_id", "trace_id", "token"}


def _types(text: str) -> dict[str, str]:
    """``# TYPE name kind`` lines of an exposition: every family a node exports (even with no samples)."""
    out = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            out[name] = kind
    return out


def _value(text: str, name: str, **labels: str) -> float | None:
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def _sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += float(s.value)
    return total


def check_conventions(text: str) -> None:
    """Prometheus naming: raftmesh_ prefix, counters end _total, base units, bounded labels."""
    types = _types(text)
    assert types, "no metric families"
    for name, kind in types.items():
        assert NAME_RE.match(name), name
        if kind == "counter":
            assert name.endswith("_total"), name
        else:
            assert not name.endswith("_total"), name
        for unit in ("_ms", "_milliseconds", "_kb", "_mb", "_kilobytes", "_megabytes", "_minutes"):
            assert unit not in name, f"{name}: use base units (seconds, bytes)"
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            assert not FORBIDDEN_LABELS & set(s.labels), (s.name, s.labels)
            for v in s.labels.values():
                assert ":" not in v or s.labels.get("le") == v, f"{s.name}: an address-like label {v!r}"


# ---- pure units ------------------------------------------------------------------------


def test_split_method_labels_only_methods_the_node_serves() -> None:
    assert split_method("/raftmesh.v1.Cluster/SubmitRun") == ("raftmesh.v1.Cluster", "SubmitRun")
    assert split_method("/grpc.health.v1.Health/Check") == ("grpc.health.v1.Health", "Check")
    # a name a stranger makes up never becomes a label value
    assert split_method("/raftmesh.v1.Cluster/Nope" + "x" * 100) == ("unknown", "unknown")
    assert split_method("garbage") == ("unknown", "unknown")
    for full in METHOD_ROLES:
        service, method = split_method(full)
        assert full == f"/{service}/{method}"


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:9100") == ("127.0.0.1", 9100)
    assert parse_address("[::1]:9100") == ("::1", 9100)
    assert parse_address(":9100") == ("0.0.0.0", 9100)
    for bad in ("9100", "host:", "host:port", "h:70000"):
        with pytest.raises(InvalidArgument, match="HOST:PORT"):
            parse_address(bad)


def test_agent_labels_are_bounded() -> None:
    label = AgentLabels(limit=3)
    assert [label(a) for a in ("a", "b", "c")] == ["a", "b", "c"]
    assert label("d") == OTHER and label("e") == OTHER
    assert label("a") == "a"  # a type seen before the limit keeps its name


def test_applied_events_observe_and_attempts_feed_the_registry() -> None:
    m = NodeMetrics("n1")
    m.applied(
        [
            TaskChanged(1, "r1", "a", TaskStatus.RUNNING, 1, "n1"),
            TaskChanged(2, "r1", "a", TaskStatus.RUNNING, 2, "n1"),
            TaskChanged(3, "r1", "a", TaskStatus.SUCCEEDED, 2, "n1"),
            RunChanged(3, "r1", RunStatus.SUCCEEDED),
            LockChanged(4, "q1", "me", True, 4),
            LockChanged(5, "q2", "me", False, 0, Code.DEADLINE_EXCEEDED, "late"),
            KvChanged(6, KvEvent(6, "put", "k", 1, 6, 6, 1, 1)),
        ]
    )
    m.observe("/raftmesh.v1.Cluster/GetRun", grpc.StatusCode.NOT_FOUND, 0.002)
    m.observe("/evil/" + "x" * 50, grpc.StatusCode.UNIMPLEMENTED, 0.001)
    m.attempt("llm", True, 1.5, Usage(tokens_in=10, tokens_out=4, cost=0.25))
    m.attempt("llm", False, 0.5, Usage())
    m.proposed(3, 700)
    text = m.exposition().decode()
    check_conventions(text)
    assert _value(text, "raftmesh_task_transitions_total", status="RUNNING") == 2
    assert _value(text, "raftmesh_task_retries_total") == 1
    assert _value(text, "raftmesh_run_transitions_total", status="SUCCEEDED") == 1
    assert _value(text, "raftmesh_lock_waits_total", outcome="granted") == 1
    assert _value(text, "raftmesh_lock_waits_total", outcome="DEADLINE_EXCEEDED") == 1
    assert _value(text, "raftmesh_kv_operations_total", op="put") == 1
    assert (
        _value(
            text,
            "raftmesh_grpc_server_handled_total",
            grpc_service="raftmesh.v1.Cluster",
            grpc_method="GetRun",
            grpc_code="NOT_FOUND",
        )
        == 1
    )
    assert _value(text, "raftmesh_grpc_server_handled_total", grpc_method="unknown") == 1
    assert _value(text, "raftmesh_attempt_duration_seconds_count", agent="llm", outcome="succeeded") == 1
    assert _value(text, "raftmesh_attempt_duration_seconds_sum", agent="llm", outcome="failed") == 0.5
    assert _value(text, "raftmesh_agent_tokens_total", agent="llm", direction="in") == 10
    assert _value(text, "raftmesh_agent_cost_total", agent="llm") == 0.25
    assert _value(text, "raftmesh_proposer_batch_commands_sum") == 3
    assert _value(text, "raftmesh_raft_proposed_entry_bytes_sum") == 700


def test_two_nodes_in_one_process_keep_separate_registries() -> None:
    a, b = NodeMetrics("n1"), NodeMetrics("n2")
    a.applied([RunChanged(1, "r", RunStatus.FAILED)])
    assert _value(a.exposition().decode(), "raftmesh_run_transitions_total", status="FAILED") == 1
    assert _value(b.exposition().decode(), "raftmesh_run_transitions_total", status="FAILED") is None


# ---- one node in this process ------------------------------------------------------------


@pytest.fixture
def node(tmp_path: pathlib.Path) -> Iterator[tuple[NodeRuntime, Client, str]]:
    with in_process_node(tmp_path / "n1", metrics=True) as n:
        yield n.runtime, n.client, f"http://{n.metrics}/metrics"


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
        body: bytes = resp.read()
    return body.decode()


def test_node_serves_its_metrics_over_http(node: tuple[NodeRuntime, Client, str]) -> None:
    runtime, client, url = node
    dag = DAG()
    dag.task("a", "echo", input={"x": 1})
    dag.task("b", "echo", input=2, deps=["a"])
    run = client.run(dag, timeout_s=30)
    assert run.status == "SUCCEEDED"
    with pytest.raises(NotFound):
        client.get("no-such-run")

    def counted() -> str | None:
        # A call is counted once its handler has returned, which may be just after the client
        # has its answer: wait for the failed GetRun as well as for the applied completions.
        t = _scrape(url)
        done = _value(t, "raftmesh_task_transitions_total", status="SUCCEEDED") == 2
        seen = _value(t, "raftmesh_grpc_server_handled_total", grpc_method="GetRun", grpc_code="NOT_FOUND")
        seen = seen and _value(t, "raftmesh_grpc_server_handled_total", grpc_method="RunToEnd")
        # The leader-change sampler looks every LEADER_SAMPLE_S: the first leader may not be counted yet.
        elected = _value(t, "raftmesh_raft_leader_changes_total")
        return t if done and seen and elected else None

    text = wait_until(counted, 10.0, "the applied completions to be counted")
    check_conventions(text)
    assert _value(text, "raftmesh_task_transitions_total", status="SUCCEEDED") == 2
    assert _value(text, "raftmesh_run_transitions_total", status="SUCCEEDED") == 1
    assert _value(text, "raftmesh_raft_is_leader") == 1
    assert _value(text, "raftmesh_raft_leader", leader="n1") == 1
    assert _value(text, "raftmesh_raft_term") == runtime.raft.term
    assert (_value(text, "raftmesh_raft_leader_changes_total") or 0) >= 1
    assert _value(text, "raftmesh_members", up="true") == 1
    assert _value(text, "raftmesh_node_slots") == 8
    assert _value(text, "raftmesh_runs", state="finished") == 1
    assert _value(text, "raftmesh_attempt_duration_seconds_count", agent="echo", outcome="succeeded") == 2
    assert (_value(text, "raftmesh_raft_applied_entries_total") or 0) >= 3
    # client.run is one RunToEnd call
    assert _value(text, "raftmesh_grpc_server_handled_total", grpc_method="RunToEnd", grpc_code="OK") == 1
    assert (
        _value(text, "raftmesh_grpc_server_handled_total", grpc_method="GetRun", grpc_code="NOT_FOUND") == 1
    )
    assert (_value(text, "raftmesh_proposer_batch_commands_count") or 0) >= 1
    # The gauges read at scrape time agree with the replica itself.
    revision = runtime.reads.read(lambda st: st.revision)
    assert (_value(text, "raftmesh_state_revision") or 0) <= revision


def test_idle_connections_to_the_metrics_port_are_bounded(node: tuple[NodeRuntime, Client, str]) -> None:
    """A stranger holding connections open takes at most MAX_SCRAPES_IN_FLIGHT threads; gRPC serves on."""
    _, client, url = node
    host, port = urllib.parse.urlsplit(url).netloc.rsplit(":", 1)
    idle = [socket.create_connection((host, int(port)), timeout=5) for _ in range(MAX_SCRAPES_IN_FLIGHT + 12)]
    try:

        def handlers() -> int:
            return sum(1 for t in threading.enumerate() if "process_request" in t.name)

        wait_until(
            lambda: handlers() == MAX_SCRAPES_IN_FLIGHT, 10.0, "the idle connections to fill the slots"
        )
        closed: set[int] = set()

        def refused() -> bool:
            for k, sock in enumerate(idle):
                if k not in closed:
                    sock.setblocking(False)
                    try:
                        if sock.recv(1) == b"":
                            closed.add(k)
                    except BlockingIOError:
                        pass
            return len(closed) == 12

        # the server closed every connection beyond the bound at accept, and started no thread for it
        wait_until(refused, 10.0, "the connections beyond the bound to be closed")
        assert handlers() == MAX_SCRAPES_IN_FLIGHT
        assert client.status().leader == "n1"
    finally:
        for sock in idle:
            sock.close()
    assert "raftmesh_raft_term" in wait_until(lambda: _scrape(url), 15.0, "the endpoint to serve again")


def test_metrics_flag_is_checked_and_off_by_default(tmp_path: pathlib.Path) -> None:
    raft, grpc_addr = "127.0.0.1:7001", "127.0.0.1:7002"
    peers = [Peer("n1", raft, grpc_addr)]
    assert build_config("n1", raft, grpc_addr, peers, str(tmp_path)).metrics == ""
    with pytest.raises(InvalidArgument, match="--metrics"):
        build_config("n1", raft, grpc_addr, peers, str(tmp_path), metrics="nowhere")


# ---- real node processes -------------------------------------------------------------------


@pytest.fixture(scope="module")
def worked_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A 3-node cluster with metrics on, after some work (runs, KV writes, a failed task)."""
    c = LocalCluster(3, base_dir=str(tmp_path_factory.mktemp("metrics-cluster")), metrics=True)
    try:
        c.start()
        client = c.client()
        for i in range(3):
            dag = DAG()
            dag.task("a", "echo", input={"i": i})
            dag.task("b", "echo", input=i, deps=["a"])
            assert client.run(dag, timeout_s=60).status == "SUCCEEDED"
        client.kv.put("metrics/k", 1)
        yield c
    finally:
        c.close()


REQUIRE_PROMETHEUS = "RAFTMESH_REQUIRE_PROMETHEUS"
"""Set (CI sets it): a missing promtool or prometheus fails these tests instead of skipping them."""


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        why = f"{name} is not installed (Debian: apt-get install prometheus; scripts/test.sh does as root)"
        if os.environ.get(REQUIRE_PROMETHEUS):
            pytest.fail(f"{why}, and {REQUIRE_PROMETHEUS} is set")
        pytest.skip(why)
    return path


def _promtool() -> str:
    return _binary("promtool")


@pytest.mark.e2e
def test_promtool_accepts_every_nodes_metrics(worked_cluster: LocalCluster) -> None:
    promtool = _promtool()
    leaders = 0.0
    for url in worked_cluster.metrics_urls:

        def caught_up(url: str = url) -> str | None:
            """The node's figures once it has applied all the work (a follower may lag a little)."""
            t = _scrape(url)
            done = _value(t, "raftmesh_run_transitions_total", status="SUCCEEDED") == 3
            return t if done and _value(t, "raftmesh_kv_operations_total", op="put") == 1 else None

        text = wait_until(caught_up, 15.0, f"{url} to count the applied work")
        check_conventions(text)
        res = subprocess.run(
            [promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30
        )
        assert res.returncode == 0, (url, res.stdout.decode(), res.stderr.decode())
        assert res.stdout.strip() == b"" and res.stderr.strip() == b"", (url, res.stdout, res.stderr)
        leaders += _value(text, "raftmesh_raft_is_leader") or 0
        # every node applied the same work: the cluster-wide counters agree (caught_up waited for them)
        assert _value(text, "raftmesh_task_transitions_total", status="SUCCEEDED") == 6
    assert leaders == 1


@pytest.mark.e2e
def test_attempts_are_counted_where_they_ran(worked_cluster: LocalCluster) -> None:
    texts = [_scrape(u) for u in worked_cluster.metrics_urls]
    ran = sum(_sum(t, "raftmesh_attempt_duration_seconds_count", agent="echo") for t in texts)
    assert ran == 6


def _dashboard_metric_names() -> set[str]:
    dash = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    names: set[str] = set()
    assert dash["panels"], "the dashboard has no panels"
    for panel in dash["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            # label values in quotes are not metric names
            expr = re.sub(r'"[^"]*"', '""', target["expr"])
            names |= {t for t in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr) if t.startswith("raftmesh_")}
    return names


def _exported(types: dict[str, str]) -> set[str]:
    """Every sample name the families produce (a histogram's _bucket, _sum and _count)."""
    out = set()
    for name, kind in types.items():
        out.add(name)
        if kind == "histogram":
            out |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return out


def test_dashboard_and_readme_name_exactly_the_exported_metrics(
    node: tuple[NodeRuntime, Client, str],
) -> None:
    _, _, url = node
    types = _types(_scrape(url))
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("\n## Metrics\n") : readme.index("\n## Limits\n")]
    undocumented = sorted(n for n in types if f"`{n}`" not in section)
    assert not undocumented, f"README ## Metrics does not list {undocumented}"
    documented = set(re.findall(r"`(raftmesh_[a-z0-9_]+)`", section))
    assert documented <= set(types), (
        f"README lists metrics no node exports: {sorted(documented - set(types))}"
    )
    exported = _exported(types)
    used = _dashboard_metric_names()
    assert len(used) >= 20
    assert used <= exported, f"the dashboard queries metrics no node exports: {sorted(used - exported)}"
    dash = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in (
        "leader",
        "term",
        "lag",
        "proposals",
        "tasks",
        "attempt duration",
        "grpc",
        "lock",
        "messages",
        "dead",
    ):
        assert topic in titles, topic


def test_prometheus_scrape_config_is_valid() -> None:
    promtool = _promtool()
    res = subprocess.run(
        [promtool, "check", "config", str(ROOT / "deploy" / "prometheus.yml")],
        capture_output=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()
    text = (ROOT / "deploy" / "prometheus.yml").read_text()
    # cluster.sh's defaults: base port 7100, metrics on P+100+I
    assert all(f"127.0.0.1:{7200 + i}" in text for i in (1, 2, 3))


def _prom_query(base: str, query: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


@pytest.mark.e2e
def test_a_real_prometheus_scrapes_the_cluster(worked_cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    prometheus = _binary("prometheus")
    (port,) = free_ports(1)
    targets = [n.metrics for n in worked_cluster.nodes.values()]
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: raftmesh\n    static_configs:\n"
        f"      - targets: {json.dumps(targets)}\n"
    )
    log_path = tmp_path / "prometheus.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                prometheus,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:

        def all_up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"prometheus exited: {log_path.read_text()[-2000:]}")
            try:
                res = _prom_query(base, 'up{job="raftmesh"}')
            except OSError:
                return False
            return len(res) == 3 and all(r["value"][1] == "1" for r in res)

        wait_until(all_up, 60.0, "prometheus to scrape every node (up == 1)")
        up = _prom_query(base, 'up{job="raftmesh"}')
        assert sorted(r["metric"]["instance"] for r in up) == sorted(targets)

        def succeeded() -> float:
            res = _prom_query(base, 'max(raftmesh_task_transitions_total{status="SUCCEEDED"})')
            return float(res[0]["value"][1]) if res else 0.0

        before = wait_until(succeeded, 30.0, "a task counter in prometheus")
        client = worked_cluster.client()
        for i in range(2):
            dag = DAG()
            dag.task("x", "echo", input={"more": i})
            assert client.run(dag, timeout_s=60).status == "SUCCEEDED"
        wait_until(lambda: succeeded() >= before + 2, 30.0, "the task counter to grow in prometheus")
        leaders = _prom_query(base, "sum(raftmesh_raft_is_leader)")
        assert float(leaders[0]["value"][1]) == 1
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        shutil.rmtree(tmp_path / "data", ignore_errors=True)


def test_a_node_whose_metrics_port_is_taken_stops_with_a_usage_error(tmp_path: pathlib.Path) -> None:
    raft_port, grpc_port = free_ports(2)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "raftmesh.cli.main",
                "node",
                "--id",
                "n1",
                "--raft",
                f"127.0.0.1:{raft_port}",
                "--grpc",
                f"127.0.0.1:{grpc_port}",
                "--data-dir",
                str(tmp_path / "n1"),
                "--metrics",
                f"127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert res.returncode == 2, res.stderr[-2000:]
    assert f"--metrics 127.0.0.1:{port}: cannot listen" in res.stderr


def test_leader_changes_count_a_new_leader_once_through_an_election() -> None:
    from raftmesh.node.metrics import LeaderChanges

    seen = LeaderChanges()
    samples = [None, "", "n1", "n1", None, "n2", "", None, "n2", "n1", None, "n1"]
    assert [s for s in samples if seen.see(s)] == ["n1", "n2", "n1"]


def test_ci_fails_rather_than_skips_the_prometheus_tests_without_the_binaries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(REQUIRE_PROMETHEUS, "1")
    with pytest.raises(pytest.fail.Exception, match=REQUIRE_PROMETHEUS):
        _binary("raftmesh-no-such-binary")
    monkeypatch.delenv(REQUIRE_PROMETHEUS)
    with pytest.raises(pytest.skip.Exception):
        _binary("raftmesh-no-such-binary")
    assert f"export {REQUIRE_PROMETHEUS}=1" in (ROOT / ".ci" / "run").read_text()
