"""DAG validation (``raftmesh.consensus.dag``): every rejection names what to fix."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import pytest

from raftmesh.client import DAG
from raftmesh.consensus import limits
from raftmesh.consensus.commands import AgentOffer, TaskSpec
from raftmesh.consensus.dag import DagError, check_id, find_cycle, validate
from raftmesh.errors import InvalidArgument
from raftmesh.node import convert
from raftmesh.proto.raftmesh.v1 import cluster_pb2 as pb

AGENTS = {"echo", "llm"}


def t(task_id: str, *deps: str, agent: str = "echo", **kw: object) -> TaskSpec:
    return TaskSpec(id=task_id, agent=agent, deps=deps, **kw)  # type: ignore[arg-type]


def rejects(tasks: list[TaskSpec], kind: str, agents: Collection[str] = AGENTS) -> str:
    with pytest.raises(DagError) as info:
        validate(tasks, agents)
    assert info.value.kind == kind, str(info.value)
    return str(info.value)


def test_valid_diamond_is_accepted() -> None:
    validate([t("a"), t("b", "a"), t("c", "a", agent="llm"), t("d", "b", "c")], AGENTS)


def test_deps_may_name_later_tasks() -> None:
    # Spec order is not topological order; only cycles are errors.
    validate([t("b", "a"), t("a")], AGENTS)
    assert find_cycle([t("b", "a"), t("a")]) is None


def test_empty_run_is_rejected() -> None:
    assert "at least one task" in rejects([], "invalid")


def test_task_ids_must_be_unique() -> None:
    msg = rejects([t("a"), t("b"), t("a")], "invalid")
    assert "'a'" in msg and "twice" in msg


def test_unknown_dependency_is_named() -> None:
    msg = rejects([t("a"), t("b", "a", "ghost")], "unknown_dep")
    assert "'b'" in msg and "'ghost'" in msg


def test_self_dependency_is_a_cycle() -> None:
    msg = rejects([t("a", "a")], "cycle")
    assert "a -> a" in msg


def test_duplicate_dependency_is_rejected() -> None:
    assert "twice" in rejects([t("a"), t("b", "a", "a")], "invalid")


def test_cycle_of_two_is_named() -> None:
    msg = rejects([t("a", "b"), t("b", "a")], "cycle")
    assert "a -> b -> a" in msg


def test_cycle_of_three_is_named_in_execution_order() -> None:
    # b runs after a, c after b, a after c.
    msg = rejects([t("a", "c"), t("b", "a"), t("c", "b")], "cycle")
    assert "a -> b -> c -> a" in msg


def test_cycle_behind_a_valid_prefix_is_found() -> None:
    tasks = [t("root"), t("x", "root", "z"), t("y", "x"), t("z", "y"), t("leaf", "z")]
    msg = rejects(tasks, "cycle")
    assert "x -> y -> z -> x" in msg
    assert find_cycle(tasks) == ["x", "y", "z", "x"]


def test_find_cycle_is_deterministic() -> None:
    tasks = [t("a", "b"), t("b", "a"), t("c", "d"), t("d", "c")]
    assert find_cycle(tasks) == find_cycle(list(tasks)) == ["a", "b", "a"]


def test_long_chain_is_not_a_cycle_and_does_not_recurse() -> None:
    # Deeper than Python's recursion limit: the DFS must be iterative.
    n = 5000
    tasks = [t("t0")] + [t(f"t{i}", f"t{i - 1}") for i in range(1, n)]
    validate(tasks, AGENTS)
    closed = [t("t0", f"t{n - 1}"), *tasks[1:]]
    assert "cycle" in rejects(closed, "cycle")


def test_unknown_agent_lists_what_the_cluster_offers() -> None:
    msg = rejects([t("a", agent="gpt"), t("b", agent="zzz")], "unknown_agent")
    assert "'gpt'" in msg and "'zzz'" in msg
    assert "echo, llm" in msg


def test_unknown_agent_with_no_members_says_so() -> None:
    assert "none yet" in rejects([t("a")], "unknown_agent", agents=set())


def test_input_size_limit() -> None:
    at_limit = "x" * (limits.MAX_TASK_INPUT_BYTES - 5)  # str header: 5 bytes
    validate([t("a", input=at_limit)], AGENTS)
    msg = rejects([t("a", input="x" * limits.MAX_TASK_INPUT_BYTES)], "limit")
    assert "input" in msg and str(limits.MAX_TASK_INPUT_BYTES) in msg


def test_whole_run_size_limit() -> None:
    # Each input is under the per-task limit; together they exceed the run limit.
    per_task = limits.MAX_TASK_INPUT_BYTES - 16
    n = limits.MAX_RUN_SPEC_BYTES // per_task + 1
    tasks = [t(f"t{i}", input="x" * per_task) for i in range(n)]
    msg = rejects(tasks, "limit")
    assert str(limits.MAX_RUN_SPEC_BYTES) in msg


def test_task_count_limit() -> None:
    tasks = [t(f"t{i}") for i in range(limits.MAX_TASKS_PER_RUN)]
    validate(tasks, AGENTS)
    msg = rejects([*tasks, t("one-more")], "limit")
    assert str(limits.MAX_TASKS_PER_RUN) in msg


@pytest.mark.parametrize("good", ["a", "A9", "run-1", "x_y.z:w", "9", "a" * limits.MAX_ID_CHARS])
def test_good_ids(good: str) -> None:
    check_id("task id", good)
    validate([t(good)], AGENTS)


@pytest.mark.parametrize("bad", ["", "-a", "_a", ".a", "a b", "a/b", "ä", "a\n", "a;b"])
def test_bad_id_characters(bad: str) -> None:
    with pytest.raises(DagError) as info:
        check_id("task id", bad)
    assert info.value.kind == "invalid"
    assert "task id" in str(info.value)
    rejects([t(bad)], "invalid")


def test_id_length_limit() -> None:
    with pytest.raises(DagError) as info:
        check_id("run id", "a" * (limits.MAX_ID_CHARS + 1))
    assert info.value.kind == "limit"
    assert str(limits.MAX_ID_CHARS) in str(info.value)


@pytest.mark.parametrize(
    ("field", "bad", "good"),
    [
        ("retries", -1, limits.MAX_RETRIES),
        ("retries", limits.MAX_RETRIES + 1, 0),
        ("timeout_ms", -1, limits.MAX_TIMEOUT_MS),
        ("timeout_ms", limits.MAX_TIMEOUT_MS + 1, 0),
        ("retry_backoff_ms", -1, limits.MAX_BACKOFF_MS),
        ("retry_backoff_ms", limits.MAX_BACKOFF_MS + 1, 0),
        ("priority", limits.MAX_PRIORITY + 1, limits.MAX_PRIORITY),
        ("priority", -limits.MAX_PRIORITY - 1, -limits.MAX_PRIORITY),
    ],
)
def test_numeric_limits(field: str, bad: int, good: int) -> None:
    validate([t("a", **{field: good})], AGENTS)
    msg = rejects([t("a", **{field: bad})], "limit")
    assert field in msg and "'a'" in msg


# ---- requires and agent defaults (the DAG file, the SDK, the wire) ---------------------


def test_requires_is_checked_for_form_and_against_what_members_offered() -> None:
    offered = {"echo": {()}, "llm": {("gpu",), ("gpu", "vision")}}
    validate([t("a", agent="llm", requires=("gpu", "vision"))], offered)
    validate([t("a", agent="echo")], offered)
    msg = rejects([t("a", agent="llm", requires=("tpu",))], "unserved", offered)
    assert "requires capabilities [tpu] of agent 'llm'" in msg and "[gpu, vision]" in msg
    assert "start a node whose agent offers them" in msg
    rejects([t("a", requires=("gpu", "gpu"))], "invalid")
    rejects([t("a", requires=("",))], "invalid")
    rejects([t("a", requires=tuple(f"c{i}" for i in range(limits.MAX_CAPABILITIES + 1)))], "limit")


def test_requires_travels_in_the_spec_only_when_set() -> None:
    plain = TaskSpec("a", "echo")
    assert "requires" not in plain.to_map()  # the old wire form, byte for byte
    with_caps = TaskSpec("a", "echo", requires=("gpu",))
    assert TaskSpec.from_map(with_caps.to_map()) == with_caps
    assert TaskSpec.from_map(plain.to_map()) == plain


def test_dag_files_take_requires_and_leave_unset_defaults_to_the_agent(tmp_path: Path) -> None:
    path = tmp_path / "dag.yaml"
    path.write_text(
        "tasks:\n"
        "  - {id: a, agent: llm, requires: [gpu]}\n"
        "  - {id: b, agent: llm, retries: 0, timeout_ms: 500, deps: [a]}\n"
    )
    dag = DAG.from_file(str(path))
    a, b = dag.tasks["a"], dag.tasks["b"]
    assert (a.requires, a.retries, a.timeout_ms) == (("gpu",), None, None)
    assert (b.requires, b.retries, b.timeout_ms) == ((), 0, 500)
    with pytest.raises(InvalidArgument, match="requires must be a list"):
        DAG.from_dict({"tasks": [{"id": "a", "agent": "x", "requires": "gpu"}]})
    with pytest.raises(InvalidArgument, match="requires must be a list"):
        DAG().task("a", "x", requires="gpu")


def test_the_api_fills_unset_retries_and_timeout_from_the_agent_offer() -> None:
    req = pb.SubmitRunRequest(
        tasks=[
            pb.TaskSpec(id="a", agent="llm"),
            pb.TaskSpec(id="b", agent="llm", retries=0, timeout_ms=0),
            pb.TaskSpec(id="c", agent="llm", retries=1),
            pb.TaskSpec(id="d", agent="echo", requires=["x"]),
        ]
    )
    specs = convert.task_specs_from_pb(req)
    offers = {"llm": AgentOffer("llm", retries=4, timeout_ms=9000)}
    a, b, c, d = convert.with_defaults(req, specs, offers)
    assert (a.retries, a.timeout_ms) == (4, 9000)
    assert (b.retries, b.timeout_ms) == (0, 0)  # explicitly set: kept
    assert (c.retries, c.timeout_ms) == (1, 9000)
    assert (d.retries, d.timeout_ms, d.requires) == (0, 0, ("x",))  # no offer: 0


def test_the_builder_keeps_compensate_and_approval_apart() -> None:
    """Both keys given to ``DAG.task`` land on their own fields (the merge of approvals and
    sagas once passed them to ``Task`` in each other's places)."""
    dag = DAG()
    approval = {"prompt": "ok?", "timeout_ms": 0, "on_timeout": "reject"}
    t = dag.task("a", "sum", compensate={"agent": "undo", "input": 1}, approval=approval)
    assert t.compensate == {"agent": "undo", "input": 1}
    assert t.approval == approval
    gated = dag.task("b", "sum", approval=approval)
    assert gated.compensate is None and gated.approval == approval


def test_a_run_failing_the_whole_run_checks_reports_the_same_first_error_as_task_by_task() -> None:
    """``validate`` checks inputs and sizes for the whole run at once and, when that fails, task
    by task: the error is still the first task's first problem, in spec order."""
    nan = float("nan")
    msg = rejects([t("a", retries=limits.MAX_RETRIES + 1), t("b", input={"x": nan})], "limit")
    assert "'a'" in msg and "retries" in msg
    msg = rejects([t("a", input={"x": nan}), t("b", retries=limits.MAX_RETRIES + 1)], "invalid")
    assert "'a'" in msg and "input" in msg
    # Nested to the limit: the run's list of inputs is one level deeper, each input alone is not.
    deep: object = 1
    for _ in range(limits.MAX_JSON_DEPTH):
        deep = [deep]
    validate([t("a", input=deep), t("b", input=1)], AGENTS)
    deep = [deep]
    assert "nested" in rejects([t("a"), t("b", input=deep)], "invalid")
    # Inputs together over the input limit, each under it: accepted.
    half = "x" * (limits.MAX_TASK_INPUT_BYTES // 2)
    validate([t("a", input=half), t("b", input=half), t("c", input=half)], AGENTS)


@pytest.mark.parametrize(
    "bad",
    [
        {"priority": 2**70},
        {"retries": 2**70},
        {"requires": ("\ud800",)},
        {"locks": (("\ud800", "exclusive"),)},
    ],
    ids=["priority-out-of-range", "retries-out-of-range", "capability-lone-surrogate", "lock-lone-surrogate"],
)
def test_a_field_the_whole_run_check_cannot_encode_is_a_dag_error_naming_it(bad: dict[str, object]) -> None:
    """The whole-run size check encodes fields not validated yet; one that cannot be encoded must
    still come out as the per-task check's error (INVALID_ARGUMENT), never as an exception."""
    with pytest.raises(DagError) as info:
        validate([t("a"), t("b", **bad)], AGENTS)
    assert "'b'" in str(info.value)
