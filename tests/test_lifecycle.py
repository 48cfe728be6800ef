"""Dead letters and their requeue, priority preemption and usage sums, in the pure state machine.

Fed command by command (``tests.test_machine.Cluster``): every step also checks that the
maintained indexes (the dead-letter index among them) equal a rebuild and that a decoded
copy has the same digest.
"""

from __future__ import annotations

from dataclasses import replace

import msgpack
import pytest

from raftmesh.consensus import limits
from raftmesh.consensus.codes import Code
from raftmesh.consensus.commands import (
    Complete,
    Completion,
    Fail,
    Failure,
    Preempt,
    Preemption,
    RetryTask,
    Usage,
    decode_command,
    encode_command,
)
from raftmesh.consensus.dead_letters import list_dead_letters
from raftmesh.consensus.results import PreemptResult, RetryTaskResult, expect
from raftmesh.consensus.state import ClusterState, RunStatus, TaskStatus
from raftmesh.consensus.usage import add

from .test_machine import Cluster, spec, status


@pytest.fixture
def c() -> Cluster:
    cluster = Cluster()
    cluster.ok(cluster.register("n1", slots=2))
    cluster.ok(cluster.register("n2", agents=("echo", "llm"), slots=1))
    return cluster


def _complete(c: Cluster, run_id: str, task_id: str, u: Usage, **kw: int) -> Complete:
    t = c.task(run_id, task_id)
    item = Completion(run_id, task_id, kw.get("attempt", t.attempt), kw.get("token", t.token), "out", u)
    return Complete(c.rid(), c.ts, t.node, (item,))


def _fail(c: Cluster, run_id: str, task_id: str, u: Usage, retryable: bool = True) -> Fail:
    t = c.task(run_id, task_id)
    return Fail(c.rid(), c.ts, t.node, (Failure(run_id, task_id, t.attempt, t.token, "boom", retryable, u),))


def _retry(c: Cluster, run_id: str, task_id: str, attempt: int, rid: str | None = None) -> RetryTask:
    return RetryTask(rid or c.rid(), c.ts, run_id=run_id, task_id=task_id, attempt=attempt)


def _dead_run(c: Cluster) -> None:
    """r1 = DIAMOND with b given one retry: a succeeds, b fails twice (dead), c is cancelled."""
    specs = [spec("a"), spec("b", "a", retries=1), spec("c", "a"), spec("d", "b", "c")]
    c.ok(c.submit("r1", specs))
    c.run_task("r1", "a")
    c.ok(c.assign(("r1", "b", "n1"), ("r1", "c", "n1")))
    c.ok(c.fail("r1", "b"))
    c.ok(c.assign(("r1", "b", "n2")))
    c.ts += 5
    c.ok(c.fail("r1", "b", error="still broken"))


# ---- usage -------------------------------------------------------------------------------


def test_usage_is_summed_per_task_and_run_over_accepted_reports_only(c: Cluster) -> None:
    c.ok(c.submit("r1", [spec("a", retries=1), spec("b")]))
    c.ok(c.assign(("r1", "a", "n1"), ("r1", "b", "n1")))
    stale = c.task("r1", "a")
    c.ok(_fail(c, "r1", "a", Usage(10, 1, 0.5)))  # retried: its usage counts
    # A late report from the failed attempt is fenced: it adds nothing.
    late = Complete(
        c.rid(), c.ts, "n1", (Completion("r1", "a", stale.attempt, stale.token, 1, Usage(999, 999, 9.0)),)
    )
    c.unchanged(late, Code.ABORTED)
    c.ok(c.assign(("r1", "a", "n2")))
    c.ok(_complete(c, "r1", "a", Usage(5, 2, 0.25)))
    c.ok(_complete(c, "r1", "b", Usage(1, 1, 0.0)))
    assert c.task("r1", "a").usage == Usage(15, 3, 0.75)
    assert c.task("r1", "b").usage == Usage(1, 1, 0.0)
    run = c.st.runs["r1"]
    assert run.status is RunStatus.SUCCEEDED
    assert run.usage == Usage(16, 4, 0.75)
    assert add(c.task("r1", "a").usage, c.task("r1", "b").usage) == run.usage


