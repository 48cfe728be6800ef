"""The agent host's pools on their own: bounded threads, spawned workers, limits, crashes, kills.

Real threads and real worker processes (no node); the KV/lock calls a worker makes are
answered by a recording handler here (the node's real handler is covered end to end in
tests/test_e2e_isolation.py).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from raftmesh.agents import AgentRegistry
from raftmesh.agents._host import isolation_of
from raftmesh.agents._pools import ProcessPool, ThreadPool
from raftmesh.errors import StaleToken
from raftmesh.localcluster import wait_until

from . import isolation_agents
from .isolation_cluster import os_pid_alive, read_text, worker_children

SOURCE = isolation_agents.SOURCE
NODE_DIR = os.path.join(tempfile.gettempdir(), "raftmesh-test-agent-pools")


def request(agent: str, source: str = SOURCE, **inp: Any) -> dict[str, Any]:
    return {
        "source": source,
        "agent": agent,
        "run_id": "r-1",
        "task_id": "t",
        "attempt": 1,
        "token": 7,
        "input": inp,
        "upstream": {"dep": 1},
        "node": {"data_dir": NODE_DIR, "grpc": "", "addresses": []},
    }


class Calls:
    """Answers a worker's ctx.kv / ctx.locks calls like a tiny KV, and keeps what it was asked."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, list[Any]]] = []
        self.kv: dict[str, Any] = {}
        self.fenced = False

    async def __call__(self, target: str, op: str, args: list[Any], kw: dict[str, Any]) -> Any:
        self.seen.append((target, op, args))
        if self.fenced:
            raise StaleToken("fenced: attempt with token 7 is no longer running")
        if op == "put":
            self.kv[args[0]] = args[1]
            return len(self.seen)
        if op == "get":
            return self.kv.get(args[0])
        raise AssertionError(f"unexpected call {target}.{op}")


@pytest.fixture
def pool() -> Iterator[ProcessPool]:
    p = ProcessPool("n-test", size=2)
    try:
        yield p
    finally:
        p.close()
        wait_until(lambda: not worker_children(), 10.0, "every worker to be gone")


def test_a_plain_def_never_runs_on_the_loop() -> None:
    reg = AgentRegistry()
    isolation_agents.register_agents(reg)
    assert isolation_of(reg.agents["plain_def"]) == "thread"  # registered as "async", but a def
    assert isolation_of(reg.agents["empty_async"]) == "async"
    assert isolation_of(reg.agents["spin_process"]) == "process"


def test_thread_pool_runs_at_most_its_size_and_drops_cancelled_waiters() -> None:
    async def main() -> None:
        tp = ThreadPool(2)
        release = threading.Event()
        running: list[int] = []
        peak = 0
        lock = threading.Lock()

        def job(i: int) -> int:
            nonlocal peak
            with lock:
                running.append(i)
                peak = max(peak, len(running))
            release.wait(30)
            with lock:
                running.remove(i)
            return i

        started: list[int] = []

        def never(i: int) -> int:
            started.append(i)
            return i

        jobs = [asyncio.ensure_future(tp.run(lambda i=i: job(i))) for i in range(3)]
        waiter = asyncio.ensure_future(tp.run(lambda: never(99)))
        async with asyncio.timeout(10):  # a deadline, not a hang, if the pool never gets busy
            while tp.busy < 2:
                await asyncio.sleep(0.01)
        waiter.cancel()  # queued behind the busy threads: it must never start
        with pytest.raises(asyncio.CancelledError):
            await waiter  # (the loop passes the cancellation on to the queued call meanwhile)
        release.set()
        assert sorted(await asyncio.gather(*jobs)) == [0, 1, 2]
        assert peak == 2
        assert started == []
        tp.close()

    asyncio.run(main())


def test_worker_runs_agents_reuses_itself_and_sets_up_class_agents_once(pool: ProcessPool) -> None:
    async def main() -> None:
        calls = Calls()
        echo = await pool.run(request("echo", source="", v=1), calls)
        assert echo.ok and echo.output == {"v": 1}
        first = await pool.run(request("counter_process"), calls)
        second = await pool.run(request("counter_process"), calls)
        assert first.ok and second.ok
        assert first.output["pid"] == second.output["pid"]
        assert (first.output["runs"], second.output["runs"]) == (1, 2)
        assert second.output["setups"] == 1  # setup once per worker process, not per attempt
        assert first.output["pid"] in pool.pids and first.output["pid"] != os.getpid()

    asyncio.run(main())


NODE_ONLY_MODULES = (
    "grpc",
    "httpx",
    "raftmesh.client",
    "raftmesh.consensus.raft",
    "raftmesh.consensus.state",
    "raftmesh.node",
    "raftmesh.messaging",
    "raftmesh.agents._host",
    "raftmesh.agents._actors",
)

