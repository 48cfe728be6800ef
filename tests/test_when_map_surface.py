"""``when``/``trigger``/``map`` through the SDK builder, DAG files, the wire and ``get --json``."""

from __future__ import annotations

from pathlib import Path

import pytest

from raftmesh import DAG
from raftmesh.client._types import RunInfo, TaskInfo
from raftmesh.consensus import TaskStatus
from raftmesh.errors import InvalidArgument
from raftmesh.node import convert
from raftmesh.proto.raftmesh.v1 import cluster_pb2 as pb
from tests.test_machine import Cluster, spec

WHEN = {"path": "src.count", "op": ">", "value": 3}


def test_builder_takes_when_trigger_and_map() -> None:
    dag = DAG()
    src = dag.task("src", "echo")
    other = dag.task("other", "echo")
    m = dag.task("m", "echo", deps=[other], map=src, max_parallel=3)
    w = dag.task("w", "echo", deps=[src], when=WHEN, trigger="all_done")
    assert (m.map, m.max_parallel, m.deps) == ("src", 3, ("other", "src"))  # the source is a dep
    assert dag.task("m2", "echo", deps=[src], map="src").deps == ("src",)  # not twice
    assert (w.when, w.trigger) == (WHEN, "all_done")
    # to_dict and back keeps them; a task without them keeps its old shape
    again = DAG.from_dict(dag.to_dict())
    assert again.tasks == dag.tasks
    assert "when" not in dag.tasks["src"].to_dict() and "map" not in dag.tasks["src"].to_dict()


def test_yaml_file_with_when_and_map(tmp_path: Path) -> None:
    path = tmp_path / "dag.yaml"
    path.write_text(
        "tasks:\n"
        "  - {id: src, agent: echo, input: [1, 2]}\n"
        "  - {id: m, agent: echo, map: src, max_parallel: 2}\n"
        "  - id: big\n"
        "    agent: echo\n"
        "    deps: [src]\n"
        "    when: {path: src.count, op: '>', value: 3}\n"
        "  - {id: j, agent: echo, deps: [big], trigger: any_succeeded}\n"
    )
    dag = DAG.from_file(str(path))
    m, big, j = dag.tasks["m"], dag.tasks["big"], dag.tasks["j"]
    assert (m.map, m.max_parallel, m.deps) == ("src", 2, ("src",))
    assert big.when == WHEN and j.trigger == "any_succeeded"
    with pytest.raises(InvalidArgument, match="unknown field"):
        DAG.from_dict({"tasks": [{"id": "a", "agent": "echo", "mapp": "x"}]})


def test_the_wire_carries_the_keys_into_the_spec() -> None:
    req = pb.SubmitRunRequest(
        tasks=[
            pb.TaskSpec(id="src", agent="echo"),
            pb.TaskSpec(id="m", agent="echo", map="src", max_parallel=2),
            pb.TaskSpec(
                id="w", agent="echo", deps=["src"], when_json='{"path":"src.count","op":">","value":3}'
            ),
            pb.TaskSpec(id="j", agent="echo", deps=["w"], trigger="any_succeeded"),
        ]
    )
    src, m, w, j = convert.task_specs_from_pb(req)
    assert (m.map, m.max_parallel, m.deps) == ("src", 2, ("src",))  # the source is added to deps
    assert (w.when, w.trigger, src.when) == (WHEN, "", None)
    assert j.trigger == "any_succeeded"
    bad = pb.SubmitRunRequest(tasks=[pb.TaskSpec(id="w", agent="echo", when_json="{path:")])
    with pytest.raises(InvalidArgument, match="task 'w': when_json is not valid JSON"):
        convert.task_specs_from_pb(bad)


def test_get_shows_the_group_fields_of_a_map_and_its_instances() -> None:
    c = Cluster()
    c.ok(c.register("n1"))
    when = {"path": "src.0.count", "op": ">", "value": 0}
    c.ok(c.submit("r", [spec("src"), spec("m", "src", map="src", max_parallel=1, when=when)]))
    c.run_task("r", "src", output=[{"count": 2}, "x"])
    run = RunInfo.from_pb(convert.run_to_pb(c.st.runs["r"]))
    m, i0, i1 = run.tasks["m"], run.tasks["m[0]"], run.tasks["m[1]"]
    assert (m.status, m.children, m.children_waiting, m.map, m.max_parallel) == (
        TaskStatus.WAITING_CHILDREN.value,
        ("m[0]", "m[1]"),
        2,
        "src",
        1,
    )
    assert (i0.parent, i0.origin, i0.index, i0.item, i0.status) == ("m", "map", 0, {"count": 2}, "READY")
    assert (i1.index, i1.item, i1.status) == (1, "x", "PENDING")
    js = run.to_json()["tasks"]
    assert js["m"]["when"] == when and js["m"]["children"] == ["m[0]", "m[1]"]
    assert {k: js["m[1]"][k] for k in ("parent", "origin", "index", "item", "depth")} == {
        "parent": "m",
        "origin": "map",
        "index": 1,
        "item": "x",
        "depth": 0,
    }
    # A plain task has the keys too, empty.
    assert js["src"]["parent"] == "" and js["src"]["children"] == [] and js["src"]["when"] is None
    assert TaskInfo.from_pb(pb.Task(id="x")).item is None