def test_usage_of_a_refused_output_is_still_charged(c: Cluster) -> None:
    c.ok(c.submit("r1", [spec("a")]))
    c.ok(c.assign(("r1", "a", "n1")))
    c.ok(c.complete("r1", "a"))
    assert c.st.runs["r1"].usage == Usage()  # nothing reported: nothing summed
    c.ok(c.submit("r2", [spec("a")]))
    c.ok(c.assign(("r2", "a", "n1")))
    t = c.task("r2", "a")
    big = "x" * (limits.MAX_TASK_OUTPUT_BYTES + 1)
    c.ok(Complete(c.rid(), c.ts, "n1", (Completion("r2", "a", t.attempt, t.token, big, Usage(7, 0, 0.0)),)))
    assert c.task("r2", "a").status is TaskStatus.FAILED  # the attempt ran and spent: charged
    assert c.st.runs["r2"].usage == Usage(7, 0, 0.0)


def test_usage_sums_saturate_and_stay_encodable(c: Cluster) -> None:
    c.ok(c.submit("r1", [spec("a", retries=2)]))
    huge = Usage(2**64 - 1, 2**64 - 1, 1e308)
    for _ in range(2):
        c.ok(c.assign(("r1", "a", "n1")))
        c.ok(_fail(c, "r1", "a", huge))
    run = c.st.runs["r1"]
    assert run.usage == Usage(limits.MAX_USAGE_TOKENS, limits.MAX_USAGE_TOKENS, limits.MAX_USAGE_COST)
    assert ClusterState.decode(c.st.encode()).digest() == c.st.digest()


def test_a_format_2_snapshot_still_loads_with_empty_new_fields(c: Cluster) -> None:
    _dead_run(c)
    body = msgpack.unpackb(c.st.encode(), raw=False, strict_map_key=False)
    body[0] = 2
    for r in body[5]:
        del r[12:]
        for t in r[2]:
            del t[15:]
    old = ClusterState.decode(msgpack.packb(body, use_bin_type=True))
    assert old.runs["r1"].usage == Usage() and old.task("r1", "b").requeued_attempt == 0
    assert old.dead_letters == c.st.dead_letters


# ---- dead letters --------------------------------------------------------------------------


def test_a_task_that_exhausted_its_retries_is_a_dead_letter_newest_first(c: Cluster) -> None:
    _dead_run(c)
    c.ts += 10
    c.ok(c.submit("r2", [spec("x")]))
    c.ok(c.assign(("r2", "x", "n1")))
    c.ok(c.fail("r2", "x", error="bad input", retryable=False))  # non-retryable: dead at once
    dl = list_dead_letters(c.st, 10)
    assert [(d.run_id, d.task_id, d.attempt, d.error) for d in dl] == [
        ("r2", "x", 1, "bad input"),
        ("r1", "b", 2, "still broken"),
    ]
    assert dl[0].finished_ms > dl[1].finished_ms and dl[1].agent == "echo"
    assert [d.run_id for d in list_dead_letters(c.st, 1)] == ["r2"]


def test_dead_letters_listed_for_a_namespace_skip_other_runs_while_paging(c: Cluster) -> None:
    for run_id, ns in (("ra", "a"), ("rb", "b"), ("ra2", "a")):
        c.ts += 10
        c.ok(replace(c.submit(run_id, [spec("x")]), namespace=ns))
        c.ok(c.assign((run_id, "x", "n1")))
        c.ok(c.fail(run_id, "x", error="bad input", retryable=False))
    assert [d.run_id for d in list_dead_letters(c.st, 10)] == ["ra2", "rb", "ra"]
    only_a = list_dead_letters(c.st, 10, visible=lambda ns: ns == "a")
    assert [d.run_id for d in only_a] == ["ra2", "ra"]
    assert [d.run_id for d in list_dead_letters(c.st, 2, visible=lambda ns: ns == "a")] == ["ra2", "ra"]
    assert list_dead_letters(c.st, 10, visible=lambda ns: False) == []


def test_evicted_runs_leave_the_dead_letters(c: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "FINISHED_RUNS_RETAINED", 1)
    _dead_run(c)
    assert len(c.st.dead_letters) == 1
    c.ok(c.submit("r2", [spec("x")]))
    c.run_task("r2", "x")  # r2 finishes: r1 is evicted, with its dead letter
    assert "r1" not in c.st.runs and c.st.dead_letters == []


