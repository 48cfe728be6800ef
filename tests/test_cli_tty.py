"""The CLI on a terminal (render.py): live progress, summary and listing tables, control
characters from the cluster escaped, and --json / pipe output unchanged. The CLI runs as a
subprocess whose stdin/stdout/stderr are a real pseudo-terminal's slave (never pty.fork: this
process has imported grpc), against a real cluster."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from raftmesh.localcluster import LocalCluster

pytestmark = pytest.mark.e2e

COLUMNS = int(os.environ.get("TTY_TEST_COLUMNS", "220"))
CSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")
COLOUR = re.compile(rb"\x1b\[(?:[0-9;]*;)?(?:3[0-9]|9[0-7]|4[0-9]|10[0-7])(?:;[0-9;]*)?m")

# A task error and a task output holding what a hostile task would send a terminal: an OSC
# window-title sequence ended by a bell, a clear-screen, a carriage return and a bare bell.
HOSTILE = "\x1b]0;pwned\x07\x1b[2J\rZ\x07"


def _env(addresses: str, columns: int = COLUMNS, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "RAFTMESH_ADDRESSES")}
    env.update(RAFTMESH_ADDRESSES=addresses, TERM="xterm-256color", COLUMNS=str(columns), LINES="50")
    env.update(extra)
    return env


def on_pty(
    *args: str,
    env: dict[str, str],
    timeout: float = 60,
    react: Callable[[bytes], bool] | None = None,
    interrupt_when: Callable[[bytes], bool] | None = None,
) -> tuple[int, bytes]:
    """Run the CLI with a pseudo-terminal as its stdin/stdout/stderr; everything it wrote, raw
    (output post-processing off, so the bytes are exactly the CLI's). ``react(output so far)`` is
    called as output arrives until it returns True (to act on the cluster while the CLI draws);
    once ``interrupt_when(output so far)`` is True the CLI gets SIGINT (Ctrl-C). The terminal is
    as wide as env's COLUMNS."""
    master, slave = pty.openpty()
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, int(env["COLUMNS"]), 0, 0))
        attrs = termios.tcgetattr(slave)
        attrs[1] &= ~termios.OPOST  # no \n -> \r\n: compare bytes with a pipe's
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        proc = subprocess.Popen(
            [sys.executable, "-m", "raftmesh.cli.main", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            close_fds=True,
        )
    finally:
        os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every copy of the slave is closed, the CLI has exited
                    break
                if not chunk:
                    break
                out += chunk
                if react is not None and react(bytes(out)):
                    react = None
                if interrupt_when is not None and interrupt_when(bytes(out)):
                    proc.send_signal(signal.SIGINT)
                    interrupt_when = None
            elif proc.poll() is not None:
                break
        else:
            raise AssertionError(f"raftmesh {' '.join(args)} did not end within {timeout} s: {bytes(out)!r}")
        return proc.wait(timeout=10), bytes(out)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def on_pipe(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "raftmesh.cli.main", *args],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        env=env,
        timeout=60,
    )


def visible(raw: bytes) -> str:
    return CSI.sub(b"", raw).decode()


def assert_inert(raw: bytes) -> None:
    """Only rich's own CSI sequences (styles, cursor up, erase line, cursor show/hide) reach the
    terminal: no OSC, no bell, no clear-screen or cursor positioning, no stray control."""
    for seq in CSI.findall(raw):
        assert seq[-1:] not in (b"J", b"H", b"f"), seq
    rest = CSI.sub(b"", raw)
    assert b"\x1b" not in rest and b"\x07" not in rest, rest
    assert not re.search(rb"[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f]", rest), rest


