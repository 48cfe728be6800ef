"""Integration: placement by capabilities and breakers over real gRPC on 127.0.0.1.

Three nodes in this process (each a NodeRuntime on its own asyncio loop in a thread, with
its own agent registry, so each offers different capabilities), driven through the SDK
and the ``raftmesh`` CLI in a subprocess (``get --json``, ``status --json``).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from raftmesh import DAG, Client
from raftmesh.agents import AgentRegistry, TaskContext, default_registry
from raftmesh.errors import InvalidArgument, RaftmeshError
from raftmesh.localcluster import free_ports, wait_until
from raftmesh.node.config import Peer, build_config
from raftmesh.node.runtime import NodeRuntime

NODES = ("n1", "n2", "n3")


async def where(ctx: TaskContext) -> Any:
    return {"input": ctx.input}


async def broken(ctx: TaskContext) -> Any:
    raise RuntimeError("this agent always fails")


def registry_for(node: str) -> AgentRegistry:
    """n1 offers gpu work; n2 CPU-only work; n3 work with [gpu, fp64]. n1 and n2 offer a
    ``flaky`` agent whose breaker opens on its first failure."""
    reg = default_registry()
    caps = {"n1": ["gpu"], "n2": ["cpu"], "n3": ["gpu", "fp64"]}[node]
    reg.register("work", where, capabilities=caps, retries=2, timeout_ms=60_000)
    if node != "n3":
        reg.register("flaky", broken, breaker_failures=1, breaker_cooldown_ms=600_000)
    return reg


@dataclass
class Node:
    runtime: NodeRuntime
    thread: threading.Thread
    failure: list[BaseException] = field(default_factory=list)

    def _where(self) -> str:
        """Where a node that does not stop is stuck: its thread's stack and its loop's tasks."""
        frame = sys._current_frames().get(self.thread.ident or 0)
        out = ["thread:\n", *(traceback.format_stack(frame) if frame else ["(gone)\n"])]
        loop = self.runtime.loop
        for t in asyncio.all_tasks(loop) if loop is not None and not loop.is_closed() else ():
            out.append(f"task {t.get_name()}:\n")
            out.extend(traceback.format_stack(t.get_stack()[-1], limit=3) if t.get_stack() else [])
        return "".join(out)

    def stop(self) -> None:
        loop = self.runtime.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.runtime.stop)
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the node did not stop:\n" + self._where()
        assert not self.failure, self.failure


@pytest.fixture
def cluster(tmp_path: os.PathLike[str]) -> Iterator[tuple[dict[str, Node], list[str]]]:
    ports = free_ports(2 * len(NODES))
    peers = [
        Peer(n, f"127.0.0.1:{ports[2 * i]}", f"127.0.0.1:{ports[2 * i + 1]}") for i, n in enumerate(NODES)
    ]
    nodes: dict[str, Node] = {}
    for p in peers:
        cfg = build_config(
            p.id, p.raft, p.grpc, peers, os.path.join(str(tmp_path), p.id), slots=4, node_down_after_s=1.5
        )
        runtime = NodeRuntime(cfg, registry=registry_for(p.id))
        node = Node(runtime, threading.Thread(name=f"node-{p.id}", daemon=True, target=lambda: None))

        def serve(rt: NodeRuntime = runtime, failure: list[BaseException] = node.failure) -> None:
            try:
                asyncio.run(rt.run())
            except BaseException as exc:  # surfaced at teardown, not lost in the thread
                failure.append(exc)

        node.thread = threading.Thread(target=serve, name=f"node-{p.id}", daemon=True)
        node.thread.start()
        nodes[p.id] = node
    addresses = [p.grpc for p in peers]
    try:
        with Client(addresses, timeout_s=10.0) as c:

            def ready() -> bool:
                if any(n.failure for n in nodes.values()):
                    raise AssertionError([n.failure for n in nodes.values()])
                try:
                    st = c.status()
                except RaftmeshError:
                    return False
                return bool(st.leader) and sum(m.up for m in st.members) == len(NODES)

            wait_until(ready, 60.0, "three nodes to elect a leader and register")
        yield nodes, addresses
    finally:
        for n in nodes.values():
            n.stop()


def cli(addresses: list[str], *args: str) -> Any:
    env = dict(os.environ, RAFTMESH_ADDRESSES=",".join(addresses))
    res = subprocess.run(
        [sys.executable, "-m", "raftmesh.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout) if "--json" in args else res.stdout


def test_placement_by_capability_defaults_breakers_and_waiting_reasons(
    cluster: tuple[dict[str, Node], list[str]],
) -> None:
    nodes, addresses = cluster
    with Client(addresses, timeout_s=10.0) as c:
        # status --json shows every member's offers
        status = cli(addresses, "status", "--json")
        by_id = {m["id"]: m for m in status["members"]}
        assert by_id["n3"]["agents"] == [
            "echo",
            "fail",
            "http",
            "kv_put",
            "llm",
            "planner",
            "sleep",
            "sum",
            "work",
        ]
        work3 = next(o for o in by_id["n3"]["offers"] if o["agent"] == "work")
        assert work3 == {
            "agent": "work",
            "capabilities": ["fp64", "gpu"],
            "concurrency": 0,
            "running": 0,
            "timeout_ms": 60_000,
            "retries": 2,
            "breaker_failures": 5,
            "breaker_cooldown_ms": 30_000,
        }

        # a requirement no member ever offered is refused at submit, saying what to fix
        with pytest.raises(
            InvalidArgument, match=r"requires capabilities \[tpu\].*no member has ever offered"
        ):
            c.submit(_dag("never", requires=["tpu"]))

        # gpu tasks run only on nodes whose 'work' offers gpu (n1, n3); cpu ones only on n2
        dag = DAG("placed")
        for i in range(8):
            dag.task(f"g{i}", "work", input=i, requires=["gpu"])
        for i in range(3):
            dag.task(f"c{i}", "work", input=i, requires=["cpu"], retries=0)
        run = c.wait(c.submit(dag), timeout_s=60)
        assert run.status == "SUCCEEDED", run
        assert {run.tasks[f"g{i}"].node for i in range(8)} <= {"n1", "n3"}
        assert {run.tasks[f"c{i}"].node for i in range(3)} == {"n2"}
        # unset retries/timeout_ms took the agent's defaults at submit; explicit ones stayed
        got = cli(addresses, "get", run.run_id, "--json")
        assert got["tasks"]["g0"]["waiting_reason"] == ""

        # breakers: 'flaky' fails once on n1 and once on n2, which opens both breakers; the
        # task (retries left) waits READY and says why
        flaky = c.submit(_dag("flaky", agent="flaky", retries=5))

        def flaky_waits() -> Any:
            t = cli(addresses, "get", flaky, "--json")["tasks"]["t"]
            return t if t["status"] == "READY" and t["waiting_reason"] else None

        t = wait_until(flaky_waits, 60.0, "the flaky task to wait on open breakers")
        assert t["waiting_reason"].startswith(
            "breaker open for 'flaky' on every node offering it (next probe at "
        )
        status = cli(addresses, "status", "--json")
        for m in status["members"]:
            if m["id"] in ("n1", "n2"):
                (b,) = m["breakers"]
                assert (b["agent"], b["state"], b["failures"]) == ("flaky", "open", 1)
                assert b["open_until_ms"] > 0
            else:
                assert m["breakers"] == []
        text = cli(addresses, "status")
        assert "breaker flaky: open failures=1" in text and "work: running=0 capabilities=fp64,gpu" in text
        c.cancel(flaky)

        # n3 goes away: a task needing fp64 is still accepted (n3 offered it once) and waits,
        # READY, with the reason in get --json
        nodes["n3"].stop()

        def n3_down() -> bool:
            try:
                return any(m.id == "n3" and not m.up for m in c.status().members)
            except RaftmeshError:
                return False

        wait_until(n3_down, 60.0, "the cluster to mark n3 down")
        stuck = c.submit(_dag("fp64", requires=["gpu", "fp64"]))

        def reason() -> str:
            return str(cli(addresses, "get", stuck, "--json")["tasks"]["t"]["waiting_reason"])

        assert wait_until(reason, 30.0, "a waiting reason") == (
            "no live node offers agent 'work' with capabilities [gpu, fp64]"
        )
        assert c.get(stuck).tasks["t"].status == "READY"
        assert "waiting: no live node offers agent 'work'" in cli(addresses, "get", stuck)
        assert c.get(stuck).tasks["t"].requires == ("gpu", "fp64")


def _dag(name: str, agent: str = "work", **kw: Any) -> DAG:
    dag = DAG(name)
    dag.task("t", agent, input=name, **kw)
    return dag


def test_task_defaults_resolve_before_the_submit_is_logged(
    cluster: tuple[dict[str, Node], list[str]],
) -> None:
    nodes, addresses = cluster
    with Client(addresses, timeout_s=10.0) as c:
        dag = DAG("defaults")
        dag.task("unset", "work", input=1)
        dag.task("set", "work", input=2, retries=0, timeout_ms=0)
        run_id = c.submit(dag)
        c.wait(run_id, timeout_s=60)
    for n in nodes.values():
        # the logged spec is explicit on every replica: the agent's defaults, or what was set
        got = wait_until(lambda rt=n.runtime: rt.reads.read(lambda st: _specs(st, run_id)), 30.0, "the run")
        assert got == {"unset": (2, 60_000), "set": (0, 0)}


def _specs(st: Any, run_id: str) -> dict[str, tuple[int, int]] | None:
    run = st.runs.get(run_id)
    return None if run is None else {k: (t.spec.retries, t.spec.timeout_ms) for k, t in run.tasks.items()}
