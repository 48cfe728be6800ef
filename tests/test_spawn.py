"""Spawned tasks in the pure state machine: ``Completion.spawn`` applied by ``runs.complete``."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from raftmesh import DAG
from raftmesh.agents import AgentHost, AgentRegistry, SpawnError, TaskContext
from raftmesh.agents._pools import _outcome
from raftmesh.agents._spawn import fragment_maps, task_specs
from raftmesh.client import Task
from raftmesh.clock import ManualClock
from raftmesh.consensus import CancelRun, Code, RunStatus, StateMachine, SubmitRun, TaskStatus, limits
from raftmesh.consensus.budgets import BUDGET_EXCEEDED
from raftmesh.consensus.commands import (
    AgentOffer,
    Assign,
    Assignment,
    Budget,
    Complete,
    Completion,
    RegisterNode,
    RetryTask,
    TaskSpec,
    decode_command,
    encode_command,
)
from raftmesh.consensus.results import RunChanged, TaskChanged
from tests.test_machine import Cluster, check_indexes, spec, status
from tests.test_node_units import MachineWriter, reads_of

S = TaskStatus


def spawning(
    c: Cluster,
    run_id: str,
    task_id: str,
    specs: list[TaskSpec],
    wait: bool = True,
    output: Any = "plan",
    **kw: Any,
) -> Complete:
    """A completion of ``task_id``'s current attempt that spawns ``specs``."""
    t = c.task(run_id, task_id)
    return Complete(
        kw.get("rid") or c.rid(),
        c.ts,
        kw.get("node", t.node),
        (
            Completion(
                run_id,
                task_id,
                t.attempt,
                kw.get("token", t.token),
                output,
                spawn=tuple(specs),
                spawn_wait=wait,
            ),
        ),
    )


def started(c: Cluster, run_id: str, *task_ids: str) -> None:
    for tid in task_ids:
        c.ok(c.assign((run_id, tid, "n1")))


@pytest.fixture
def c() -> Cluster:
    cluster = Cluster()
    cluster.ok(cluster.register("n1", agents=("echo", "llm"), slots=100))
    cluster.ok(cluster.submit("r", [spec("plan"), spec("after", "plan")]))
    started(cluster, "r", "plan")
    return cluster


def test_wait_keeps_the_spawner_waiting_until_its_tasks_end(c: Cluster) -> None:
    rev = c.st.revision
    c.ok(spawning(c, "r", "plan", [spec("x"), spec("y", "x")], output={"steps": 2}))
    assert c.st.revision == rev + 1  # one revision: the completion and its spawned tasks together
    assert status(c, "r") == {"plan": S.WAITING_CHILDREN, "after": S.PENDING, "x": S.READY, "y": S.PENDING}
    plan, x = c.task("r", "plan"), c.task("r", "x")
    assert plan.output == {"steps": 2} and plan.children == ["x", "y"] and plan.children_waiting == 2
    assert (x.parent, x.origin, x.depth) == ("plan", "spawn", 1)
    assert c.st.runs["r"].unfinished == 4
    c.run_task("r", "x", output="X")
    assert status(c, "r")["y"] is S.READY and status(c, "r")["after"] is S.PENDING
    c.run_task("r", "y", output="Y")
    # The spawner succeeds with its own output; its dependent reads that output.
    assert status(c, "r") == {"plan": S.SUCCEEDED, "after": S.READY, "x": S.SUCCEEDED, "y": S.SUCCEEDED}
    assert c.task("r", "plan").output == {"steps": 2}
    c.run_task("r", "after")
    assert c.st.runs["r"].status is RunStatus.SUCCEEDED


def test_without_wait_the_spawner_succeeds_at_once(c: Cluster) -> None:
    c.ok(spawning(c, "r", "plan", [spec("x"), spec("y", "x")], wait=False))
    assert status(c, "r") == {"plan": S.SUCCEEDED, "after": S.READY, "x": S.READY, "y": S.PENDING}
    plan = c.task("r", "plan")
    assert plan.children == ["x", "y"] and plan.children_waiting == 0
    c.run_task("r", "after")
    assert c.st.runs["r"].status is RunStatus.RUNNING  # the spawned tasks are still the run's
    c.run_task("r", "x")
    c.run_task("r", "y")
    assert c.st.runs["r"].status is RunStatus.SUCCEEDED