def test_retry_requeues_the_dead_task_and_restores_the_run(c: Cluster) -> None:
    _dead_run(c)
    assert status(c, "r1") == {
        "a": TaskStatus.SUCCEEDED,
        "b": TaskStatus.FAILED,
        "c": TaskStatus.CANCELLED,
        "d": TaskStatus.CANCELLED,
    }
    assert "r1" in c.st.finished
    res = expect(c.ok(_retry(c, "r1", "b", 2)), RetryTaskResult)
    assert res == RetryTaskResult(requeued=True, attempt=2, status=TaskStatus.READY)
    run = c.st.runs["r1"]
    assert (run.status, run.error, run.finished_ms, run.unfinished) == (RunStatus.RUNNING, "", 0, 3)
    assert "r1" not in c.st.finished  # live again: not evicted while it runs
    # b and c are READY (a succeeded), d waits for them; b's retries are given back.
    assert status(c, "r1") == {
        "a": TaskStatus.SUCCEEDED,
        "b": TaskStatus.READY,
        "c": TaskStatus.READY,
        "d": TaskStatus.PENDING,
    }
    b = c.task("r1", "b")
    assert (b.retries_left, b.attempt, b.requeued_attempt) == (1, 2, 2)
    assert list_dead_letters(c.st, 10) == []
    # The run finishes normally: the next attempt is 3, fenced as usual.
    c.ok(c.assign(("r1", "b", "n1"), ("r1", "c", "n1")))
    assert c.task("r1", "b").attempt == 3
    c.ok(c.complete("r1", "b"))
    c.ok(c.complete("r1", "c"))
    c.run_task("r1", "d")
    assert c.st.runs["r1"].status is RunStatus.SUCCEEDED


def test_retry_applies_once_however_often_it_is_sent(c: Cluster) -> None:
    _dead_run(c)
    c.ok(_retry(c, "r1", "b", 2, rid="retry-1"))
    # The same request again (the SDK's retry after a lost answer): the first result, no change.
    again = c.unchanged(_retry(c, "r1", "b", 2, rid="retry-1"))
    assert again == RetryTaskResult(requeued=True, attempt=2, status=TaskStatus.READY)
    # The command run a second time (a new request id): already requeued, nothing changes.
    second = c.unchanged(_retry(c, "r1", "b", 2))
    assert second == RetryTaskResult(requeued=False, attempt=2, status=TaskStatus.READY)
    # Still "already requeued" once the task runs again, and after it died again at a later attempt.
    c.ok(c.assign(("r1", "b", "n1")))
    assert expect(c.unchanged(_retry(c, "r1", "b", 2)), RetryTaskResult).requeued is False
    c.ok(c.fail("r1", "b"))
    c.ok(c.assign(("r1", "b", "n1")))
    c.ok(c.fail("r1", "b"))
    assert c.task("r1", "b").status is TaskStatus.FAILED
    assert expect(c.unchanged(_retry(c, "r1", "b", 2)), RetryTaskResult).requeued is False
    assert c.task("r1", "b").status is TaskStatus.FAILED  # the new dead letter needs its own retry
    assert expect(c.ok(_retry(c, "r1", "b", 4)), RetryTaskResult).requeued is True


def test_retry_rejects_what_is_not_a_dead_letter(c: Cluster) -> None:
    _dead_run(c)
    c.unchanged(_retry(c, "nope", "b", 1), Code.NOT_FOUND)
    c.unchanged(_retry(c, "r1", "nope", 1), Code.NOT_FOUND)
    c.unchanged(_retry(c, "r1", "a", 1), Code.FAILED_PRECONDITION)  # succeeded
    c.unchanged(_retry(c, "r1", "c", 0), Code.INVALID_ARGUMENT)
    c.unchanged(_retry(c, "r1", "b", 3), Code.FAILED_PRECONDITION)  # b died at 2, not 3
    c.unchanged(_retry(c, "r1", "b", 1), Code.FAILED_PRECONDITION)  # attempt 1 was retried, not dead
    c.unchanged(RetryTask(c.rid(), c.ts, run_id="bad id", task_id="b", attempt=2), Code.INVALID_ARGUMENT)


def test_retry_command_roundtrips() -> None:
    cmd = RetryTask("r", 5, run_id="run", task_id="t", attempt=3)
    assert decode_command(encode_command(cmd)) == cmd


# ---- preemption ------------------------------------------------------------------------------


def _full(c: Cluster) -> None:
    """n1 (2 slots) and n2 (1 slot) busy with low-priority tasks; a high task waits."""
    c.ok(c.submit("low", [spec("l1", priority=1, retries=0), spec("l2", priority=5), spec("l3", priority=1)]))
    c.ok(c.assign(("low", "l1", "n1"), ("low", "l2", "n1")))
    c.ts += 10
    c.ok(c.assign(("low", "l3", "n2")))
    c.ok(c.submit("high", [spec("h", priority=10)]))


