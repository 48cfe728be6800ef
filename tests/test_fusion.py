"""Competing replicas (``replicas`` + ``fusion``) in the pure state machine."""

from __future__ import annotations

from typing import Any

import pytest

from raftmesh.consensus import ClusterState, Code, RunStatus, SubmitRun, TaskStatus, limits
from raftmesh.consensus.commands import Budget, Complete, Completion, TaskSpec
from raftmesh.consensus.dag import DagError, validate
from raftmesh.consensus.placement import plan_assignments
from tests.test_machine import Cluster, check_indexes, spec, status
from tests.test_spawn import spawning


@pytest.fixture
def c() -> Cluster:
    cluster = Cluster()
    for n in ("n1", "n2", "n3"):
        cluster.ok(cluster.register(n, agents=("echo", "llm", "judge")))
    return cluster


def rep(task_id: str, n: int, fusion: str, *deps: str, **kw: Any) -> TaskSpec:
    return spec(task_id, *deps, replicas=n, fusion=fusion, **kw)


def start(c: Cluster, run: str, task_id: str, node: str) -> None:
    c.ok(c.assign((run, task_id, node)))


def answer(c: Cluster, run: str, task_id: str, output: Any, node: str = "n1") -> None:
    """Run replica ``task_id`` to a success with ``output`` (assigning it first if READY)."""
    if c.task(run, task_id).status is TaskStatus.READY:
        start(c, run, task_id, node)
    c.ok(c.complete(run, task_id, output))


def give_up(c: Cluster, run: str, task_id: str, node: str = "n1") -> None:
    if c.task(run, task_id).status is TaskStatus.READY:
        start(c, run, task_id, node)
    c.ok(c.fail(run, task_id, "model unreachable", retryable=False))


def out(c: Cluster, run: str, task_id: str = "q") -> Any:
    return c.task(run, task_id).output


# ---- validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "fix"),
    [
        ({"replicas": 3}, "need a fusion rule"),
        ({"replicas": 3, "fusion": "average"}, "use one of vote, weighted"),
        ({"fusion": "vote"}, "fusion needs replicas"),
        ({"quorum": 2}, "quorum needs replicas"),
        ({"replicas": limits.MAX_REPLICAS + 1, "fusion": "vote"}, "between 1 and"),
        ({"replicas": -1, "fusion": "vote"}, "between 1 and"),
        ({"replicas": 3, "fusion": "vote", "quorum": 4}, "quorum must be between 1 and replicas"),
        ({"replicas": 3, "fusion": "first", "quorum": 2}, "quorum must be 1 or unset"),
        ({"replicas": 2, "fusion": "weighted", "weights": (1.0,)}, "one per replica"),
        ({"replicas": 2, "fusion": "weighted", "weights": (1.0, float("nan"))}, "finite numbers >= 0"),
        ({"replicas": 2, "fusion": "weighted", "weights": (0.0, 0.0)}, r"fewer than the quorum \(2\)"),
        ({"replicas": 3, "fusion": "weighted", "weights": (1.0, 0.0, 0.0)}, "weights give 1 replica"),
        ({"replicas": 3, "fusion": "weighted", "weights": (1, 0, 1), "quorum": 3}, r"quorum \(3\)"),
        ({"replicas": 2, "fusion": "weighted", "weights": (-1.0, 2.0)}, "finite numbers >= 0"),
        ({"replicas": 2, "fusion": "vote", "weights": (1.0, 1.0)}, "weights apply to fusion weighted"),
        ({"replicas": 2, "fusion": "vote", "agents": ("echo", "nope")}, "unknown agent type"),
        ({"replicas": 2, "fusion": "vote", "agents": ("echo", "llm", "echo")}, "lists 3 types for 2"),
        ({"replicas": 2, "fusion": "vote", "judge": "judge"}, "judge applies to fusion best only"),
        ({"replicas": 2, "fusion": "best", "judge": "nobody"}, "unknown judge agent type"),
        ({"replicas": 2, "fusion": "vote", "map": "a"}, "cannot be combined with map"),
    ],
)
def test_submit_refuses_bad_replica_keys_with_a_fix(kw: dict[str, Any], fix: str) -> None:
    tasks = [spec("a"), spec("q", "a", **kw)]
    with pytest.raises(DagError, match=fix):
        validate(tasks, {"echo", "llm", "judge"})


