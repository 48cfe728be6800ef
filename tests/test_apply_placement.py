"""Placement inside apply: a task that becomes READY starts in the same apply on a member that
takes placements from apply (``Member.places``), by the scheduler's rule, without jumping over
an older READY task; the leader's ``Assign`` stays the fallback."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import msgpack
import pytest

from raftmesh.consensus import RunChanged, RunStatus, TaskChanged, TaskStatus, limits
from raftmesh.consensus.codes import Code
from raftmesh.consensus.commands import (
    CommandDecodeError,
    LockAcquire,
    NodeDown,
    Preempt,
    Preemption,
    RegisterNode,
    SuspectNode,
    decode_command,
    encode_command,
)
from raftmesh.consensus.lock_commands import task_owner
from raftmesh.consensus.placement import plan_assignments
from raftmesh.consensus.state import ClusterState
from raftmesh.consensus.tasks import PLACE_SCAN_SLACK
from tests.test_machine import Cluster, spec


def placing(c: Cluster, node: str, slots: int = 4, **kw: object) -> RegisterNode:
    return dataclasses.replace(c.register(node, slots=slots, **kw), places=True)  # type: ignore[arg-type]


def started(c: Cluster, since: int) -> list[tuple[str, str, int, str]]:
    return [
        (e.run_id, e.task_id, e.attempt, e.node)
        for e in c.events[since:]
        if isinstance(e, TaskChanged) and e.status is TaskStatus.RUNNING
    ]


def test_a_submitted_root_starts_in_the_submits_apply_with_an_assigns_records() -> None:
    c = Cluster()
    c.ok(placing(c, "n1"))
    c.ok(c.submit("r1", [spec("a"), spec("b", "a")]))
    rev = c.st.revision
    a = c.task("r1", "a")
    assert (a.status, a.attempt, a.node, a.token, a.started_ms) == (TaskStatus.RUNNING, 1, "n1", rev, c.ts)
    assert c.st.running == {"n1": {("r1", "a"): None}} and c.st.ready == {}
    assert c.task("r1", "b").status is TaskStatus.PENDING
    # The node's result is fenced by that token, as an Assign's would be.
    assert not c.apply(c.complete("r1", "a", token=rev - 1)).ok
    # The completion starts the dependent in its own apply: no Assign anywhere in this run.
    n = len(c.events)
    c.ok(c.complete("r1", "a"))
    assert started(c, n) == [("r1", "b", 1, "n1")]
    assert c.task("r1", "b").token == c.st.revision


def test_the_last_completion_ends_the_run_in_the_same_entry() -> None:
    c = Cluster()
    c.ok(placing(c, "n1"))
    c.ok(c.submit("r1", [spec("a")]))
    n = len(c.events)
    c.ok(c.complete("r1", "a", output=7))
    rev = c.st.revision
    assert c.events[n:] == [
        TaskChanged(rev, "r1", "a", TaskStatus.SUCCEEDED, 1, "n1"),
        RunChanged(rev, "r1", RunStatus.SUCCEEDED),
    ]


def test_a_member_that_does_not_place_leaves_the_task_to_the_schedulers_assign() -> None:
    c = Cluster()
    c.ok(c.register("n1"))  # a registration that does not say ``places``
    c.ok(c.submit("r1", [spec("a")]))
    assert c.task("r1", "a").status is TaskStatus.READY
    assert [x.node_id for x in plan_assignments(c.st, c.ts, {})] == ["n1"]
    c.ok(c.assign(("r1", "a", "n1")))
    # Nor does apply place on it when another member places: that member is full.
    c.ok(placing(c, "n2", slots=1))
    c.ok(c.submit("r2", [spec("x"), spec("y")]))
    assert [(t.status, t.node) for t in c.st.runs["r2"].tasks.values()] == [
        (TaskStatus.RUNNING, "n2"),
        (TaskStatus.READY, ""),
    ]


def test_a_freed_slot_goes_to_the_oldest_ready_task_not_the_one_just_readied() -> None:
    c = Cluster()
    c.ok(placing(c, "n1", slots=1))
    c.ok(c.submit("r1", [spec("a"), spec("a2", "a")]))
    c.ok(c.submit("r2", [spec("b")]))  # waits: n1's only slot runs a
    assert c.task("r2", "b").status is TaskStatus.READY
    # a's completion frees the slot and readies a2 in one apply: b waited first, so b starts
    n = len(c.events)
    c.ok(c.complete("r1", "a"))
    assert started(c, n) == [("r2", "b", 1, "n1")]
    assert c.task("r1", "a2").status is TaskStatus.READY
    assert plan_assignments(c.st, c.ts, {}) == []  # n1 is full: nothing left for the scheduler


def test_a_new_task_of_a_higher_priority_goes_before_older_lower_ones() -> None:
    c = Cluster()
    c.ok(placing(c, "n1", slots=1))
    c.ok(c.submit("r1", [spec("a"), spec("urgent", "a", priority=5)]))
    c.ok(c.submit("r2", [spec("b")]))
    c.ok(c.complete("r1", "a"))
    assert c.task("r1", "urgent").status is TaskStatus.RUNNING  # the scheduler would pick it first too
    assert c.task("r2", "b").status is TaskStatus.READY
    # ... and an older task of its priority goes before a newer one
    c.ok(c.submit("r3", [spec("c", priority=5)]))
    c.ok(c.submit("r4", [spec("d", priority=5)]))
    c.ok(c.complete("r1", "urgent"))
    assert c.task("r3", "c").status is TaskStatus.RUNNING
    assert c.task("r4", "d").status is TaskStatus.READY and c.task("r2", "b").status is TaskStatus.READY


def test_the_walk_is_bounded_by_the_command_and_the_rest_is_the_schedulers() -> None:
    c = Cluster()
    c.ok(placing(c, "n1", slots=1))
    c.ok(c.register("n2", agents=("llm",)))  # offers llm but takes placements only from Assign
    c.ok(c.submit("r1", [spec("a")]))
    stuck = [spec(f"l{i}", agent="llm") for i in range(PLACE_SCAN_SLACK + 1)]
    c.ok(c.submit("r2", stuck))  # no member that places offers llm: they wait at the head
    c.ok(c.submit("r3", [spec("b")]))
    c.ok(c.complete("r1", "a"))  # frees one slot: the walk stops before it reaches b
    assert c.task("r3", "b").status is TaskStatus.READY
    assert ("r3", "b", "n1") in [(x.run_id, x.task_id, x.node_id) for x in plan_assignments(c.st, c.ts, {})]


def test_fresh_tasks_are_placed_fifo_least_loaded_first_until_slots_run_out() -> None:
    c = Cluster()
    c.ok(placing(c, "n1", slots=2))
    c.ok(placing(c, "n2", slots=1))
    c.ok(c.submit("r1", [spec(f"t{i}") for i in range(5)]))
    nodes = {tid: (t.status, t.node) for tid, t in c.st.runs["r1"].tasks.items()}
    assert nodes == {
        "t0": (TaskStatus.RUNNING, "n1"),
        "t1": (TaskStatus.RUNNING, "n2"),
        "t2": (TaskStatus.RUNNING, "n1"),
        "t3": (TaskStatus.READY, ""),
        "t4": (TaskStatus.READY, ""),
    }
    # A completion's freed slot goes to the head of the queue in the same apply.
    c.ok(c.complete("r1", "t0"))
    assert (c.task("r1", "t3").status, c.task("r1", "t3").node) == (TaskStatus.RUNNING, "n1")
    assert c.task("r1", "t4").status is TaskStatus.READY


def test_a_retry_starts_again_in_the_failures_apply_with_a_new_attempt_and_token() -> None:
    c = Cluster()
    c.ok(placing(c, "n1"))
    c.ok(c.submit("r1", [spec("a", retries=1)]))
    first = c.task("r1", "a").token
    c.ok(c.fail("r1", "a"))
    a = c.task("r1", "a")
    assert (a.status, a.attempt, a.token) == (TaskStatus.RUNNING, 2, c.st.revision)
    assert a.token > first and a.history[-1].outcome == "FAILED"


def test_a_retry_in_backoff_is_not_placed_until_the_scheduler_may() -> None:
    c = Cluster()
    c.ok(placing(c, "n1"))
    c.ok(c.submit("r1", [spec("a", retries=1, retry_backoff_ms=1000)]))
    c.ok(c.fail("r1", "a"))
    assert c.task("r1", "a").status is TaskStatus.READY
    assert plan_assignments(c.st, c.ts, {}) == []


def test_a_lost_nodes_tasks_restart_on_another_member_in_the_node_downs_apply() -> None:
    c = Cluster()
    c.ok(placing(c, "n1"))
    c.ok(c.submit("r1", [spec("a")]))
    c.ok(placing(c, "n2"))
    c.ok(NodeDown(c.rid(), c.ts, node_id="n1", incarnation="inc-1", reason="gone"))
    a = c.task("r1", "a")
    assert (a.status, a.attempt, a.node) == (TaskStatus.RUNNING, 2, "n2")


def test_a_task_whose_lock_is_held_waits_for_the_scheduler() -> None:
    c = Cluster()
    c.ok(placing(c, "n1"))
    c.ok(LockAcquire(c.rid(), c.ts, owner="someone", items=(("db", "exclusive"),), ttl_ms=60_000))
    c.ok(c.submit("r1", [spec("a", locks=(("db", "exclusive"),)), spec("b")]))
    assert c.task("r1", "a").status is TaskStatus.READY
    assert c.task("r1", "b").status is TaskStatus.RUNNING  # another group: the plan skips, as the scheduler's


def test_replicas_and_a_restored_copy_agree() -> None:
    c, d = Cluster(), Cluster()
    for x in (c, d):
        x.ok(placing(x, "n1", slots=2))
        x.ok(x.submit("r1", [spec("a"), spec("b"), spec("c", "a", "b")]))
        x.ok(x.complete("r1", "a"))
        x.ok(x.complete("r1", "b"))
    assert c.task("r1", "c").status is TaskStatus.RUNNING
    assert c.sm.digest() == d.sm.digest()
    copy = ClusterState.decode(c.st.encode())  # ``Member.places`` survives a snapshot
    assert copy.members["n1"].places and copy.digest() == c.sm.digest()


def test_register_node_carries_places_and_old_encodings_do_not() -> None:
    c = Cluster()
    cmd = placing(c, "n1")
    assert decode_command(encode_command(cmd)) == cmd
    plain = c.register("n2")
    assert (
        "places" not in str(encode_command(plain)) and decode_command(encode_command(plain)).places is False
    )
    c.ok(plain)
    assert len(c.st.members["n2"].encode()) == 11  # a member that does not place encodes as before


def test_a_preemption_starts_the_waiting_task_in_its_own_apply() -> None:
    c = Cluster()
    c.ok(placing(c, "n1", slots=1))
    c.ok(c.submit("low", [spec("v")]))
    c.ok(c.submit("high", [spec("h", priority=9)]))
    v = c.task("low", "v")
    assert c.task("high", "h").status is TaskStatus.READY
    c.ok(Preempt(c.rid(), c.ts, (Preemption("low", "v", v.attempt, v.token, "high", "h"),)))
    h = c.task("high", "h")
    assert (h.status, h.node, h.token) == (TaskStatus.RUNNING, "n1", c.st.revision)
    assert c.task("low", "v").status is TaskStatus.READY  # the victim waits for the next slot


def test_a_nodes_report_starts_work_only_on_that_node_which_wins_ties() -> None:
    """A member that died (a killed leader) stays up in the state until node-down and looks idle;
    the reporting node just proved it is alive. The plan is still the least-loaded one."""
    c = Cluster()
    c.ok(placing(c, "n1", slots=2))
    c.ok(placing(c, "n2", slots=2))
    c.ok(c.submit("r1", [spec("a"), spec("b"), spec("a2", "a"), spec("b2", "b")]))
    assert (c.task("r1", "a").node, c.task("r1", "b").node) == ("n1", "n2")
    # n2 reports: n1 and n2 tie on load (1 of 2 each) and the reporter wins the tie
    c.ok(c.complete("r1", "b"))
    assert (c.task("r1", "b2").status, c.task("r1", "b2").node) == (TaskStatus.RUNNING, "n2")
    c.ok(c.submit("r2", [spec("x")]))  # a submit has no reporter: the least loaded member (n1)
    assert c.task("r2", "x").node == "n1"
    c.ok(placing(c, "n3", slots=2))  # idle: the least loaded now
    # n1 reports: the least-loaded plan picks n3, which is left to the leader's Assign
    c.ok(c.complete("r1", "a"))
    assert c.task("r1", "a2").status is TaskStatus.READY
    assert [(x.task_id, x.node_id) for x in plan_assignments(c.st, c.ts, {})] == [("a2", "n3")]


def suspect(c: Cluster, node: str, flag: bool = True) -> SuspectNode:
    return SuspectNode(c.rid(), c.ts, node_id=node, incarnation=c.st.members[node].incarnation, suspect=flag)


def test_a_suspect_member_gets_no_new_work_from_apply_or_the_plan_until_cleared() -> None:
    """A member the leader lost heartbeats from (a killed leader, a cut-off node) stays up until
    node-down; apply cannot see heartbeats, so the leader's suspicion is replicated."""
    c = Cluster()
    c.ok(placing(c, "n1", slots=1))
    c.ok(placing(c, "n2", slots=4))
    c.ok(suspect(c, "n2"))
    assert c.st.members["n2"].suspect
    c.ok(c.submit("r1", [spec("a"), spec("b")]))
    assert (c.task("r1", "a").node, c.task("r1", "b").status) == ("n1", TaskStatus.READY)
    assert plan_assignments(c.st, c.ts, {}) == []  # nor does the leader's own plan use n2
    # Heard again: n2 takes new work once more (the oldest READY task first).
    c.ok(suspect(c, "n2", False))
    assert [(x.task_id, x.node_id) for x in plan_assignments(c.st, c.ts, {})] == [("b", "n2")]
    c.ok(c.submit("r2", [spec("x")]))
    assert (c.task("r1", "b").node, c.task("r2", "x").node) == ("n2", "n2")


