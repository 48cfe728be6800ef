"""``when`` conditions and ``trigger`` rules: checked at submit, evaluated in apply."""

from __future__ import annotations

from typing import Any

import pytest

from raftmesh.consensus import CancelRun, Code, RunStatus, SubmitRun, TaskStatus, budgets, conditions, limits
from raftmesh.consensus.commands import Budget
from raftmesh.consensus.dag import DagError, validate
from tests.test_machine import Cluster, check_indexes, spec, status


def out(outputs: dict[str, Any]) -> Any:
    return lambda d: outputs.get(d, conditions.MISSING)


@pytest.mark.parametrize(
    ("cond", "want"),
    [
        ({"path": "fetch.count", "op": ">", "value": 3}, True),
        ({"path": "fetch.count", "op": "<=", "value": 3}, False),
        ({"path": "fetch.count", "op": "==", "value": 4.0}, True),
        ({"path": "fetch.flag", "op": "==", "value": 1}, False),  # true is not 1
        ({"path": "fetch.flag", "op": "==", "value": True}, True),
        ({"path": "fetch.kind", "op": "in", "value": ["bug", "outage"]}, True),
        ({"path": "fetch.kind", "op": "not_in", "value": ["bug"]}, True),
        ({"path": "fetch.kind", "op": "in", "value": "an outage here"}, True),
        ({"path": "fetch.items.1", "op": "==", "value": "b"}, True),
        ({"path": "fetch.items.9", "op": "exists"}, False),
        ({"path": "fetch.missing", "op": "!=", "value": 1}, False),  # a missing path is false
        ({"path": "fetch.kind", "op": ">", "value": 3}, False),  # different kinds do not order
        ({"path": "fetch", "op": "exists"}, True),
        ({"path": "skipped", "op": "exists"}, False),
        (
            {"all": [{"path": "fetch.count", "op": ">", "value": 3}, {"path": "fetch.flag", "op": "exists"}]},
            True,
        ),
        (
            {"any": [{"path": "fetch.count", "op": ">", "value": 9}, {"path": "skipped", "op": "exists"}]},
            False,
        ),
        ({"not": {"path": "fetch.count", "op": ">", "value": 9}}, True),
        ({"path": "a.b.c", "op": "==", "value": 1}, True),  # the longest dependency id wins
    ],
)
def test_evaluate(cond: Any, want: bool) -> None:
    deps = ["fetch", "skipped", "a", "a.b"]
    outputs = {
        "fetch": {"count": 4, "flag": True, "kind": "outage", "items": ["a", "b"]},
        "a": {"b": {"c": 2}},
        "a.b": {"c": 1},
    }
    conditions.check(cond, deps)
    assert conditions.evaluate(cond, deps, out(outputs)) is want


@pytest.mark.parametrize(
    ("cond", "fix"),
    [
        ("fetch.count > 3", "must be a map"),
        ({"path": "other.count", "op": ">", "value": 3}, "add the task to deps"),
        ({"path": "fetch.count", "op": "~", "value": 3}, "is not one of"),
        ({"path": "fetch.count", "op": ">"}, "needs a value"),
        ({"path": "fetch.count", "op": "exists", "value": 1}, "takes no value"),
        ({"path": "fetch.count", "op": ">", "value": [1]}, "compares numbers or strings"),
        ({"path": "fetch.count", "op": "in", "value": 3}, "needs a list"),
        ({"path": "fetch..count", "op": "exists"}, "empty key"),
        ({"all": []}, "non-empty list"),
        ({"all": [{"path": "fetch", "op": "exists"}], "op": "=="}, "only key"),
        ({"path": "fetch", "op": "exists", "extra": 1}, "unknown key"),
    ],
)
def test_check_rejects_with_a_fix(cond: Any, fix: str) -> None:
    with pytest.raises(conditions.ConditionError, match=fix):
        conditions.check(cond, ["fetch"])


def test_check_bounds_size_and_depth() -> None:
    leaf = {"path": "f", "op": "exists"}
    deep: Any = leaf
    for _ in range(limits.MAX_CONDITION_DEPTH):
        deep = {"not": deep}
    with pytest.raises(conditions.ConditionError, match="nest"):
        conditions.check(deep, ["f"])
    with pytest.raises(conditions.ConditionError, match="at most"):
        conditions.check({"any": [leaf] * limits.MAX_CONDITION_NODES}, ["f"])


def test_validate_rejects_bad_when_and_trigger_at_submit() -> None:
    with pytest.raises(DagError, match="task 'b': when"):
        validate([spec("a"), spec("b", when={"path": "zzz", "op": "exists"})], {"echo"})
    with pytest.raises(DagError, match="trigger"):
        validate([spec("a"), spec("b", "a", trigger="sometimes")], {"echo"})
    with pytest.raises(DagError, match="trigger needs deps"):
        validate([spec("a", trigger="all_done")], {"echo"})