@pytest.mark.parametrize("wait", [True, False])
def test_spawned_tasks_may_read_the_spawner_and_succeeded_tasks(wait: bool) -> None:
    c = Cluster()
    c.ok(c.register("n1", slots=100))
    c.ok(c.submit("r", [spec("fetch"), spec("plan", "fetch")]))
    c.run_task("r", "fetch", output={"n": 4})
    started(c, "r", "plan")
    when = {"path": "plan.go", "op": "==", "value": True}
    kids = [spec("a", "plan", when=when), spec("b", "fetch"), spec("c", "a", "b", "fetch")]
    c.ok(spawning(c, "r", "plan", kids, wait=wait, output={"go": True}))
    # Reading the waiting spawner does not wait for it (it waits for them), and its output is final.
    assert status(c, "r")["a"] is S.READY and status(c, "r")["b"] is S.READY
    assert status(c, "r")["plan"] is (S.WAITING_CHILDREN if wait else S.SUCCEEDED)
    for t in ("a", "b", "c"):
        c.run_task("r", t)
    assert c.st.runs["r"].status is RunStatus.SUCCEEDED


def test_a_condition_on_the_spawner_can_skip_what_it_spawned(c: Cluster) -> None:
    when = {"path": "plan.go", "op": "==", "value": True}
    c.ok(spawning(c, "r", "plan", [spec("a", "plan", when=when), spec("b", "a")], output={"go": False}))
    # Both skipped at once: the spawner has nothing left to wait for and its dependent starts.
    assert status(c, "r") == {"plan": S.SUCCEEDED, "after": S.READY, "a": S.SKIPPED, "b": S.SKIPPED}


def test_dependency_order_is_not_required_in_the_fragment(c: Cluster) -> None:
    c.ok(spawning(c, "r", "plan", [spec("late", "early"), spec("early")]))
    assert status(c, "r")["early"] is S.READY and status(c, "r")["late"] is S.PENDING
    c.run_task("r", "early")
    assert status(c, "r")["late"] is S.READY


def test_a_fenced_attempt_spawns_nothing() -> None:
    c = Cluster()
    c.ok(c.register("n1", slots=10))
    c.ok(c.submit("r", [spec("plan", retries=1)]))
    started(c, "r", "plan")
    c.unchanged(spawning(c, "r", "plan", [spec("x")], token=c.task("r", "plan").token + 1), Code.ABORTED)
    c.unchanged(spawning(c, "r", "plan", [spec("x")], node="n2"), Code.ABORTED)
    # The first attempt's spawn, reported after a second attempt started, is fenced.
    late = spawning(c, "r", "plan", [spec("x")])
    c.ok(c.fail("r", "plan", retryable=True))
    started(c, "r", "plan")
    c.unchanged(late, Code.ABORTED)
    assert list(c.st.runs["r"].tasks) == ["plan"]
    c.ok(spawning(c, "r", "plan", [spec("y")]))
    assert list(c.st.runs["r"].tasks) == ["plan", "y"]


def test_a_retried_attempt_spawns_once(c: Cluster) -> None:
    cmd = spawning(c, "r", "plan", [spec("x"), spec("y")])
    first = c.ok(cmd)
    again = c.unchanged(cmd)  # the same request id, e.g. the host retrying after a lost answer
    assert again == first
    assert list(c.st.runs["r"].tasks) == ["plan", "after", "x", "y"]
    assert c.task("r", "plan").children_waiting == 2
    # A replica that restored a snapshot remembers it too.
    sm = StateMachine()
    sm.restore(c.sm.snapshot())
    before = sm.digest()
    res, events = sm.apply(cmd)
    assert (res, events, sm.digest()) == (first, [], before)


