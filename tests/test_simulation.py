"""Deterministic simulation of the replicated state machine, driven by a seed.

A seeded generator plays the parts of clients, the leader's scheduler and the nodes:
it proposes a random but plausible command log (including stale and duplicated
results, reused request ids, cancels, restarts and ticks). Several replicas apply the
same log; some of them snapshot and restore, or crash back to an older snapshot and
replay the log from there. All replicas must agree after every entry (digest and
derived indexes), and invariants are checked along the way.

Some task inputs and KV values are large non-ASCII text (up to the limits), and every entry
larger than a replication batch reaches the other replicas the way a follower assembles it from
the leader's chunks (``consensus/raft/replication.py``), so a lossy wire form would diverge.

A failure names its seed. Replay one with ``RAFTMESH_SIM_SEED=<seed> pytest tests/test_simulation.py``.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from pysyncobj import pickle as so_pickle

from raftmesh.consensus import (
    Assign,
    Assignment,
    CancelRun,
    ClusterState,
    Code,
    Command,
    Complete,
    Completion,
    Fail,
    Failure,
    RegisterNode,
    Result,
    RunChanged,
    RunStatus,
    StateMachine,
    SubmitRun,
    TaskChanged,
    TaskSpec,
    TaskStatus,
    Tick,
    budgets,
    encode_batch,
    limits,
    sagas,
)
from raftmesh.consensus.commands import (
    Approval,
    ApproveTask,
    Budget,
    Compare,
    Compensation,
    Fence,
    KvLease,
    KvOp,
    KvTxn,
    LockAcquire,
    LockCancel,
    LockRelease,
    NodeDown,
    PauseRun,
    Preempt,
    Preemption,
    RerunTask,
    ResumeRun,
    RetryTask,
    Usage,
)
from raftmesh.consensus.fusion import SUPERSEDED
from raftmesh.consensus.locks import EXCLUSIVE, SHARED, task_owner
from raftmesh.consensus.raft import replication
from raftmesh.consensus.results import (
    ApproveTaskResult,
    KvChanged,
    LockAcquireResult,
    LockChanged,
    RerunTaskResult,
    RetryTaskResult,
)
from raftmesh.consensus.state import TERMINAL_RUN, TERMINAL_TASK, RunState, TaskState

COMPENSATION_STATES = (RunStatus.COMPENSATING, RunStatus.COMPENSATED, RunStatus.COMPENSATION_FAILED)

ENTRIES = 220
"""Log entries per seed."""
REPLICAS = 4
FULL_CHECK_EVERY = 20
"""Entries between full invariant checks (in between, only the runs an entry touched)."""
AGENT_TYPES = ("echo", "llm", "http")
LOCK_NAMES = ("L0", "L1", "L2", "db")
LOCK_OWNERS = ("o0", "o1", "o2", "o3", "o4")
KV_KEYS = ("a/0", "a/1", "a/2", "b/0", "b/1", "c")
COORD_SHARE = 0.25
"""Share of generated commands that are lock or KV commands."""
CONTROL_SHARE = 0.03
"""Share of generated commands that decide approval gates, pause, resume or rerun."""
LARGE_SHARE = 0.04
ENDED_OK = (TaskStatus.SUCCEEDED, TaskStatus.SKIPPED)
"""What a dependency ends as when its dependents may go on (their trigger decides)."""
"""Share of task inputs and KV values that are large non-ASCII text."""


def saga_step(rng: random.Random, offered: list[str], i: int) -> Compensation | None:
    """A quarter of the tasks undo themselves with some offered agent (ids-derived randomness)."""
    return Compensation(rng.choice(offered), {"undo": i}) if rng.random() < 0.25 else None


def large_text(rng: random.Random, max_bytes: int) -> str:
    """CJK text (3 bytes a character in UTF-8) of up to ``max_bytes``; often right at it."""
    chars = (max_bytes - 64) // 3
    if rng.random() < 0.5:
        chars = rng.randint(chars // 8, chars)
    return "".join(map(chr, rng.choices(range(0x4E00, 0x9FA0), k=chars)))


def over_the_wire(payload: bytes) -> bytes:
    """``payload`` as a follower assembles it, if the leader would stream its entry in chunks."""
    command = b"\x00" + so_pickle.dumps((0, (payload,)))  # the log entry pysyncobj makes of it
    if len(command) + replication.ENTRY_OVERHEAD_BYTES <= replication.APPEND_BATCH_BYTES:
        return payload
    step = replication.CHUNK_BYTES
    frames = [
        so_pickle.dumps(replication._to_wire(command[o : o + step])) for o in range(0, len(command), step)
    ]
    assembled = b"".join(replication._from_wire(so_pickle.loads(f)) for f in frames)
    _, (received,) = so_pickle.loads(assembled[1:])
    assert isinstance(received, bytes)
    return received


def seeds() -> list[int]:
    replay = os.environ.get("RAFTMESH_SIM_SEED")
    if replay:
        return [int(s) for s in replay.split(",")]
    return list(range(20))


@dataclass
class Replica:
    sm: StateMachine = field(default_factory=StateMachine)
    applied: int = 0
    """Log entries applied (the index of the next entry)."""
    snapshot: bytes = field(default_factory=lambda: ClusterState().encode())
    snapshot_applied: int = 0

    def catch_up(self, log: list[bytes]) -> None:
        while self.applied < len(log):
            self.sm.apply_batch(log[self.applied])
            self.applied += 1


@dataclass(frozen=True)
class AttemptRecord:
    run_id: str
    task_id: str
    attempt: int
    token: int
    node: str


class Generator:
    """Proposes plausible commands from what the leader sees in its own replica."""

    def __init__(self, rng: random.Random, leader: StateMachine) -> None:
        self.rng = rng
        self.leader = leader
        self.now_ms = 1_000_000
        self.n_rid = 0
        self.n_run = 0
        self.n_spawned = 0
        # Spawns draw from their own stream, so the seeds' other choices (and what they cover) stay.
        self.spawn_rng = random.Random(repr(rng.getstate()[1][:8]))
        self.nodes: dict[str, RegisterNode] = {}
        self.incarnations: Counter[str] = Counter()
        self.attempts: list[AttemptRecord] = []
        self.proposed: list[Command] = []
        self.keys: list[str] = []
        self.lock_requests: list[str] = []
        # Workflow keys and list outputs draw from their own stream (seeded from the seed's, without
        # consuming it), so adding them left the rest of each seed's log as it was.
        self.flow_rng = random.Random(f"flow/{rng.getstate()[1][:8]}")

    @property
    def st(self) -> ClusterState:
        return self.leader.state

    def rid(self) -> str:
        self.n_rid += 1
        return f"q{self.n_rid}"

    def ts(self) -> int:
        # Proposers' clocks disagree a little; the state's time is the max seen.
        return self.now_ms - self.rng.randint(0, 30)

    def register(self, node: str, new_incarnation: bool) -> RegisterNode:
        rng = self.rng
        old = self.nodes.get(node)
        if old is None:
            agents = tuple(a for a in AGENT_TYPES if rng.random() < 0.5) or ("echo",)
            slots = rng.randint(0, 4)
            if node == "n0":  # at least one node that can run something
                agents, slots = tuple(sorted({"echo", *agents})), max(slots, 2)
        else:
            agents, slots = old.agents, old.slots
        if new_incarnation or old is None:
            self.incarnations[node] += 1
        cmd = RegisterNode(
            self.rid(),
            self.ts(),
            node,
            f"{node}:1",
            f"{node}:2",
            agents,
            slots,
            f"inc-{self.incarnations[node]}",
        )
        self.nodes[node] = cmd
        return cmd

    def submit(self) -> SubmitRun:
        rng = self.rng
        self.n_run += 1
        run_id = f"run-{self.n_run}" if rng.random() > 0.05 or self.n_run < 3 else f"run-{self.n_run - 2}"
        offered = sorted(self.st.known_agents()) or ["echo"]
        tasks = []
        for i in range(rng.randint(1, 8)):
            earlier = [f"t{j}" for j in range(i)]
            deps = tuple(rng.sample(earlier, rng.randint(0, min(3, len(earlier)))))
            agent = rng.choice(offered) if rng.random() > 0.03 else "unknown-agent"
            flow: dict[str, Any] = {}
            frng = self.flow_rng
            if deps and frng.random() < 0.25:
                d = frng.choice(deps)
                flow["when"] = frng.choice(
                    (
                        {"path": f"{d}.attempt", "op": "==", "value": 1},
                        {"path": f"{d}.0", "op": "exists"},
                        {"not": {"path": f"{d}.from", "op": "in", "value": ["n0", "n1"]}},
                    )
                )
            if deps and frng.random() < 0.2:
                flow["trigger"] = frng.choice(("any_succeeded", "all_done"))
            if deps and frng.random() < 0.25:  # outputs are lists often enough (``results``)
                flow["map"] = frng.choice(deps)
                flow["max_parallel"] = frng.choice((0, 1, 2))
            replicated = replica_keys(random.Random(f"{run_id}/{i}"), offered)
            if replicated:  # map and replicas do not combine (a submit would be refused for it)
                flow.pop("map", None)
                flow.pop("max_parallel", None)
            tasks.append(
                TaskSpec(
                    id=f"t{i}",
                    agent=agent,
                    input={"i": i, "blob": "x" * rng.randint(0, 20)}
                    if rng.random() > LARGE_SHARE
                    else {"i": i, "text": large_text(rng, limits.MAX_TASK_INPUT_BYTES)},
                    deps=deps,
                    retries=rng.choice((0, 0, 1, 2, 3)),
                    priority=rng.randint(-1, 1),
                    timeout_ms=rng.choice((0, 0, 0, 60, 200, 800)),
                    retry_backoff_ms=rng.choice((0, 0, 20, 100)),
                    locks=(
                        ((rng.choice(("db", "db", "L0")), rng.choice((SHARED, EXCLUSIVE))),)
                        if rng.random() < 0.15
                        else ()
                    ),
                    **replicated,
                    compensate=saga_step(random.Random(f"{run_id}/{i}/compensate"), offered, i),
                    approval=gate_of(random.Random(f"{run_id}/{i}/gate")),
                    **flow,
                )
            )
        rng.shuffle(tasks)  # spec order is not topological order
        key = ""
        if rng.random() < 0.3:
            key = rng.choice(self.keys) if self.keys and rng.random() < 0.4 else f"key-{self.n_run}"
            self.keys.append(key)
        budget = None
        brng = random.Random(f"{run_id}/budget")  # ids-derived: the rest of the workload is unchanged
        if brng.random() < 0.25:  # tight enough that some runs end BUDGET_EXCEEDED
            budget = Budget(
                brng.choice((0, len(tasks), len(tasks) + 2)),
                brng.choice((0.0, 0.0, 0.5, 3.0)),
                brng.choice((0.0, 1.0, 3.0)),
                brng.choice((0, 0, 60, 200)),
            )
        return SubmitRun(
            self.rid(), self.ts(), run_id, key, tuple(tasks), rng.randint(0, 3), run_id, "sim", budget
        )

    def assign(self) -> Assign | None:
        """Scheduler-like: READY tasks past their backoff onto nodes with a free slot."""
        rng = self.rng
        st = self.st
        free = {n: m.slots - len(st.running.get(n, {})) for n, m in st.members.items() if m.up}
        items = []
        for prio in sorted(st.ready, reverse=True):
            for run_id, task_id in st.ready[prio]:
                t = st.runs[run_id].tasks[task_id]
                if t.not_before_ms > self.now_ms and rng.random() < 0.9:
                    continue
                if t.spec.locks and rng.random() < 0.9:
                    owner = task_owner(run_id, task_id, t.attempt + 1)
                    if not st.locks.can_grant(owner, tuple(sorted(t.spec.locks))):
                        continue
                nodes = [n for n in sorted(free) if free[n] > 0 and t.spec.agent in st.members[n].agents]
                if rng.random() < 0.05:
                    nodes = sorted(st.members)  # a bad placement, rejected by the state machine
                if not nodes:
                    continue
                node = rng.choice(nodes)
                free[node] = free.get(node, 0) - 1
                attempt = t.attempt + 1 if rng.random() > 0.03 else t.attempt + rng.choice((0, 2))
                items.append(Assignment(run_id, task_id, node, attempt))
                if len(items) >= 6:
                    break
        if not items:
            return None
        rng.shuffle(items)
        return Assign(self.rid(), self.ts(), tuple(items))

    def running(self) -> list[AttemptRecord]:
        return [
            AttemptRecord(run.run_id, t.spec.id, t.attempt, t.token, t.node)
            for run in self.st.runs.values()
            for t in run.tasks.values()
            if t.status is TaskStatus.RUNNING
        ]

    def mapped(self, a: AttemptRecord) -> bool:
        """Whether a task of the attempt's run maps over its output (then it is mostly a list)."""
        run = self.st.runs.get(a.run_id)
        return run is not None and any(t.spec.map == a.task_id for t in run.tasks.values())

    def results(self) -> Command | None:
        """A completion or failure batch from one node: mostly current attempts, some stale."""
        rng = self.rng
        running = self.running()
        pool = running if running and rng.random() < 0.85 else self.attempts
        if not pool:
            return None
        picked = rng.sample(pool, min(len(pool), rng.randint(1, 3)))
        node = picked[0].node if rng.random() > 0.05 else rng.choice(sorted(self.nodes))
        picked = [a for a in picked if a.node == picked[0].node]
        if rng.random() < 0.6:
            items_c = []
            for a in picked:
                output: Any = {"from": a.node, "attempt": a.attempt}
                if "#" in a.task_id:  # a replica or a judge: answers that agree, or that fuse
                    pick = random.Random(
                        f"{a.run_id}/{a.task_id}/{a.attempt}"
                    )  # the main stream stays as it was
                    output = pick.choice((1, 2, {"value": 2, "score": 3, "k": {"n": 1}}, {"choice": 0}))
                elif self.flow_rng.random() < (0.85 if self.mapped(a) else 0.3):  # a list (maybe empty)
                    output = [{"from": a.node, "k": k} for k in range(self.flow_rng.randint(0, 4))]
                if rng.random() < 0.003:
                    output = "x" * (limits.MAX_TASK_OUTPUT_BYTES + 1)
                usage = Usage(rng.randint(0, 50), rng.randint(0, 5), rng.randint(0, 8) / 8)
                spawn, wait = self.spawn(a) if self.spawn_rng.random() < 0.3 else ((), True)
                items_c.append(
                    Completion(a.run_id, a.task_id, a.attempt, a.token, output, usage, spawn, wait)
                )
            return Complete(self.rid(), self.ts(), node, tuple(items_c))
        items_f = [
            Failure(a.run_id, a.task_id, a.attempt, a.token, f"error {rng.randint(0, 9)}", rng.random() < 0.8)
            for a in picked
        ]
        return Fail(self.rid(), self.ts(), node, tuple(items_f))

    def spawn(self, a: AttemptRecord) -> tuple[tuple[TaskSpec, ...], bool]:
        """What a completing attempt spawns: mostly valid, sometimes an id or a dependency the run refuses."""
        rng = self.spawn_rng
        run = self.st.runs.get(a.run_id)
        existing = sorted(run.tasks) if run is not None else [a.task_id]
        offered = sorted(self.st.known_agents()) or ["echo"]
        specs: list[TaskSpec] = []
        for _ in range(rng.randint(1, 3)):
            self.n_spawned += 1
            sid = f"s{self.n_spawned}" if rng.random() > 0.03 else rng.choice(existing)
            choices = (
                [t.id for t in specs]
                + [a.task_id] * 2
                + ([rng.choice(existing)] if rng.random() < 0.1 else [])
            )
            deps = tuple(sorted(set(rng.sample(choices, rng.randint(0, min(2, len(choices)))))))
            specs.append(
                TaskSpec(
                    id=sid, agent=rng.choice(offered), input={"s": sid}, deps=deps, retries=rng.choice((0, 1))
                )
            )
        return tuple(specs), rng.random() < 0.7

    def retry_dead_letter(self) -> Command | None:
        """An operator retries a dead letter: mostly at its dead attempt, some stale or wrong."""
        rng = self.rng
        dead = self.st.dead_letters
        if not dead:
            return None
        _, run_id, task_id = rng.choice(dead)
        attempt = self.st.runs[run_id].tasks[task_id].attempt + (
            0 if rng.random() < 0.8 else rng.choice((-1, 1))
        )
        return RetryTask(self.rid(), self.ts(), run_id=run_id, task_id=task_id, attempt=attempt)

    def preempt(self) -> Command | None:
        """The leader preempts a running attempt for a READY task (mostly a current view)."""
        rng = self.rng
        running = self.running()
        pool = running if running and rng.random() < 0.85 else self.attempts
        waiting = [key for prio in sorted(self.st.ready) for key in self.st.ready[prio]]
        if not pool or not waiting:
            return None
        v = rng.choice(pool)
        by = max(waiting, key=lambda k: self.st.runs[k[0]].tasks[k[1]].spec.priority)
        if rng.random() < 0.3:
            by = rng.choice(waiting)
        return Preempt(self.rid(), self.ts(), (Preemption(v.run_id, v.task_id, v.attempt, v.token, *by),))

    def control_command(self, rng: random.Random) -> Command | None:
        """An operator decides a gate (now and then a stale or decided one), pauses, resumes, reruns.

        ``rng`` is derived, not the generator's stream, so the rest of the workload draws what it
        drew before run control was added."""
        roll = rng.random()
        if roll < 0.45:
            gates = [
                (t.gate.id, run.run_id, t.spec.id)
                for run in self.st.runs.values()
                for t in run.tasks.values()
                if t.gate
            ]
            if not gates:
                return None
            open_gates = self.st.open_gates
            gate, run_id, task_id = (
                rng.choice(open_gates) if open_gates and rng.random() < 0.8 else rng.choice(gates)
            )
            if rng.random() < 0.08:
                gate -= 1  # a late decision naming an older gate
            return ApproveTask(
                self.rid(),
                self.ts(),
                run_id,
                task_id,
                gate,
                rng.random() < 0.75,
                rng.choice(("ana", "bob")),
                "",
            )
        run_ids = sorted(self.st.runs)
        if not run_ids:
            return None
        run_id = rng.choice(run_ids)
        if roll < 0.65:
            return PauseRun(self.rid(), self.ts(), run_id, rng.random() < 0.5)
        if roll < 0.85:
            return ResumeRun(self.rid(), self.ts(), run_id)
        return RerunTask(self.rid(), self.ts(), run_id, rng.choice(sorted(self.st.runs[run_id].tasks)))

    def lock_command(self) -> Command | None:
        rng = self.rng
        lt = self.st.locks
        roll = rng.random()
        if roll < 0.5:
            names = sorted(rng.sample(LOCK_NAMES, rng.choice((1, 1, 1, 2, 3))))
            cmd = LockAcquire(
                self.rid(),
                self.ts(),
                rng.choice(LOCK_OWNERS),
                tuple((n, rng.choice((SHARED, EXCLUSIVE, EXCLUSIVE))) for n in names),
                rng.choice((500, 1000, 3000)),
                rng.randint(0, 3),
                rng.choice((0, 0, 200, 1000, 5000)),
            )
            self.lock_requests.append(cmd.request_id)
            return cmd
        if roll < 0.85:
            held = [(lk.name, h.owner, h.token) for lk in lt.locks.values() for h in lk.holders.values()]
            if held and rng.random() < 0.9:
                name, owner, token = rng.choice(sorted(held))
                if rng.random() < 0.1:
                    token -= rng.randint(1, 3)  # a stale holder
            else:
                name, owner, token = rng.choice(LOCK_NAMES), rng.choice(LOCK_OWNERS), rng.randint(0, 50)
            return LockRelease(self.rid(), self.ts(), owner, name, token, rng.random() < 0.3)
        if not self.lock_requests:
            return None
        return LockCancel(self.rid(), self.ts(), rng.choice(self.lock_requests[-20:]))

    def fence(self) -> Fence | None:
        rng = self.rng
        roll = rng.random()
        if roll < 0.15:
            name = rng.choice(LOCK_NAMES)
            lock = self.st.locks.locks.get(name)
            last = lock.last_token if lock else 0
            return Fence(name, last - rng.choice((0, 0, 0, 1, 5)))
        if roll < 0.2:
            pool = self.running() if rng.random() < 0.7 else self.attempts
            if pool:
                a = rng.choice(pool)
                return Fence(run_id=a.run_id, task_id=a.task_id, token=a.token)
        return None

    def kv_command(self) -> Command:
        rng = self.rng
        kv = self.st.kv
        roll = rng.random()
        if roll < 0.15:
            leases = sorted(kv.leases)
            if leases and rng.random() < 0.6:
                return KvLease(
                    self.rid(), self.ts(), rng.choice(leases), 0, rng.choice(("keep_alive", "revoke"))
                )
            return KvLease(self.rid(), self.ts(), 0, rng.choice((500, 1000, 4000)), "grant")
        key = rng.choice(KV_KEYS)
        lease = rng.choice(sorted(kv.leases)) if kv.leases and rng.random() < 0.2 else 0
        value = {"v": rng.randint(0, 99)}
        if rng.random() < LARGE_SHARE:
            value["text"] = large_text(rng, limits.MAX_KV_VALUE_BYTES)
        put = KvOp("put", key, value, lease)
        compares: tuple[Compare, ...] = ()
        success: tuple[KvOp, ...]
        failure: tuple[KvOp, ...] = ()
        if roll < 0.5:
            success = (put,)
        elif roll < 0.6:
            success = (KvOp("delete", key),)
        elif roll < 0.8:  # compare-and-set on version or mod revision
            e = kv.get(key)
            target = rng.choice(("version", "mod"))
            expected = (e.version if target == "version" else e.mod_revision) if e else 0
            compares = (Compare(key, target, "=", expected + rng.choice((0, 0, 0, 1))),)
            success = (put,)
            failure = (KvOp("get", key),)
        else:  # a multi-key transaction
            other = rng.choice(KV_KEYS)
            compares = (Compare(other, "version", ">", rng.randint(0, 2)),)
            success = (put, KvOp("delete", other), KvOp("get", key))
            failure = (KvOp("put", other, rng.randint(0, 9)), KvOp("get", key)) if rng.random() < 0.5 else ()
        return KvTxn(self.rid(), self.ts(), compares, success, failure, self.fence())

    def next_batch(self) -> list[Command]:
        rng = self.rng
        self.now_ms += rng.choice((0, 1, 5, 20, 50, 150))
        batch: list[Command] = []
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            roll = rng.random()
            cmd: Command | None
            if rng.random() < COORD_SHARE:
                cmd = self.lock_command() if rng.random() < 0.5 else self.kv_command()
            elif roll < 0.12:
                cmd = self.submit()
            elif roll < 0.40:
                cmd = self.assign()
            elif roll < 0.70:
                cmd = self.results()
            elif roll < 0.80:
                cmd = Tick(self.rid(), self.now_ms + rng.randint(0, 100))
            elif roll < 0.86 and self.proposed:
                cmd = rng.choice(self.proposed)  # a client or node retries: same request id
            elif roll < 0.90:
                run_ids = sorted(self.st.runs) or ["run-0"]
                run_id = rng.choice(run_ids) if rng.random() > 0.1 else "no-such-run"
                cmd = CancelRun(self.rid(), self.ts(), run_id, "sim")
            elif roll < 0.92:
                cmd = self.register(rng.choice(sorted(self.nodes)), new_incarnation=rng.random() < 0.7)
            elif roll < 0.95:
                # The leader loses a node; now and then from a stale view (an old incarnation).
                node = self.nodes[rng.choice(sorted(self.nodes))]
                inc = node.incarnation if rng.random() < 0.8 else "inc-0"
                cmd = NodeDown(self.rid(), self.ts(), node.node_id, inc, "sim")
            elif roll < 0.975:
                cmd = self.retry_dead_letter()
            else:
                cmd = self.preempt()
            if cmd is not None:
                batch.append(cmd)
        crng = random.Random(f"control/{self.n_rid}/{self.now_ms}")
        if crng.random() < CONTROL_SHARE:
            control = self.control_command(crng)
            if control is not None:
                batch.append(control)
        return batch


