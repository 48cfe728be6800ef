"""Pieces the benchmark scripts share (scripts/bench*.py import it as a sibling module).

Statistics, the side-by-side Dask cluster, the environment record that goes with every
result, and the signal handling that lets a benchmark stop every cluster it started.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import math
import os
import platform
import signal
import time
from collections.abc import Iterator, Sequence
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
            for d in ("raftmesh", "pysyncobj", "grpcio", "protobuf", "uvloop", "dask", "distributed")
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


class Interrupted(BaseException):
    """SIGINT or SIGTERM: unwinds like KeyboardInterrupt so every cluster is stopped on the way out."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def finite(o: Any) -> Any:
    """NaN and infinity are not JSON: they become null."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [finite(v) for v in o]
    return o
