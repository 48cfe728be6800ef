"""scripts/bench_messages.py --quick runs and its answers hold (speed is reported, never asserted).

The raftmesh side on a real 3-node cluster: every request answered with its own payload, every
publish handled end to end, and no durable publish lost across a leader kill and a kill of the
subscriber's node (the script exits 1 if one is). The AutoGen side runs in its own virtual
environment (``autogen-ext[grpc]==0.7.5``), made on first use; it is skipped, saying why, when that
environment cannot be made here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import pytest

pytestmark = pytest.mark.e2e
ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "bench_messages.py"


def _bench(*args: str) -> dict[str, Any]:
    p = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert p.returncode == 0, p.stderr[-4000:]
    report: dict[str, Any] = json.loads(p.stdout)
    return report


def test_raftmesh_side_quick() -> None:
    r = _bench("--skip-autogen")
    res = r["results"]
    assert r["autogen_skipped"] == "--skip-autogen was given"
    for path in ("fast", "durable"):
        assert res["rr"][path]["n"] == r["config"]["requests"]
        assert res["inflight"][path]["n"] == r["config"]["inflight_requests"]
        assert res["publish"][path]["n"] == r["config"]["publishes"]
        assert res["publish"][path]["failed_calls"] == 0
    kills = res["kills"]
    for label in ("raftmesh durable: kill the leader", "raftmesh durable: kill the subscriber's node"):
        k = kills[label]
        assert k["sent"] == r["config"]["stream"]
        assert k["lost"] == 0 and k["lost_acknowledged"] == 0, k
    for label in ("raftmesh fast: kill the leader", "raftmesh fast: kill the subscriber's node"):
        # reported, not asserted: the fast path may lose what a killed node held (README "Messages")
        assert kills[label]["sent"] == r["config"]["stream"] and "dead_lettered" in kills[label]


def _autogen_python() -> tuple[str | None, str]:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        spec = importlib.util.spec_from_file_location("bench_messages", SCRIPT)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        found: tuple[str | None, str] = mod.autogen_python(mod.default_autogen_venv())
        return found
    finally:
        sys.path.remove(str(SCRIPT.parent))


@pytest.mark.skipif(
    os.environ.get("RAFTMESH_BENCH_AUTOGEN") != "1",
    reason="opt-in (RAFTMESH_BENCH_AUTOGEN=1): it installs AutoGen 0.7.5 from PyPI into its own "
    "virtual environment and runs its host and 3 workers, about a minute on top of the suite's "
    "budget; scripts/bench_messages.py runs the comparison itself",
)
def test_autogen_side_quick() -> None:
    py, why = _autogen_python()
    if py is None:
        pytest.skip(f"AutoGen's virtual environment could not be made here: {why}")
    r = _bench("--skip-raftmesh")
    res = r["results"]
    assert res["rr"]["autogen"]["n"] == r["config"]["requests"]
    assert res["inflight"]["autogen"]["n"] == r["config"]["inflight_requests"]
    assert res["publish"]["autogen"]["n"] == r["config"]["publishes"]
    host = res["kills"]["AutoGen: kill the host"]
    sub = res["kills"]["AutoGen: kill the subscriber's worker"]
    assert sub["sent"] == host["sent"] == r["config"]["stream"]
    # AutoGen 0.7.5 keeps its routes in the host and its workers do not reconnect: what was published
    # after the host died is lost, and the harness must see it.
    assert host["lost"] > 0 and host["handled_after_restart"] == 0, host