class Checker:
    """Invariants checked on the leader's replica after every entry."""

    def __init__(self) -> None:
        self.revision = 0
        self.max_token = 0
        self.succeeded: Counter[tuple[str, str]] = Counter()
        self.tokens: dict[tuple[str, str], int] = {}
        self.attempts: dict[tuple[str, str], int] = {}
        self.granted: dict[tuple[str, str], int] = {}
        self.first_results: dict[str, Result] = {}
        self.last_tokens: dict[str, int] = {}
        self.lock_grants = 0
        self.kv_writes = 0
        self.requeued: Counter[tuple[str, str, int]] = Counter()
        self.maps_done = 0
        """(run, task, dead attempt) -> requeues applied (exactly once, whatever the request id)."""
        self.decided: dict[tuple[str, str, int], tuple[str, str, int]] = {}
        """(run, task, gate) -> (decision, by, decided_ms): a gate is decided once and never changes."""
        self.decisions: Counter[tuple[str, str, int]] = Counter()
        self.reruns = 0

    def results(self, cmds: list[Command], results: list[Result], st: ClusterState, dups: set[str]) -> None:
        assert len(results) == len(cmds)
        for cmd, res in zip(cmds, results, strict=True):
            assert res.code is not Code.INTERNAL, res
            if isinstance(res, LockAcquireResult) and res.granted:
                self.lock_grants += 1
            if cmd.request_id in dups:
                assert res == self.first_results[cmd.request_id], (cmd, res)
            elif res.ok and cmd.request_id in st.dedup:
                self.first_results.setdefault(cmd.request_id, res)
            fresh = cmd.request_id not in dups  # a replayed request id returns its first answer
            if fresh and isinstance(cmd, RetryTask) and isinstance(res, RetryTaskResult) and res.requeued:
                key = (cmd.run_id, cmd.task_id, cmd.attempt)
                self.requeued[key] += 1
                assert self.requeued[key] == 1, f"{key} requeued twice"
            if fresh and isinstance(cmd, ApproveTask) and isinstance(res, ApproveTaskResult) and res.applied:
                gate_key = (cmd.run_id, cmd.task_id, cmd.gate)
                self.decisions[gate_key] += 1
                assert self.decisions[gate_key] == 1, f"gate {gate_key} decided twice"
            if fresh and isinstance(cmd, RerunTask) and isinstance(res, RerunTaskResult):
                # The reset tasks may succeed again, each once more.
                self.reruns += 1
                run = st.runs[cmd.run_id]
                for t in run.tasks.values():
                    if t.status is not TaskStatus.SUCCEEDED:
                        self.succeeded[(cmd.run_id, t.spec.id)] = 0
                # Dropped children are gone; an expansion (in this command or later) may bring
                # their ids back as new tasks, counted afresh.
                fresh_ids = {
                    k
                    for k in self.attempts
                    if k[0] == cmd.run_id
                    and (k[1] not in run.tasks or run.tasks[k[1]].attempt < self.attempts[k])
                }
                for seen in (self.tokens, self.attempts, self.granted, self.succeeded):
                    for key in [
                        k for k in seen if k in fresh_ids or (k[0] == cmd.run_id and k[1] not in run.tasks)
                    ]:
                        del seen[key]

    def events(self, events: list[Any], st: ClusterState) -> None:
        for ev in events:
            if isinstance(ev, LockChanged):
                if ev.granted:
                    assert ev.token == ev.revision <= st.revision, ev
                    self.lock_grants += 1
                continue
            if isinstance(ev, KvChanged):
                assert ev.revision == ev.event.revision <= st.revision, ev
                self.kv_writes += 1
                continue
            if not isinstance(ev, TaskChanged):
                continue
            key = (ev.run_id, ev.task_id)
            if ev.status is TaskStatus.SUCCEEDED:
                self.succeeded[key] += 1
                assert self.succeeded[key] == 1, f"{key} succeeded twice"
            if ev.status is TaskStatus.RUNNING:
                # A new assignment: the next attempt, with a token above the task's earlier ones
                # and no lower than any token granted before (one Assign shares its token).
                assert ev.revision >= self.max_token, (key, ev.revision, self.max_token)
                self.max_token = ev.revision
                assert ev.revision > self.granted.get(key, 0), (key, ev.revision)
                self.granted[key] = ev.revision
                assert ev.attempt == self.attempts.get(key, 0) + 1, (key, ev.attempt)
                self.attempts[key] = ev.attempt

    def state(self, st: ClusterState, run_ids: set[str] | None = None) -> None:
        """Check the runs named (all runs if None; a full check also compares the indexes)."""
        assert st.revision >= self.revision
        self.revision = st.revision
        runs = st.runs.values() if run_ids is None else [st.runs[r] for r in sorted(run_ids) if r in st.runs]
        for run in runs:
            unfinished = 0
            for t in run.tasks.values():
                key = (run.run_id, t.spec.id)
                assert t.token >= self.tokens.get(key, 0), f"token of {key} went down"
                self.tokens[key] = t.token
                assert t.token <= st.revision
                assert 0 <= t.retries_left <= t.spec.retries
                # A spawned task may read its spawner while the spawner waits for it (its output is
                # final); a run that ends meanwhile cancels the waiting spawner.
                # A replica superseded by its quorum is cancelled with what it spawned and had not ended.
                spawner = run.tasks.get(t.parent)
                spawner_ok = (
                    spawner is not None
                    and t.parent in t.spec.deps
                    and (
                        spawner.status is TaskStatus.WAITING_CHILDREN
                        or (
                            spawner.status is TaskStatus.CANCELLED
                            and run.status in (*TERMINAL_RUN, RunStatus.COMPENSATING)
                        )
                        or (spawner.status is TaskStatus.CANCELLED and spawner.error == SUPERSEDED)
                    )
                )
                deps_ok = all(
                    run.tasks[d].status is TaskStatus.SUCCEEDED or (d == t.parent and spawner_ok)
                    for d in t.spec.deps
                )
                deps_ended = all(
                    run.tasks[d].status in ENDED_OK or (d == t.parent and spawner_ok) for d in t.spec.deps
                )
                if t.origin == "spawn":  # no spawned task lost or duplicated: its spawner lists it once
                    assert run.tasks[t.parent].children.count(t.spec.id) == 1, key
                    assert t.depth == run.tasks[t.parent].depth + 1, key
                if t.status is TaskStatus.WAITING_CHILDREN:
                    waiting = [c for c in t.children if run.tasks[c].status not in TERMINAL_TASK]
                    assert 0 < t.children_waiting == len(waiting), key
                if t.origin == "compensation":  # all_done: it runs once its deps ended, however
                    deps_ok = deps_ended = all(run.tasks[d].status in TERMINAL_TASK for d in t.spec.deps)
                    parent = run.tasks[t.parent]
                    assert t.spec.id == t.parent + "~compensate" and t.spec.deps[0] == t.parent
                    assert sagas.compensable(run, parent), key
                    assert run.status in COMPENSATION_STATES, key
                elif run.status is RunStatus.COMPENSATING:
                    assert t.status in TERMINAL_TASK, f"{key} is {t.status} while its run compensates"
                if t.status in (
                    TaskStatus.READY,
                    TaskStatus.RUNNING,
                    TaskStatus.SUCCEEDED,
                    TaskStatus.SKIPPED,
                    TaskStatus.WAITING_APPROVAL,
                ):
                    assert deps_ended, f"{key} is {t.status} before all its deps ended"
                    # a replica or map instance started as its group did: by the group's trigger
                    group = run.tasks[t.parent] if t.origin in ("replica", "map") else t
                    assert deps_ok or group.spec.trigger or t.status is TaskStatus.SKIPPED, (
                        f"{key} ran after a skip"
                    )
                if t.status is TaskStatus.PENDING:
                    # a map instance waits for its turn (max_parallel) with its deps ended
                    held = t.origin == "map" and run.tasks[t.parent].status is TaskStatus.WAITING_CHILDREN
                    assert run.status in (RunStatus.RUNNING, RunStatus.PAUSED, RunStatus.COMPENSATING), key
                    assert not deps_ended or held, key
                if t.spec.map:
                    self.map_task(run, t)
                if t.status in (TaskStatus.READY, TaskStatus.RUNNING) and t.spec.approval is not None:
                    assert t.gate is not None and t.gate.decision == "approved", f"{key} ran past its gate"
                if t.gate is not None and t.gate.decision:
                    was = self.decided.setdefault(
                        (*key, t.gate.id), (t.gate.decision, t.gate.by, t.gate.decided_ms)
                    )
                    assert was == (t.gate.decision, t.gate.by, t.gate.decided_ms), f"gate of {key} changed"
                if t.status is TaskStatus.SUCCEEDED:
                    assert self.succeeded[key] == 1
                if t.status is TaskStatus.RUNNING:
                    m = st.members[t.node]
                    assert m.up and t.spec.agent in m.agents
                    assert t.attempt == self.attempts[key]
                if t.status not in TERMINAL_TASK:
                    unfinished += 1
            assert run.unfinished == unfinished, run.run_id
            # Usage: the run's running sum is its tasks' sums (costs are eighths: exact in any order).
            tasks_usage = [t.usage for t in run.tasks.values()]
            total = (sum(u.tokens_in for u in tasks_usage), sum(u.tokens_out for u in tasks_usage))
            assert (run.usage.tokens_in, run.usage.tokens_out) == total, run.run_id
            assert run.usage.cost == sum(u.cost for u in tasks_usage), run.run_id
            if run.status in TERMINAL_RUN:
                assert unfinished == 0
            if run.status is RunStatus.SUCCEEDED:
                assert all(
                    t.status in ENDED_OK
                    or (t.origin == "replica" and t.status in (TaskStatus.CANCELLED, TaskStatus.FAILED))
                    # what a superseded replica had spawned is cancelled with it
                    or (t.status is TaskStatus.CANCELLED and t.error == SUPERSEDED)
                    for t in run.tasks.values()
                )
            for t in run.tasks.values():
                if t.spec.replicas and t.status is TaskStatus.SUCCEEDED:
                    fused_from_committed(run, t)
            # Sagas: each compensable task (it did work) has exactly one compensation, and only then.
            comps = {t.parent for t in run.tasks.values() if t.origin == "compensation"}
            if run.status in COMPENSATION_STATES:
                assert comps == {t.spec.id for t in run.tasks.values() if sagas.compensable(run, t)}
            else:
                assert not comps, run.run_id
            if run.status is RunStatus.COMPENSATED:
                assert all(t.status is TaskStatus.SUCCEEDED for t in sagas.steps(run))
            # Budgets: a run still bound by its budget has not used it up.
            if run.status is RunStatus.RUNNING:
                assert budgets.spent(run) == "", run.run_id
        for node, tasks in st.running.items():
            assert len(tasks) <= st.members[node].slots, f"{node} runs more tasks than it has slots"
        self.coordination(st)
        if run_ids is None:
            rebuilt = ClusterState.decode(st.encode())
            assert rebuilt.index_snapshot() == st.index_snapshot()

    def map_task(self, run: RunState, t: TaskState) -> None:
        """A map waits for exactly its unfinished instances, at most max_parallel of them live,
        and succeeds with their outputs in order, one instance per item of its source's list."""
        kids = [run.tasks[c] for c in t.children if run.tasks[c].origin == "map"]
        assert [k.index for k in kids] == list(range(len(kids)))
        assert all(k.parent == t.spec.id and k.origin == "map" for k in kids)
        if t.status is TaskStatus.WAITING_CHILDREN:
            assert t.children_waiting == sum(k.status not in TERMINAL_TASK for k in kids)
            live = sum(k.status in (TaskStatus.READY, TaskStatus.RUNNING) for k in kids)
            assert not t.spec.max_parallel or live <= t.spec.max_parallel, (t.spec.id, live)
        if t.status is TaskStatus.SUCCEEDED:
            source = run.tasks[t.spec.map]
            items = source.output if source.status is TaskStatus.SUCCEEDED else []
            assert [k.item for k in kids] == items
            assert t.output == [k.output if k.status is TaskStatus.SUCCEEDED else None for k in kids]
            self.maps_done += 1

    def coordination(self, st: ClusterState) -> None:
        """Lock and KV invariants (the tables are small: checked after every entry)."""
        lt = st.locks
        task_holders: dict[str, dict[str, tuple[str, int]]] = {}
        for name, lock in lt.locks.items():
            assert lock.last_token >= self.last_tokens.get(name, 0), f"last token of {name} went down"
            self.last_tokens[name] = lock.last_token
            assert lock.last_token <= st.revision
            modes = [h.mode for h in lock.holders.values()]
            assert EXCLUSIVE not in modes or len(modes) == 1, (
                f"{name} is held exclusively with others: {modes}"
            )
            for h in lock.holders.values():
                assert 0 < h.token <= lock.last_token
                if h.owner.startswith("task:"):
                    task_holders.setdefault(h.owner, {})[name] = (h.mode, h.token)
            orders = [lt.waiting[r].order for r in lock.queue]
            assert orders == sorted(orders), f"queue of {name} is out of order"
            assert all(name in dict(lt.waiting[r].items) for r in lock.queue)
        for rid, r in lt.waiting.items():
            assert all(rid in lt.locks[n].queue for n, _ in r.items)
        assert lt.find_cycle() is None, "a deadlock was left in place"
        # Task locks: held exactly while the attempt runs, in the declared modes, with its token.
        expected: dict[str, dict[str, tuple[str, int]]] = {}
        for run in st.runs.values():
            for t in run.tasks.values():
                if t.status is TaskStatus.RUNNING and t.spec.locks:
                    owner = task_owner(run.run_id, t.spec.id, t.attempt)
                    expected[owner] = {n: (m, t.token) for n, m in t.spec.locks}
        assert task_holders == expected
        kv = st.kv
        for key, e in kv.entries.items():
            assert 0 < e.create_revision <= e.mod_revision <= st.revision and e.version >= 1
            if e.lease:
                assert key in kv.leases[e.lease].keys
        for lease in kv.leases.values():
            assert all(kv.entries[k].lease == lease.id for k in lease.keys)
        revs = [ev.revision for ev in kv.history]
        assert revs == sorted(revs) and all(r > kv.compacted for r in revs[:1])


