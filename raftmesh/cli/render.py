"""What the CLI draws on a terminal: live run progress and aligned, coloured tables (rich).

Only used when stdout is a TTY a person reads (``console_for``); ``--json``, ``--plain``, a pipe
or ``TERM=dumb`` keep main.py's plain output, which scripts parse. Every string that came from
the cluster (run names, task ids, outputs, errors, prompts, keys) is escaped
(``escape_control``) and wrapped in ``Text``: never parsed as rich markup, so a hostile task
output can neither move the cursor, retitle the window nor inject styles.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from rich import box
from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .main import escape_control

STATUS_STYLES = {
    "SUCCEEDED": "green",
    "FAILED": "bold red",
    "COMPENSATION_FAILED": "bold red",
    "CANCELLED": "yellow",
    "COMPENSATED": "yellow",
    "COMPENSATING": "yellow",
    "PAUSED": "yellow",
    "SKIPPED": "dim",
    "RUNNING": "cyan",
    "WAITING_APPROVAL": "magenta",
    "WAITING_CHILDREN": "blue",
    "READY": "",
    "PENDING": "dim",
}
ENDED_TASK = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "SKIPPED"})
ENDED_RUN = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "COMPENSATED", "COMPENSATION_FAILED"})
SNIPPET = 160
"""At most this many characters of an error or output in a table cell (``raftmesh get --json``
has all)."""


def console_for(args: argparse.Namespace, stream: TextIO) -> Console | None:
    """A console drawing on ``stream`` (the real stdout, not main()'s escaping writer, which would
    escape rich's own codes) if it is a terminal a person reads, else None (plain output)."""
    if getattr(args, "json", False) or getattr(args, "plain", False):
        return None
    try:
        if not stream.isatty():
            return None
    except (AttributeError, ValueError):  # a closed or file-less stream
        return None
    if os.environ.get("TERM", "") == "dumb":
        return None
    return Console(
        file=stream,
        # https://no-color.org: set and not empty means no colour (styles like bold stay).
        no_color=os.environ.get("NO_COLOR", "") != "",
        markup=False,
        emoji=False,
        highlight=False,
    )


def clean(text: Any, limit: int = 0) -> str:
    """One line of cluster text fit for a cell: controls escaped, newlines shown as ``\\n``."""
    s = escape_control(str(text).replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n"))
    if limit and len(s) > limit:
        s = s[: limit - 3] + "..."
    return s


def cell(text: Any, style: str = "", limit: int = 0) -> Text:
    return Text(clean(text, limit), style=style)


def json_cell(value: Any, style: str = "", limit: int = 0) -> Text:
    """A JSON value on one line: json.dumps already escaped its controls, so backslashes stay single."""
    s = escape_control(json.dumps(value))
    return Text(s if not limit or len(s) <= limit else s[: limit - 3] + "...", style=style)


def status_cell(status: str) -> Text:
    return Text(clean(status), style=STATUS_STYLES.get(status, ""))


def _table(*columns: str, right: Iterable[str] = ()) -> Table:
    """Columns left-aligned (``right``: numbers), one line per row (``_print_table`` fits it)."""
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    right = set(right)
    for c in columns:
        t.add_column(Text(c), justify="right" if c in right else "left", overflow="ellipsis", no_wrap=True)
    return t


def _print_table(
    console: Console,
    t: Table,
    *,
    shrink: dict[str, int] | None = None,
    drop: Iterable[str] = (),
) -> None:
    console.print(_fit(t, console.width, shrink=shrink, drop=drop))


def _fit(
    t: Table,
    max_width: int,
    *,
    shrink: dict[str, int] | None = None,
    drop: Iterable[str] = (),
) -> Table:
    """``t`` set to print one line a row within ``max_width``.

    Every column is shown whole (ids, statuses, numbers: never cut) except the free-text ones:
    the last column and ``shrink`` (header -> the narrowest it may get), which are cut with an
    ellipsis to what is left. The ``drop`` columns that are empty in every row are left out, and
    on a terminal too narrow even for that the others go, in that order, so an id is never what
    gets cut. Widths are set here, not by rich: rich
    would shrink every column, ids included, to fit.
    """
    shrink = dict(shrink or {})

    def width(r: Any) -> int:
        return r.cell_len if isinstance(r, Text) else len(str(r))

    natural = {_header(c): max([width(c.header), *(width(x) for x in c.cells)]) for c in t.columns}

    def floor(c: Any) -> int | None:
        """How narrow a free-text column may get (the last one: 12), None for the others."""
        return shrink.get(_header(c), 12 if c is t.columns[-1] else None)

    def least(c: Any) -> int:
        h, f = _header(c), floor(c)
        return natural[h] if f is None else min(natural[h], max(f, width(c.header)))

    def gaps() -> int:
        return 3 * (len(t.columns) - 1)  # padding and separator between two columns

    drop = tuple(drop)
    # a droppable column empty in every row (no run has an error) goes first: it says nothing
    empty = {_header(c) for c in t.columns if not any(width(x) for x in c.cells)}
    for h in (*(h for h in drop if h in empty), *drop):
        if h not in empty and sum(least(c) for c in t.columns) + gaps() <= max_width:
            break
        t.columns[:] = [c for c in t.columns if _header(c) != h]
    for i, c in enumerate(t.columns):
        c._index = i  # rich pads and styles a column by its index (as Table(*columns) sets it)
    left = max_width - gaps() - sum(least(c) for c in t.columns)
    for c in t.columns:
        h = _header(c)
        c.width = least(c)
        if floor(c) is not None and left > 0:
            extra = min(left, natural[h] - c.width)
            c.width += extra
            left -= extra
    return t


def _header(c: Any) -> str:
    return c.header.plain if isinstance(c.header, Text) else str(c.header)


def _age(ms: int, now_ms: int | None = None) -> str:
    """When, shortly: ``42s ago``, ``3m ago``, ``5h ago`` within a day, else the date."""
    if not ms:
        return ""
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    s = max(0, (now - ms) // 1000)
    if s < 60:
        return f"{s}s ago"
    if s < 3600:
        return f"{s // 60}m ago"
    if s < 86400:
        return f"{s // 3600}h ago"
    return time.strftime("%Y-%m-%d", time.localtime(ms / 1000))


def _duration(ms: int) -> str:
    s = ms / 1000
    if s < 60:
        return f"{s:.1f}s"
    m, s = divmod(int(s), 60)
    return f"{m}m{s:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m"


# ---- live progress of one run ---------------------------------------------------------------


class RunProgress:
    """A run's task states as the watch stream reports them; drawn by rich's refresh thread."""

    def __init__(self, run_id: str, unicode: bool = True) -> None:
        self.run_id = run_id
        self.unicode = unicode
        self.status = ""
        self.name = ""
        self.created_ms = 0
        self.finished_ms = 0
        self.started = time.time()
        self._tasks: dict[str, str] = {}
        self._lock = threading.Lock()  # the refresh thread reads while the stream thread writes

    def apply(self, ev: Any) -> None:
        with self._lock:
            if ev.kind == "snapshot" and ev.run is not None:
                # A snapshot (first, and again after a reconnect) replaces what was known.
                self._tasks = {t.id: t.status for t in ev.run.tasks.values()}
                self.status, self.name = ev.run.status, ev.run.name
                self.created_ms, self.finished_ms = ev.run.created_ms, ev.run.finished_ms
            elif ev.kind == "task":
                self._tasks[ev.task_id] = ev.status  # children (map instances, spawns) arrive here
            elif ev.kind == "run":
                self.status = ev.status

    def counts(self) -> dict[str, int]:
        with self._lock:
            states = list(self._tasks.values())
        return {
            "total": len(states),
            "done": sum(1 for s in states if s in ENDED_TASK),
            "running": states.count("RUNNING"),
            "approval": states.count("WAITING_APPROVAL"),
            "failed": states.count("FAILED"),
        }

    def elapsed_s(self) -> float:
        """Since the run was created (this process started watching, if unknown); a run that had
        already finished when the watch began shows how long it took."""
        since = self.created_ms / 1000 if self.created_ms else self.started
        until = self.finished_ms / 1000 if self.finished_ms and self.status in ENDED_RUN else time.time()
        return max(0.0, until - since)

    @property
    def seen(self) -> bool:
        """A snapshot arrived: until then there is nothing true to draw (not even ``0/0``)."""
        with self._lock:
            return bool(self.status)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.line(options.max_width)

    def line(self, max_width: int) -> Text:
        """One line, never wrapped: counts that are zero are left out, then the run's name when
        the terminal is narrow, and what is still too long is cut with an ellipsis."""
        n = self.counts()
        tail = Text()
        tail.append(f"  {n['done']}/{n['total']} done")
        for key, label, style in (
            ("running", "running", "cyan"),
            ("approval", "waiting approval", "magenta"),
            ("failed", "failed", "bold red"),
        ):
            if n[key]:
                tail.append(f"  {n[key]} {label}", style=style)
        tail.append(f"  {_duration(int(self.elapsed_s() * 1000))}")
        head = Text(f"run {clean(self.run_id)} ")
        name = Text(f"({clean(self.name, 32)}) ") if self.name else Text()
        status = Text(clean(self.status or "..."), style=STATUS_STYLES.get(self.status, ""))
        bar_width = 16
        if head.cell_len + name.cell_len + status.cell_len + 4 + bar_width + tail.cell_len > max_width:
            name = Text()
        filled = bar_width * n["done"] // n["total"] if n["total"] else 0
        line = Text(no_wrap=True, overflow="ellipsis", end="")
        for part in (head, name, status):
            line.append_text(part)
        line.append("  ")
        line.append(("━" if self.unicode else "#") * filled, style="green")
        line.append(("━" if self.unicode else "-") * (bar_width - filled), style="dim")
        line.append_text(tail)
        line.truncate(max_width, overflow="ellipsis")
        return line


def _event_line(ev: Any) -> Text:
    line = Text()
    line.append(f"[{ev.revision}] ", style="dim")
    if ev.kind == "snapshot" and ev.run is not None:
        line.append(f"run {clean(ev.run.run_id)} is ")
        line.append_text(status_cell(ev.run.status))
    elif ev.kind == "task":
        line.append(f"{clean(ev.task_id)} ")
        line.append_text(status_cell(ev.status))
        line.append(f" attempt={ev.attempt} {clean(ev.node)}")
    else:
        line.append("run ")
        line.append_text(status_cell(ev.status))
        if ev.error:
            line.append(f" {clean(ev.error, 200)}")
    return line


def follow(console: Console, events: Iterator[Any], run_id: str, *, show_events: bool) -> RunProgress:
    """Draw ``events`` (``Client.watch``) as a live progress line until the stream ends.

    ``show_events``: also print each event above the line (``raftmesh watch``). The line is
    transient: the summary table printed afterwards replaces it.
    """
    progress = RunProgress(run_id, unicode=console.encoding.lower().startswith("utf"))
    # No redirection of sys.stdout/stderr: rich would decode ANSI codes in what is written there.
    live = Live(
        progress,
        console=console,
        refresh_per_second=4,
        transient=True,
        redirect_stdout=False,
        redirect_stderr=False,
    )
    try:
        for ev in events:
            progress.apply(ev)
            if show_events:
                live.console.print(_event_line(ev))
            if not live.is_started and progress.seen:
                live.start()  # drawn from the first snapshot on: nothing to show before it
            if live.is_started:
                live.refresh()
    finally:
        live.stop()
    return progress


def _tree(run: Any) -> Iterator[tuple[Any, int]]:
    """Tasks in submission order, children under their parent (as ``raftmesh get`` lists them)."""
    todo = [(t, 0) for t in reversed(run.tasks.values()) if not t.parent or t.parent not in run.tasks]
    while todo:
        t, level = todo.pop()
        yield t, level
        todo.extend((run.tasks[c], level + 1) for c in reversed(t.children) if c in run.tasks)


def run_summary(console: Console, run: Any) -> None:
    """The run's outcome and one row per task: id, agent, status, attempt, node, duration, result."""
    head = Text(f"run {clean(run.run_id)}")
    if run.name:
        head.append(f" ({clean(run.name, 80)})")
    head.append(": ")
    head.append_text(status_cell(run.status))
    if run.error:
        head.append(f"  {clean(run.error, 200)}", style="red")
    if run.created_ms and run.finished_ms:
        head.append(f"  in {_duration(run.finished_ms - run.created_ms)}", style="dim")
    u = run.usage
    if u.tokens_in or u.tokens_out or u.cost:
        head.append(f"  tokens_in={u.tokens_in} tokens_out={u.tokens_out} cost={u.cost:g}", style="dim")
    t = _table(
        "TASK",
        "AGENT",
        "STATUS",
        "ATTEMPT",
        "NODE",
        "DURATION",
        "ERROR / OUTPUT",
        right=("ATTEMPT", "DURATION"),
    )
    now_ms = int(time.time() * 1000)
    for task, level in _tree(run):
        took = _duration((task.finished_ms or now_ms) - task.started_ms) if task.started_ms else ""
        if task.error:
            result = cell(task.error, "red" if task.status == "FAILED" else "", SNIPPET)
        elif task.output is not None:
            result = json_cell(task.output, "dim", SNIPPET)
        else:
            result = cell(task.waiting_reason, "dim", SNIPPET)
        t.add_row(
            Text("  " * level + clean(task.id)),
            cell(task.agent),
            status_cell(task.status),
            _attempt_cell(task),
            cell(task.node),
            Text(took),
            result,
        )
    console.print(head)
    _print_table(console, t)


def _attempt_cell(task: Any) -> Text:
    """The attempt number, and how many attempts suspicion moved off their member (if any)."""
    out = Text(str(task.attempt))
    if task.suspect_moves:
        out.append(f" ({task.suspect_moves} moved)", style="yellow")
    return out


# ---- listings ---------------------------------------------------------------------------------


RUNS_DROP = ("UNFINISHED", "TASKS", "CREATED", "ERROR", "NAME")
"""The runs table's columns a narrow terminal loses first (``raftmesh get RUN`` has them all)."""


def runs_table(console: Console, runs: list[dict[str, Any]]) -> None:
    """One row a run. Run ids and statuses stay whole; on a narrow terminal the counts and the age
    go before the name and error are cut further (``raftmesh get RUN`` has the rest)."""
    _print_table(console, _runs_rows(runs), shrink={"NAME": 12}, drop=RUNS_DROP)


class RunsBoard:
    """``runs --watch`` on a terminal: the newest ``limit`` runs as one table, redrawn in place
    as the stream reports each change (a snapshot replaces them all)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._runs: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()  # the refresh thread reads while the stream thread writes
        self.seen = False

    def apply(self, ev: dict[str, Any]) -> None:
        with self._lock:
            if "snapshot" in ev:
                self._runs = {r["run_id"]: r for r in ev["snapshot"]}
                self.seen = True
            elif "run" in ev:
                self._runs[ev["run"]["run_id"]] = ev["run"]
            if len(self._runs) > self.limit > 0:
                keep = sorted(self._runs.values(), key=lambda r: r["created_ms"], reverse=True)[: self.limit]
                self._runs = {r["run_id"]: r for r in keep}

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        with self._lock:
            runs = sorted(self._runs.values(), key=lambda r: r["created_ms"], reverse=True)
        t = _fit(_runs_rows(runs), options.max_width, shrink={"NAME": 12}, drop=RUNS_DROP)
        yield t
        n = len(runs)
        yield Text(f"{n} run{'' if n == 1 else 's'}, newest first; watching (Ctrl-C to stop)", style="dim")


def watch_runs(console: Console, events: Iterable[dict[str, Any]], limit: int) -> None:
    """Draw ``events`` (``Client.watch_runs``) as a live table until the stream ends or Ctrl-C;
    the last table stays on the screen."""
    board = RunsBoard(limit)
    live = Live(board, console=console, refresh_per_second=4, redirect_stdout=False, redirect_stderr=False)
    try:
        for ev in events:
            board.apply(ev)
            if not live.is_started and board.seen:
                live.start()
            if live.is_started:
                live.refresh()
    finally:
        live.stop()


def _runs_rows(runs: list[dict[str, Any]]) -> Table:
    t = _table(
        "RUN", "STATUS", "TASKS", "UNFINISHED", "CREATED", "NAME", "ERROR", right=("TASKS", "UNFINISHED")
    )
    now_ms = int(time.time() * 1000)
    for r in runs:
        t.add_row(
            cell(r["run_id"]),
            status_cell(r["status"]),
            Text(str(r["tasks"])),
            Text(str(r["unfinished"])),
            Text(_age(r["created_ms"], now_ms), style="dim"),
            cell(r["name"], limit=40),
            cell(r["error"], "red", SNIPPET),
        )
    return t


def status_tables(console: Console, info: Any) -> None:
    head = Text("leader: ")
    head.append(clean(info.leader) if info.leader else "(none)", style="bold" if info.leader else "bold red")
    head.append(f"  term: {info.term}  answered by: {clean(info.node_id)}")
    # BREAKERS only when one is not closed: an empty column costs the agents their room
    show_breakers = any(b.state != "closed" for m in info.members for b in m.breakers)
    columns = ["NODE", "GRPC", "UP", "RUNNING", *(["BREAKERS"] if show_breakers else []), "AGENTS"]
    t = _table(*columns, right=("RUNNING",))
    # the agents a node offers can be many: wrapped within their column, never cut
    t.columns[-1].no_wrap, t.columns[-1].overflow = False, "fold"
    for m in info.members:
        agents = []
        for o in m.offers:
            extra = []
            if o.concurrency:
                extra.append(f"{o.running}/{o.concurrency}")
            if o.capabilities:
                extra.append(",".join(o.capabilities))
            agents.append(o.agent + (f"[{' '.join(extra)}]" if extra else ""))
        breakers = [f"{b.agent}:{b.state}" for b in m.breakers if b.state != "closed"]
        row = [
            # followers indented as far as the leader's marker: the ids stay in one column
            Text(
                ("* " if m.id == info.leader else "  ") + clean(m.id),
                style="bold" if m.id == info.leader else "",
            ),
            cell(m.grpc),
            Text(
                "DOWN" if not m.up else "suspect" if m.suspect else "up",
                style="bold red" if not m.up else "yellow" if m.suspect else "green",
            ),
            Text(f"{m.running}/{m.slots}"),
            *([cell(" ".join(breakers), "red")] if show_breakers else []),
            cell(" ".join(agents) if agents else ",".join(m.agents)),
        ]
        t.add_row(*row)
    console.print(head)
    _print_table(console, t)


def approvals_table(console: Console, gates: list[Any]) -> None:
    t = _table("RUN", "TASK", "GATE", "PROMPT")
    for g in gates:
        t.add_row(cell(g.run_id), cell(g.task_id), cell(g.gate), cell(g.prompt, limit=120))
    _print_table(console, t)


def dead_letters_table(console: Console, dead: list[Any]) -> None:
    t = _table("RUN", "TASK", "AGENT", "ATTEMPT", "ERROR", right=("ATTEMPT",))
    for d in dead:
        t.add_row(
            cell(d.run_id), cell(d.task_id), cell(d.agent), Text(str(d.attempt)), cell(d.error, "red", 100)
        )
    _print_table(console, t)


def kv_table(console: Console, entries: list[Any]) -> None:
    t = _table("KEY", "VALUE", "REV", right=("REV",))
    for e in entries:
        t.add_row(cell(e.key), json_cell(e.value, limit=100), Text(str(e.mod_revision)))
    _print_table(console, t)


def locks_table(console: Console, locks: list[dict[str, Any]]) -> None:
    t = _table("LOCK", "HOLDERS", "WAITERS", "LAST TOKEN", right=("LAST TOKEN",))
    for lk in locks:
        t.add_row(
            cell(lk["name"]),
            cell(", ".join(str(h["owner"]) for h in lk["holders"])),
            cell(", ".join(str(w) for w in lk["waiters"])),
            Text(str(lk["last_token"])),
        )
    _print_table(console, t)
