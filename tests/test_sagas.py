"""Sagas in the pure state machine: compensations in reverse dependency order, each once."""

from __future__ import annotations

from typing import Any

import pytest

from raftmesh.consensus import (
    CancelRun,
    Code,
    Complete,
    Completion,
    RunStatus,
    StateMachine,
    SubmitRun,
    TaskStatus,
    dag,
    groups,
    limits,
)
from raftmesh.consensus.commands import Budget, Compensation, RetryTask, Usage
from raftmesh.consensus.context import ApplyContext
from raftmesh.consensus.dead_letters import list_dead_letters
from raftmesh.consensus.state import SCHEDULABLE_RUN, ClusterState
from tests.test_machine import Cluster, check_indexes, spec, status

UNDO = Compensation("undo", {"why": "rollback"})


def comp(task_id: str, *deps: str, **kw: Any) -> Any:
    return spec(task_id, *deps, compensate=kw.pop("compensate", UNDO), **kw)


@pytest.fixture
def c() -> Cluster:
    cluster = Cluster()
    cluster.ok(cluster.register("n1", agents=("echo", "undo"), slots=16))
    return cluster


def ready(c: Cluster, run_id: str) -> set[str]:
    return {k for k, s in status(c, run_id).items() if s is TaskStatus.READY}


def fail_for_good(c: Cluster, run_id: str, task_id: str, error: str = "boom") -> None:
    c.ok(c.assign((run_id, task_id, "n1")))
    c.ok(c.fail(run_id, task_id, error, retryable=False))


DIAMOND_SAGA = [comp("a"), comp("b", "a"), comp("c", "a"), comp("d", "b", "c"), spec("e", "d")]


def run_diamond_then_fail(c: Cluster) -> None:
    c.ok(c.submit("r", DIAMOND_SAGA))
    for t in ("a", "b", "c", "d"):
        c.run_task("r", t, output={"did": t})
    fail_for_good(c, "r", "e")


def test_a_failed_run_compensates_its_succeeded_tasks_in_reverse_order_on_a_diamond(c: Cluster) -> None:
    run_diamond_then_fail(c)
    run = c.st.runs["r"]
    assert run.status is RunStatus.COMPENSATING and run.status in SCHEDULABLE_RUN
    assert run.reason == "TASK_FAILED" and "task 'e' failed: boom" in run.error
    assert run.finished_ms == 0 and "r" not in c.st.finished
    d = c.task("r", "d~compensate")
    assert (d.origin, d.parent, d.spec.agent, d.spec.trigger) == ("compensation", "d", "undo", "all_done")
    assert d.spec.input == {"task": "d", "input": None, "compensate": {"why": "rollback"}}
    assert c.task("r", "a~compensate").spec.deps == ("a", "b~compensate", "c~compensate")
    assert c.task("r", "b~compensate").spec.deps == ("b", "d~compensate")
    # d was the last to run: it is undone first; b and c (parallel) next; a last.
    assert ready(c, "r") == {"d~compensate"}
    c.run_task("r", "d~compensate")
    assert ready(c, "r") == {"b~compensate", "c~compensate"}
    c.run_task("r", "b~compensate")
    assert ready(c, "r") == {"c~compensate"}
    c.run_task("r", "c~compensate")
    assert ready(c, "r") == {"a~compensate"}
    c.run_task("r", "a~compensate")
    assert run.status is RunStatus.COMPENSATED
    assert run.reason == "TASK_FAILED" and "task 'e' failed: boom" in run.error
    assert "r" in c.st.finished and run.finished_ms == c.ts


def test_each_compensation_runs_once_and_late_reports_are_fenced(c: Cluster) -> None:
    c.ok(c.submit("r", [comp("a"), spec("b", "a")]))
    c.run_task("r", "a")
    fail_for_good(c, "r", "b")
    c.ok(c.assign(("r", "a~compensate", "n1")))
    done = c.complete("r", "a~compensate", output="undone")
    c.ok(done)
    assert c.st.runs["r"].status is RunStatus.COMPENSATED
    c.unchanged(done)  # the same request again: its first result, nothing applied twice
    again = Complete(c.rid(), c.ts, "n1", done.items)
    assert c.unchanged(again, Code.ABORTED).code is Code.ABORTED  # a new request id: fenced
    comps = [t for t in c.st.runs["r"].tasks.values() if t.origin == "compensation"]
    assert [(t.spec.id, t.attempt, t.status) for t in comps] == [("a~compensate", 1, TaskStatus.SUCCEEDED)]
    assert c.task("r", "a").children == ["a~compensate"]