WORKER_IMPORTS_AGENT = f"""
import sys

import raftmesh


@raftmesh.agent("what_loaded", isolation="process")
def what_loaded(ctx):
    return sorted(m for m in {NODE_ONLY_MODULES!r} if m in sys.modules)
"""


def test_a_worker_starts_without_loading_grpc_the_client_or_the_node(
    pool: ProcessPool, tmp_path: Any
) -> None:
    # A worker's start is paid by the attempt waiting for it: ``import raftmesh`` and
    # ``@raftmesh.agent`` in a spawned worker load neither grpcio nor what only a node uses.
    path = tmp_path / "worker_imports_agents.py"
    path.write_text(WORKER_IMPORTS_AGENT)

    async def main() -> None:
        out = await pool.run(request("what_loaded", source=str(path)), Calls())
        assert out.ok, out.error
        assert out.output == []

    asyncio.run(main())


def test_an_async_setup_and_the_attempts_share_the_workers_loop(pool: ProcessPool) -> None:
    """What an async ``setup`` builds (bound to its loop) stays usable in every attempt."""

    async def main() -> None:
        for _ in range(2):
            out = await pool.run(request("async_client_process"), Calls())
            assert out.ok and out.output == {"same_loop": True}, out

    asyncio.run(main())


def test_worker_kv_calls_and_usage_cross_the_pipe(pool: ProcessPool) -> None:
    async def main() -> None:
        calls = Calls()
        res = await pool.run(request("kv_usage_process", key="k1"), calls)
        assert res.ok, res.error
        assert res.output["read"] == {"from": "worker", "attempt": 1}
        assert [(t, op) for t, op, _ in calls.seen] == [("kv", "put"), ("kv", "get")]
        assert (res.usage.tokens_in, res.usage.tokens_out, res.usage.cost) == (3, 4, 0.5)
        async_res = await pool.run(request("async_in_worker", key="k2"), calls)
        assert async_res.ok and calls.kv["k2"] == "async"
        calls.fenced = True  # the node's answer to a fenced write reaches the agent as StaleToken
        stale = await pool.run(request("kv_usage_process", key="k3"), calls)
        assert not stale.ok and stale.error.startswith("StaleToken: fenced")

    asyncio.run(main())


def test_a_crash_fails_that_attempt_only_and_the_pool_replaces_the_worker(pool: ProcessPool) -> None:
    async def main() -> None:
        calls = Calls()
        warm = await pool.run(request("counter_process"), calls)
        crashed = await pool.run(request("segfault"), calls)
        assert not crashed.ok and crashed.retryable
        assert crashed.error == "worker exited with signal SIGSEGV"
        after = await pool.run(request("echo", source="", ok=True), calls)
        assert after.ok and after.output == {"ok": True}
        # The segfault ran in the warm worker (reused); the echo needed a fresh spawn.
        assert warm.output["pid"] not in pool.pids and pool.spawned == 2

    asyncio.run(main())


def test_memory_and_cpu_limits_fail_the_attempt_with_a_clear_error(pool: ProcessPool) -> None:
    async def main() -> None:
        calls = Calls()
        mem = await pool.run(request("hog_memory", chunks=64), calls, memory_mb=64)
        assert not mem.ok and mem.retryable and mem.error == "memory limit 64 MiB exceeded"
        cpu = await pool.run(request("cpu_limited"), calls, cpu_seconds=1)
        assert not cpu.ok and cpu.retryable
        assert cpu.error == "cpu limit 1 s exceeded (worker exited with signal SIGXCPU)"
        # Limits are per attempt: the next attempt in a (new) worker is not held to them.
        big = await pool.run(request("hog_memory", chunks=8), calls)
        assert big.ok and big.output == 8

    asyncio.run(main())


def test_cancelling_an_attempt_kills_its_worker(pool: ProcessPool, tmp_path: Any) -> None:
    pid_file = os.path.join(str(tmp_path), "pid")

    async def main() -> int:
        attempt = asyncio.ensure_future(pool.run(request("wait_process", pid_file=pid_file), Calls()))

        async def written() -> None:
            while not read_text(pid_file):
                await asyncio.sleep(0.02)

        await asyncio.wait_for(written(), 30)
        pid = int(read_text(pid_file))
        assert os_pid_alive(pid)
        attempt.cancel()
        with pytest.raises(asyncio.CancelledError):
            await attempt
        return pid

    pid = asyncio.run(main())
    wait_until(lambda: not os_pid_alive(pid), 10.0, f"worker {pid} to be killed")
    assert pid not in pool.pids


