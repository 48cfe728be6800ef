"""Shared fixtures. End-to-end tests start real node processes on loopback and stop them by pid."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from raftmesh.localcluster import LocalCluster


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def dump_logs(cluster: LocalCluster, lines: int = 40) -> None:
    """Print the tail of every node's log (called when a test using a cluster fails)."""
    for n in cluster.nodes.values():
        try:
            with open(n.log_path, encoding="utf-8", errors="replace") as f:
                tail = f.readlines()[-lines:]
        except OSError:
            continue
        print(f"----- {n.id} (pid {n.pid}) {n.log_path}")
        print("".join(tail))


@pytest.fixture
def cluster3(request: pytest.FixtureRequest, tmp_path: os.PathLike[str]) -> Iterator[LocalCluster]:
    c = LocalCluster(3, base_dir=str(tmp_path))
    try:
        c.start()
        yield c
    finally:
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            dump_logs(c)
        c.close()