def test_only_succeeded_tasks_are_compensated(c: Cluster) -> None:
    c.ok(c.submit("r", [comp("a"), comp("b"), comp("x", "a"), spec("f", "a")]))
    c.run_task("r", "a")
    c.ok(c.assign(("r", "b", "n1")))  # b is running when f fails: it is cancelled, not compensated
    fail_for_good(c, "r", "f")
    assert status(c, "r")["b"] is TaskStatus.CANCELLED
    assert {t for t in status(c, "r") if t.endswith("~compensate")} == {"a~compensate"}
    assert c.task("r", "a~compensate").spec.deps == ("a",)  # x never ran: nothing waits for it


def test_tasks_without_compensate_are_walked_through(c: Cluster) -> None:
    c.ok(c.submit("r", [comp("a"), spec("m", "a"), comp("z", "m"), spec("f", "z")]))
    for t in ("a", "m", "z"):
        c.run_task("r", t)
    fail_for_good(c, "r", "f")
    assert c.task("r", "a~compensate").spec.deps == ("a", "z~compensate")
    assert ready(c, "r") == {"z~compensate"}


def test_a_failed_compensation_does_not_stop_the_others(c: Cluster) -> None:
    c.ok(c.submit("r", [comp("a", retries=1), comp("b", "a", retries=1), spec("f", "b")]))
    c.run_task("r", "a")
    c.run_task("r", "b")
    fail_for_good(c, "r", "f")
    c.ok(c.assign(("r", "b~compensate", "n1")))
    c.ok(c.fail("r", "b~compensate", "undo broke"))  # retryable: the compensation has b's retries
    assert status(c, "r")["b~compensate"] is TaskStatus.READY
    c.ok(c.assign(("r", "b~compensate", "n1")))
    c.ok(c.fail("r", "b~compensate", "undo broke again"))
    run = c.st.runs["r"]
    assert status(c, "r")["b~compensate"] is TaskStatus.FAILED
    assert run.status is RunStatus.COMPENSATING and ready(c, "r") == {"a~compensate"}
    c.run_task("r", "a~compensate")
    assert run.status is RunStatus.COMPENSATION_FAILED
    assert run.reason == "TASK_FAILED" and "task 'f' failed" in run.error
    assert {(d.task_id, d.error) for d in list_dead_letters(c.st, 10)} == {
        ("b~compensate", "undo broke again"),
        ("f", "boom"),
    }
    # Its compensations ran: its dead letters cannot be requeued.
    rt = RetryTask(c.rid(), c.ts, run_id="r", task_id="f", attempt=1)
    assert "its compensations ran" in c.unchanged(rt, Code.FAILED_PRECONDITION).message


def test_cancel_triggers_compensation(c: Cluster) -> None:
    c.ok(c.submit("r", [comp("a"), comp("b", "a")]))
    c.run_task("r", "a")
    c.ok(c.assign(("r", "b", "n1")))
    c.ok(CancelRun(c.rid(), c.ts, "r", "operator said so"))
    run = c.st.runs["r"]
    assert run.status is RunStatus.COMPENSATING and run.reason == "CANCELLED"
    assert status(c, "r") == {
        "a": TaskStatus.SUCCEEDED,
        "b": TaskStatus.CANCELLED,
        "a~compensate": TaskStatus.READY,
    }
    c.run_task("r", "a~compensate")
    assert run.status is RunStatus.COMPENSATED and "operator said so" in run.error