@pytest.fixture(scope="module")
def finished_run(module_cluster3: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A run with a slow task, a retried one, a hostile error and a hostile output, submitted
    with --wait on a terminal; what the terminal showed, and the run's idempotency key."""
    addrs = ",".join(module_cluster3.addresses)
    dag = tmp_path_factory.mktemp("tty") / "dag.json"
    dag.write_text(
        json.dumps(
            {
                "name": "tty-run [bold]not markup[/bold]",
                "tasks": [
                    {"id": "slow", "agent": "sleep", "input": {"seconds": 1.0}},
                    {"id": "after", "agent": "sum", "input": {"value": 3}, "deps": ["slow"]},
                    {"id": "flaky", "agent": "fail", "input": {"times": 1}, "retries": 1},
                    {"id": "loud", "agent": "echo", "input": {"say": HOSTILE}},
                    {"id": "gate", "agent": "sum", "input": {"value": 1}, "approval": {"prompt": "go?"}},
                    {
                        "id": "hostile",
                        "agent": "llm",
                        "input": {"model": "m", "api_key_env": "RAFTMESH_LLM_" + HOSTILE},
                        "deps": ["slow", "gate"],  # the run fails only once the gate was approved
                    },
                ],
            }
        )
    )
    key = uuid.uuid4().hex

    def approve_once_shown_waiting(out: bytes) -> bool:
        # the gate is approved only after the progress line counted it: the run cannot end before
        m = re.search(
            r"run (r-[0-9a-f]+) \(tty-run \[bold\]not markup\[/bold\]\) RUNNING .* 1 waiting approval",
            visible(out),
        )
        if m:
            assert on_pipe("approve", m.group(1), "gate", env=_env(addrs)).returncode == 0
        return m is not None

    rc, raw = on_pty(
        "submit",
        str(dag),
        "--wait",
        "--idempotency-key",
        key,
        env=_env(addrs),
        react=approve_once_shown_waiting,
    )
    # the same run through a pipe: what --json prints on a terminal too
    piped = on_pipe("submit", str(dag), "--wait", "--idempotency-key", key, "--json", env=_env(addrs))
    run_id = json.loads(piped.stdout)["run_id"]
    return {
        "rc": str(rc),
        "raw": raw.decode("latin-1"),
        "key": key,
        "dag": str(dag),
        "addrs": addrs,
        "run_id": run_id,
        "json": piped.stdout.decode(),
        "json_rc": str(piped.returncode),
    }


def test_submit_wait_shows_progress_then_a_summary_without_hostile_controls(
    finished_run: dict[str, str],
) -> None:
    raw = finished_run["raw"].encode("latin-1")
    # The hostile task failed, so the run did: the same exit code as without a terminal.
    assert finished_run["rc"] == "1", raw
    text = visible(raw)
    # progress as the stream told it: the gate counted while open (the fixture approved it only
    # then), every task ended at the last frame
    assert re.search(r"\d/6 done(\s+\d running)?\s+1 waiting approval\s+\d+\.\ds", text), text
    assert re.search(r"FAILED\s+[━#-]+\s+6/6 done\s+1 failed\s+\d+\.\ds", text), text
    # zero counts are left out, and nothing is drawn before the run's snapshot
    assert not re.search(r"\b0 (running|waiting approval|failed)\b", text), text
    assert "/0 done" not in text and not re.search(r"run r-[0-9a-f]+ \.\.\.", text), text
    ids = ("slow", "after", "flaky", "loud", "gate", "hostile")
    rows = {ln.split()[0]: ln for ln in text.splitlines() if ln.strip() and ln.split()[0] in ids}
    assert set(rows) == set(ids), text
    assert re.search(r"gate\s+sum\s+SUCCEEDED", rows["gate"]), rows["gate"]
    assert "SUCCEEDED" in rows["slow"] and "sleep" in rows["slow"]
    assert re.search(r"flaky\s+fail\s+SUCCEEDED\s+2\s", rows["flaky"]), rows["flaky"]
    assert "FAILED" in rows["hostile"] and "llm" in rows["hostile"]
    assert re.search(r"\d+\.\ds", rows["slow"]), rows["slow"]  # its duration
    # The hostile error is shown, escaped, not obeyed.
    assert r"\x1b]0;pwned\x07\x1b[2J\rZ" in rows["hostile"], rows["hostile"]
    assert "pwned" in rows["loud"], rows["loud"]
    assert "(tty-run [bold]not markup[/bold]): FAILED" in text, text
    assert_inert(raw)


def test_json_and_pipe_output_are_unchanged_on_a_terminal(finished_run: dict[str, str]) -> None:
    env = _env(finished_run["addrs"])
    args = ("submit", finished_run["dag"], "--wait", "--idempotency-key", finished_run["key"])
    assert finished_run["json_rc"] == "1"
    assert on_pty(*args, "--json", env=env) == (1, finished_run["json"].encode())
    run_id = finished_run["run_id"]
    piped = on_pipe("watch", run_id, "--json", env=env)
    assert on_pty("watch", run_id, "--json", env=env) == (piped.returncode, piped.stdout)
    # --plain and TERM=dumb on a terminal print exactly what a pipe gets
    piped = on_pipe(*args, env=env)
    assert piped.stdout.startswith(f"run {run_id}: FAILED".encode()), piped.stdout
    assert on_pty("--plain", *args, env=env) == (piped.returncode, piped.stdout)
    piped = on_pipe("watch", run_id, env=env)
    assert piped.stdout.startswith(b"[") and b"is FAILED" in piped.stdout, piped.stdout
    assert on_pty("watch", run_id, env=_env(finished_run["addrs"], TERM="dumb")) == (0, piped.stdout)


def test_watch_lists_events_and_the_summary(finished_run: dict[str, str]) -> None:
    env = _env(finished_run["addrs"])
    run_id = finished_run["run_id"]
    rc, raw = on_pty("watch", run_id, env=env)
    assert rc == 0, raw
    text = visible(raw)
    assert f"run {run_id} is FAILED" in text, text
    assert re.search(r"hostile\s+llm\s+FAILED", text), text
    assert_inert(raw)


def test_runs_and_status_tables_are_aligned_and_coloured(finished_run: dict[str, str]) -> None:
    env = _env(finished_run["addrs"])
    rc, raw = on_pty("status", env=env)
    assert rc == 0, raw
    lines = [ln for ln in visible(raw).splitlines() if ln.strip()]
    header = next(ln for ln in lines if ln.split()[:2] == ["NODE", "GRPC"])
    members = [ln for ln in lines if re.search(r"\bn[123]\b", ln) and "127.0.0.1:" in ln]
    assert len(members) == 3, lines
    # each member's address starts under the GRPC header
    assert {ln.index("127.0.0.1:") for ln in members} == {header.index("GRPC")}, lines
    assert COLOUR.search(raw)  # "up" in green

    rc, raw = on_pty("runs", "--limit", "5", env=env)
    assert rc == 0
    lines = [ln for ln in visible(raw).splitlines() if ln.strip()]
    header = next(ln for ln in lines if ln.split()[:2] == ["RUN", "STATUS"])
    rows = [ln for ln in lines if ln is not header and re.search(r"SUCCEEDED|FAILED|RUNNING|CANCELLED", ln)]
    assert rows
    assert {ln.index(ln.split()[1]) for ln in rows} == {header.index("STATUS")}, lines
    assert any("tty-run [bold]not markup[/bold]" in ln and "FAILED" in ln for ln in rows), lines
    assert COLOUR.search(raw)
    assert_inert(raw)

    # NO_COLOR: the same table, no colour
    rc, plain = on_pty("runs", "--limit", "5", env=_env(finished_run["addrs"], NO_COLOR="1"))
    assert rc == 0 and "tty-run" in visible(plain)
    assert not COLOUR.search(plain), plain


def test_a_terminal_changes_no_exit_code(module_cluster3: LocalCluster) -> None:
    # 1 for a failed run: the first test; 3 for an unknown run, with its message on the terminal
    rc, raw = on_pty("watch", "no-such-run", env=_env(",".join(module_cluster3.addresses)))
    assert rc == 3 and b"raftmesh: not found: run 'no-such-run' not found" in raw, raw


NARROW = 80


def test_an_80_column_terminal_keeps_ids_whole_and_progress_on_one_line(
    finished_run: dict[str, str], tmp_path: Path
) -> None:
    addrs = finished_run["addrs"]
    env = _env(addrs, columns=NARROW)
    dag = tmp_path / "narrow.json"
    dag.write_text(
        json.dumps(
            {
                "name": "a run whose name is far too long for a progress line on an 80-column terminal",
                "tasks": [
                    {"id": "nap", "agent": "sleep", "input": {"seconds": 1.0}},
                    {"id": "a", "agent": "sum", "input": {"value": 1}},
                    {"id": "b", "agent": "fail", "input": {"times": 9}, "deps": ["nap"]},
                ],
            }
        )
    )
    rc, raw = on_pty("submit", str(dag), "--wait", env=env)
    assert rc == 1, raw  # b fails
    progress, _, _ = raw.partition(b"\x1b[?25h")  # rich shows the cursor again when the live line ends
    # every frame was one line: rich moves the cursor up only to redraw a taller frame
    assert b"\x1b[1A" not in progress, progress
    frames = [f for f in visible(progress).split("\r") if f.strip()]
    assert frames and all(len(f) <= NARROW for f in frames), frames
    assert any(re.search(r"run r-[0-9a-f]{12} (RUNNING|FAILED)\s+[━#-]+\s+\d/3 done", f) for f in frames), (
        frames
    )

    rc, raw = on_pty("runs", "--limit", "5", env=env)
    assert rc == 0, raw
    lines = [ln for ln in visible(raw).splitlines() if ln.strip()]
    assert all(len(ln) <= NARROW for ln in lines), lines
    piped = json.loads(on_pipe("runs", "--limit", "5", "--json", env=env).stdout)["runs"]
    rows = [ln for ln in lines if ln.startswith("r-")]
    # ids and statuses whole (the ids in the order --json lists them), and in their columns
    assert [ln.split()[:2] for ln in rows] == [[r["run_id"], r["status"]] for r in piped], lines
    header = lines[0]
    assert header.split()[:2] == ["RUN", "STATUS"], lines
    assert {ln.index(ln.split()[1]) for ln in rows} == {header.index("STATUS")}, lines
    assert finished_run["run_id"] in visible(raw)

    rc, raw = on_pty("status", env=env)
    assert rc == 0, raw
    text = visible(raw)
    assert all(len(ln) <= NARROW for ln in text.splitlines()), text
    info = json.loads(on_pipe("status", "--json", env=env).stdout)
    members = [ln for ln in text.splitlines() if "127.0.0.1:" in ln]
    assert len(members) == 3, text
    # the leader's "* " marker does not push its id out of the NODE column
    assert len({ln.index(m["id"]) for ln, m in zip(members, info["members"], strict=True)}) == 1, text
    assert "…" not in text, text  # the agents wrap rather than being cut
    for m in info["members"]:
        for agent in m["agents"]:
            assert agent in text, (agent, text)


def test_runs_watch_is_a_live_table_and_plain_is_accepted_after_the_subcommand(
    finished_run: dict[str, str],
) -> None:
    addrs = finished_run["addrs"]
    env = _env(addrs)
    key = uuid.uuid4().hex
    submitted: list[str] = []

    def so_far(out: bytes) -> str:  # output read so far may end inside a character
        return CSI.sub(b"", out).decode(errors="replace")

    def submit_once_shown(out: bytes) -> bool:
        if "RUN" in so_far(out) and "newest first" in so_far(out):
            r = on_pipe("submit", finished_run["dag"], "--idempotency-key", key, "--json", env=env)
            submitted.append(json.loads(r.stdout)["run_id"])
            return True
        return False

    def the_new_run_ended(out: bytes) -> bool:
        # the last frame shows the new run failed (its hostile task); the fixture approved its gate
        # under another key, so approve this run's once it is listed
        if not submitted:
            return False
        last = so_far(out).rsplit("newest first", 2)
        frame = last[-2] if len(last) > 1 else ""
        if re.search(rf"{submitted[0]}\s+RUNNING", frame) and not approved:
            approved.append(on_pipe("approve", submitted[0], "gate", env=env).returncode)
        return re.search(rf"{submitted[0]}\s+FAILED", frame) is not None

    approved: list[int] = []
    rc, raw = on_pty(
        "runs", "--watch", "--limit", "5", env=env, react=submit_once_shown, interrupt_when=the_new_run_ended
    )
    assert rc == 130, raw  # Ctrl-C
    text = visible(raw)
    assert submitted and approved == [0], text
    frames = text.split("newest first")
    # one table per frame, redrawn in place: the new run on top, listed once, then its end
    last = frames[-2]
    rows = [ln for ln in last.splitlines() if ln.startswith("r-")]
    assert rows[0].split()[:2] == [submitted[0], "FAILED"], last
    assert len([ln for ln in rows if ln.startswith(submitted[0])]) == 1, last
    assert re.search(rf"{submitted[0]}\s+RUNNING", text), text
    assert_inert(raw)

    # --plain after the subcommand, as before it: a pipe's lines
    piped = on_pipe("runs", "--limit", "3", env=env)
    assert piped.returncode == 0 and piped.stdout.startswith(b"r-"), piped
    assert on_pty("runs", "--limit", "3", "--plain", env=env) == (0, piped.stdout)
    assert on_pty("--plain", "runs", "--limit", "3", env=env) == (0, piped.stdout)