def simulate(seed: int) -> tuple[ClusterState, Checker]:
    rng = random.Random(seed)
    replicas = [Replica() for _ in range(REPLICAS)]
    leader = replicas[0]  # never snapshots: it applies every entry exactly once
    gen = Generator(rng, leader.sm)
    checker = Checker()
    log: list[bytes] = []
    streamed = [0]

    def append(cmds: list[Command]) -> None:
        dups = {c.request_id for c in cmds if c.request_id in checker.first_results}
        payload = encode_batch(cmds)
        log.append(over_the_wire(payload))  # what the other replicas apply
        streamed[0] += log[-1] is not payload
        results, events = leader.sm.apply_batch(payload)
        leader.applied += 1
        checker.results(cmds, results, leader.sm.state, dups)
        checker.events(events, leader.sm.state)
        # Every change to a run emits an event naming it; a full check now and then.
        touched = {ev.run_id for ev in events if isinstance(ev, (TaskChanged, RunChanged))}
        checker.state(leader.sm.state, None if len(log) % FULL_CHECK_EVERY == 0 else touched)
        gen.proposed.extend(cmds)
        for ev in events:
            if isinstance(ev, TaskChanged) and ev.status is TaskStatus.RUNNING:
                gen.attempts.append(AttemptRecord(ev.run_id, ev.task_id, ev.attempt, ev.revision, ev.node))

    for i in range(rng.randint(3, 5)):
        append([gen.register(f"n{i}", new_incarnation=True)])
    leader_digest: list[Any] = [-1, ""]  # (log length, digest): computed once per entry
    while len(log) < ENTRIES:
        batch = gen.next_batch()
        if batch:
            append(batch)
        for r in replicas[1:]:
            roll = rng.random()
            if roll < 0.03:  # snapshot and restore in place
                data = r.sm.snapshot()
                r.sm = StateMachine()
                r.sm.restore(data)
                r.snapshot, r.snapshot_applied = data, r.applied
            elif roll < 0.05:  # crash: back to the last snapshot, replay the log from there
                r.sm = StateMachine()
                r.sm.restore(r.snapshot)
                r.applied = r.snapshot_applied
            if rng.random() < 0.1:  # replicas lag behind the leader, then catch up
                r.catch_up(log)
                if leader_digest[0] != len(log):
                    leader_digest[:] = [len(log), leader.sm.digest()]
                assert r.sm.digest() == leader_digest[1], f"replica diverged at entry {len(log)}"
                assert r.sm.state.index_snapshot() == leader.sm.state.index_snapshot()

    checker.state(leader.sm.state)
    for r in replicas:
        r.catch_up(log)
    digests = {r.sm.digest() for r in replicas}
    assert len(digests) == 1, "replicas ended with different digests"
    snapshots = [r.sm.state.index_snapshot() for r in replicas]
    assert all(s == snapshots[0] for s in snapshots)
    # The log exercised the interesting paths (a generator that drifts into no-ops proves little).
    st = leader.sm.state
    statuses = Counter(t.status for run in st.runs.values() for t in run.tasks.values())
    assert statuses[TaskStatus.SUCCEEDED] > 0
    assert checker.max_token > 0
    assert checker.lock_grants > 0 and checker.kv_writes > 0
    assert any(lock.last_token for lock in st.locks.locks.values())
    # Rarer paths are counted, and checked over several seeds (one seed may miss one by luck).
    COVERED["streamed"] += streamed[0]
    COVERED["decided gates"] += len(checker.decided)
    COVERED["spawned"] += sum(t.origin == "spawn" for run in st.runs.values() for t in run.tasks.values())
    return st, checker