def test_cancelling_a_compensating_run_stops_its_compensations(c: Cluster) -> None:
    c.ok(c.submit("r", [comp("a"), comp("b", "a"), spec("f", "b")]))
    c.run_task("r", "a")
    c.run_task("r", "b")
    fail_for_good(c, "r", "f")
    c.ok(c.assign(("r", "b~compensate", "n1")))
    late = c.complete("r", "b~compensate")
    res = c.ok(CancelRun(c.rid(), c.ts, "r", "stop undoing"))
    run = c.st.runs["r"]
    assert run.status is RunStatus.COMPENSATION_FAILED
    assert run.reason == "TASK_FAILED" and "task 'f' failed" in run.error  # the original failure stays
    assert res.status is RunStatus.COMPENSATION_FAILED  # type: ignore[attr-defined]
    assert status(c, "r")["b~compensate"] is TaskStatus.CANCELLED
    assert status(c, "r")["a~compensate"] is TaskStatus.CANCELLED
    assert "stop undoing" in c.task("r", "a~compensate").error
    c.unchanged(late, Code.ABORTED)  # the cancelled attempt's late report is fenced
    c.unchanged(CancelRun(c.rid(), c.ts, "r", "again"))  # terminal now


def test_nothing_compensable_ends_plain_failed(c: Cluster) -> None:
    c.ok(c.submit("r", [spec("a"), comp("b", "a"), spec("f", "a")]))
    c.run_task("r", "a")
    c.ok(c.assign(("r", "b", "n1")))
    fail_for_good(c, "r", "f")  # b, the only compensable task, did not succeed
    run = c.st.runs["r"]
    assert run.status is RunStatus.FAILED and run.reason == "TASK_FAILED"
    assert not any(t.endswith("~compensate") for t in run.tasks)
    c.ok(c.submit("s", [comp("a")]))
    c.run_task("s", "a")
    assert c.st.runs["s"].status is RunStatus.SUCCEEDED  # a successful run is not compensated


def test_budgets_do_not_stop_compensations(c: Cluster) -> None:
    c.ok(SubmitRun(c.rid(), c.ts, "r", "", (comp("a"), spec("f", "a")), 0, "r", "t", Budget(max_cost=1.0)))
    c.run_task("r", "a")
    fail_for_good(c, "r", "f")
    c.ok(c.assign(("r", "a~compensate", "n1")))
    t = c.task("r", "a~compensate")
    c.ok(
        Complete(c.rid(), c.ts, "n1", (Completion("r", t.spec.id, t.attempt, t.token, "x", Usage(cost=5.0)),))
    )
    run = c.st.runs["r"]
    assert run.status is RunStatus.COMPENSATED and run.usage.cost == 5.0
    c.ok(c.tick(c.ts + 10**9))  # nor does max_seconds (no deadline is tracked for it any more)


def test_compensate_is_validated_at_submit(c: Cluster) -> None:
    res = c.unchanged(c.submit("r", [comp("a", compensate=Compensation("nobody"))]), Code.INVALID_ARGUMENT)
    assert "unknown agent type(s) 'nobody'" in res.message
    big = Compensation("undo", "x" * (limits.MAX_TASK_INPUT_BYTES + 1))
    res = c.unchanged(c.submit("r", [comp("a", compensate=big)]), Code.INVALID_ARGUMENT)
    assert "compensate input is" in res.message
    res = c.unchanged(c.submit("r", [comp("a", compensate=Compensation("undo", float("nan")))]))
    assert "compensate input" in res.message


def test_a_restored_replica_compensates_the_same(c: Cluster) -> None:
    run_diamond_then_fail(c)
    c.run_task("r", "d~compensate")
    other = StateMachine(ClusterState.decode(c.sm.snapshot()))
    for t in ("b~compensate", "c~compensate", "a~compensate"):
        for cmd in (c.assign(("r", t, "n1")), None):
            cmd = cmd or c.complete("r", t)
            c.ok(cmd)
            other.apply(cmd)  # the same log on the restored replica
            check_indexes(other)
            assert other.digest() == c.sm.digest()
    assert other.state.runs["r"].status is RunStatus.COMPENSATED


def test_evicting_a_compensated_run_drops_its_dead_letters(
    c: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "FINISHED_RUNS_RETAINED", 1)
    c.ok(c.submit("r", [comp("a"), spec("f", "a")]))
    c.run_task("r", "a")
    fail_for_good(c, "r", "f")
    c.ok(c.assign(("r", "a~compensate", "n1")))
    c.ok(c.fail("r", "a~compensate", "undo broke", retryable=False))
    assert c.st.runs["r"].status is RunStatus.COMPENSATION_FAILED
    assert len(c.st.dead_letters) == 2
    c.ok(c.submit("s", [spec("a")]))
    c.run_task("s", "a")
    assert "r" not in c.st.runs and c.st.dead_letters == []