def _preempt(
    c: Cluster, run_id: str, task_id: str, by: tuple[str, str] = ("high", "h"), **kw: int
) -> Preempt:
    t = c.task(run_id, task_id)
    item = Preemption(run_id, task_id, kw.get("attempt", t.attempt), kw.get("token", t.token), *by)
    return Preempt(c.rid(), c.ts, (item,))


def test_preemption_fences_the_attempt_keeps_retries_and_records_preempted_by(c: Cluster) -> None:
    _full(c)
    victim = c.task("low", "l3")
    old = (victim.attempt, victim.token, victim.retries_left)
    res = expect(c.ok(_preempt(c, "low", "l3")), PreemptResult)
    assert res.accepted == 1
    t = c.task("low", "l3")
    assert (t.status, t.attempt, t.retries_left, t.node) == (TaskStatus.READY, old[0], old[2], "")
    assert t.preempted_by == (("high", "h", 1, c.st.time_ms),)
    assert "preempted by high/h" in t.error
    assert c.st.running.get("n2") == {}  # the slot is free for the high task
    # The preempted attempt's late completion is fenced.
    c.unchanged(
        Complete(c.rid(), c.ts, "n2", (Completion("low", "l3", old[0], old[1], "late"),)), Code.ABORTED
    )
    c.ok(c.assign(("high", "h", "n2")))
    assert c.st.runs["low"].status is RunStatus.RUNNING


def test_stale_preemptions_are_rejected(c: Cluster) -> None:
    _full(c)
    t = c.task("low", "l3")
    c.unchanged(_preempt(c, "low", "l3", token=t.token - 1), Code.FAILED_PRECONDITION)
    c.unchanged(_preempt(c, "low", "l3", by=("high", "nope")), Code.FAILED_PRECONDITION)
    c.unchanged(_preempt(c, "high", "h", by=("low", "l1")), Code.FAILED_PRECONDITION)  # not running
    c.ok(c.submit("mid", [spec("m", priority=1)]))
    c.unchanged(_preempt(c, "low", "l3", by=("mid", "m")), Code.FAILED_PRECONDITION)  # not above
    c.ok(_preempt(c, "low", "l3"))
    c.unchanged(_preempt(c, "low", "l3", attempt=1, token=t.token), Code.FAILED_PRECONDITION)  # done
    c.ok(c.assign(("high", "h", "n2")))
    c.unchanged(_preempt(c, "low", "l1"), Code.FAILED_PRECONDITION)  # the preemptor is placed


def test_one_command_takes_at_most_one_victim_per_waiting_task(c: Cluster) -> None:
    _full(c)
    a, b = c.task("low", "l1"), c.task("low", "l3")
    items = (
        Preemption("low", "l1", a.attempt, a.token, "high", "h"),
        Preemption("low", "l3", b.attempt, b.token, "high", "h"),
    )
    res = expect(c.ok(Preempt(c.rid(), c.ts, items)), PreemptResult)
    assert res.accepted == 1
    assert [(r.task_id, r.reason) for r in res.rejected] == [
        ("l3", "task high/h already preempts another attempt in this command")
    ]
    assert c.task("low", "l3").status is TaskStatus.RUNNING


def test_preempted_by_is_bounded(c: Cluster) -> None:
    c.ok(c.submit("low", [spec("l", priority=0)]))
    c.ok(c.submit("high", [spec("h", priority=10)]))
    for _ in range(limits.MAX_PREEMPTED_BY + 3):
        c.ok(c.assign(("low", "l", "n2")))
        c.ok(_preempt(c, "low", "l"))
    t = c.task("low", "l")
    assert len(t.preempted_by) == limits.MAX_PREEMPTED_BY
    assert t.preempted_by[-1][2] == limits.MAX_PREEMPTED_BY + 3  # the newest kept
    assert t.retries_left == 0


def test_preempt_command_roundtrips_and_is_bounded(c: Cluster) -> None:
    cmd = Preempt("r", 1, (Preemption("a", "b", 1, 2, "c", "d"),))
    assert decode_command(encode_command(cmd)) == cmd
    many = Preempt(c.rid(), c.ts, (Preemption("a", "b", 1, 2, "c", "d"),) * (limits.MAX_PREEMPT_ITEMS + 1))
    c.unchanged(many, Code.INVALID_ARGUMENT)