COVERED: Counter[str] = Counter()
"""What the seeds simulated so far reached (``test_the_simulation_reaches_every_workflow_path``)."""


def test_the_simulation_reaches_every_workflow_path() -> None:
    """The generator drives runs through compensation, over their budgets, through decided gates,
    spawns and streamed entries (a few fixed seeds together)."""
    ends: Counter[str] = Counter()
    COVERED.clear()
    for seed in range(6):
        for run in simulate(seed)[0].runs.values():
            ends[run.status.value] += 1
            ends[run.reason] += 1
    assert ends["COMPENSATED"] and ends["COMPENSATION_FAILED"] and ends[budgets.BUDGET_EXCEEDED], ends
    assert COVERED["streamed"] and COVERED["decided gates"] and COVERED["spawned"], COVERED


def gate_of(rng: random.Random) -> Approval | None:
    """Now and then an approval gate, with a timeout that approves or rejects (a derived ``rng``,
    as ``replica_keys`` does)."""
    if rng.random() > 0.12:
        return None
    return Approval("ok?", rng.choice((0, 0, 300)), rng.choice(("reject", "approve")))


def replica_keys(rng: random.Random, offered: list[str]) -> dict[str, Any]:
    """Now and then a task with competing replicas (some of them invalid: rejected at submit).

    ``rng`` is derived from the task's ids, not the generator's stream, so the rest of the
    workload draws what it drew before replicas were added."""
    if rng.random() > 0.12:
        return {}
    n = rng.randint(1, 4)
    fusion = rng.choice(("vote", "vote", "weighted", "merge", "best", "first"))
    keys: dict[str, Any] = {"replicas": n, "fusion": fusion, "quorum": rng.randint(0, n)}
    if fusion == "first":
        keys["quorum"] = rng.choice((0, 1))
    if fusion == "best" and rng.random() < 0.5:
        keys["judge"] = rng.choice(offered)
    if rng.random() < 0.3:
        keys["agents"] = tuple(rng.sample(offered, min(len(offered), rng.randint(1, n))))
    if fusion == "weighted" and rng.random() < 0.5:
        keys["weights"] = tuple(float(rng.randint(0, 3)) for _ in range(n))
    return keys


