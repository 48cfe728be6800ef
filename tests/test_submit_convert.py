"""The node's conversions of tasks: SubmitRun's decode of the wire tasks
(``convert.task_specs_from_pb``, and the JSON decode under it) gives exactly the specs (and the
errors) the decode followed by ``with_defaults`` gives; ``task_to_pb`` encodes every field of a
task, and a task that sets none as the message with only what it has."""

from __future__ import annotations

import json

import pytest

from raftmesh.consensus import values
from raftmesh.consensus.commands import AgentOffer, Approval, Compensation, TaskSpec, Usage
from raftmesh.consensus.state import Attempt, Gate, TaskState, TaskStatus
from raftmesh.errors import InvalidArgument
from raftmesh.node import convert
from raftmesh.proto.raftmesh.v1 import cluster_pb2 as pb

OFFERS = {"llm": AgentOffer("llm", retries=4, timeout_ms=9000), "echo": AgentOffer("echo")}


def _request() -> pb.SubmitRunRequest:
    return pb.SubmitRunRequest(
        priority=3,
        tasks=[
            pb.TaskSpec(id="src", agent="llm", input_json='{"items": [1, 2]}'),
            pb.TaskSpec(id="b", agent="llm", retries=0, timeout_ms=0, priority=9),
            pb.TaskSpec(id="c", agent="llm", retries=1, deps=["src"]),
            pb.TaskSpec(id="d", agent="llm", timeout_ms=5, deps=["src"]),
            pb.TaskSpec(id="e", agent="echo", requires=["gpu", "x"], locks=[pb.LockItem(name="L")]),
            pb.TaskSpec(id="m", agent="nobody", map="src", max_parallel=2, when_json='{"==": [1, 1]}'),
            pb.TaskSpec(
                id="f",
                agent="llm",
                replicas=3,
                fusion="weighted",
                quorum=2,
                weights=[0.5, 0.25, 0.25],
                agents=["llm", "echo"],
                judge="echo",
                locks=[pb.LockItem(name="a", mode="shared"), pb.LockItem(name="b")],
                retry_backoff_ms=20,
                trigger="all_done",
                deps=["src", "c"],
                compensate=pb.Compensation(agent="undo", input_json="[true, null]"),
                approval=pb.ApprovalSpec(prompt="ok?", timeout_ms=7),
            ),
            pb.TaskSpec(id="g", agent="echo", compensate=pb.Compensation(agent="undo")),
        ],
    )


def test_defaults_in_the_decode_are_what_with_defaults_gives() -> None:
    req = _request()
    plain = convert.task_specs_from_pb(req)
    assert convert.task_specs_from_pb(req, OFFERS) == convert.with_defaults(req, plain, OFFERS)
    assert convert.task_specs_from_pb(req, {}) == plain
    by_id = {t.id: t for t in convert.task_specs_from_pb(req, OFFERS)}
    assert [(by_id[k].retries, by_id[k].timeout_ms) for k in "bcde"] == [(0, 0), (1, 9000), (4, 5), (0, 0)]
    assert (by_id["src"].retries, by_id["src"].timeout_ms, by_id["m"].retries) == (4, 9000, 0)
    assert [(t.retries, t.timeout_ms) for t in plain if t.agent == "llm"] == [
        (0, 0),
        (0, 0),
        (1, 0),
        (0, 5),
        (0, 0),
    ]


def test_every_field_of_a_task_is_decoded() -> None:
    by_id = {t.id: t for t in convert.task_specs_from_pb(_request(), OFFERS)}
    assert by_id["f"] == TaskSpec(
        id="f",
        agent="llm",
        input=None,
        deps=("src", "c"),
        retries=4,
        priority=3,  # the run's, the task sets none
        timeout_ms=9000,
        retry_backoff_ms=20,
        locks=(("a", "shared"), ("b", "exclusive")),
        requires=(),
        when=None,
        trigger="all_done",
        replicas=3,
        fusion="weighted",
        quorum=2,
        weights=(0.5, 0.25, 0.25),
        agents=("llm", "echo"),
        judge="echo",
        approval=Approval("ok?", 7, "reject"),
        compensate=Compensation("undo", [True, None]),
    )
    assert by_id["m"].deps == ("src",)  # a map's source is a dependency whether listed or not
    assert (by_id["m"].when, by_id["m"].max_parallel, by_id["m"].map) == ({"==": [1, 1]}, 2, "src")
    assert by_id["e"].locks == (("L", "exclusive"),) and by_id["e"].requires == ("gpu", "x")
    assert by_id["b"].priority == 9 and by_id["src"].input == {"items": [1, 2]}
    assert by_id["g"].compensate == Compensation("undo", None)
    assert all(type(getattr(t, f)) is tuple for t in by_id.values() for f in ("locks", "requires", "weights"))