def test_a_suspect_members_own_report_still_starts_work_on_it() -> None:
    c = Cluster()
    c.ok(placing(c, "n1", slots=1))
    c.ok(placing(c, "n2", slots=1))
    c.ok(c.submit("r1", [spec("a"), spec("b"), spec("b2", "b")]))
    assert c.task("r1", "b").node == "n2"
    c.ok(suspect(c, "n2"))
    c.ok(c.complete("r1", "b"))  # n2 reports: it just proved alive
    assert (c.task("r1", "b2").status, c.task("r1", "b2").node) == (TaskStatus.RUNNING, "n2")
    assert c.st.members["n2"].suspect  # the flag is the leader's to clear, from heartbeats


def test_suspect_node_names_an_up_incarnation_and_changes_only_what_differs() -> None:
    c = Cluster()
    c.ok(placing(c, "n1"))
    stale = SuspectNode(c.rid(), c.ts, node_id="n1", incarnation="an-old-one", suspect=True)
    assert not c.apply(stale).ok and not c.st.members["n1"].suspect
    assert not c.apply(SuspectNode(c.rid(), c.ts, node_id="nx", incarnation="i", suspect=True)).ok
    rev = c.st.revision
    c.ok(suspect(c, "n1", False))  # already clear: nothing changes
    assert c.st.revision == rev
    c.ok(suspect(c, "n1"))
    assert c.st.revision == rev + 1
    c.ok(placing(c, "n1"))  # a registration (the node itself, alive) starts clear
    assert not c.st.members["n1"].suspect