def test_a_killed_workers_replacement_starts_before_the_next_attempt_asks(
    pool: ProcessPool, tmp_path: Any
) -> None:
    """A cancelled attempt kills its worker; a spare starts at once, and the next attempt runs in it
    (it does not pay an interpreter's start and imports: 6-23 s under chaos load)."""
    pid_file = os.path.join(str(tmp_path), "pid")

    async def main() -> None:
        attempt = asyncio.ensure_future(pool.run(request("wait_process", pid_file=pid_file), Calls()))
        async with asyncio.timeout(30):
            while not read_text(pid_file):
                await asyncio.sleep(0.02)
        killed = int(read_text(pid_file))
        attempt.cancel()
        with pytest.raises(asyncio.CancelledError):
            await attempt
        async with asyncio.timeout(10):  # no attempt asks for it: the replacement starts anyway
            while pool.spawned < 2 or not [p for p in pool.pids if p != killed]:
                await asyncio.sleep(0.01)
        (spare,) = [p for p in pool.pids if p != killed]
        res = await pool.run(request("counter_process"), Calls())
        assert res.ok and res.output["pid"] == spare and pool.spawned == 2

    asyncio.run(main())


def test_a_spare_started_ahead_is_the_first_attempts_worker(pool: ProcessPool) -> None:
    async def main() -> None:
        pool.keep_spare()
        pool.keep_spare()  # one spare at a time
        res = await pool.run(request("counter_process"), Calls())
        assert res.ok and pool.spawned == 1 and pool.pids == [res.output["pid"]]
        pool.keep_spare()  # a started worker is idle: no spare needed
        assert pool.spawned == 1

    asyncio.run(main())


def test_a_spare_still_starting_when_the_pool_closes_is_stopped() -> None:
    p = ProcessPool("n-test", size=2)
    p.keep_spare()
    p.close()
    wait_until(lambda: p.spawned == 1, 10.0, "the spare to start")
    wait_until(lambda: not worker_children(), 10.0, "the spare started after close to be stopped")


def test_the_host_starts_a_spare_worker_when_it_offers_a_process_agent() -> None:
    from raftmesh.agents import AgentHost
    from raftmesh.clock import ManualClock
    from raftmesh.consensus.state import ClusterState
    from raftmesh.node.reads import ReadView

    async def main(offers_process: bool) -> int:
        reg = AgentRegistry()
        if offers_process:
            isolation_agents.register_agents(reg)
        else:
            reg.register("echo_only", lambda ctx: None)
        state = ClusterState()
        host = AgentHost("n1", "i1", reg, ReadView(threading.RLock(), lambda: state), None, ManualClock())  # type: ignore[arg-type]
        task = asyncio.ensure_future(host.run())
        try:
            async with asyncio.timeout(10):
                while offers_process and host.processes.spawned == 0:
                    await asyncio.sleep(0.01)
            for _ in range(10):  # run() asks for its spare on its first turn, before it awaits
                await asyncio.sleep(0)
            spare = host.processes._spare  # a spare asked for but not started yet counts too
            return host.processes.spawned + (spare is not None and not spare.done())
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    assert asyncio.run(main(True)) == 1
    assert asyncio.run(main(False)) == 0
    wait_until(lambda: not worker_children(), 10.0, "the host's spare to be stopped with the host")


def test_a_worker_that_cannot_load_its_agent_fails_the_attempt_and_says_why(pool: ProcessPool) -> None:
    async def main() -> None:
        res = await pool.run(request("nope"), Calls())
        assert not res.ok and "declares no agent 'nope'" in res.error

    asyncio.run(main())


def test_pool_sizes_are_node_settings_with_bounds(tmp_path: Any) -> None:
    from raftmesh.errors import InvalidArgument
    from raftmesh.node.config import Peer, build_config

    peers = [Peer("n1", "127.0.0.1:1", "127.0.0.1:2")]
    cfg = build_config(
        "n1", "127.0.0.1:1", "127.0.0.1:2", peers, str(tmp_path), agent_threads=3, agent_processes=2
    )
    assert (cfg.agent_threads, cfg.agent_processes) == (3, 2)
    with pytest.raises(InvalidArgument, match="--agent-threads must be between 1 and 1024"):
        build_config("n1", "127.0.0.1:1", "127.0.0.1:2", peers, str(tmp_path), agent_threads=0)
    with pytest.raises(InvalidArgument, match="--agent-processes must be between 1 and 256"):
        build_config("n1", "127.0.0.1:1", "127.0.0.1:2", peers, str(tmp_path), agent_processes=1000)


def test_an_attempt_cancelled_while_its_worker_starts_leaves_no_worker(pool: ProcessPool) -> None:
    async def main() -> None:
        attempt = asyncio.ensure_future(pool.run(request("echo", source=""), Calls()))
        await asyncio.sleep(0)  # the attempt runs up to waiting for its worker to start
        attempt.cancel()
        with pytest.raises(asyncio.CancelledError):
            await attempt
        async with asyncio.timeout(10):
            while pool.spawned == 0:  # the spawn goes on in the pool's I/O thread
                await asyncio.sleep(0.01)

    asyncio.run(main())
    assert pool.spawned == 1 and pool.pids == []
    wait_until(lambda: not worker_children(), 10.0, "the worker started for the cancelled attempt to stop")