def fused_from_committed(run: Any, t: Any) -> None:
    """A fused output quotes its replicas' committed outputs, and only succeeded ones count."""
    out = t.output
    assert out["fusion"] == t.spec.fusion and len(out["replicas"]) == t.spec.replicas
    for e in out["replicas"]:
        child = run.tasks[e["id"]]
        assert child.parent == t.spec.id and child.origin == "replica"
        if e["status"] == "SUCCEEDED":
            assert child.status is TaskStatus.SUCCEEDED
            assert out.get("outputs_omitted") or e["output"] == child.output
        else:
            assert e["output"] is None and child.status is not TaskStatus.SUCCEEDED


@pytest.mark.parametrize("seed", seeds())
def test_replicas_agree(seed: int) -> None:
    try:
        simulate(seed)
    except AssertionError as exc:
        raise AssertionError(
            f"simulation seed {seed} failed: {exc}\n"
            f"replay with: RAFTMESH_SIM_SEED={seed} pytest tests/test_simulation.py"
        ) from exc


def test_the_log_exercises_when_and_map() -> None:
    """The workflow shapes are not drowned out: seeds skip tasks and finish and fail maps."""
    seen: Counter[str] = Counter()
    for seed in range(8):  # runs fail early often (spawns, replicas): a few seeds see few maps
        st, checker = simulate(seed)
        seen["maps done"] += checker.maps_done
        for run in st.runs.values():
            for t in run.tasks.values():
                seen[t.status.value] += 1
                seen["instances"] += t.origin == "map"
                seen["map failed"] += t.status is TaskStatus.FAILED and "a map needs a list" in t.error
    assert all(seen[k] > 0 for k in ("maps done", "SKIPPED", "instances", "map failed")), seen