def test_the_suspect_flag_is_replicated_and_absent_from_encodings_while_false() -> None:
    c, d = Cluster(), Cluster()
    for x in (c, d):
        x.ok(placing(x, "n1"))
        x.ok(x.register("n2"))
    before = c.sm.digest()
    assert [len(c.st.members[n].encode()) for n in ("n1", "n2")] == [12, 11]  # as before the flag
    cmd = suspect(c, "n2")
    assert decode_command(encode_command(cmd)) == cmd
    c.ok(cmd)
    d.ok(suspect(d, "n2"))
    assert c.sm.digest() == d.sm.digest() != before
    assert c.st.members["n2"].encode()[11:] == [False, True]
    copy = ClusterState.decode(c.st.encode())
    assert copy.members["n2"].suspect and not copy.members["n2"].places and copy.digest() == c.sm.digest()
    c.ok(suspect(c, "n2", False))
    assert len(c.st.members["n2"].encode()) == 11


def test_a_requeue_moves_an_unreachable_members_attempts_elsewhere_and_fences_them() -> None:
    """``SuspectNode.requeue``: the leader has had no Raft answer from n2 for a while, so n2's
    attempts start again on n1 in the same apply (the flag is set first), n2 stays up, and a
    late result of the old attempt is refused by its token."""
    c = Cluster()
    c.ok(placing(c, "n1", slots=1))
    c.ok(placing(c, "n2", slots=1))
    c.ok(c.submit("r1", [spec("a"), spec("b")]))
    assert (c.task("r1", "a").node, c.task("r1", "b").node) == ("n1", "n2")
    old_token = c.task("r1", "b").token
    c.ok(c.complete("r1", "a"))  # n1 is free again
    cmd = dataclasses.replace(suspect(c, "n2"), requeue=True)
    assert decode_command(encode_command(cmd)) == cmd
    n = len(c.events)
    c.ok(cmd)
    b = c.task("r1", "b")
    assert (b.status, b.node, b.attempt) == (TaskStatus.RUNNING, "n1", 2)
    assert b.history[-1].outcome == "lost" and "unreachable" in b.history[-1].error
    assert started(c, n) == [("r1", "b", 2, "n1")]
    m = c.st.members["n2"]
    assert m.up and m.suspect and not c.st.running.get("n2")
    assert not c.apply(c.complete("r1", "b", node="n2", attempt=1, token=old_token)).ok  # fenced
    c.ok(c.complete("r1", "b"))
    assert c.st.runs["r1"].status is RunStatus.SUCCEEDED


