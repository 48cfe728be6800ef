"""Shared fixtures. End-to-end tests start real node processes on loopback and stop them by pid."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from raftmesh.localcluster import LocalCluster


@pytest.fixture
def cluster3(tmp_path: os.PathLike[str]) -> Iterator[LocalCluster]:
    c = LocalCluster(3, base_dir=str(tmp_path))
    try:
        c.start()
        yield c
    finally:
        c.close()