def test_entries_at_the_limits_survive_the_wire_and_apply_alike() -> None:
    """The largest run and a large transaction, streamed to a replica, apply there as on the leader."""
    rng = random.Random(1)
    leader, follower = StateMachine(), StateMachine()
    gen = Generator(rng, leader)
    n_tasks = limits.MAX_RUN_SPEC_BYTES // limits.MAX_TASK_INPUT_BYTES - 1
    text = large_text(random.Random(2), limits.MAX_TASK_INPUT_BYTES - 64)
    tasks = tuple(
        TaskSpec(id=f"t{i}", agent="echo", input={"i": i, "text": text[i:] + text[:i]})
        for i in range(n_tasks)
    )
    values = tuple(KvOp("put", f"k{i}", {"text": text[i:] + text[:i]}) for i in range(30))
    batches: list[list[Command]] = [
        [gen.register("n0", new_incarnation=True)],
        [SubmitRun("r-1", 1000, "run-big", "", tasks, 0, "big", "sim")],
        [KvTxn("r-2", 1001, (), values, ())],
    ]
    for cmds in batches[1:]:
        payload = encode_batch(cmds)
        assert over_the_wire(payload) is not payload, "not large enough to be streamed"
    for cmds in batches:
        payload = encode_batch(cmds)
        wire = over_the_wire(payload)
        assert wire == payload
        (result,), _ = leader.apply_batch(payload)
        assert result.ok, result
        follower.apply_batch(wire)
    assert len(encode_batch(batches[1])) > 7_500_000
    assert leader.state.runs["run-big"].tasks["t3"].spec.input == tasks[3].input
    assert leader.digest() == follower.digest()


def test_simulation_is_deterministic() -> None:
    """The same seed proposes the same log, so a failing seed replays the failure."""

    def log_of(seed: int) -> list[bytes]:
        rng = random.Random(seed)
        sm = StateMachine()
        gen = Generator(rng, sm)
        entries = []
        for i in range(4):
            entries.append(encode_batch([gen.register(f"n{i}", new_incarnation=True)]))
            sm.apply_batch(entries[-1])
        for _ in range(100):
            batch = gen.next_batch()
            if batch:
                entries.append(encode_batch(batch))
                sm.apply_batch(entries[-1])
        return entries

    assert log_of(7) == log_of(7)
    assert log_of(7) != log_of(8)