def test_a_requeue_needs_the_flag_and_an_empty_one_changes_nothing() -> None:
    c = Cluster()
    c.ok(placing(c, "n1"))
    c.ok(placing(c, "n2"))
    no_flag = dataclasses.replace(suspect(c, "n2", False), requeue=True)
    assert not c.apply(no_flag).ok and not c.st.members["n2"].suspect
    c.ok(suspect(c, "n2"))
    rev = c.st.revision
    c.ok(dataclasses.replace(suspect(c, "n2"), requeue=True))  # flagged, nothing running: no-op
    assert c.st.revision == rev
    # A plain flag encodes as before the field existed (old journals decode and re-encode alike).
    assert b"requeue" not in encode_command(suspect(c, "n2"))


def test_a_leaders_liveness_decision_applies_only_from_an_entry_of_its_own_term() -> None:
    """pysyncobj hands a command queued on a leader that stepped down before its next tick to the
    next leader, which logs it in its own term. Its ``leader_term`` no longer matches the entry's
    term there, so it changes nothing (ABORTED, never recorded) on every replica."""
    c = Cluster()
    c.ok(placing(c, "n1", slots=1))
    c.ok(placing(c, "n2", slots=1))
    c.ok(c.submit("r1", [spec("a"), spec("b")]))
    assert {c.task("r1", "a").node, c.task("r1", "b").node} == {"n1", "n2"}
    inc = c.st.members["n2"].incarnation
    decided = [
        dataclasses.replace(suspect(c, "n2"), leader_term=5),
        dataclasses.replace(suspect(c, "n2"), requeue=True, leader_term=5),
        NodeDown(c.rid(), c.ts, node_id="n2", incarnation=inc, reason="gone", leader_term=5),
    ]
    for cmd in decided:
        before = (c.sm.digest(), c.st.revision, c.st.index_snapshot())
        (res,), events = c.sm.apply_batch([cmd], term=6)
        assert res.code is Code.ABORTED and "term 5" in res.message and "term 6" in res.message, res
        assert (c.sm.digest(), c.st.revision, c.st.index_snapshot()) == before and events == []
        assert cmd.request_id not in c.st.dedup
    m = c.st.members["n2"]
    assert m.up and not m.suspect and c.st.running.get("n2")
    # From an entry of the term that decided it, it applies as ever.
    (res,), _ = c.sm.apply_batch([decided[2]], term=5)
    assert res.ok and not c.st.members["n2"].up