def test_apply_refuses_bad_replica_keys_too(c: Cluster) -> None:
    res = c.unchanged(c.submit("r", [rep("q", 3, "vote", quorum=5)]), Code.INVALID_ARGUMENT)
    assert "quorum must be between 1 and replicas" in res.message


# ---- expansion -------------------------------------------------------------------------


def test_replicas_start_as_children_with_the_parent_waiting(c: Cluster) -> None:
    c.ok(c.submit("r", [spec("a"), rep("q", 3, "vote", "a", agents=("echo", "llm"), input={"x": 1})]))
    c.run_task("r", "a")
    assert status(c, "r")["q"] is TaskStatus.WAITING_CHILDREN
    q = c.task("r", "q")
    assert q.children == ["q#0", "q#1", "q#2"] and q.children_waiting == 3
    kids = [c.task("r", f"q#{i}") for i in range(3)]
    assert [k.spec.agent for k in kids] == ["echo", "llm", "echo"]
    assert all(k.status is TaskStatus.READY and k.origin == "replica" and k.parent == "q" for k in kids)
    assert [k.index for k in kids] == [0, 1, 2]
    assert all(k.spec.input == {"x": 1} and k.spec.deps == ("a",) and not k.spec.replicas for k in kids)
    assert c.st.runs["r"].unfinished == 4


def test_replicas_count_against_the_budget(c: Cluster) -> None:
    # at submit: the replicas are sure to come, so a max_tasks below them is refused at once
    res = c.unchanged(
        SubmitRun(
            c.rid(), c.ts, "r", "", (spec("a"), rep("q", 3, "vote", "a")), 0, "r", "t", Budget(max_tasks=4)
        ),
        Code.INVALID_ARGUMENT,
    )
    assert "max_tasks is 4 but the run has 5 tasks" in res.message
    # spawned: the task fits, not with its replicas (counted as a submit counts them)
    c.ok(SubmitRun(c.rid(), c.ts, "r", "", (spec("a"),), 0, "r", "t", Budget(max_tasks=3)))
    c.ok(c.assign(("r", "a", "n1")))
    c.ok(spawning(c, "r", "a", [rep("q", 3, "vote")]))
    run = c.st.runs["r"]
    assert run.status is RunStatus.FAILED and run.reason == "BUDGET_EXCEEDED"
    assert "would add 4" in run.error and "q" not in run.tasks


# ---- the rules -------------------------------------------------------------------------


def test_vote_takes_the_majority_and_cancels_the_rest(c: Cluster) -> None:
    c.ok(c.submit("r", [rep("q", 3, "vote"), spec("after", "q")]))
    for i, n in enumerate(("n1", "n2", "n3")):
        start(c, "r", f"q#{i}", n)
    answer(c, "r", "q#0", {"city": "Paris", "n": 1})
    answer(c, "r", "q#2", {"n": 1.0, "city": "Paris"})  # equal as JSON: key order and 1 == 1.0
    s = status(c, "r")
    assert s["q"] is TaskStatus.SUCCEEDED and s["q#1"] is TaskStatus.CANCELLED
    assert c.task("r", "q#1").error == "superseded: quorum reached"
    assert s["after"] is TaskStatus.READY
    o = out(c, "r")
    assert o["answer"] == {"city": "Paris", "n": 1} and o["votes"] == 2 and o["quorum"] == 2
    assert [(e["id"], e["status"], e["vote"], e["node"]) for e in o["replicas"]] == [
        ("q#0", "SUCCEEDED", 0, "n1"),
        ("q#1", "CANCELLED", None, "n2"),
        ("q#2", "SUCCEEDED", 0, "n3"),
    ]
    assert not c.st.running.get("n2")  # the superseded attempt freed its slot


