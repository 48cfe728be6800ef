"""Shared fixtures. End-to-end tests start real node processes on loopback and stop them by pid."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

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


@contextmanager
def shared_cluster(request: pytest.FixtureRequest, cluster: LocalCluster) -> Iterator[LocalCluster]:
    """Start ``cluster`` for a fixture wider than one test; stop it (by its processes' pids) at
    the end, first printing each node's log tail if a test failed while it ran."""
    failed_before = request.session.testsfailed
    try:
        cluster.start()
        yield cluster
    finally:
        if request.session.testsfailed > failed_before:
            dump_logs(cluster)
        cluster.close()


@pytest.fixture
def make_cluster(
    request: pytest.FixtureRequest, tmp_path: os.PathLike[str]
) -> Iterator[Callable[..., LocalCluster]]:
    """``make_cluster(size=3, start=True, **LocalCluster kwargs)``: real node processes for this test.

    Every cluster made is stopped (by its processes' pids) and its directory removed at the
    end; if the test failed, each node's log tail is printed first.
    """
    made: list[LocalCluster] = []

    def make(size: int = 3, start: bool = True, **kw: Any) -> LocalCluster:
        c = LocalCluster(size, base_dir=os.path.join(str(tmp_path), f"cluster{len(made)}"), **kw)
        made.append(c)
        if start:
            c.start()
        return c

    try:
        yield make
    finally:
        rep = getattr(request.node, "rep_call", None)
        for c in made:
            if rep is not None and rep.failed:
                dump_logs(c)
            c.close()


@pytest.fixture
def cluster3(make_cluster: Callable[..., LocalCluster]) -> LocalCluster:
    return make_cluster(3)


@pytest.fixture(scope="module")
def module_cluster3(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalCluster]:
    """One 3-node cluster shared by the tests of a module that do not kill, pause or restart its
    nodes (a module overrides ``cluster3`` with it where isolation is not what a test proves:
    starting and stopping three processes per test was most of those tests' time)."""
    with shared_cluster(
        request, LocalCluster(3, base_dir=str(tmp_path_factory.mktemp("module-cluster")))
    ) as c:
        yield c