def test_leader_term_is_encoded_only_when_set() -> None:
    c = Cluster()
    c.ok(placing(c, "n1"))
    plain = [suspect(c, "n1"), NodeDown(c.rid(), c.ts, node_id="n1", incarnation="i", reason="r")]
    for cmd in plain:
        # Entries from before the field decode and re-encode byte for byte, and apply unchecked.
        assert b"leader_term" not in encode_command(cmd)
        assert encode_command(decode_command(encode_command(cmd))) == encode_command(cmd)
        termed = dataclasses.replace(cmd, leader_term=7)
        assert decode_command(encode_command(termed)) == termed
        for bad in (0, -1, True, "7"):
            m = dataclasses.replace(cmd, leader_term=7).to_map() | {"leader_term": bad}
            with pytest.raises(CommandDecodeError, match="leader_term"):
                decode_command(msgpack.packb(m, use_bin_type=True))
    (res,), _ = c.sm.apply_batch([plain[0]], term=9)
    assert res.ok and c.st.members["n1"].suspect


def test_a_submit_places_its_ready_tasks_on_the_member_it_prefers_on_a_tie_only() -> None:
    """``SubmitRun.prefer`` (the leader the serving node saw): a single task goes there and skips
    the follower's apply and the forward of its completion; it never beats a less loaded member."""
    c = Cluster()
    for n in ("n1", "n2", "n3"):
        c.ok(placing(c, n, slots=2))
    c.ok(dataclasses.replace(c.submit("r1", [spec("a")]), prefer="n2"))
    assert c.task("r1", "a").node == "n2"
    c.ok(c.submit("r2", [spec("a")]))  # no preference: the lowest node id wins the tie
    assert c.task("r2", "a").node == "n1"
    # n1 and n2 each run one task now: n3 is less loaded, so the preference does not count.
    c.ok(dataclasses.replace(c.submit("r3", [spec("a")]), prefer="n2"))
    assert c.task("r3", "a").node == "n3"
    # A name that is no member changes nothing.
    c.ok(dataclasses.replace(c.submit("r4", [spec("a")]), prefer="nobody"))
    assert c.task("r4", "a").node == "n1"