@pytest.mark.parametrize(
    ("task", "says"),
    [
        (pb.TaskSpec(id="x", agent="a", input_json="{nope"), "task 'x': input_json is not valid JSON ("),
        (pb.TaskSpec(agent="a", when_json="[1,"), "task #2: when_json is not valid JSON ("),
        (
            pb.TaskSpec(id="y", agent="a", compensate=pb.Compensation(agent="u", input_json="NaN")),
            "task 'y': compensate.input_json: NaN is not a JSON number",
        ),
        (
            pb.TaskSpec(id="z" * 60, agent="a", input_json="1 2"),
            f"task {'z' * 40!r}: input_json is not valid JSON (",
        ),
        (
            pb.TaskSpec(id="w", agent="a", input_json="\ufeff1"),
            "task 'w': input_json is not valid JSON (Unexpected UTF-8 BOM",
        ),
    ],
)
def test_a_bad_value_is_named_by_its_task_and_field(task: pb.TaskSpec, says: str) -> None:
    req = pb.SubmitRunRequest(tasks=[pb.TaskSpec(id="ok", agent="a", input_json="1"), task])
    for defaults in (None, OFFERS):
        with pytest.raises(InvalidArgument) as exc:
            convert.task_specs_from_pb(req, defaults)
        assert str(exc.value).startswith(says), str(exc.value)


@pytest.mark.parametrize("text", ["{nope", "1 2", "[1,", "\ufeff1", ' {"a": 1} x', "tru", '"\\ud800"x', "01"])
def test_parse_says_what_json_loads_says(text: str) -> None:
    """The shared decoder reports a syntax error in ``json.loads``'s words (a BOM included)."""
    with pytest.raises(json.JSONDecodeError) as want:
        json.loads(text)
    with pytest.raises(values.BadValue) as got:
        values.parse(text)
    assert got.value.syntax and str(got.value) == str(want.value)


def test_parse_decodes_as_json_loads_does() -> None:
    for text in ['{"b": [1, 2.5, "x", null, true], "a": {"c": -3}}', " 7 ", '"\\u00e9"', "[]", "1e3"]:
        assert values.parse(text) == json.loads(text)
    with pytest.raises(values.BadValue, match="Infinity is not a JSON number"):
        values.parse("[1, Infinity]")


def test_task_to_pb_encodes_every_field() -> None:
    spec = TaskSpec(
        id="t",
        agent="llm",
        input={"q": [1.5, None]},
        deps=("a", "b"),
        retries=2,
        requires=("gpu",),
        when={"==": [1, 1]},
        trigger="all_done",
        map="a",
        max_parallel=3,
        approval=Approval("ok?", 7, "approve"),
        compensate=Compensation("undo", [1]),
    )
    t = TaskState(
        spec=spec,
        status=TaskStatus.RUNNING,
        deps_waiting=0,
        dependents=["z"],
        retries_left=1,
        attempt=2,
        node="n2",
        token=9,
        output={"x": "é"},
        error="e",
        started_ms=5,
        finished_ms=6,
        usage=Usage(3, 4, 0.25),
        preempted_by=(("r-2", "k", 1, 8),),
        requeued_attempt=1,
        suspect_moves=2,
        parent="p",
        origin="map",
        children=["t[0]"],
        children_waiting=1,
        item=[2],
        index=4,
        gate=Gate(11, 12, 13, "approved", "me", "fine", 14),
        history=[Attempt(1, "n1", 2, 3, "FAILED", "boom", {"o": 1})],
        depth=2,
    )
    want = pb.Task(
        id="t",
        agent="llm",
        status=pb.TASK_STATUS_RUNNING,
        attempt=2,
        node="n2",
        output_json='{"x":"\\u00e9"}',
        error="e",
        deps=["a", "b"],
        token=9,
        retries_left=1,
        started_ms=5,
        finished_ms=6,
        input_json='{"q":[1.5,null]}',
        usage=pb.Usage(tokens_in=3, tokens_out=4, cost=0.25),
        requires=["gpu"],
        preempted_by=[pb.Preemption(by_run_id="r-2", by_task_id="k", attempt=1, at_ms=8)],
        requeued_attempt=1,
        suspect_moves=2,
        compensate=pb.Compensation(agent="undo", input_json="[1]"),
        history=[
            pb.TaskAttempt(
                attempt=1,
                node="n1",
                started_ms=2,
                finished_ms=3,
                outcome="FAILED",
                error="boom",
                output_json='{"o":1}',
            )
        ],
        approval=pb.ApprovalSpec(prompt="ok?", timeout_ms=7, on_timeout="approve"),
        gate=pb.ApprovalGate(
            id=11, opened_ms=12, deadline_ms=13, decision="approved", by="me", comment="fine", decided_ms=14
        ),
        parent="p",
        origin="map",
        index=4,
        item_json="[2]",
        children=["t[0]"],
        children_waiting=1,
        depth=2,
        when_json='{"==":[1,1]}',
        trigger="all_done",
        map="a",
        max_parallel=3,
    )
    got = convert.task_to_pb(t)
    assert got == want and got.SerializeToString(deterministic=True) == want.SerializeToString(
        deterministic=True
    )


def test_task_to_pb_of_a_bare_task_has_only_its_usage_set() -> None:
    t = TaskState(
        spec=TaskSpec(id="a", agent="echo"),
        status=TaskStatus.READY,
        deps_waiting=0,
        dependents=[],
        retries_left=0,
    )
    got = convert.task_to_pb(t, None)
    assert got == pb.Task(id="a", agent="echo", status=pb.TASK_STATUS_READY, usage=pb.Usage())
    assert [f.name for f, _ in got.ListFields()] == ["id", "agent", "status", "usage"]
    for absent in ("fusion", "compensate", "approval", "gate"):
        assert not got.HasField(absent)
    assert (got.output_json, got.input_json, got.item_json, got.when_json) == ("", "", "", "")
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        convert.dump_json(float("nan"))
