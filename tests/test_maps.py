"""``map`` + ``max_parallel`` in the pure state machine: expansion, order, bounds, failures."""

from __future__ import annotations

from typing import Any

import pytest

from raftmesh.consensus import ClusterState, Code, RunStatus, SubmitRun, TaskStatus, limits
from raftmesh.consensus.commands import Budget
from raftmesh.consensus.dag import DagError, validate
from raftmesh.consensus.machine import StateMachine
from tests.test_machine import Cluster, check_indexes, spec, status


@pytest.fixture
def c() -> Cluster:
    cluster = Cluster()
    cluster.ok(cluster.register("n1", slots=64))
    return cluster


def submit_map(c: Cluster, run_id: str = "r", **kw: Any) -> None:
    c.ok(c.submit(run_id, [spec("src"), spec("m", "src", map="src", **kw), spec("after", "m")]))


def ready(c: Cluster, run_id: str = "r") -> list[str]:
    return [tid for tid, s in status(c, run_id).items() if s is TaskStatus.READY]


def test_expands_one_instance_per_item_in_order(c: Cluster) -> None:
    submit_map(c)
    c.run_task("r", "src", output=["a", "b", "c"])
    m = c.task("r", "m")
    assert m.status is TaskStatus.WAITING_CHILDREN
    assert m.children == ["m[0]", "m[1]", "m[2]"] and m.children_waiting == 3
    for i, item in enumerate(["a", "b", "c"]):
        inst = c.task("r", f"m[{i}]")
        assert (inst.parent, inst.origin, inst.index, inst.item) == ("m", "map", i, item)
        assert inst.spec.map == "" and inst.spec.agent == "echo" and inst.spec.deps == ("src",)
    assert ready(c) == ["m[0]", "m[1]", "m[2]"]
    # Instances end out of order; the output follows the items' order.
    for i in (2, 0, 1):
        c.run_task("r", f"m[{i}]", output={"i": i})
    assert c.task("r", "m").status is TaskStatus.SUCCEEDED
    assert c.task("r", "m").output == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert status(c, "r")["after"] is TaskStatus.READY
    c.run_task("r", "after")
    assert c.st.runs["r"].status is RunStatus.SUCCEEDED


def test_max_parallel_releases_the_next_as_instances_end(c: Cluster) -> None:
    submit_map(c, max_parallel=2)
    c.run_task("r", "src", output=[10, 11, 12, 13, 14])
    assert ready(c) == ["m[0]", "m[1]"]
    assert status(c, "r")["m[2]"] is TaskStatus.PENDING
    c.ok(c.assign(("r", "m[0]", "n1"), ("r", "m[1]", "n1")))
    c.ok(c.complete("r", "m[1]", 1))
    assert ready(c) == ["m[2]"]
    c.ok(c.assign(("r", "m[2]", "n1")))
    c.ok(c.complete("r", "m[0]", 0))
    c.ok(c.complete("r", "m[2]", 2))
    assert ready(c) == ["m[3]", "m[4]"]
    # Never more than max_parallel READY/RUNNING at once.
    live = [s for k, s in status(c, "r").items() if k.startswith("m[")]
    assert sum(s in (TaskStatus.READY, TaskStatus.RUNNING) for s in live) == 2
    c.run_task("r", "m[4]", output=4)
    c.run_task("r", "m[3]", output=3)
    assert c.task("r", "m").output == [0, 1, 2, 3, 4]


def test_an_empty_list_succeeds_at_once(c: Cluster) -> None:
    submit_map(c)
    c.run_task("r", "src", output=[])
    m = c.task("r", "m")
    assert (m.status, m.output, m.children) == (TaskStatus.SUCCEEDED, [], [])
    assert ready(c) == ["after"]


@pytest.mark.parametrize(
    ("output", "fix"),
    [({"a": 1}, "is dict, not a list"), ("abc", "is str, not a list"), (None, "is null, not a list")],
)
def test_an_output_that_is_not_a_list_fails_the_map_and_the_run(c: Cluster, output: Any, fix: str) -> None:
    submit_map(c)
    c.run_task("r", "src", output=output)
    m = c.task("r", "m")
    assert m.status is TaskStatus.FAILED and fix in m.error and "'src'" in m.error
    run = c.st.runs["r"]
    assert (run.status, run.reason) == (RunStatus.FAILED, "TASK_FAILED")
    assert "map: the output of 'src'" in run.error
    assert status(c, "r")["after"] is TaskStatus.CANCELLED
    assert ("r", "m") in [(d[1], d[2]) for d in c.st.dead_letters]