def test_fenced_late_report_of_a_superseded_replica_is_ignored(c: Cluster) -> None:
    c.ok(c.submit("r", [rep("q", 3, "vote")]))
    for i, n in enumerate(("n1", "n2", "n3")):
        start(c, "r", f"q#{i}", n)
    late = c.complete("r", "q#1", "Lyon")  # built while q#1 still runs
    answer(c, "r", "q#0", "Paris")
    answer(c, "r", "q#2", "Paris")
    before = out(c, "r")
    res = c.unchanged(late, Code.ABORTED)
    assert "task is CANCELLED" in res.message
    assert out(c, "r") == before and c.task("r", "q#1").output is None
    assert c.st.runs["r"].status is RunStatus.SUCCEEDED


def test_one_batch_reaching_the_quorum_does_not_complete_a_superseded_replica(c: Cluster) -> None:
    c.ok(c.submit("r", [rep("q", 3, "first")]))
    for i in range(3):
        start(c, "r", f"q#{i}", "n1")
    items = tuple(Completion("r", f"q#{i}", 1, c.task("r", f"q#{i}").token, f"a{i}") for i in range(3))
    c.ok(Complete(c.rid(), c.ts, "n1", items))
    s = status(c, "r")
    assert s["q#0"] is TaskStatus.SUCCEEDED and s["q#1"] is s["q#2"] is TaskStatus.CANCELLED
    assert out(c, "r")["answer"] == "a0" and out(c, "r")["chosen"] == "q#0"
    assert c.st.runs["r"].status is RunStatus.SUCCEEDED and c.st.runs["r"].unfinished == 0


def test_vote_with_no_majority_fails_clearly(c: Cluster) -> None:
    c.ok(c.submit("r", [rep("q", 3, "vote")]))
    answer(c, "r", "q#0", "Paris")
    answer(c, "r", "q#1", "Lyon")
    assert status(c, "r")["q"] is TaskStatus.WAITING_CHILDREN  # q#2 may still break the tie
    answer(c, "r", "q#2", "Nice")
    run = c.st.runs["r"]
    assert run.status is RunStatus.FAILED and run.reason == "TASK_FAILED"
    assert "no majority: 2 replicas had to give the same answer, the most that agreed was 1" in run.error
    assert "'Lyon'" in run.error
    assert [d[2] for d in c.st.dead_letters] == ["q"]  # the replicas are not dead letters


def test_vote_quorum_all_fails_as_soon_as_two_disagree(c: Cluster) -> None:
    c.ok(c.submit("r", [rep("q", 3, "vote", quorum=3)]))
    answer(c, "r", "q#0", 1)
    answer(c, "r", "q#1", 2)
    assert c.st.runs["r"].status is RunStatus.FAILED
    assert status(c, "r")["q#2"] is TaskStatus.CANCELLED


def test_a_failed_replica_is_tolerated_while_the_quorum_is_reachable(c: Cluster) -> None:
    c.ok(c.submit("r", [rep("q", 3, "vote", retries=1)]))
    start(c, "r", "q#0", "n1")
    c.ok(c.fail("r", "q#0", "flaky"))  # a retry first
    assert status(c, "r")["q#0"] is TaskStatus.READY
    start(c, "r", "q#0", "n1")
    c.ok(c.fail("r", "q#0", "model unreachable"))
    assert status(c, "r")["q#0"] is TaskStatus.FAILED
    assert c.st.runs["r"].status is RunStatus.RUNNING and not c.st.dead_letters
    answer(c, "r", "q#1", "yes")
    answer(c, "r", "q#2", "yes")
    o = out(c, "r")
    assert c.st.runs["r"].status is RunStatus.SUCCEEDED and o["answer"] == "yes"
    assert o["replicas"][0]["status"] == "FAILED" and o["replicas"][0]["error"] == "model unreachable"


def test_the_run_fails_when_failed_replicas_make_the_quorum_unreachable(c: Cluster) -> None:
    c.ok(c.submit("r", [rep("q", 3, "best")]))
    give_up(c, "r", "q#0")
    assert c.st.runs["r"].status is RunStatus.RUNNING
    give_up(c, "r", "q#1")
    run = c.st.runs["r"]
    assert run.status is RunStatus.FAILED
    assert "quorum unreachable: 2 successful replicas needed, 0 answered usably" in run.error
    assert "q#0: model unreachable" in run.error
    s = status(c, "r")
    assert s["q"] is TaskStatus.FAILED and s["q#2"] is TaskStatus.CANCELLED


