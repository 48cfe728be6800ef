"""The auction example, run as a user runs it: ``examples/auction/run.sh`` on a real 3-node cluster.

Lot-1's winner's node is killed -9 between the lots: the winner must be activated again on another
node with its committed state (what it spent), which decides lot-2.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import re
import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e
ROOT = pathlib.Path(__file__).resolve().parent.parent


def _free_base() -> int:
    """A base port P for scripts/cluster.sh (it uses P+1..P+3, P+51..P+53 and, for metrics, P+101..P+103)."""
    for _ in range(50):
        base = random.randrange(20000, 40000, 100)
        ok = True
        for p in [base + k for k in (1, 2, 3, 51, 52, 53, 101, 102, 103)]:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
        if ok:
            return base
    raise RuntimeError("no free port range")


def test_auction_example(tmp_path: pathlib.Path) -> None:
    d = tmp_path / "cluster"
    bindir = os.path.dirname(sys.executable)
    env = {
        **os.environ,
        "PATH": f"{bindir}:{os.environ.get('PATH', '')}",  # `raftmesh` of this interpreter's install
        "RAFTMESH_BIN": f"{sys.executable} -m raftmesh.cli.main",
        "AUCTION_BASE_PORT": str(_free_base()),
        "AUCTION_DIR": str(d),
    }
    try:
        p = subprocess.run(
            [str(ROOT / "examples" / "auction" / "run.sh")],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:  # the script stops its nodes itself; this is for a script killed by the timeout
        subprocess.run(
            [str(ROOT / "scripts" / "cluster.sh"), "down", "--dir", str(d)],
            env=env,
            capture_output=True,
            timeout=60,
        )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = p.stdout
    assert "lot-1 (a 1962 Stratocaster): carol wins at 130" in out, out
    assert "lot-2 (a Vox AC30 amplifier): alice wins at 100" in out, out
    killed = re.search(r"bidder/carol runs on (n\d): kill -9", out)
    moved = re.search(r"bidder/carol moved: (n\d) -> (n\d)", out)
    assert killed and moved, out
    assert moved.group(1) == killed.group(1) and moved.group(2) != killed.group(1), out
    # The retained durable publishes, in order, as `raftmesh subscribe --json` prints them.
    results = [json.loads(ln)["payload"] for ln in out.splitlines() if ln.startswith("{")]
    assert [(r["lot"], r["winner"], r["price"]) for r in results] == [
        ("lot-1", "carol", 130),
        ("lot-2", "alice", 100),
    ]
    # carol's state moved with her: 150 - 130 left, so she was out of lot-2 from its first price.
    assert results[1]["rounds"][0] == {"price": 40, "in": ["alice", "bob"]}
    assert results[0]["rounds"][-1] == {"price": 130, "in": ["carol"]}
    assert not any(pathlib.Path(d).glob("n*/pid")), "run.sh left a node running"
