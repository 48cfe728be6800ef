"""The node's garbage-collection policy (``raftmesh.node.gc_policy``): what a full collection
left is frozen (later collections skip it), cyclic garbage made since is still collected, after
the refresh period a frozen object that became cyclic garbage is collected too, and young
collections run less often only while the policy is installed."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from raftmesh.node.gc_policy import YOUNG_THRESHOLD, GcPolicy


class _Cycle:
    def __init__(self) -> None:
        self.me = self


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_young_collections_run_less_often_while_installed_and_as_before_after() -> None:
    before = gc.get_threshold()
    p = GcPolicy()
    p.install()
    try:
        assert gc.get_threshold() == (YOUNG_THRESHOLD, *before[1:]) and before[0] < YOUNG_THRESHOLD
    finally:
        p.uninstall()
    assert gc.get_threshold() == before


@pytest.fixture
def policy() -> Iterator[tuple[GcPolicy, _Clock]]:
    clock = _Clock()
    p = GcPolicy(refresh_s=60.0, clock=clock)
    p.install()
    try:
        yield p, clock
    finally:
        p.uninstall()
        gc.collect()


def test_a_full_collection_freezes_what_survived_and_new_cycles_are_still_collected(
    policy: tuple[GcPolicy, _Clock],
) -> None:
    p, _ = policy
    p.tick()
    assert gc.get_freeze_count() == 0  # nothing before a full collection
    gc.collect()
    p.tick()
    assert p.freezes == 1 and gc.get_freeze_count() > 0
    made_since = weakref.ref(_Cycle())
    gc.collect()
    assert made_since() is None


def test_a_frozen_object_that_became_cyclic_garbage_is_collected_after_the_refresh(
    policy: tuple[GcPolicy, _Clock],
) -> None:
    p, clock = policy
    alive = _Cycle()
    gc.collect()
    p.tick()  # ``alive`` is frozen with the rest
    gone = weakref.ref(alive)
    del alive
    gc.collect()
    assert gone() is not None  # frozen: the collector does not look at it
    clock.now = 61.0
    p.tick()
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert gone() is None


def test_cycles_that_died_between_the_full_collection_and_the_freeze_are_not_frozen(
    policy: tuple[GcPolicy, _Clock],
) -> None:
    p, _ = policy
    gc.collect()
    died = _Cycle()
    gone = weakref.ref(died)
    del died  # cyclic garbage made after the full collection, before the node's tick
    p.tick()
    assert p.freezes == 1
    gc.collect()
    assert gone() is None


def test_two_policies_in_one_process_restore_the_collector_only_at_the_last_uninstall() -> None:
    before = gc.get_threshold()
    a, b = GcPolicy(), GcPolicy()
    a.install()
    b.install()
    a.install()  # idempotent
    try:
        a.uninstall()
        assert gc.get_threshold() == (YOUNG_THRESHOLD, *before[1:])  # b still runs
    finally:
        b.uninstall()
        a.uninstall()  # idempotent
    assert gc.get_threshold() == before