def test_the_submit_preference_round_trips_and_is_absent_from_the_encoding_when_unset() -> None:
    c = Cluster()
    plain = c.submit("r1", [spec("a")])
    assert b"prefer" not in encode_command(plain)  # a submit without it encodes as before
    assert decode_command(encode_command(plain)) == plain
    named = dataclasses.replace(plain, prefer="n2")
    assert decode_command(encode_command(named)) == named


def test_a_reports_plan_for_the_reporter_alone_equals_the_whole_plans_choices_of_it() -> None:
    """``only`` plans a node's report for that node alone and stops once it is full; the answer
    must be exactly the whole plan's choices of it (other members still fill first, count
    toward the bound and reserve locks). Seeded random states: a READY backlog, slots, loads,
    members that do not place, suspects, priorities, agents, shared and exclusive locks."""
    rng = random.Random(20261202)
    compared = nonempty = 0
    for case in range(40):
        c = Cluster()
        c.ok(c.register("n0", agents=("echo", "llm")))  # does not place: the backlog stays READY
        if rng.random() < 0.3:
            c.ok(LockAcquire(c.rid(), c.ts, owner="outsider", items=(("L0", "exclusive"),), ttl_ms=60_000))
        for r in range(rng.randint(1, 4)):
            specs = [
                spec(
                    f"t{i}",
                    agent=rng.choice(["echo", "echo", "llm"]),
                    priority=rng.choice([0, 0, 5]),
                    locks=tuple(
                        (f"L{k}", rng.choice(["shared", "exclusive"])) for k in range(rng.randint(0, 2))
                    ),
                )
                for i in range(rng.randint(1, 10))
            ]
            c.ok(c.submit(f"r{r}", specs))
        nodes = [f"n{i}" for i in range(1, rng.randint(2, 5))]
        for n in nodes:
            offers = rng.choice([("echo",), ("echo", "llm"), ("llm",)])
            c.ok(
                dataclasses.replace(
                    c.register(n, agents=offers, slots=rng.randint(1, 4)), places=rng.random() < 0.8
                )
            )
        ready = sorted(k for q in c.st.ready.values() for k in q)
        for run, tid in rng.sample(ready, rng.randint(0, len(ready))):  # uneven loads (some refused)
            c.apply(c.assign((run, tid, rng.choice(nodes))))
        for n in nodes:
            if rng.random() < 0.2:
                c.ok(suspect(c, n))
        for n in nodes:
            for items, scan in ((1, 1), (5, 5), (40, 40), (1, 40), (2, 9), (3, None)):
                kw: dict[str, Any] = dict(
                    max_items=items, placing_only=True, max_scan=scan, prefer=n, alive=n
                )
                whole = [a for a in plan_assignments(c.st, c.ts, {}, **kw) if a.node_id == n]
                assert plan_assignments(c.st, c.ts, {}, only=n, **kw) == whole, (case, n, items, scan)
                compared += 1
                nonempty += bool(whole)
    assert compared > 400 and nonempty > 100, (compared, nonempty)  # the cases place something


