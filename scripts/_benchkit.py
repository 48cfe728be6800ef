"""Pieces the benchmark scripts share (scripts/bench*.py import it as a sibling module).

Statistics, the side-by-side Dask cluster and Ray instance, the environment record that goes with
every result, and the signal handling that lets a benchmark stop every cluster it started.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.metadata
import json
import logging
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import Any


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between order statistics (numpy's default)."""
    xs = sorted(samples)
    if not xs:
        return math.nan
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {v}")
    return v


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    usable: int | None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    return {
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "versions": {
            d: version(d)
            for d in ("raftmesh", "pysyncobj", "grpcio", "protobuf", "uvloop", "dask", "distributed", "ray")
        },
    }


def dask_importable() -> tuple[bool, str]:
    try:
        import dask.distributed  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        return False, f"{type(exc).__name__}: {exc}"
    return True, ""


@contextlib.contextmanager
def dask_cluster(n_workers: int, local_dir: str) -> Iterator[tuple[Any, float]]:
    """A Dask LocalCluster + Client on loopback; both closed on the way out, whatever happens."""
    import dask.config
    from dask.distributed import Client as DaskClient
    from dask.distributed import LocalCluster as DaskLocalCluster

    t0 = time.perf_counter()
    cluster: Any = None
    client: Any = None
    # Every Dask server (the scheduler too) makes its scratch space under this directory, not under /tmp.
    with dask.config.set({"temporary-directory": local_dir}):
        try:
            cluster = DaskLocalCluster(
                n_workers=n_workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
                local_directory=local_dir,
            )
            client = DaskClient(cluster)
            client.wait_for_workers(n_workers, timeout=120)
            yield client, time.perf_counter() - t0
        finally:
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close(timeout=10)
            if cluster is not None:
                with contextlib.suppress(Exception):
                    cluster.close(timeout=20)


def ray_importable() -> tuple[bool, str]:
    try:
        import ray  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        return False, f"{type(exc).__name__}: {exc}"
    return True, ""


def _proc_stat(pid: int) -> tuple[int, int, str] | None:
    """(parent pid, start time in clock ticks, state) of a live process, else None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces or parentheses itself.
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[19]), fields[0]


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def descendants(root: int) -> dict[tuple[int, int], str]:
    """Every live process below ``root``: (pid, start time) -> command line. Linux /proc only.

    The start time tells a process from a later one that reuses its pid.
    """
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = _proc_stat(int(entry))
        if st is not None and st[2] != "Z":
            children.setdefault(st[0], []).append((int(entry), st[1]))
    out: dict[tuple[int, int], str] = {}
    todo = [root]
    while todo:
        for pid, start in children.get(todo.pop(), []):
            out[(pid, start)] = _cmdline(pid)
            todo.append(pid)
    return out


def _alive(key: tuple[int, int]) -> bool:
    st = _proc_stat(key[0])
    return st is not None and st[1] == key[1] and st[2] != "Z"


def become_subreaper() -> bool:
    """Make this process the parent of every orphan below it (Linux PR_SET_CHILD_SUBREAPER).

    Ray's raylet starts agents and workers; if the raylet dies first (a failed start, a crash)
    they would move to init and out of sight. As a subreaper this process keeps them in its own
    tree, where ``descendants`` finds them.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(36, 1, 0, 0, 0) == 0)  # 36 = PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def _reap(pid: int) -> None:
    """Collect an exited child (an orphan adopted as subreaper has no Popen to do it)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


RAY_EXIT_WAIT_S = 20.0
"""How long Ray's processes get to exit after ``ray.shutdown()`` before they are killed."""
RAY_START_ATTEMPTS = 3
"""ray.init gives the raylet a fixed 30 s to register with the GCS, which a loaded machine misses."""


