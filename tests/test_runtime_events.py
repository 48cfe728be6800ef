"""Which parts of a node see which applied events (``raftmesh.node.runtime.other_events``): the
actor host, the router and the lock waits never get task or run changes, and never an empty
batch unless the state was replaced."""

from __future__ import annotations

from raftmesh.consensus.results import LockChanged, MemberChanged, RunChanged, TaskChanged
from raftmesh.consensus.state import RunStatus, TaskStatus
from raftmesh.node.runtime import other_events


def test_the_actor_host_router_and_lock_waits_get_no_task_or_run_events_and_no_empty_batch() -> None:
    task = TaskChanged(5, "r1", "a", TaskStatus.SUCCEEDED, 1, "n1")
    run = RunChanged(5, "r1", RunStatus.SUCCEEDED)
    member = MemberChanged(6, "n2", False)
    lock = LockChanged(6, "req-1", "owner", True, 6)
    assert other_events([]) == []  # a replaced state: they reconcile
    assert other_events([task, run, task]) is None  # nothing for them (not "a replaced state")
    assert other_events([task, member, run, lock]) == [member, lock]