def test_a_retried_attempt_with_a_new_request_id_is_fenced(c: Cluster) -> None:
    cmd = spawning(c, "r", "plan", [spec("x")])
    c.ok(cmd)
    again = Complete(c.rid(), cmd.ts_ms, cmd.node_id, cmd.items)
    c.unchanged(again, Code.ABORTED)  # the attempt is no longer RUNNING: nothing more is added
    assert [t for t in c.st.runs["r"].tasks if t == "x"] == ["x"]


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ([spec("after")], "task id 'after' is already a task of run 'r'"),
        ([spec("plan")], "task id 'plan' is already a task of run 'r'"),
        ([spec("x", "after")], "depends on 'after', which is neither a spawned task"),
        ([spec("x", "nope")], "depends on 'nope', which is neither a spawned task"),
        ([spec("x", agent="nobody")], "unknown agent type(s) 'nobody'"),
        ([spec("x", "y"), spec("y", "x")], "cycle"),
        ([spec("x"), spec("x")], "used twice"),
        ([spec("x[0]")], "may contain only letters"),
        ([spec("x", retries=limits.MAX_RETRIES + 1)], "retries must be between"),
        ([spec("x", requires=("gpu",))], "requires capabilities [gpu]"),
        ([spec("x", trigger="any_succeeded")], "trigger needs deps"),
    ],
)
def test_an_invalid_fragment_fails_the_attempt_with_the_reason(
    c: Cluster, specs: list[TaskSpec], message: str
) -> None:
    c.st.runs["r"].tasks["plan"].retries_left = 3  # still not retried: the fragment would not change
    c.ok(spawning(c, "r", "plan", specs))
    plan = c.task("r", "plan")
    assert plan.status is S.FAILED and plan.error.startswith("spawn refused: ") and message in plan.error
    assert plan.children == [] and set(c.st.runs["r"].tasks) == {"plan", "after"}
    run = c.st.runs["r"]
    assert run.status is RunStatus.FAILED and message in run.error


def test_invalid_spawn_does_not_disturb_the_other_items_of_the_command(c: Cluster) -> None:
    c.ok(c.submit("r2", [spec("p")]))
    started(c, "r2", "p")
    good = spawning(c, "r2", "p", [spec("k")])
    bad = spawning(c, "r", "plan", [spec("after")])
    c.ok(Complete(c.rid(), c.ts, "n1", (*bad.items, *good.items)))
    assert c.st.runs["r"].status is RunStatus.FAILED
    assert status(c, "r2") == {"p": S.WAITING_CHILDREN, "k": S.READY}


def test_two_items_of_one_command_may_not_spawn_the_same_id() -> None:
    c = Cluster()
    c.ok(c.register("n1", slots=10))
    c.ok(c.submit("r", [spec("a"), spec("b")]))
    started(c, "r", "a", "b")
    one = spawning(c, "r", "a", [spec("x")])
    two = spawning(c, "r", "b", [spec("x")])
    c.ok(Complete(c.rid(), c.ts, "n1", (*one.items, *two.items)))
    assert c.task("r", "x").parent == "a"
    assert "already a task of run 'r'" in c.task("r", "b").error