def _stop_ray(
    before: set[tuple[int, int]], record: dict[str, Any], log: Any, wait_s: float = RAY_EXIT_WAIT_S
) -> None:
    """``ray.shutdown()``, then wait for (or kill) every Ray process below this one that was not in
    ``before``. Everything Ray started hangs below this process (workers below the raylet, orphans
    adopted by this subreaper): looked for before the shutdown and again while they exit."""
    import ray

    def rays() -> dict[tuple[int, int], str]:
        return {k: c for k, c in descendants(os.getpid()).items() if k not in before and "ray" in c.lower()}

    ours = rays()
    with contextlib.suppress(Exception):
        ray.shutdown()
    deadline = time.monotonic() + wait_s
    while True:
        ours.update(rays())
        left = [k for k in ours if _alive(k)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    record["processes"] += len(ours)
    for pid, start in left:
        log(
            f"Ray process {pid} still running {wait_s:.0f} s after ray.shutdown(): "
            f"killed ({ours[(pid, start)][:80]})"
        )
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        record["killed"].append(pid)
    deadline = time.monotonic() + 5.0
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [k for k in left if _alive(k)]
    record["left"] += [pid for pid, _ in left]
    for pid, _ in ours:
        _reap(pid)


@contextlib.contextmanager
def ray_instance(num_cpus: int, temp_dir: str, log: Any) -> Iterator[tuple[dict[str, Any], float]]:
    """A local Ray instance (GCS, raylet, workers) started by ``ray.init`` in this process.

    Yields a record of its processes (filled in on the way out) and the start-up time (of the
    attempt that worked: up to RAY_START_ATTEMPTS, each failed one stopped first). On the way out,
    whatever happens (an error, Ctrl-C half-way through ``ray.init``): ``ray.shutdown()``, then
    every Ray process that was below this one is waited for and, if still there after
    RAY_EXIT_WAIT_S, killed; the record says how many there were and how many had to be killed.
    """
    import ray

    # No usage-stats upload from a benchmark; the instance lives in temp_dir, not /tmp/ray.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    record: dict[str, Any] = {
        "processes": 0,
        "killed": [],
        "left": [],
        "start_attempts": 0,
        "subreaper": become_subreaper(),
    }
    before = set(descendants(os.getpid()))
    try:
        while True:
            record["start_attempts"] += 1
            t0 = time.perf_counter()
            try:
                ray.init(
                    num_cpus=num_cpus,
                    include_dashboard=False,
                    _temp_dir=temp_dir,
                    # the objects are ints: a small store instead of 30% of the memory in /dev/shm
                    object_store_memory=128 * 1024 * 1024,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                )
                break
            except Exception as exc:
                why = f"{type(exc).__name__}: {exc}"
                if record["start_attempts"] >= RAY_START_ATTEMPTS:
                    raise SystemExit(
                        f"bench: Ray did not start ({RAY_START_ATTEMPTS} attempts): {why}"
                    ) from exc
                log(f"Ray did not start ({why}); stopping what it started and trying again")
                # a failed ray.init leaves no session for ray.shutdown() to stop: no use waiting long
                _stop_ray(before, record, log, wait_s=2.0)
        yield record, time.perf_counter() - t0
    finally:
        _stop_ray(before, record, log)


class Interrupted(BaseException):
    """SIGINT or SIGTERM: unwinds like KeyboardInterrupt so every cluster is stopped on the way out."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def run_bench(
    prefix: str,
    measure: Callable[[str, contextlib.ExitStack], dict[str, Any]],
    render: Callable[[dict[str, Any]], str],
    as_json: bool,
    log: Callable[[str], None],
    fatal: tuple[type[Exception], ...] = (),
) -> int:
    """A benchmark's main: ``measure(tmp, stack)`` in a fresh temporary directory with SIGINT and
    SIGTERM unwinding it (everything entered on ``stack`` is stopped, the directory removed, also
    on errors), then the table (on stderr with ``as_json``, the JSON on stdout). The exit code:
    0, 128 + the signal, or 1 for an exception of ``fatal`` (a wrong answer)."""
    tmp = tempfile.mkdtemp(prefix=prefix)
    old = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with contextlib.ExitStack() as stack:
            report = measure(tmp, stack)
            log("stopping the clusters")
    except Interrupted as exc:
        log(f"{exc}: stopped the clusters, removed {tmp}")
        return 128 + exc.signum
    except fatal as exc:
        log(f"WRONG ANSWER: {exc}")
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for sig, handler in old.items():
            signal.signal(sig, handler)
    table = render(report)
    if as_json:
        print(table, file=sys.stderr)
        print(json.dumps(finite(report), indent=2, allow_nan=False))
    else:
        print(table)
    return 0


def finite(o: Any) -> Any:
    """NaN and infinity are not JSON: they become null."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [finite(v) for v in o]
    return o


def baseline_env(tree: str, script: str) -> dict[str, str]:
    """The environment that makes a node import raftmesh from ``tree`` (``--baseline-tree``),
    checked by importing it once; ``script`` names the bench in the error."""
    tree = os.path.abspath(tree)
    env = {"PYTHONPATH": tree, "PYTHONSAFEPATH": "1"}
    got = subprocess.run(
        [sys.executable, "-c", "import raftmesh; print(raftmesh.__file__)"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not got.startswith(tree + os.sep):
        raise SystemExit(f"{script}: --baseline-tree {tree}: the nodes would import {got}")
    return env