def test_too_many_items_fails_the_map(c: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_MAP_ITEMS", 3)
    submit_map(c)
    c.run_task("r", "src", output=[1, 2, 3, 4])
    assert c.task("r", "m").status is TaskStatus.FAILED
    assert "has 4 items; a map expands to at most 3" in c.task("r", "m").error
    assert len(c.st.runs["r"].tasks) == 3


def test_the_budget_bounds_the_expansion(c: Cluster) -> None:
    tasks = (spec("src"), spec("m", "src", map="src"))
    c.ok(SubmitRun(c.rid(), c.ts, "r", "", tasks, 0, "r", "t", Budget(max_tasks=4)))
    c.run_task("r", "src", output=[1, 2, 3])
    run = c.st.runs["r"]
    assert (run.status, run.reason) == (RunStatus.FAILED, "BUDGET_EXCEEDED")
    assert "max_tasks is 4; the run has 2 tasks and would add 3" in run.error
    assert len(run.tasks) == 2  # nothing was added


def test_an_instance_that_fails_for_good_fails_the_run(c: Cluster) -> None:
    submit_map(c, max_parallel=1)
    c.run_task("r", "src", output=["x", "y"])
    c.ok(c.assign(("r", "m[0]", "n1")))
    c.ok(c.fail("r", "m[0]", "bad item", retryable=False))
    run = c.st.runs["r"]
    assert run.status is RunStatus.FAILED and "task 'm[0]' failed: bad item" in run.error
    st = status(c, "r")
    assert st["m"] is st["m[1]"] is st["after"] is TaskStatus.CANCELLED


def test_instances_are_retried_with_the_map_tasks_retries(c: Cluster) -> None:
    submit_map(c, retries=1)
    c.run_task("r", "src", output=["x"])
    c.ok(c.assign(("r", "m[0]", "n1")))
    c.ok(c.fail("r", "m[0]", "flaky"))
    inst = c.task("r", "m[0]")
    assert (inst.status, inst.retries_left) == (TaskStatus.READY, 0)
    c.ok(c.assign(("r", "m[0]", "n1")))
    assert c.task("r", "m[0]").attempt == 2
    c.ok(c.complete("r", "m[0]", "second"))
    assert c.task("r", "m").output == ["second"]


def test_a_skipped_source_maps_over_nothing_when_the_trigger_lets_it_run(c: Cluster) -> None:
    c.ok(
        c.submit(
            "r",
            [
                spec("a"),
                spec("src", "a", when={"path": "a", "op": "==", "value": "never"}),
                spec("m", "src", map="src", trigger="all_done"),
                spec("plain", "src", map="src"),
            ],
        )
    )
    c.run_task("r", "a")
    st = status(c, "r")
    assert st["src"] is st["plain"] is TaskStatus.SKIPPED
    assert st["m"] is TaskStatus.SUCCEEDED and c.task("r", "m").output == []
    assert c.st.runs["r"].status is RunStatus.SUCCEEDED


def test_a_false_when_skips_the_map_without_expanding(c: Cluster) -> None:
    c.ok(
        c.submit(
            "r", [spec("src"), spec("m", "src", map="src", when={"path": "src.0", "op": "==", "value": 9})]
        )
    )
    c.run_task("r", "src", output=[1, 2])
    assert c.task("r", "m").status is TaskStatus.SKIPPED and c.task("r", "m").children == []


def test_a_map_over_a_map(c: Cluster) -> None:
    c.ok(c.submit("r", [spec("src"), spec("m", "src", map="src"), spec("mm", "m", map="m")]))
    c.run_task("r", "src", output=[1, 2])
    c.run_task("r", "m[0]", output=["a"])
    c.run_task("r", "m[1]", output=["b"])
    assert c.task("r", "mm").children == ["mm[0]", "mm[1]"]
    assert [c.task("r", f"mm[{i}]").item for i in (0, 1)] == [["a"], ["b"]]


def test_snapshot_restore_mid_map_continues_identically(c: Cluster) -> None:
    submit_map(c, max_parallel=2)
    c.run_task("r", "src", output=list(range(5)))
    c.ok(c.assign(("r", "m[0]", "n1"), ("r", "m[1]", "n1")))
    c.ok(c.complete("r", "m[0]", "o0"))
    # A replica restored from this snapshot, fed the same commands, stays equal.
    restored = Cluster()
    restored.sm = StateMachine()
    restored.sm.state = ClusterState.decode(c.st.encode())
    assert restored.st.index_snapshot() == c.st.index_snapshot()
    assert restored.sm.digest() == c.sm.digest()
    for cmd in [c.complete("r", "m[1]", "o1"), c.assign(("r", "m[2]", "n1"), ("r", "m[3]", "n1"))]:
        a, b = c.apply(cmd), restored.apply(cmd)
        assert a == b and a.ok
        assert c.sm.digest() == restored.sm.digest()
    for i in (2, 3):
        c.ok(c.complete("r", f"m[{i}]", f"o{i}"))
    c.run_task("r", "m[4]", output="o4")
    assert c.task("r", "m").output == ["o0", "o1", "o2", "o3", "o4"]
    check_indexes(c.sm)


def test_the_run_is_cancelled_mid_map(c: Cluster) -> None:
    from raftmesh.consensus import CancelRun

    submit_map(c, max_parallel=1)
    c.run_task("r", "src", output=[1, 2])
    c.ok(c.assign(("r", "m[0]", "n1")))
    c.ok(CancelRun(c.rid(), c.ts, "r", "stop"))
    st = status(c, "r")
    assert st["m"] is st["m[0]"] is st["m[1]"] is TaskStatus.CANCELLED
    assert c.st.running.get("n1", {}) == {}
    # The fenced instance's late completion changes nothing.
    c.unchanged(c.complete("r", "m[0]", "late"), Code.ABORTED)


@pytest.mark.parametrize(
    ("tasks", "fix"),
    [
        ([spec("a"), spec("m", map="a")], "must be one of its deps"),
        ([spec("a"), spec("m", "a", max_parallel=2)], "max_parallel needs map"),
        ([spec("a"), spec("m", "a", map="a", max_parallel=-1)], "max_parallel must be between"),
        ([spec("a"), spec("m", "a", map="a", max_parallel=limits.MAX_MAP_ITEMS + 1)], "max_parallel"),
        ([spec("a"), spec("m", "a", map="a", replicas=3, fusion="vote")], "cannot be combined"),
    ],
)
def test_validation_at_submit(c: Cluster, tasks: list[Any], fix: str) -> None:
    with pytest.raises(DagError, match=fix):
        validate(tasks, {"echo"})
    c.unchanged(c.submit("r", tasks), Code.INVALID_ARGUMENT)


def test_retrying_a_dead_instance_resumes_the_map_where_it_stopped(c: Cluster) -> None:
    from raftmesh.consensus.commands import RetryTask

    submit_map(c, max_parallel=2)
    c.run_task("r", "src", output=list(range(5)))
    c.ok(c.assign(("r", "m[0]", "n1"), ("r", "m[1]", "n1")))
    c.ok(c.complete("r", "m[0]", "o0"))
    c.ok(c.fail("r", "m[1]", "bad", retryable=False))
    assert c.st.runs["r"].status is RunStatus.FAILED
    c.ok(RetryTask(c.rid(), c.ts, run_id="r", task_id="m[1]", attempt=1))
    st = status(c, "r")
    assert c.st.runs["r"].status is RunStatus.RUNNING
    assert st["m"] is TaskStatus.WAITING_CHILDREN and st["after"] is TaskStatus.PENDING
    # m[1] again, and m[2] that m[0]'s end had released; m[3], m[4] still wait for their turn.
    assert ready(c) == ["m[1]", "m[2]"] or sorted(ready(c)) == ["m[1]", "m[2]"]
    assert st["m[3]"] is st["m[4]"] is TaskStatus.PENDING
    assert c.st.runs["r"].unfinished == 6
    for i in (1, 2, 3, 4):
        c.run_task("r", f"m[{i}]", output=f"o{i}")
    assert c.task("r", "m").output == ["o0", "o1", "o2", "o3", "o4"]
    c.run_task("r", "after")
    assert c.st.runs["r"].status is RunStatus.SUCCEEDED


def test_a_map_that_failed_to_expand_is_not_retried(c: Cluster) -> None:
    from raftmesh.consensus.commands import RetryTask

    submit_map(c)
    c.run_task("r", "src", output="not a list")
    res = c.unchanged(RetryTask(c.rid(), c.ts, run_id="r", task_id="m", attempt=0), Code.FAILED_PRECONDITION)
    assert "rerun its source" in res.message


def test_retry_leaves_skipped_tasks_ended(c: Cluster) -> None:
    from raftmesh.consensus.commands import RetryTask

    c.ok(
        c.submit("r", [spec("a"), spec("s", "a", when={"path": "a", "op": "==", "value": 0}), spec("b", "a")])
    )
    c.run_task("r", "a", output=1)
    c.ok(c.assign(("r", "b", "n1")))
    c.ok(c.fail("r", "b", retryable=False))
    c.ok(RetryTask(c.rid(), c.ts, run_id="r", task_id="b", attempt=1))
    assert c.st.runs["r"].unfinished == 1 and status(c, "r")["s"] is TaskStatus.SKIPPED
    c.run_task("r", "b")
    assert c.st.runs["r"].status is RunStatus.SUCCEEDED


@pytest.mark.parametrize(
    ("ref", "ok"),
    [("m[0]", True), ("m[999999]", True), ("m#2", True), ("a.b:c[12]", True), ("m", True)]
    + [(bad, False) for bad in ("m[01]", "m[]", "m[1", "[1]", "m[0][1]", "m#1]", "m[-1]", "m[1]\n", "")],
)
def test_a_request_may_name_a_child_task(ref: str, ok: bool) -> None:
    assert (limits.task_ref_error("task id", ref) == "") is ok


def test_a_map_failing_mid_batch_leaves_the_other_completions_of_its_run_cancelled(c: Cluster) -> None:
    c.ok(c.submit("r", [spec("src"), spec("other"), spec("m", "src", map="src")]))
    c.ok(c.assign(("r", "src", "n1"), ("r", "other", "n1")))
    src, other = c.task("r", "src"), c.task("r", "other")
    from raftmesh.consensus import Complete, Completion

    c.ok(
        Complete(
            c.rid(),
            c.ts,
            "n1",
            (
                Completion("r", "src", src.attempt, src.token, {"not": "a list"}),
                Completion("r", "other", other.attempt, other.token, "late"),
            ),
        )
    )
    run = c.st.runs["r"]
    assert run.status is RunStatus.FAILED and run.unfinished == 0
    assert status(c, "r")["other"] is TaskStatus.CANCELLED


def test_a_superseded_replica_takes_what_it_spawned_with_it(c: Cluster) -> None:
    """Found by the simulation once it also drew maps: a replica waiting for tasks it spawned
    was cancelled when its quorum was reached elsewhere, and its spawned tasks ran on."""
    from raftmesh.consensus import Complete, Completion
    from raftmesh.consensus.commands import NO_USAGE, TaskSpec

    c.ok(c.submit("r", [spec("q", replicas=2, fusion="first")]))
    c.ok(c.assign(("r", "q#0", "n1"), ("r", "q#1", "n1")))
    q1 = c.task("r", "q#1")
    fragment = (TaskSpec("s1", "echo", deps=("q#1",)),)
    c.ok(
        Complete(
            c.rid(), c.ts, "n1", (Completion("r", "q#1", q1.attempt, q1.token, 1, NO_USAGE, fragment, True),)
        )
    )
    assert c.task("r", "q#1").status is TaskStatus.WAITING_CHILDREN
    assert c.task("r", "s1").status is TaskStatus.READY
    c.ok(c.complete("r", "q#0", 2))
    assert c.task("r", "s1").status is TaskStatus.CANCELLED and c.st.runs["r"].status is RunStatus.SUCCEEDED
    assert c.st.runs["r"].unfinished == 0 and all(not q for q in c.st.ready.values())


def test_the_log_audit_accepts_triggers_and_maps() -> None:
    """The audit (``raftmesh.verify``) replays the log: a start after a skip its trigger allows,
    and map instances, are neither early starts nor duplicated results."""
    from raftmesh.consensus import encode_batch
    from raftmesh.verify.audit import Audit

    c = Cluster()
    log: list[bytes] = []
    apply = c.apply

    def recorded(cmd: Any) -> Any:
        log.append(encode_batch([cmd]))
        return apply(cmd)

    c.apply = recorded  # type: ignore[method-assign]
    c.ok(c.register("n1"))
    skip = {"path": "src", "op": "==", "value": "never"}
    c.ok(c.submit("r", [spec("src"), spec("s", "src", when=skip), spec("j", "s", trigger="all_done")]))
    c.ok(c.submit("q", [spec("src"), spec("m", "src", map="src", max_parallel=1)]))
    c.run_task("r", "src", output=[1, 2])
    c.run_task("r", "j")
    c.run_task("q", "src", output=[1, 2])
    c.run_task("q", "m[0]")
    c.run_task("q", "m[1]")
    audit = Audit()
    for payload in log:
        audit.feed(payload)
    assert audit.early_starts == [] and audit.duplicated == [] and audit.fenced == []
    assert audit.run_status == {"r": "SUCCEEDED", "q": "SUCCEEDED"}


def test_a_failed_replica_is_not_a_dead_letter_to_retry(c: Cluster) -> None:
    """RetryTask takes a child's id now (``ID#i``): a replica that failed without failing its
    run is refused, not requeued into a run that never stopped."""
    from raftmesh.consensus.commands import RetryTask

    c.ok(c.submit("r", [spec("q", replicas=3, fusion="vote")]))
    c.ok(c.assign(("r", "q#0", "n1")))
    c.ok(c.fail("r", "q#0", retryable=False))
    assert c.task("r", "q#0").status is TaskStatus.FAILED and c.st.runs["r"].status is RunStatus.RUNNING
    res = c.unchanged(
        RetryTask(c.rid(), c.ts, run_id="r", task_id="q#0", attempt=1), Code.FAILED_PRECONDITION
    )
    assert "not a dead letter" in res.message


def test_a_map_may_not_take_the_run_over_its_task_limit(c: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_TASKS_PER_RUN", 5)
    submit_map(c)
    c.run_task("r", "src", output=[1, 2, 3])
    m = c.task("r", "m")
    assert m.status is TaskStatus.FAILED and "may have at most 5" in m.error and m.children == []


def test_a_map_is_compensated_once_not_per_instance(c: Cluster) -> None:
    from raftmesh.consensus.commands import Compensation

    c.ok(
        c.submit(
            "r",
            [
                spec("src"),
                spec("m", "src", map="src", compensate=Compensation("echo", {"undo": True})),
                spec("z", "m"),
            ],
        )
    )
    c.run_task("r", "src", output=[1, 2])
    assert all(c.task("r", f"m[{i}]").spec.compensate is None for i in (0, 1))
    c.run_task("r", "m[0]")
    c.run_task("r", "m[1]")
    c.ok(c.assign(("r", "z", "n1")))
    c.ok(c.fail("r", "z", retryable=False))
    comp = [t.spec.id for t in c.st.runs["r"].tasks.values() if t.origin == "compensation"]
    assert comp == ["m~compensate"] and c.st.runs["r"].status is RunStatus.COMPENSATING


def test_a_map_over_a_spawner_waiting_for_its_children_expands_its_output(c: Cluster) -> None:
    from raftmesh.consensus.commands import Complete, Completion

    c.ok(c.submit("r", [spec("p")]))
    c.ok(c.assign(("r", "p", "n1")))
    p = c.task("r", "p")
    done = Completion(
        "r", "p", p.attempt, p.token, [1, 2, 3], spawn=(spec("m", "p", map="p"),), spawn_wait=True
    )
    c.ok(Complete(c.rid(), c.ts, "n1", (done,)))
    # p waits for m with its final output: m maps over it, not over nothing
    assert c.task("r", "p").status is TaskStatus.WAITING_CHILDREN
    m = c.task("r", "m")
    assert m.status is TaskStatus.WAITING_CHILDREN and m.children == ["m[0]", "m[1]", "m[2]"]
    for i in range(3):
        c.run_task("r", f"m[{i}]", output=i * 10)
    assert c.task("r", "m").output == [0, 10, 20]
    assert c.st.runs["r"].status is RunStatus.SUCCEEDED
    check_indexes(c.sm)


def test_a_map_whose_instances_would_copy_too_large_a_spec_fails(
    c: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "MAX_MAP_SPEC_BYTES", 20_000)
    c.ok(c.submit("r", [spec("src"), spec("m", "src", map="src", input="x" * 2000)]))
    c.run_task("r", "src", output=list(range(50)))  # 50 copies of a ~2 KB spec: ~100 KB
    m = c.task("r", "m")
    assert m.status is TaskStatus.FAILED
    assert "50 instances" in m.error and "the limit is 20000" in m.error and "reference" in m.error
    assert "m[0]" not in c.st.runs["r"].tasks and c.st.runs["r"].status is RunStatus.FAILED
    check_indexes(c.sm)