def test_spawn_depth_is_limited(c: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_SPAWN_DEPTH", 2)
    c.ok(spawning(c, "r", "plan", [spec("d1")]))
    started(c, "r", "d1")
    c.ok(spawning(c, "r", "d1", [spec("d2")]))
    assert c.task("r", "d2").depth == 2
    started(c, "r", "d2")
    c.ok(spawning(c, "r", "d2", [spec("d3")]))
    assert "spawned tasks may nest at most 2 levels deep" in c.task("r", "d2").error
    assert c.st.runs["r"].status is RunStatus.FAILED


def test_nested_spawners_wait_in_turn(c: Cluster) -> None:
    c.ok(spawning(c, "r", "plan", [spec("d1")]))
    started(c, "r", "d1")
    c.ok(spawning(c, "r", "d1", [spec("d2")]))
    assert status(c, "r")["plan"] is S.WAITING_CHILDREN and status(c, "r")["d1"] is S.WAITING_CHILDREN
    c.run_task("r", "d2")
    assert status(c, "r")["d1"] is S.SUCCEEDED and status(c, "r")["plan"] is S.SUCCEEDED
    assert status(c, "r")["after"] is S.READY


def test_spawn_count_limits(c: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_SPAWN_TASKS", 2)
    c.ok(spawning(c, "r", "plan", [spec("x"), spec("y"), spec("z")]))
    assert "3 tasks spawned at once; the limit is 2" in c.task("r", "plan").error


def test_run_task_limit_counts_spawned_tasks(c: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_TASKS_PER_RUN", 3)
    c.ok(spawning(c, "r", "plan", [spec("x"), spec("y")]))
    assert "the run would have 4 tasks; the limit is 3" in c.task("r", "plan").error


def test_spawned_bytes_per_run_are_limited(c: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_SPAWNED_BYTES_PER_RUN", 400)
    c.ok(spawning(c, "r", "plan", [spec("x", input="a" * 100)], wait=False))
    used = c.st.runs["r"].spawned_bytes
    assert 100 < used < 400
    started(c, "r", "x")
    c.ok(spawning(c, "r", "x", [spec("y", input="b" * 300)]))
    assert "the limit is 400" in c.task("r", "x").error


def test_budget_max_tasks_ends_the_run() -> None:
    c = Cluster()
    c.ok(c.register("n1", slots=10))
    c.ok(SubmitRun(c.rid(), c.ts, "r", "", (spec("plan"), spec("other")), 0, "r", "t", Budget(max_tasks=3)))
    started(c, "r", "plan", "other")
    c.ok(spawning(c, "r", "plan", [spec("x")]))  # 3 tasks: within the budget
    started(c, "r", "x")
    c.ok(spawning(c, "r", "x", [spec("y")]))
    run = c.st.runs["r"]
    assert (run.status, run.reason) == (RunStatus.FAILED, BUDGET_EXCEEDED)
    assert "max_tasks is 3; the run has 3 tasks and would add 1" in run.error
    assert "y" not in run.tasks
    # x's attempt did its work (kept, so a saga compensates it), as a completion over max_cost.
    assert status(c, "r") == {"plan": S.CANCELLED, "other": S.CANCELLED, "x": S.SUCCEEDED}


def test_a_failed_spawned_task_fails_the_run(c: Cluster) -> None:
    c.ok(spawning(c, "r", "plan", [spec("x")]))
    started(c, "r", "x")
    c.ok(c.fail("r", "x", retryable=False))
    run = c.st.runs["r"]
    assert run.status is RunStatus.FAILED and "task 'x' failed" in run.error
    assert status(c, "r")["plan"] is S.CANCELLED


def test_a_cancelled_run_cancels_what_was_spawned(c: Cluster) -> None:
    c.ok(spawning(c, "r", "plan", [spec("x"), spec("y", "x")]))
    started(c, "r", "x")
    c.ok(CancelRun(c.rid(), c.ts, "r", "stop"))
    assert set(status(c, "r").values()) == {S.CANCELLED}
    assert c.st.running.get("n1", {}) == {}


def test_events_say_what_changed(c: Cluster) -> None:
    c.events.clear()
    c.ok(spawning(c, "r", "plan", [spec("x")], wait=False))
    changed = [(e.task_id, e.status) for e in c.events if isinstance(e, TaskChanged)]
    assert ("plan", S.SUCCEEDED) in changed and ("x", S.READY) in changed
    assert not [e for e in c.events if isinstance(e, RunChanged)]


def test_the_log_carries_the_spawn(c: Cluster) -> None:
    cmd = spawning(
        c, "r", "plan", [spec("x", "plan", input={"k": [1]}, when={"path": "plan", "op": "exists"})]
    )
    assert decode_command(encode_command(cmd)) == cmd


def test_snapshot_and_restore_mid_spawn_continue_identically(c: Cluster) -> None:
    c.ok(spawning(c, "r", "plan", [spec("x"), spec("y", "x", "plan")]))
    check_indexes(c.sm)
    replica = Cluster()
    replica.sm.restore(c.sm.snapshot())
    assert replica.st.index_snapshot() == c.st.index_snapshot()
    restored = replica.st.runs["r"]
    assert restored.tasks["x"].origin == "spawn" and restored.tasks["plan"].children == ["x", "y"]
    assert restored.spawned_bytes == c.st.runs["r"].spawned_bytes > 0
    for cmd in (c.assign(("r", "x", "n1")),):
        c.ok(cmd)
        replica.ok(cmd)
    for cmd in (c.complete("r", "x"),):
        c.ok(cmd)
        replica.ok(cmd)
    assert replica.sm.digest() == c.sm.digest()
    check_indexes(replica.sm)


def test_a_paused_or_ended_run_takes_no_spawn(c: Cluster) -> None:
    # A completion whose run has ended is fenced (its task is no longer RUNNING).
    cmd = spawning(c, "r", "plan", [spec("x")])
    c.ok(CancelRun(c.rid(), c.ts, "r", ""))
    c.unchanged(cmd, Code.ABORTED)


# ---- ctx.spawn: what an attempt can check without the run -------------------------------------


def ctx(task_id: str = "plan") -> TaskContext:
    log = logging.LoggerAdapter(logging.getLogger("test"), {})
    return TaskContext("r", task_id, 1, 7, "n1", None, {}, "r", log)


def test_ctx_spawn_takes_a_dag_a_list_of_tasks_or_spec_maps() -> None:
    x = ctx()
    dag = DAG()
    a = dag.task("a", "echo", input={"k": 1})
    dag.task("b", "sum", deps=[a, "plan"], retries=2)
    assert x.spawn(dag) == ["a", "b"]
    assert x.spawn([Task("c", "echo", deps=("b",))]) == ["c"]
    assert x.spawn([{"id": "d", "agent": "echo", "deps": ["c"], "locks": ["l"], "requires": ["gpu"]}]) == [
        "d"
    ]
    assert [m["id"] for m in x.spawns.tasks] == ["a", "b", "c", "d"] and x.spawns.wait is True
    # What travels (over a worker's pipe too) is the spec loader's own form.
    assert x.spawns.tasks[1] == dag.tasks["b"].to_dict()
    assert x.spawns.tasks[3]["locks"] == [["l", "exclusive"]]


@pytest.mark.parametrize(
    ("fragment", "message"),
    [
        ("a", "takes a raftmesh.DAG, a list of raftmesh.Task or a list of task spec maps, not str"),
        ([1], "task #1 is a int"),
        ([], "the fragment has no tasks"),
        ([{"id": "a"}], "needs 'id' and 'agent'"),
        ([{"id": "a", "agent": "echo", "colour": 1}], "unknown field(s) ['colour']"),
        ([{"id": "a", "agent": "echo"}, {"id": "a", "agent": "echo"}], "used twice"),
        ([{"id": "a#1", "agent": "echo"}], "may contain only letters"),
        ([{"id": "plan", "agent": "echo"}], "the spawning task's own id"),
        ([{"id": "a", "agent": "echo", "deps": ["b"]}, {"id": "b", "agent": "echo", "deps": ["a"]}], "cycle"),
        ([{"id": "a", "agent": "echo", "input": {"x": float("nan")}}], "input $.x: nan is not a JSON number"),
        ([{"id": "a", "agent": "echo", "input": "x" * (limits.MAX_TASK_INPUT_BYTES + 1)}], "bytes encoded"),
    ],
)
def test_ctx_spawn_refuses_a_bad_fragment_at_once(fragment: Any, message: str) -> None:
    x = ctx()
    with pytest.raises(SpawnError) as err:
        x.spawn(fragment)
    assert message in str(err.value)
    assert err.value.retryable is False  # uncaught, it fails the attempt for good
    assert x.spawns.tasks == []


def test_ctx_spawn_calls_accumulate_and_are_checked_together(monkeypatch: pytest.MonkeyPatch) -> None:
    x = ctx()
    x.spawn([{"id": "a", "agent": "echo", "deps": ["b"]}])  # b is not spawned (yet): the run may have it
    with pytest.raises(SpawnError, match="already spawned by this attempt"):
        x.spawn([{"id": "a", "agent": "echo"}])
    with pytest.raises(SpawnError, match="cycle: "):
        x.spawn([{"id": "b", "agent": "echo", "deps": ["a"]}])
    assert x.spawn([{"id": "c", "agent": "echo", "deps": ["a"]}]) == ["c"]
    with pytest.raises(
        SpawnError, match=r"wait=False after an earlier ctx\.spawn of this attempt with wait=True"
    ):
        x.spawn([{"id": "d", "agent": "echo"}], wait=False)
    monkeypatch.setattr(limits, "MAX_SPAWN_TASKS", 3)
    with pytest.raises(SpawnError, match="would spawn 4 tasks; the limit is 3"):
        x.spawn([{"id": "d", "agent": "echo"}, {"id": "e", "agent": "echo"}])
    assert [m["id"] for m in x.spawns.tasks] == ["a", "c"]  # a refused call adds nothing


def test_task_specs_are_explicit_as_a_submit_logs_them() -> None:
    maps = fragment_maps(
        [
            {"id": "a", "agent": "echo", "input": {"k": 1}},
            {"id": "b", "agent": "echo", "retries": 0, "timeout_ms": 0, "priority": 3, "deps": ["a"]},
            {"id": "c", "agent": "other"},
        ]
    )
    offer = AgentOffer("echo", retries=2, timeout_ms=5000)
    a, b, c3 = task_specs(maps, run_priority=7, defaults={"echo": offer})
    assert (a.input, a.retries, a.timeout_ms, a.priority) == ({"k": 1}, 2, 5000, 7)
    assert (b.retries, b.timeout_ms, b.priority, b.deps) == (0, 0, 3, ("a",))
    assert (c3.retries, c3.timeout_ms) == (0, 0)  # an agent type nobody offers keeps 0 (apply refuses it)
    with pytest.raises(SpawnError, match="may not carry api_key"):
        task_specs(fragment_maps([{"id": "x", "agent": "llm", "input": {"api_key": "k"}}]), 0, {})


@pytest.mark.parametrize(
    ("msg", "ok", "spawn"),
    [
        ({"t": "done", "ok": True, "output": 1}, True, ()),
        ({"t": "done", "ok": True, "output": 1, "spawn": [False, [{"id": "a"}]]}, True, ({"id": "a"},)),
        ({"t": "done", "ok": True, "output": 1, "spawn": [1, [{"id": "a"}]]}, False, ()),
        ({"t": "done", "ok": True, "output": 1, "spawn": [True, ["a"]]}, False, ()),
    ],
)
def test_a_workers_spawn_is_read_strictly(msg: dict[str, Any], ok: bool, spawn: tuple[Any, ...]) -> None:
    out = _outcome(msg)
    assert (out.ok, out.spawn) == (ok, spawn)
    if spawn:
        assert out.spawn_wait is False


def test_retrying_a_dead_letter_resumes_a_waiting_spawner_without_running_it_again() -> None:
    c = Cluster()
    c.ok(c.register("n1", slots=10))
    c.ok(c.submit("r", [spec("plan"), spec("other"), spec("after", "plan")]))
    started(c, "r", "plan", "other")
    c.ok(spawning(c, "r", "plan", [spec("x", "plan"), spec("y")], output={"kept": 1}))
    c.run_task("r", "y")
    c.ok(c.fail("r", "other", retryable=False))  # the run fails: the waiting spawner is cancelled
    assert status(c, "r") == {
        "plan": S.CANCELLED,
        "other": S.FAILED,
        "after": S.CANCELLED,
        "x": S.CANCELLED,
        "y": S.SUCCEEDED,
    }
    c.ok(RetryTask(c.rid(), c.ts, "r", "other", 1))
    # The spawner waits again, its output kept; what it spawned and did not finish runs again.
    assert status(c, "r") == {
        "plan": S.WAITING_CHILDREN,
        "other": S.READY,
        "after": S.PENDING,
        "x": S.READY,
        "y": S.SUCCEEDED,
    }
    assert c.task("r", "plan").output == {"kept": 1} and c.task("r", "plan").children_waiting == 1
    c.run_task("r", "x")
    assert status(c, "r")["plan"] is S.SUCCEEDED and c.task("r", "plan").attempt == 1
    c.run_task("r", "other")
    c.run_task("r", "after")
    assert c.st.runs["r"].status is RunStatus.SUCCEEDED


# ---- the host: what a spawning attempt reports ----------------------------------------------


class RecordingWriter(MachineWriter):
    def __init__(self, sm: StateMachine) -> None:
        super().__init__(sm)
        self.commands: list[Any] = []

    async def propose(self, cmd: Any, timeout_s: float | None = None) -> Any:
        self.commands.append(cmd)
        return await super().propose(cmd, timeout_s)


def test_the_host_reports_each_spawn_in_its_own_command_with_explicit_specs() -> None:
    sm = StateMachine()
    offers = (AgentOffer("planner"), AgentOffer("echo", retries=2, timeout_ms=9000))
    res, _ = sm.apply(RegisterNode("reg", 1, "n1", "g", "r", ("planner", "echo"), 8, "i1", offers))
    assert res.ok, res
    tasks = (TaskSpec("p0", "planner"), TaskSpec("p1", "planner"), TaskSpec("e", "echo"))
    res, _ = sm.apply(SubmitRun("s1", 2, run_id="r1", tasks=tasks, priority=5))
    assert res.ok, res
    res, _ = sm.apply(SubmitRun("s2", 2, run_id="r2", tasks=(TaskSpec("bad", "planner"),)))
    assert res.ok, res

    async def planner(ctx: TaskContext) -> Any:
        if ctx.task_id == "bad":
            ctx.spawn([{"id": "leak", "agent": "llm", "input": {"api_key": "sk-1"}}])
        else:
            ctx.spawn(
                [
                    {"id": f"{ctx.task_id}-a", "agent": "echo"},
                    {"id": f"{ctx.task_id}-b", "agent": "echo", "retries": 0, "priority": 1},
                ]
            )
        return ctx.task_id

    async def echo(ctx: TaskContext) -> Any:
        return ctx.input

    async def scenario() -> None:
        registry = AgentRegistry()
        registry.register("planner", planner)
        registry.register("echo", echo)
        writer = RecordingWriter(sm)
        host = AgentHost("n1", "i1", registry, reads_of(sm), writer, ManualClock())
        reporter = asyncio.get_running_loop().create_task(host._report_loop())
        items = (*(Assignment("r1", t.id, "n1", 1) for t in tasks), Assignment("r2", "bad", "n1", 1))
        res, _ = sm.apply(Assign("a1", 3, items))
        assert res.ok, res
        host._reconcile()
        for _ in range(200):  # the attempts, their reports and the flush take a few loop turns
            if sm.state.runs["r1"].tasks["e"].status is not TaskStatus.RUNNING and host.running == 0:
                break
            await asyncio.sleep(0)
        reporter.cancel()
        run = sm.state.runs["r1"]
        assert run.tasks["p0"].status is TaskStatus.WAITING_CHILDREN and run.tasks["p0"].output == "p0"
        a, b = run.tasks["p1-a"].spec, run.tasks["p1-b"].spec
        # Unset: the agent type's defaults and the run's priority, as at submit.
        assert (a.retries, a.timeout_ms, a.priority) == (2, 9000, 5)
        assert (b.retries, b.timeout_ms, b.priority) == (0, 9000, 1)
        bad = sm.state.runs["r2"].tasks["bad"]
        assert bad.status is TaskStatus.FAILED and "may not carry api_key" in bad.error
        assert "leak" not in sm.state.runs["r2"].tasks
        completes = [c for c in writer.commands if isinstance(c, Complete)]
        spawning = [c for c in completes if any(i.spawn for i in c.items)]
        assert sorted(len(c.items) for c in spawning) == [1, 1]  # each spawn in a command of its own

    asyncio.run(scenario())


def test_ctx_spawn_bounds_what_one_attempt_spawns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_SPAWNED_BYTES_PER_RUN", 300)
    x = ctx()
    x.spawn([{"id": "a", "agent": "echo", "input": "x" * 100}])
    with pytest.raises(SpawnError, match="over 300 bytes encoded"):
        x.spawn([{"id": "b", "agent": "echo", "input": "y" * 200}])
    assert [m["id"] for m in x.spawns.tasks] == ["a"]


def test_a_spawned_task_may_be_replicated(c: Cluster) -> None:
    specs = task_specs(fragment_maps([{"id": "v", "agent": "echo", "replicas": 3, "fusion": "vote"}]), 0, {})
    c.ok(spawning(c, "r", "plan", list(specs)))
    v = c.task("r", "v")
    assert (v.parent, v.origin, v.status) == ("plan", "spawn", S.WAITING_CHILDREN)
    assert v.children == ["v#0", "v#1", "v#2"] and c.task("r", "v#0").depth == 1
    for replica in v.children:
        if c.task("r", replica).status is S.READY:
            c.run_task("r", replica, output="yes")
    assert c.task("r", "v").status is S.SUCCEEDED and c.task("r", "v").output["answer"] == "yes"
    assert status(c, "r")["plan"] is S.SUCCEEDED and status(c, "r")["after"] is S.READY


def test_a_spawned_task_is_a_dependent_of_a_dependency_that_already_succeeded(c: Cluster) -> None:
    c.ok(c.submit("r2", [spec("x"), spec("a")]))
    c.run_task("r2", "x", output="x-v1")
    started(c, "r2", "a")
    c.ok(spawning(c, "r2", "a", [spec("s0"), spec("s", "s0", "x")], wait=False))
    # A rerun of x reaches s through x's dependents (it may not leave s READY with x rerunning).
    assert "s" in c.task("r2", "x").dependents
    c.apply(c.rerun("r2", "x"))
    c.run_task("r2", "s0")
    st = status(c, "r2")
    assert st["s"] is not S.READY or st["x"] is S.SUCCEEDED
    check_indexes(c.sm)


def _grow_then_spawn(c: Cluster, budget: Budget | None) -> RunStatus:
    """One Complete: ``src`` ends (its map expands to 2), then ``s`` spawns 2 tasks."""
    tasks = (spec("src"), spec("s"), spec("m", "src", map="src"))
    c.ok(SubmitRun(c.rid(), c.ts, "g", "", tasks, 0, "g", "t", budget))
    started(c, "g", "src", "s")
    a, b = c.task("g", "src"), c.task("g", "s")
    c.ok(
        Complete(
            c.rid(),
            c.ts,
            "n1",
            (
                Completion("g", "src", a.attempt, a.token, [1, 2]),
                Completion(
                    "g", "s", b.attempt, b.token, "ok", spawn=(spec("k1"), spec("k2")), spawn_wait=False
                ),
            ),
        )
    )
    check_indexes(c.sm)
    return c.st.runs["g"].status


def test_a_spawn_is_judged_against_max_tasks_after_the_earlier_items_of_its_command(c: Cluster) -> None:
    assert _grow_then_spawn(c, Budget(max_tasks=6)) is RunStatus.FAILED
    run = c.st.runs["g"]
    assert run.reason == BUDGET_EXCEEDED and "has 5 tasks and would add 2" in run.error
    assert len(run.tasks) == 5 and "k1" not in run.tasks
    # its attempt's work is kept (a saga compensates it), as when the command's own check refuses
    assert c.task("g", "s").status is S.SUCCEEDED and c.task("g", "s").output == "ok"


def test_a_spawn_is_judged_against_the_task_limit_after_the_earlier_items_of_its_command(
    c: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "MAX_TASKS_PER_RUN", 6)
    assert _grow_then_spawn(c, None) is RunStatus.FAILED
    s = c.task("g", "s")
    assert s.status is S.FAILED and "spawn refused: the run would have 7 tasks; the limit is 6" in s.error
    assert "k1" not in c.st.runs["g"].tasks