def test_a_when_is_bounded_in_bytes() -> None:
    def big(n: int) -> dict[str, Any]:
        return {"path": "a.k", "op": "in", "value": ["x" * 1000] * n}

    validate([spec("a"), spec("b", "a", when=big(60))], {"echo"})
    with pytest.raises(
        DagError, match=f"when is .* bytes encoded; the limit is {limits.MAX_CONDITION_BYTES}"
    ):
        validate([spec("a"), spec("b", "a", when=big(400))], {"echo"})


# ---- in the state machine --------------------------------------------------------


@pytest.fixture
def c() -> Cluster:
    cluster = Cluster()
    cluster.ok(cluster.register("n1"))
    return cluster


def test_false_when_skips_and_skips_cascade(c: Cluster) -> None:
    c.ok(
        c.submit(
            "r",
            [
                spec("fetch"),
                spec("big", "fetch", when={"path": "fetch.count", "op": ">", "value": 3}),
                spec("small", "fetch", when={"path": "fetch.count", "op": "<=", "value": 3}),
                spec("after_big", "big"),
                spec("after_big_2", "after_big"),
                spec("join", "big", "small", trigger="any_succeeded"),
            ],
        )
    )
    c.run_task("r", "fetch", output={"count": 2})
    st = status(c, "r")
    assert st["big"] is st["after_big"] is st["after_big_2"] is TaskStatus.SKIPPED
    assert st["small"] is TaskStatus.READY and st["join"] is TaskStatus.PENDING
    assert "when condition is false" in c.task("r", "big").error
    assert "dependency was skipped" in c.task("r", "after_big").error
    c.run_task("r", "small")
    c.run_task("r", "join")
    assert c.st.runs["r"].status is RunStatus.SUCCEEDED


def test_triggers(c: Cluster) -> None:
    c.ok(
        c.submit(
            "r",
            [
                spec("a"),
                spec("s", "a", when={"path": "a", "op": "==", "value": "never"}),
                spec("any", "s", trigger="any_succeeded"),
                spec("done", "s", trigger="all_done"),
                spec("all", "s", "a"),
            ],
        )
    )
    c.run_task("r", "a")
    st = status(c, "r")
    assert st["s"] is st["any"] is st["all"] is TaskStatus.SKIPPED
    assert st["done"] is TaskStatus.READY
    c.run_task("r", "done")
    assert c.st.runs["r"].status is RunStatus.SUCCEEDED


def test_a_run_whose_every_remaining_task_is_skipped_succeeds(c: Cluster) -> None:
    c.ok(c.submit("r", [spec("a"), spec("b", "a", when={"path": "a.go", "op": "==", "value": True})]))
    c.run_task("r", "a", output={"go": False})
    assert c.st.runs["r"].status is RunStatus.SUCCEEDED
    assert status(c, "r")["b"] is TaskStatus.SKIPPED


def test_a_long_chain_of_skips_does_not_recurse(c: Cluster) -> None:
    n = 3000
    tasks = [spec("a"), spec("t0", "a", when={"path": "a", "op": "==", "value": 1})]
    tasks += [spec(f"t{i}", f"t{i - 1}") for i in range(1, n)]
    c.ok(c.submit("r", tasks))
    c.run_task("r", "a", output=0)
    assert c.st.runs["r"].status is RunStatus.SUCCEEDED
    assert all(s is TaskStatus.SKIPPED for k, s in status(c, "r").items() if k != "a")


def test_submit_with_bad_when_changes_nothing(c: Cluster) -> None:
    res = c.unchanged(
        c.submit("r", [spec("a"), spec("b", "a", when={"path": "a", "op": "like"})]), Code.INVALID_ARGUMENT
    )
    assert "op 'like'" in res.message


def test_run_reason_names_why_it_ended(c: Cluster) -> None:
    c.ok(c.submit("f", [spec("a")]))
    c.ok(c.assign(("f", "a", "n1")))
    c.ok(c.fail("f", "a", retryable=False))
    c.ok(c.submit("x", [spec("a")]))
    c.ok(CancelRun(c.rid(), c.ts, "x", "no"))
    c.ok(c.submit("ok", [spec("a")]))
    c.run_task("ok", "a")
    assert [c.st.runs[r].reason for r in ("f", "x", "ok")] == ["TASK_FAILED", "CANCELLED", ""]


def test_budget_max_tasks_and_exceed(c: Cluster) -> None:
    c.ok(SubmitRun(c.rid(), c.ts, "r", "", (spec("a"), spec("b")), 0, "r", "t", Budget(max_tasks=3)))
    run = c.st.runs["r"]
    assert budgets.tasks_over(run, 1) == ""
    assert "max_tasks is 3; the run has 2 tasks and would add 2" in budgets.tasks_over(run, 2)
    check_indexes(c.sm)


def test_a_unicode_digit_key_is_a_missing_key_not_an_apply_error(c: Cluster) -> None:
    # "²".isdigit() is true but int("²") raises: apply must not fail halfway on such a path.
    c.ok(c.submit("r", [spec("a"), spec("b", "a", when={"path": "a.²", "op": "exists"})]))
    c.run_task("r", "a", output=[1, 2, 3])
    assert status(c, "r")["b"] is TaskStatus.SKIPPED
    assert c.st.runs["r"].status is RunStatus.SUCCEEDED