def requeue(c: Cluster, node: str) -> SuspectNode:
    return dataclasses.replace(suspect(c, node), requeue=True)


def test_suspicion_moves_a_task_at_most_max_suspect_moves_times_then_node_down_does() -> None:
    """A slow, flapping member (suspected, cleared, suspected again) must not have the same
    retries=0 task re-run without bound: each move by suspicion is counted in the replicated
    task, and past ``MAX_SUSPECT_MOVES`` the task stays where it runs until node-down."""
    c = Cluster()
    c.ok(placing(c, "n1", slots=1))
    c.ok(placing(c, "n2", slots=1))
    c.ok(c.submit("r1", [spec("a", retries=0)]))
    moves = 0
    while True:
        t = c.task("r1", "a")
        node, attempt = t.node, t.attempt
        other = "n2" if node == "n1" else "n1"
        c.ok(suspect(c, other, False))  # the other member is heard again (flag cleared)
        rev = c.st.revision
        c.ok(requeue(c, node))
        t = c.task("r1", "a")
        if t.attempt == attempt:
            break
        moves += 1
        assert (t.node, t.attempt, t.suspect_moves) == (other, attempt + 1, moves)
        assert t.history[-1].outcome == "lost"
        assert moves <= limits.MAX_SUSPECT_MOVES
    assert moves == limits.MAX_SUSPECT_MOVES
    # The last requeue moved nothing: only the flag changed (its own revision), the attempt runs on.
    assert c.st.revision == rev + 1 and (t.status, t.node) == (TaskStatus.RUNNING, node)
    assert t.retries_left == 0 and [h.outcome for h in t.history] == ["lost"] * moves
    # The count is state: replicas and snapshots agree on it, and node-down still moves the task.
    copy = ClusterState.decode(c.st.encode())
    assert copy.digest() == c.st.digest() and copy.task("r1", "a").suspect_moves == moves
    c.ok(NodeDown(c.rid(), c.ts, node_id=node, incarnation=c.st.members[node].incarnation))
    assert (c.task("r1", "a").node, c.task("r1", "a").attempt) == (other, attempt + 1)


def test_suspicion_leaves_a_task_holding_declared_locks_to_node_down() -> None:
    """The suspected member may still run the old attempt: its locks must not be granted to a
    new attempt. A requeue leaves that task (and moves the node's other work); node-down moves it."""
    c = Cluster()
    c.ok(placing(c, "n1", slots=2))
    c.ok(c.submit("r1", [spec("locked", locks=(("L", "exclusive"),)), spec("free")]))
    c.ok(placing(c, "n2", slots=2))  # room for what moves
    holder = task_owner("r1", "locked", 1)
    assert c.st.locks.locks["L"].holders.keys() == {holder}
    c.ok(requeue(c, "n1"))
    locked, free = c.task("r1", "locked"), c.task("r1", "free")
    assert (locked.status, locked.node, locked.attempt, locked.suspect_moves) == (
        TaskStatus.RUNNING,
        "n1",
        1,
        0,
    )
    assert c.st.locks.locks["L"].holders.keys() == {holder}  # still the old attempt's
    assert (free.status, free.node, free.attempt, free.suspect_moves) == (TaskStatus.RUNNING, "n2", 2, 1)
    c.ok(NodeDown(c.rid(), c.ts, node_id="n1", incarnation=c.st.members["n1"].incarnation))
    locked = c.task("r1", "locked")
    assert (locked.status, locked.node, locked.attempt) == (TaskStatus.RUNNING, "n2", 2)
    assert c.st.locks.locks["L"].holders.keys() == {task_owner("r1", "locked", 2)}


def test_a_task_never_moved_by_suspicion_encodes_as_before() -> None:
    """``suspect_moves`` is appended to a task's encoding only once non-zero: snapshots of tasks
    without it are the same bytes as before the field, and an old encoding decodes to 0."""
    c = Cluster()
    c.ok(placing(c, "n1", slots=1))
    c.ok(placing(c, "n2", slots=1))
    c.ok(c.submit("r1", [spec("a")]))
    t = c.task("r1", "a")
    assert len(t.encode()) == 28 and type(t).decode(t.encode()).suspect_moves == 0
    c.ok(requeue(c, t.node))
    t = c.task("r1", "a")
    assert len(t.encode()) == 29 and type(t).decode(t.encode()).suspect_moves == 1