def test_timeouts_of_replicas_count_as_their_failures(c: Cluster) -> None:
    c.ok(c.submit("r", [rep("q", 2, "first", timeout_ms=1000)]))
    start(c, "r", "q#0", "n1")
    start(c, "r", "q#1", "n2")
    c.ok(c.tick(c.ts + 5000))
    run = c.st.runs["r"]
    assert run.status is RunStatus.FAILED and "timed out" in run.error


def test_weighted_averages_numbers_and_numeric_values(c: Cluster) -> None:
    c.ok(c.submit("r", [rep("q", 3, "weighted", quorum=3, weights=(1.0, 2.0, 1.0))]))
    answer(c, "r", "q#0", 10)
    answer(c, "r", "q#1", {"value": 20, "why": "estimate"})
    answer(c, "r", "q#2", 30.0)
    o = out(c, "r")
    assert o["answer"] == pytest.approx((10 + 40 + 30) / 4)
    assert [e["weight"] for e in o["replicas"]] == [1.0, 2.0, 1.0]


def test_weighted_waits_past_a_replica_of_weight_0(c: Cluster) -> None:
    c.ok(c.submit("r", [rep("q", 3, "weighted", quorum=1, weights=(0.0, 1.0, 1.0))]))
    answer(c, "r", "q#0", 100)
    assert status(c, "r")["q"] is TaskStatus.WAITING_CHILDREN
    answer(c, "r", "q#2", 4)
    o = out(c, "r")
    assert o["answer"] == 4.0 and o["replicas"][0]["error"] == "its weight is 0"


def test_weighted_does_not_count_a_non_number(c: Cluster) -> None:
    c.ok(c.submit("r", [rep("q", 2, "weighted", quorum=2)]))
    answer(c, "r", "q#0", 1)
    answer(c, "r", "q#1", "lots")
    run = c.st.runs["r"]
    assert run.status is RunStatus.FAILED
    assert "q#1: weighted needs a number" in run.error


def test_merge_deep_merges_maps_and_reports_conflicts(c: Cluster) -> None:
    c.ok(c.submit("r", [rep("q", 3, "merge", quorum=3)]))
    answer(c, "r", "q#0", {"name": "Ada", "facts": {"born": 1815}})
    answer(c, "r", "q#1", {"facts": {"died": 1852, "born": 1816}, "tags": ["math"]})
    answer(c, "r", "q#2", {"name": "Ada", "facts": {"born": 1815}})
    o = out(c, "r")
    assert o["answer"] == {"name": "Ada", "facts": {"born": 1815, "died": 1852}, "tags": ["math"]}
    assert o["conflicts"] == [
        {"path": ["facts", "born"], "kept": 1815, "from": "q#0", "replica": "q#1", "value": 1816}
    ]


def test_best_takes_the_highest_score(c: Cluster) -> None:
    c.ok(c.submit("r", [rep("q", 3, "best", quorum=3)]))
    answer(c, "r", "q#0", {"text": "a", "score": 0.4})
    answer(c, "r", "q#1", {"text": "b", "score": 0.9})
    answer(c, "r", "q#2", {"text": "c", "score": 0.9})  # a tie keeps the lower index
    o = out(c, "r")
    assert o["answer"] == {"text": "b", "score": 0.9} and o["chosen"] == "q#1"
    assert [e["score"] for e in o["replicas"]] == [0.4, 0.9, 0.9]


def test_best_with_a_judge(c: Cluster) -> None:
    c.ok(c.submit("r", [rep("q", 3, "best", judge="judge", quorum=2, input="name a colour")]))
    answer(c, "r", "q#0", "red")
    answer(c, "r", "q#1", "blue")
    s = status(c, "r")
    assert s["q#2"] is TaskStatus.CANCELLED and s["q"] is TaskStatus.WAITING_CHILDREN
    j = c.task("r", "q#judge")
    assert j.status is TaskStatus.READY and j.origin == "judge" and j.spec.agent == "judge"
    assert j.spec.input == {
        "task": "q",
        "input": "name a colour",
        "candidates": [
            {"replica": "q#0", "agent": "echo", "output": "red"},
            {"replica": "q#1", "agent": "echo", "output": "blue"},
        ],
    }
    answer(c, "r", "q#judge", {"scores": [0.2, 0.7]})
    o = out(c, "r")
    assert c.st.runs["r"].status is RunStatus.SUCCEEDED
    assert o["answer"] == "blue" and o["chosen"] == "q#1" and o["judge"] == "q#judge"
    assert [e["score"] for e in o["replicas"]] == [0.2, 0.7, None]


