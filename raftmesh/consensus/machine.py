"""``apply``: the deterministic transition function of the cluster state.

Rules (each one is tested):

- Pure: no clock, no randomness, no I/O. Time is ``max(state.time_ms, cmd.ts_ms)``.
- Never raises: errors are ``Result`` values. A command is validated completely
  before it mutates anything, so a rejected command changes nothing.
- A command that changes the state raises ``revision`` by one and records its
  request id; applying the same request id again returns the first result and
  changes nothing. Rejections are not recorded (re-applying is deterministic).
- Fencing: assignments get ``token = revision``; a completion or failure whose
  (attempt, token, node) is not the task's current one is rejected as stale.
- Apply cost is O(size of the command) plus the tasks it unblocks or cancels.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
from dataclasses import dataclass
from typing import Any

from . import limits
from .commands import (
    Assign,
    Barrier,
    CancelRun,
    Command,
    Complete,
    Fail,
    KvLease,
    KvTxn,
    LockAcquire,
    LockCancel,
    LockRelease,
    NodeDown,
    RegisterNode,
    SubmitRun,
    Tick,
    Undecodable,
    decode_batch,
)
from .coordination import CoordinationMixin, KvChanged, LockChanged
from .dag import DagError, check_id, encoded_size, validate
from .state import (
    TERMINAL_RUN,
    TERMINAL_TASK,
    ClusterState,
    Member,
    RunState,
    RunStatus,
    TaskKey,
    TaskState,
    TaskStatus,
)

log = logging.getLogger(__name__)

OK = "OK"


@dataclass(frozen=True, slots=True)
class Result:
    """Outcome of one command. ``code`` is OK or the name of a gRPC status code."""

    code: str = OK
    message: str = ""
    value: Any = None

    @property
    def ok(self) -> bool:
        return self.code == OK

    def encode(self) -> list[Any]:
        return [self.code, self.message, self.value]

    @classmethod
    def decode(cls, v: list[Any]) -> Result:
        return cls(v[0], v[1], v[2])


def _reject(code: str, message: str) -> Result:
    return Result(code, message)


@dataclass(frozen=True, slots=True)
class TaskChanged:
    revision: int
    run_id: str
    task_id: str
    status: TaskStatus
    attempt: int
    node: str


@dataclass(frozen=True, slots=True)
class RunChanged:
    revision: int
    run_id: str
    status: RunStatus


@dataclass(frozen=True, slots=True)
class MemberChanged:
    revision: int
    node_id: str
    up: bool


Event = TaskChanged | RunChanged | MemberChanged | LockChanged | KvChanged


def backoff_ms(spec_backoff_ms: int, failures: int, run_id: str, task_id: str) -> int:
    """Exponential backoff with deterministic jitter (up to +25%, derived from the ids)."""
    if spec_backoff_ms <= 0:
        return 0
    base: int = min(spec_backoff_ms << max(0, failures - 1), limits.MAX_BACKOFF_MS)
    h = hashlib.blake2b(f"{run_id}/{task_id}/{failures}".encode(), digest_size=4).digest()
    jitter = int.from_bytes(h, "big") % (base // 4 + 1)
    return base + jitter


class StateMachine(CoordinationMixin):
    """Owns a ``ClusterState`` and applies commands to it."""

    def __init__(self, state: ClusterState | None = None) -> None:
        self.state = state if state is not None else ClusterState()
        self._events: list[Event] = []
        self._released: set[str] = set()
        """Locks freed by the command being applied (waiters are granted before it returns)."""

    # ---- entry points -------------------------------------------------------

    def apply_batch(self, payload: bytes) -> tuple[list[Result], list[Event]]:
        """Apply one log entry (a batch of commands). Never raises."""
        results: list[Result] = []
        events: list[Event] = []
        for cmd in decode_batch(payload):
            if isinstance(cmd, Undecodable):
                results.append(_reject("INVALID_ARGUMENT", f"undecodable command: {cmd.reason}"))
                continue
            res, evs = self.apply(cmd)
            results.append(res)
            events.extend(evs)
        return results, events

    def apply(self, cmd: Command) -> tuple[Result, list[Event]]:
        """Apply one command. Never raises: an unexpected error is logged and rejected."""
        st = self.state
        if not isinstance(cmd, Barrier):
            prior = st.dedup.get(cmd.request_id) if cmd.request_id else None
            if prior is not None:
                return Result.decode(prior[1]), []
        self._events = []
        revision = st.revision
        try:
            res = self._dispatch(cmd)
            if st.revision != revision and self._released:
                self._settle_locks(st.revision)
        except Exception as exc:  # a bug must not stall the log on every replica
            log.exception("apply failed for %s", type(cmd).__name__)
            self._released.clear()
            st.kv.emitted.clear()
            return _reject("INTERNAL", f"apply failed: {type(exc).__name__}: {exc}"), []
        self._released.clear()
        if st.kv.emitted:
            self._events.extend(KvChanged(e.revision, e) for e in st.kv.emitted)
            st.kv.emitted.clear()
        events, self._events = self._events, []
        # Only a command that changed the state is remembered: an OK that changes nothing
        # (a known idempotency key, cancelling a finished run) must leave the digest alone.
        if res.ok and st.revision != revision:
            self._record(cmd, res)
        return res, events

    def digest(self) -> str:
        return self.state.digest()

    def snapshot(self) -> bytes:
        return self.state.encode()

    def restore(self, data: bytes) -> None:
        self.state = ClusterState.decode(data)

    # ---- bookkeeping --------------------------------------------------------

    def _advance(self, cmd: Command) -> int:
        """Called once a command is known to change the state: raise time and revision."""
        st = self.state
        st.time_ms = max(st.time_ms, cmd.ts_ms)
        st.revision += 1
        return st.revision

    def _record(self, cmd: Command, res: Result) -> None:
        st = self.state
        if cmd.request_id:
            st.dedup[cmd.request_id] = (cmd.ts_ms, res.encode())
        horizon = st.time_ms - limits.DEDUP_RETENTION_MS
        while st.dedup:
            _, (ts, _) = next(iter(st.dedup.items()))
            if len(st.dedup) > limits.DEDUP_MAX_ENTRIES or ts < horizon:
                st.dedup.popitem(last=False)
            else:
                break

    def _dispatch(self, cmd: Command) -> Result:
        if isinstance(cmd, Assign):
            return self._assign(cmd)
        if isinstance(cmd, Complete):
            return self._complete(cmd)
        if isinstance(cmd, Fail):
            return self._fail(cmd)
        if isinstance(cmd, SubmitRun):
            return self._submit(cmd)
        if isinstance(cmd, Tick):
            return self._tick(cmd)
        if isinstance(cmd, RegisterNode):
            return self._register(cmd)
        if isinstance(cmd, CancelRun):
            return self._cancel(cmd)
        if isinstance(cmd, NodeDown):
            return self._node_down(cmd)
        if isinstance(cmd, KvTxn):
            return self._kv_txn(cmd)
        if isinstance(cmd, LockAcquire):
            return self._lock_acquire(cmd)
        if isinstance(cmd, LockRelease):
            return self._lock_release(cmd)
        if isinstance(cmd, LockCancel):
            return self._lock_cancel(cmd)
        if isinstance(cmd, KvLease):
            return self._kv_lease(cmd)
        if isinstance(cmd, Barrier):
            return Result(value={"revision": self.state.revision})
        return _reject("INVALID_ARGUMENT", f"unsupported command {type(cmd).__name__}")

    # ---- members ------------------------------------------------------------

    def _register(self, cmd: RegisterNode) -> Result:
        try:
            check_id("node id", cmd.node_id)
            for a in cmd.agents:
                check_id("agent type", a)
        except DagError as exc:
            return _reject("INVALID_ARGUMENT", str(exc))
        if cmd.slots < 0:
            return _reject("INVALID_ARGUMENT", "slots must be >= 0")
        st = self.state
        rev = self._advance(cmd)
        old = st.members.get(cmd.node_id)
        if old is not None and old.incarnation != cmd.incarnation:
            # The node restarted: whatever it was running died with the old process.
            self._requeue_node_tasks(cmd.node_id, rev, "node restarted")
        st.members[cmd.node_id] = Member(
            cmd.node_id,
            cmd.grpc,
            cmd.raft,
            tuple(sorted(set(cmd.agents))),
            cmd.slots,
            cmd.incarnation,
            True,
            st.time_ms,
        )
        self._events.append(MemberChanged(rev, cmd.node_id, True))
        return Result(value={"node_id": cmd.node_id})

    def _node_down(self, cmd: NodeDown) -> Result:
        m = self.state.members.get(cmd.node_id)
        if m is None:
            return _reject("NOT_FOUND", f"node {cmd.node_id!r} is not a member")
        if not m.up or m.incarnation != cmd.incarnation:
            return _reject(
                "FAILED_PRECONDITION", f"node {cmd.node_id!r} incarnation {cmd.incarnation} is not up"
            )
        rev = self._advance(cmd)
        m.up = False
        self._requeue_node_tasks(cmd.node_id, rev, f"node {cmd.node_id} down: {cmd.reason or 'unreachable'}")
        self._events.append(MemberChanged(rev, cmd.node_id, False))
        return Result(value={"node_id": cmd.node_id})

    def _requeue_node_tasks(self, node_id: str, rev: int, why: str) -> None:
        """Attempts on a lost node go back to READY; this does not consume retries."""
        st = self.state
        # Sorted: the index's insertion order differs on a replica that rebuilt it from a snapshot,
        # and the order decides each task's ready_seq (part of the state).
        for run_id, task_id in sorted(st.running.get(node_id, {})):
            t = st.runs[run_id].tasks[task_id]
            self._unrun(run_id, t)
            t.error = f"attempt {t.attempt} lost: {why}"
            self._make_ready(st.runs[run_id], t, rev, not_before_ms=0)

    # ---- runs ---------------------------------------------------------------

    def _submit(self, cmd: SubmitRun) -> Result:
        st = self.state
        if cmd.idempotency_key:
            existing = st.idempotency.get(cmd.idempotency_key)
            if existing is not None:
                return Result(value={"run_id": existing, "created": False})
        try:
            check_id("run id", cmd.run_id)
            if cmd.idempotency_key and len(cmd.idempotency_key) > limits.MAX_ID_CHARS:
                raise DagError("limit", f"idempotency key is longer than {limits.MAX_ID_CHARS} characters")
            if abs(cmd.priority) > limits.MAX_PRIORITY:
                raise DagError("limit", f"run priority must be within +-{limits.MAX_PRIORITY}")
            validate(cmd.tasks, st.known_agents())
        except DagError as exc:
            return _reject("INVALID_ARGUMENT", str(exc))
        if cmd.run_id in st.runs:
            return _reject("ALREADY_EXISTS", f"run id {cmd.run_id!r} already exists")
        rev = self._advance(cmd)
        dependents: dict[str, list[str]] = {t.id: [] for t in cmd.tasks}
        for t in cmd.tasks:
            for d in t.deps:
                dependents[d].append(t.id)
        run = RunState(
            run_id=cmd.run_id,
            status=RunStatus.RUNNING,
            tasks={},
            unfinished=len(cmd.tasks),
            priority=cmd.priority,
            idempotency_key=cmd.idempotency_key,
            name=cmd.name,
            submitter=cmd.submitter,
            created_ms=st.time_ms,
            revision=rev,
        )
        st.runs[cmd.run_id] = run
        if cmd.idempotency_key:
            st.idempotency[cmd.idempotency_key] = cmd.run_id
        for spec in cmd.tasks:
            task = TaskState(
                spec=spec,
                status=TaskStatus.PENDING,
                deps_waiting=len(spec.deps),
                dependents=dependents[spec.id],
                retries_left=spec.retries,
            )
            run.tasks[spec.id] = task
            if not spec.deps:
                self._make_ready(run, task, rev, not_before_ms=0)
        self._events.append(RunChanged(rev, cmd.run_id, RunStatus.RUNNING))
        return Result(value={"run_id": cmd.run_id, "created": True})

    def _cancel(self, cmd: CancelRun) -> Result:
        st = self.state
        run = st.runs.get(cmd.run_id)
        if run is None:
            return _reject("NOT_FOUND", f"run {cmd.run_id!r} not found")
        if run.status in TERMINAL_RUN:
            return Result(value={"status": run.status.value, "cancelled": False})
        rev = self._advance(cmd)
        reason = cmd.reason or "cancelled"
        self._finish_run(run, RunStatus.CANCELLED, rev, f"run cancelled: {reason}")
        return Result(value={"status": run.status.value, "cancelled": True})

    def _finish_run(self, run: RunState, status: RunStatus, rev: int, error: str) -> None:
        """End a run; its unfinished tasks are cancelled (hosts stop running attempts)."""
        st = self.state
        for t in run.tasks.values():
            if t.status in TERMINAL_TASK:
                continue
            self._unready(run.run_id, t)
            self._unrun(run.run_id, t)
            t.status = TaskStatus.CANCELLED
            t.finished_ms = st.time_ms
            if not t.error:
                t.error = error
            self._events.append(TaskChanged(rev, run.run_id, t.spec.id, t.status, t.attempt, t.node))
        run.unfinished = 0
        run.status = status
        run.finished_ms = st.time_ms
        run.error = "" if status is RunStatus.SUCCEEDED else error
        run.revision = rev
        self._events.append(RunChanged(rev, run.run_id, status))
        st.finished[run.run_id] = None
        while len(st.finished) > limits.FINISHED_RUNS_RETAINED:
            old_id, _ = st.finished.popitem(last=False)
            old = st.runs.pop(old_id, None)
            if old is not None and old.idempotency_key:
                st.idempotency.pop(old.idempotency_key, None)

    # ---- task transitions ---------------------------------------------------

    def _make_ready(self, run: RunState, t: TaskState, rev: int, not_before_ms: int) -> None:
        st = self.state
        st.seq += 1
        t.status = TaskStatus.READY
        t.ready_seq = st.seq
        t.not_before_ms = not_before_ms
        t.node = ""
        t.deadline_ms = 0
        st.ready.setdefault(t.spec.priority, {})[(run.run_id, t.spec.id)] = None
        run.revision = rev
        self._events.append(TaskChanged(rev, run.run_id, t.spec.id, t.status, t.attempt, ""))

    def _unready(self, run_id: str, t: TaskState) -> None:
        if t.status is TaskStatus.READY:
            q = self.state.ready.get(t.spec.priority)
            if q is not None:
                q.pop((run_id, t.spec.id), None)

    def _unrun(self, run_id: str, t: TaskState) -> None:
        """Every way out of RUNNING goes through here: it also frees the attempt's locks."""
        if t.status is TaskStatus.RUNNING:
            self._release_task_locks(t, run_id)
            q = self.state.running.get(t.node)
            if q is not None:
                q.pop((run_id, t.spec.id), None)

    def _assign(self, cmd: Assign) -> Result:
        st = self.state
        now = max(st.time_ms, cmd.ts_ms)
        accepted: list[tuple[RunState, TaskState, str]] = []
        rejected: list[list[str]] = []
        planned: dict[str, int] = {}
        planned_locks: dict[str, str] = {}
        seen: set[TaskKey] = set()
        for a in cmd.items:
            run = st.runs.get(a.run_id)
            t = run.tasks.get(a.task_id) if run else None
            member = st.members.get(a.node_id)
            why = ""
            if run is None or t is None:
                why = "no such task"
            elif (a.run_id, a.task_id) in seen:
                why = "assigned twice in one command"
            elif run.status is not RunStatus.RUNNING:
                why = f"run is {run.status.value}"
            elif t.status is not TaskStatus.READY:
                why = f"task is {t.status.value}"
            elif a.attempt != t.attempt + 1:
                why = f"attempt {a.attempt} is not the next attempt ({t.attempt + 1})"
            elif t.not_before_ms > now:
                why = "retry backoff has not passed"
            elif member is None or not member.up:
                why = f"node {a.node_id!r} is not an up member"
            elif t.spec.agent not in member.agents:
                why = f"node {a.node_id!r} does not offer agent {t.spec.agent!r}"
            elif len(st.running.get(a.node_id, {})) + planned.get(a.node_id, 0) >= member.slots:
                why = f"node {a.node_id!r} has no free slot"
            else:
                why = self._task_locks_free(t, a.run_id, planned_locks)
            if why:
                rejected.append([a.run_id, a.task_id, why])
                continue
            assert run is not None and t is not None
            seen.add((a.run_id, a.task_id))
            planned[a.node_id] = planned.get(a.node_id, 0) + 1
            for name, mode in t.spec.locks:
                planned_locks[name] = mode if planned_locks.get(name) != "exclusive" else "exclusive"
            accepted.append((run, t, a.node_id))
        if not accepted:
            return _reject("FAILED_PRECONDITION", f"no assignment applies: {rejected[:5]}")
        rev = self._advance(cmd)
        for run, t, node_id in accepted:
            self._unready(run.run_id, t)
            t.status = TaskStatus.RUNNING
            t.attempt += 1
            t.node = node_id
            t.token = rev
            t.started_ms = st.time_ms
            t.deadline_ms = st.time_ms + t.spec.timeout_ms if t.spec.timeout_ms else 0
            st.running.setdefault(node_id, {})[(run.run_id, t.spec.id)] = None
            self._grant_task_locks(t, run.run_id, rev)
            if t.deadline_ms:
                heapq.heappush(st.timeouts, (t.deadline_ms, run.run_id, t.spec.id, t.attempt))
            run.revision = rev
            self._events.append(TaskChanged(rev, run.run_id, t.spec.id, t.status, t.attempt, node_id))
        return Result(value={"token": rev, "accepted": len(accepted), "rejected": rejected})

    def _fenced(self, node_id: str, run_id: str, task_id: str, attempt: int, token: int) -> tuple[str, Any]:
        """Why a result from this attempt must be rejected, or "" if it is the current attempt."""
        run = self.state.runs.get(run_id)
        t = run.tasks.get(task_id) if run else None
        if run is None or t is None:
            return "no such task", None
        if t.status is not TaskStatus.RUNNING:
            return f"task is {t.status.value}", None
        if t.attempt != attempt or t.token != token:
            return f"stale attempt {attempt} (token {token}); current is {t.attempt} (token {t.token})", None
        if t.node != node_id:
            return f"attempt runs on {t.node!r}, not {node_id!r}", None
        return "", (run, t)

    def _complete(self, cmd: Complete) -> Result:
        accepted: list[tuple[RunState, TaskState, Any]] = []
        rejected: list[list[str]] = []
        failed: list[tuple[RunState, TaskState, str]] = []
        seen: set[TaskKey] = set()
        for c in cmd.items:
            why, hit = self._fenced(cmd.node_id, c.run_id, c.task_id, c.attempt, c.token)
            if not why and (c.run_id, c.task_id) in seen:
                why = "completed twice in one command"
            if why:
                rejected.append([c.run_id, c.task_id, why])
                continue
            seen.add((c.run_id, c.task_id))
            size = encoded_size(c.output)
            if size > limits.MAX_TASK_OUTPUT_BYTES:
                msg = f"output is {size} bytes encoded; the limit is {limits.MAX_TASK_OUTPUT_BYTES}"
                failed.append((hit[0], hit[1], msg))
            else:
                accepted.append((hit[0], hit[1], c.output))
        if not accepted and not failed:
            return _reject("ABORTED", f"every result was fenced: {rejected[:5]}")
        rev = self._advance(cmd)
        for run, t, output in accepted:
            self._succeed(run, t, output, rev)
        for run, t, msg in failed:
            if t.status is TaskStatus.RUNNING:  # an earlier item may have failed the run
                self._fail_attempt(run, t, msg, retryable=False, rev=rev)
        return Result(value={"accepted": len(accepted) + len(failed), "rejected": rejected})

    def _fail(self, cmd: Fail) -> Result:
        accepted: list[tuple[RunState, TaskState, str, bool]] = []
        rejected: list[list[str]] = []
        seen: set[TaskKey] = set()
        for f in cmd.items:
            why, hit = self._fenced(cmd.node_id, f.run_id, f.task_id, f.attempt, f.token)
            if not why and (f.run_id, f.task_id) in seen:
                why = "failed twice in one command"
            if why:
                rejected.append([f.run_id, f.task_id, why])
                continue
            seen.add((f.run_id, f.task_id))
            accepted.append((hit[0], hit[1], f.error[: limits.MAX_ERROR_CHARS], f.retryable))
        if not accepted:
            return _reject("ABORTED", f"every result was fenced: {rejected[:5]}")
        rev = self._advance(cmd)
        for run, t, error, retryable in accepted:
            if t.status is TaskStatus.RUNNING:  # an earlier item may have failed the run
                self._fail_attempt(run, t, error, retryable, rev)
        return Result(value={"accepted": len(accepted), "rejected": rejected})

    def _succeed(self, run: RunState, t: TaskState, output: Any, rev: int) -> None:
        st = self.state
        self._unrun(run.run_id, t)
        t.status = TaskStatus.SUCCEEDED
        t.output = output
        t.error = ""
        t.finished_ms = st.time_ms
        t.deadline_ms = 0
        run.unfinished -= 1
        run.revision = rev
        self._events.append(TaskChanged(rev, run.run_id, t.spec.id, t.status, t.attempt, t.node))
        for dep_id in t.dependents:
            d = run.tasks[dep_id]
            d.deps_waiting -= 1
            if d.deps_waiting == 0 and d.status is TaskStatus.PENDING:
                self._make_ready(run, d, rev, not_before_ms=0)
        if run.unfinished == 0 and run.status is RunStatus.RUNNING:
            self._finish_run(run, RunStatus.SUCCEEDED, rev, "")

    def _fail_attempt(self, run: RunState, t: TaskState, error: str, retryable: bool, rev: int) -> None:
        st = self.state
        self._unrun(run.run_id, t)
        t.error = error
        t.deadline_ms = 0
        if retryable and t.retries_left > 0:
            t.retries_left -= 1
            failures = t.spec.retries - t.retries_left
            delay = backoff_ms(t.spec.retry_backoff_ms, failures, run.run_id, t.spec.id)
            self._make_ready(run, t, rev, not_before_ms=st.time_ms + delay if delay else 0)
            return
        t.status = TaskStatus.FAILED
        t.finished_ms = st.time_ms
        run.unfinished -= 1
        run.revision = rev
        self._events.append(TaskChanged(rev, run.run_id, t.spec.id, t.status, t.attempt, t.node))
        self._finish_run(run, RunStatus.FAILED, rev, f"task {t.spec.id!r} failed: {error}")

    def _tick(self, cmd: Tick) -> Result:
        st = self.state
        now = max(st.time_ms, cmd.ts_ms)
        rev = self._advance(cmd)
        expired = self._expire_locks(now, rev) + self._expire_kv(now, rev)
        while True:
            st.next_task_deadline_ms()  # drop stale heap entries
            if not st.timeouts or st.timeouts[0][0] > now:
                break
            _, run_id, task_id, attempt = heapq.heappop(st.timeouts)
            run = st.runs[run_id]
            t = run.tasks[task_id]
            self._fail_attempt(run, t, f"attempt {attempt} timed out after {t.spec.timeout_ms} ms", True, rev)
            expired += 1
        return Result(value={"expired": expired, "time_ms": st.time_ms})