def test_children_are_compensated_before_their_parent_and_after_what_waited_on_it(c: Cluster) -> None:
    # p spawned k (added here as spawn.py will: groups.add_child); q ran after p, so after k too.
    c.ok(c.submit("r", [comp("p"), comp("q", "p"), spec("f", "q")]))
    c.ok(c.assign(("r", "p", "n1")))
    run = c.st.runs["r"]
    p = c.task("r", "p")
    k = groups.add_child(ApplyContext(c.st, c.ts), run, p, comp("k"), "spawn", waited=False)
    k.status = TaskStatus.SUCCEEDED
    run.unfinished -= 1
    c.ok(c.complete("r", "p"))
    c.run_task("r", "q")
    fail_for_good(c, "r", "f")
    assert c.task("r", "p~compensate").spec.deps == ("p", "q~compensate", "k~compensate")
    assert c.task("r", "k~compensate").spec.deps == ("k", "q~compensate")
    assert ready(c, "r") == {"q~compensate"}


def test_a_replicated_task_is_compensated_once_not_per_replica(c: Cluster) -> None:
    c.ok(c.submit("r", [comp("x", replicas=3, fusion="vote"), spec("f", "x")]))
    for i in range(2):  # a majority of the 3 agree: x succeeds, the third replica is cancelled
        c.run_task("r", f"x#{i}", output={"answer": 42})
    assert status(c, "r")["x"] is TaskStatus.SUCCEEDED
    fail_for_good(c, "r", "f")
    comps = [t for t in c.st.runs["r"].tasks.values() if t.origin == "compensation"]
    assert [(t.spec.id, t.spec.deps) for t in comps] == [("x~compensate", ("x",))]
    c.run_task("r", "x~compensate")
    assert c.st.runs["r"].status is RunStatus.COMPENSATED


def spawn_from(
    c: Cluster, run_id: str, task_id: str, fragment: list[Any], wait: bool, output: Any = "x"
) -> None:
    c.ok(c.assign((run_id, task_id, "n1")))
    t = c.task(run_id, task_id)
    done = Completion(run_id, task_id, t.attempt, t.token, output, spawn=tuple(fragment), spawn_wait=wait)
    c.ok(Complete(c.rid(), c.ts, "n1", (done,)))


def run_compensations(c: Cluster, run_id: str) -> None:
    """Run every READY compensation until none is left (a compensation PENDING for ever fails this)."""
    for _ in range(50):
        todo = sorted(ready(c, run_id))
        if not todo:
            break
        for tid in todo:
            c.run_task(run_id, tid)
    assert c.st.runs[run_id].status is RunStatus.COMPENSATED, status(c, run_id)
    check_indexes(c.sm)


@pytest.mark.parametrize(
    "fragment",
    [
        [comp("s", "a")],  # a child that depends on its spawner is among the spawner's dependents
        [comp("s", "a"), comp("t", "a")],  # two such siblings: each was "after" the other
        [comp("s", "a"), comp("t", "s"), comp("u")],
        [comp("s")],
    ],
    ids=["one", "siblings", "chain", "no-deps"],
)
@pytest.mark.parametrize("wait", [False, True])
def test_compensations_of_spawned_tasks_never_wait_on_themselves(
    c: Cluster, fragment: list[Any], wait: bool
) -> None:
    c.ok(c.submit("r", [comp("a"), spec("b", "a"), spec("z")]))
    spawn_from(c, "r", "a", fragment, wait)
    for f in fragment:
        c.run_task("r", f.id)
    if not wait:
        c.run_task("r", "b")
    fail_for_good(c, "r", "z")
    comps = [t.spec for t in c.st.runs["r"].tasks.values() if t.origin == "compensation"]
    assert {s.id for s in comps} == {"a~compensate", *(f"{f.id}~compensate" for f in fragment)}
    assert dag.find_cycle(comps) is None
    for s in comps:  # a compensation never waits on itself, and the spawner's comes after its children's
        assert s.id not in s.deps
    a_deps = c.task("r", "a~compensate").spec.deps
    assert all(
        f"{f.id}~compensate" in a_deps
        or any(f"{f.id}~compensate" in c.task("r", d).spec.deps for d in a_deps[1:])
        for f in fragment
    )
    run_compensations(c, "r")