def test_a_judge_that_returns_nonsense_fails_the_task(c: Cluster) -> None:
    c.ok(c.submit("r", [rep("q", 2, "best", judge="judge")]))
    answer(c, "r", "q#0", "red")
    answer(c, "r", "q#1", "blue")
    answer(c, "r", "q#judge", {"choice": 7})
    run = c.st.runs["r"]
    assert run.status is RunStatus.FAILED and "judge 'choice' must be a candidate index 0..1" in run.error


def test_an_oversized_fused_output_drops_the_replica_outputs(c: Cluster) -> None:
    big = "x" * (limits.MAX_TASK_OUTPUT_BYTES // 2)
    c.ok(c.submit("r", [rep("q", 2, "vote")]))
    answer(c, "r", "q#0", big)
    answer(c, "r", "q#1", big)
    o = out(c, "r")
    assert o["answer"] == big and o["outputs_omitted"] is True
    assert [e["output"] for e in o["replicas"]] == [None, None]
    assert c.task("r", "q#0").output == big


def test_cancelling_the_run_cancels_its_replicas(c: Cluster) -> None:
    from raftmesh.consensus import CancelRun

    c.ok(c.submit("r", [rep("q", 2, "vote")]))
    start(c, "r", "q#0", "n1")
    c.ok(CancelRun(c.rid(), c.ts, "r", "stop"))
    assert set(status(c, "r").values()) == {TaskStatus.CANCELLED}


def test_snapshot_restore_mid_vote_gives_the_same_outcome(c: Cluster) -> None:
    c.ok(c.submit("r", [rep("q", 3, "vote"), spec("after", "q")]))
    for i, n in enumerate(("n1", "n2", "n3")):
        start(c, "r", f"q#{i}", n)
    answer(c, "r", "q#0", "Paris")
    give_up(c, "r", "q#1")
    check_indexes(c.sm)
    restored = Cluster()
    restored.sm.state = ClusterState.decode(c.st.encode())
    restored.ts = c.ts
    assert restored.sm.digest() == c.sm.digest()
    for cl in (c, restored):
        cl.ok(cl.complete("r", "q#2", "Paris", rid="same"))
        check_indexes(cl.sm)
    assert restored.sm.digest() == c.sm.digest()
    assert restored.task("r", "q").output == c.task("r", "q").output
    assert c.task("r", "q").output["answer"] == "Paris"


# ---- placement: replicas spread over nodes ------------------------------------------------


def _plan(c: Cluster) -> dict[str, str]:
    return {a.task_id: a.node_id for a in plan_assignments(c.st, c.ts, {})}


def test_replicas_are_placed_on_different_nodes(c: Cluster) -> None:
    c.ok(c.submit("busy", [spec("x")]))
    start(c, "busy", "x", "n2")  # n2 is the most loaded, yet takes a replica: no other node is free
    c.ok(c.submit("r", [rep("q", 3, "vote")]))
    plan = _plan(c)
    assert sorted(plan.values()) == ["n1", "n2", "n3"]


def test_a_sibling_already_running_is_avoided(c: Cluster) -> None:
    c.ok(c.submit("r", [rep("q", 2, "vote")]))
    start(c, "r", "q#0", "n1")
    c.ok(c.submit("other", [spec("x"), spec("y"), spec("z"), spec("w")]))
    for tid, n in (("x", "n2"), ("y", "n2"), ("z", "n3"), ("w", "n3")):
        start(c, "other", tid, n)
    # n1 is the least loaded (1 of 4 slots), but it runs q#0: q#1 goes elsewhere
    assert _plan(c)["q#1"] in ("n2", "n3")


def test_replicas_still_share_a_node_when_only_one_fits() -> None:
    c = Cluster()
    c.ok(c.register("n1", agents=("echo",)))
    c.ok(c.register("n2", agents=("llm",)))
    c.ok(c.submit("r", [rep("q", 3, "vote")]))
    assert _plan(c) == {"q#0": "n1", "q#1": "n1", "q#2": "n1"}


# ---- dead letters ------------------------------------------------------------------------


def test_retrying_a_run_resumes_its_replicas_not_the_superseded_ones(c: Cluster) -> None:
    from raftmesh.consensus.commands import RetryTask

    c.ok(c.submit("r", [rep("q", 3, "first"), rep("v", 3, "vote"), spec("boom")]))
    answer(c, "r", "q#0", "fast")  # q decided: q#1, q#2 superseded
    answer(c, "r", "v#0", "yes")
    start(c, "r", "v#1", "n2")
    give_up(c, "r", "boom")  # fails the run: v and v#1, v#2 are cancelled
    assert c.st.runs["r"].status is RunStatus.FAILED
    c.ok(RetryTask(c.rid(), c.ts, "r", "boom", 1))
    s = status(c, "r")
    assert s["q"] is TaskStatus.SUCCEEDED and s["q#1"] is s["q#2"] is TaskStatus.CANCELLED
    assert s["v"] is TaskStatus.WAITING_CHILDREN and s["v#1"] is s["v#2"] is TaskStatus.READY
    assert c.task("r", "v").children_waiting == 2
    run = c.st.runs["r"]
    assert run.unfinished == sum(
        t.status not in (TaskStatus.SUCCEEDED, TaskStatus.CANCELLED) for t in run.tasks.values()
    )
    answer(c, "r", "boom", 1)
    answer(c, "r", "v#2", "yes")
    assert c.st.runs["r"].status is RunStatus.SUCCEEDED and out(c, "r", "v")["answer"] == "yes"
    assert c.st.runs["r"].unfinished == 0


def test_a_replicated_task_whose_quorum_was_lost_is_not_requeued(c: Cluster) -> None:
    from raftmesh.consensus.commands import RetryTask

    c.ok(c.submit("r", [rep("q", 2, "vote", quorum=2)]))
    give_up(c, "r", "q#0")
    res = c.unchanged(RetryTask(c.rid(), c.ts, "r", "q", 1), Code.FAILED_PRECONDITION)
    assert "its replicas' quorum was lost" in res.message


# ---- the surface: SDK builder, spec files, the wire, get --json ------------------------------


def test_dag_builder_and_yaml_carry_the_replica_keys_to_the_wire(tmp_path: Any) -> None:
    from raftmesh import DAG
    from raftmesh.errors import InvalidArgument
    from raftmesh.node import convert
    from raftmesh.proto.raftmesh.v1 import cluster_pb2 as pb

    path = tmp_path / "dag.yaml"
    path.write_text(
        "tasks:\n"
        "  - {id: q, agent: llm, replicas: 3, fusion: weighted, quorum: 3, weights: [2, 1, 1.5],\n"
        "     agents: [llm, echo]}\n"
        "  - {id: b, agent: llm, replicas: 2, fusion: best, judge: critic, deps: [q]}\n"
    )
    dag = DAG.from_file(str(path))
    q = dag.tasks["q"]
    assert (q.replicas, q.fusion, q.quorum, q.weights, q.agents) == (
        3,
        "weighted",
        3,
        (2.0, 1.0, 1.5),
        ("llm", "echo"),
    )
    built = DAG()
    built.task(
        "q", "llm", replicas=3, fusion="weighted", quorum=3, weights=[2, 1, 1.5], agents=["llm", "echo"]
    )
    assert built.tasks["q"] == q
    assert DAG.from_dict(dag.to_dict()).tasks == dag.tasks
    with pytest.raises(InvalidArgument, match="weights must be a list of numbers"):
        DAG.from_dict({"tasks": [{"id": "a", "agent": "x", "replicas": 2, "weights": "1,2"}]})
    with pytest.raises(InvalidArgument, match="replicas must be a whole number"):
        DAG.from_dict({"tasks": [{"id": "a", "agent": "x", "replicas": "3"}]})
    with pytest.raises(InvalidArgument, match="agents must be a list"):
        DAG().task("a", "x", replicas=2, fusion="vote", agents="llm")

    req = pb.SubmitRunRequest(
        tasks=[
            pb.TaskSpec(
                id=t.id,
                agent=t.agent,
                deps=list(t.deps),
                replicas=t.replicas,
                fusion=t.fusion,
                quorum=t.quorum,
                weights=list(t.weights),
                agents=list(t.agents),
                judge=t.judge,
            )
            for t in dag.tasks.values()
        ]
    )
    specs = convert.task_specs_from_pb(req)
    assert specs[0].weights == (2.0, 1.0, 1.5) and specs[0].agents == ("llm", "echo")
    assert (specs[1].fusion, specs[1].judge) == ("best", "critic")
    assert TaskSpec.from_map(specs[0].to_map()) == specs[0]  # as the log carries it
    assert "replicas" not in TaskSpec("a", "echo").to_map()  # an unreplicated spec keeps its old form


def test_get_shows_the_replicas_and_their_votes_while_the_vote_goes_on(c: Cluster) -> None:
    from raftmesh.client import RunInfo
    from raftmesh.node import convert

    c.ok(c.submit("r", [rep("q", 3, "vote"), spec("plain")]))
    answer(c, "r", "q#0", "Paris", node="n1")
    start(c, "r", "q#1", "n2")
    give_up(c, "r", "q#2", node="n3")
    shown = RunInfo.from_pb(convert.run_to_pb(c.st.runs["r"])).to_json()["tasks"]
    assert shown["plain"]["fusion"] is None
    f = shown["q"]["fusion"]
    assert (f["rule"], f["count"], f["quorum"], f["weights"], f["agents"], f["judge"]) == (
        "vote",
        3,
        2,
        [],
        [],
        "",
    )
    assert f["replicas"] == [
        {"id": "q#0", "agent": "echo", "node": "n1", "status": "SUCCEEDED", "vote": 0, "error": ""},
        {"id": "q#1", "agent": "echo", "node": "n2", "status": "RUNNING", "vote": None, "error": ""},
        {
            "id": "q#2",
            "agent": "echo",
            "node": "n3",
            "status": "FAILED",
            "vote": None,
            "error": "model unreachable",
        },
    ]
    assert f["tally"] == [{"answer": "Paris", "votes": 1, "replicas": ["q#0"]}]
    assert shown["q#1"]["status"] == "RUNNING"


def test_replicas_count_toward_the_task_limit_at_submit(c: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_TASKS_PER_RUN", 10)
    res = c.unchanged(c.submit("r", [rep(f"q{i}", 3, "vote") for i in range(3)]), Code.INVALID_ARGUMENT)
    assert "a run has 12 tasks (replicas and judges included); the limit is 10" in res.message
    c.ok(c.submit("r", [rep("q0", 3, "vote"), rep("q1", 4, "vote")]))  # 9 tasks fit


def test_replicas_that_would_take_a_grown_run_over_the_task_limit_fail_their_task(
    c: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "MAX_TASKS_PER_RUN", 10)
    c.ok(c.submit("r", [spec("src"), spec("m", "src", map="src"), spec("a")]))
    start(c, "r", "a", "n1")
    c.ok(
        spawning(c, "r", "a", [spec("b"), rep("q", 3, "vote", "b")], wait=False)
    )  # 5 tasks, 8 with q's replicas
    start(c, "r", "src", "n1")
    c.ok(c.complete("r", "src", [1, 2, 3, 4]))  # the map grows the run to 9 first
    start(c, "r", "b", "n1")
    c.ok(c.complete("r", "b", "go"))
    q = c.task("r", "q")
    assert q.status is TaskStatus.FAILED and "3 replicas would take the run from 9 tasks" in q.error
    assert "the limit of 10" in q.error and "q#0" not in c.st.runs["r"].tasks
    assert c.st.runs["r"].status is RunStatus.FAILED
    check_indexes(c.sm)
