"""scripts/bench.py's peer selection and the process tracking that stops every Ray process.

No cluster and no peer is started: which peers run (and what an old command line still means)
is decided before anything starts, and the way the bench finds Ray's processes (its own process
tree, kept whole by being a child subreaper) is checked with a plain orphaned ``sleep``.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import subprocess
import sys
import textwrap
from types import ModuleType

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    sys.path.insert(0, str(SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location("bench_under_test", SCRIPTS / "bench.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # its dataclasses look their module up there
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(SCRIPTS))


def _resolve(bench: ModuleType, argv: list[str]) -> tuple[list[str], dict[str, str]]:
    peers: tuple[list[str], dict[str, str]] = bench.resolve_peers(bench.parse_args(argv))
    return peers


def test_peers_default_to_the_installed_ones_and_skip_dask_keeps_its_meaning(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench, "dask_importable", lambda: (True, ""))
    monkeypatch.setattr(bench, "ray_importable", lambda: (False, "ModuleNotFoundError: ray"))
    run, skipped = _resolve(bench, [])
    assert run == ["dask"]
    assert "not installed" in skipped["ray"] and "pip install" in skipped["ray"]
    # named but missing: an error, not a silent skip
    with pytest.raises(SystemExit, match="Ray is not importable"):
        _resolve(bench, ["--peers", "dask,ray"])

    monkeypatch.setattr(bench, "ray_importable", lambda: (True, ""))
    assert _resolve(bench, [])[0] == ["dask", "ray"]
    # --skip-dask alone meant "raftmesh only" before --peers existed, and still does
    assert _resolve(bench, ["--skip-dask"])[0] == []
    assert _resolve(bench, ["--peers", "dask,ray", "--skip-dask"])[0] == ["ray"]
    assert _resolve(bench, ["--peers", "none"])[0] == []
    assert _resolve(bench, ["--peers", "Ray"])[0] == ["ray"]


def test_peer_list_rejects_unknown_names(bench: ModuleType) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="unknown peer 'spark'"):
        bench.peer_list("dask,spark")


def test_an_orphaned_grandchild_stays_in_the_bench_process_tree() -> None:
    """Ray's raylet starts agents and workers; if the raylet goes first they are orphans. The bench
    is a child subreaper, so they stay below it where ``descendants`` finds (and stops) them."""
    code = textwrap.dedent(
        """
        import os, signal, subprocess, sys
        sys.path.insert(0, sys.argv[1])
        import _benchkit

        assert _benchkit.become_subreaper()
        # the shell starts a sleep in the background and exits at once: the sleep is an orphan
        out = subprocess.run(["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True, check=True)
        orphan = int(out.stdout)
        try:
            found = {pid: cmd for (pid, _), cmd in _benchkit.descendants(os.getpid()).items()}
            assert orphan in found and "sleep" in found[orphan], found
        finally:
            os.kill(orphan, signal.SIGKILL)
            os.waitpid(orphan, 0)  # adopted: this process reaps it
        print("ok")
        """
    )
    got = subprocess.run(
        [sys.executable, "-c", code, str(SCRIPTS)], capture_output=True, text=True, timeout=30
    )
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == "ok"
