"""The node's garbage-collection policy (``raftmesh.node.gc_policy``): what a full collection
left is frozen (later collections skip it), cyclic garbage made since is still collected, and
after the refresh period a frozen object that became cyclic garbage is collected too."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from raftmesh.node.gc_policy import GcPolicy


class _Cycle:
    def __init__(self) -> None:
        self.me = self


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


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
