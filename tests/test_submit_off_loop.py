"""A large submit is decoded and validated off the node's event loop (issue 13): on the loop,
10,000 tasks held every other call of the node (reads, watches) for ~0.5 s of CPU."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from raftmesh import calls
from raftmesh.client import DAG
from raftmesh.node import service
from raftmesh.node.service import ClusterService
from tests.inprocess import in_process_node


def _fan_out(name: str, leaves: int) -> DAG:
    dag = DAG(name)
    root = dag.task("root", "echo", input={"v": 0})
    for i in range(leaves):
        dag.task(f"w{i}", "echo", input={"v": i}, deps=[root])
    return dag


def test_a_large_submit_is_prepared_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_loop: list[tuple[int, bool]] = []
    prepare = ClusterService._prepare_submit

    def recording(self: ClusterService, request: Any) -> Any:
        on_loop.append((len(request.tasks), asyncio._get_running_loop() is not None))
        # the caller's call (principal, namespaces: ownership's checks) goes to the worker too
        assert calls.current() is not None
        return prepare(self, request)

    monkeypatch.setattr(ClusterService, "_prepare_submit", recording)
    with in_process_node(tmp_path / "n1") as node:
        small = node.client.submit(_fan_out("small", 2))
        large = node.client.submit(_fan_out("large", service.SUBMIT_OFF_LOOP_TASKS))
        assert node.client.get(small) is not None and node.client.get(large) is not None
    assert on_loop == [(3, True), (service.SUBMIT_OFF_LOOP_TASKS + 1, False)]


def test_errors_of_a_large_submit_are_the_callers(tmp_path: Path) -> None:
    from raftmesh.errors import InvalidArgument

    with in_process_node(tmp_path / "n1") as node:
        dag = _fan_out("bad", service.SUBMIT_OFF_LOOP_TASKS)
        dag.task("ghost_dep", "echo", deps=["nope"])
        with pytest.raises(InvalidArgument, match="nope"):
            node.client.submit(dag)