def test_work_that_succeeded_inside_a_cancelled_group_is_compensated(c: Cluster) -> None:
    """A spawner whose attempt succeeded (WAITING_CHILDREN when the run failed) and a map one of
    whose instances succeeded did work: each is compensated, after what ran after it."""
    c.ok(
        c.submit(
            "r",
            [
                comp("a"),
                comp("p", "a"),
                comp("m", "a", map="a"),
                comp("v", replicas=3, fusion="vote", quorum=3),
            ],
        )
    )
    c.run_task("r", "a", output=[1, 2])
    spawn_from(c, "r", "p", [spec("k")], wait=True, output="did-side-effect")
    c.run_task("r", "m[0]")
    c.run_task("r", "v#0", output="A")
    fail_for_good(c, "r", "k")
    st = status(c, "r")
    assert (st["p"], st["m"], st["m[1]"], st["v"], st["v#1"]) == (TaskStatus.CANCELLED,) * 5
    run = c.st.runs["r"]
    assert run.status is RunStatus.COMPENSATING
    comps = {t.parent: t.spec.deps for t in run.tasks.values() if t.origin == "compensation"}
    assert set(comps) == {"a", "p", "m", "v"}
    assert set(comps["a"]) == {"a", "p~compensate", "m~compensate"}
    assert comps["p"] == ("p",) and comps["m"] == ("m",) and comps["v"] == ("v",)
    assert c.task("r", "p~compensate").spec.input == {"task": "p", "input": None, "compensate": UNDO.input}
    run_compensations(c, "r")


def test_a_spawner_refused_for_max_tasks_is_compensated(c: Cluster) -> None:
    """Its attempt did its work; the spawn is refused and the run ends for its budget, the work
    kept (SUCCEEDED, as a completion over max_cost) so the saga undoes it."""
    budgeted = SubmitRun(
        c.rid(), c.ts, "r", "", (comp("a"), spec("b", "a")), 0, "r", "t", Budget(max_tasks=2)
    )
    c.ok(budgeted)
    c.run_task("r", "a")
    spawn_from(c, "r", "b", [spec("k")], wait=True, output="did-side-effect")
    run = c.st.runs["r"]
    assert run.reason == "BUDGET_EXCEEDED" and "max_tasks is 2" in run.error
    assert c.task("r", "b").status is TaskStatus.SUCCEEDED and c.task("r", "b").output == "did-side-effect"
    assert "k" not in run.tasks
    comps = {t.parent: t.spec.deps for t in run.tasks.values() if t.origin == "compensation"}
    assert comps == {"a": ("a",)}  # b has no compensate: walked through
    run_compensations(c, "r")


def test_a_spawner_with_compensate_refused_for_max_tasks_is_compensated(c: Cluster) -> None:
    c.ok(SubmitRun(c.rid(), c.ts, "r", "", (comp("a"), comp("b", "a")), 0, "r", "t", Budget(max_tasks=2)))
    c.run_task("r", "a")
    spawn_from(c, "r", "b", [spec("k")], wait=False)
    comps = {t.parent: t.spec.deps for t in c.st.runs["r"].tasks.values() if t.origin == "compensation"}
    assert comps == {"b": ("b",), "a": ("a", "b~compensate")}
    run_compensations(c, "r")


def test_compensations_of_nested_spawns_form_no_cycle(c: Cluster) -> None:
    c.ok(c.submit("r", [comp("a"), comp("b", "a"), spec("z")]))
    spawn_from(c, "r", "a", [comp("s", "a"), comp("t", "a")], wait=False)
    c.run_task("r", "t")
    spawn_from(c, "r", "s", [comp("g", "s"), comp("h", "s", "t")], wait=False)
    for tid in ("g", "h", "b"):
        c.run_task("r", tid)
    fail_for_good(c, "r", "z")
    comps = [t.spec for t in c.st.runs["r"].tasks.values() if t.origin == "compensation"]
    assert {s.id for s in comps} == {f"{x}~compensate" for x in "abstgh"}
    assert dag.find_cycle(comps) is None
    deps = {s.id: s.deps for s in comps}
    assert "g~compensate" in deps["s~compensate"] and "h~compensate" in deps["s~compensate"]
    run_compensations(c, "r")
