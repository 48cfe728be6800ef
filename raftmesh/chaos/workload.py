"""The chaos workload: closed-loop clients submitting seeded DAGs and recording what they saw.

Each client thread builds a DAG from its own seeded RNG, submits it under a unique
idempotency key, records the operation (call/return times and the outcome the client
observed), then waits a bounded time for the run to end. The record is the history
the checker judges; the expected output of every task is computed here,
independently of the cluster, from the built-in agents' documented semantics.

A submit's outcome is ``ok`` (acknowledged: the client holds a run id), ``failed``
(the cluster refused it before proposing it, so it must not exist) or ``unknown``
(the client gave up on retrying: it may or may not have been applied).

Dead letters: a seeded share of jobs carry a ``doomed`` task that fails both its
attempts, so the run fails with a dead letter. Its agent (``fail_breaker``) opens its
circuit breaker on the node at each failure, so breakers open, probe and close throughout. The client then retries it the way a
nervous operator would, while the faults go on: the same call twice (one request id)
and a fresh call; each answer is recorded (``RetryCall``) and the run is waited for
again. The checker holds the log to "requeued exactly once". Every ``sum`` task
reports a usage derived from its value, so the checker can compare the sums.

Workflows: a seeded ``WORKFLOW_SHARE`` of jobs (drawn from an RNG of their own; the client's
RNG still draws the plain job it replaces, so a seed's other jobs are unchanged) are one of
``make_workflow_job``'s shapes: a run that spawns a sub-DAG, votes among 3 replicas, maps
over a list and waits for an approval its client gives (or refuses), a saga whose third step
fails for good after two compensable ones, or a run whose fan-out reaches its ``max_cost``
budget. The workload's first jobs are one of each shape (``EARLY_JOBS``). Their agents are
in ``raftmesh.chaos.agents``.

Staged submits: a seeded ``STAGED_SHARE`` of the other jobs (an RNG of their own again) are
``make_staged_job``'s: 3-4 ``echo`` tasks whose inputs hold over 512 KiB together, so the node
proposes the run as ``StageRun`` parts and a final ``SubmitRun(staged=N)``, and a ``sum`` that
depends on them all (from a later part). A leader killed or cut off mid-stage makes the SDK
retry with the same key, which must resume from the parts applied; the echoes' outputs show
every input arrived whole, and the checker holds the log's stages to being adopted once,
invisible until then, or expired.

Client kinds: the last ``aio_clients`` clients drive ``raftmesh.aio.Client`` instead of
``raftmesh.Client`` (``AioCalls``: each such thread awaits every call on an event loop of its
own), through the same loop, so the checker holds the async driver's failover, idempotency and
request ids to the same invariants. Each operation records its ``driver``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, TypeVar

from .. import aio
from ..client import DAG, Client
from ..client._security import Credentials
from ..client._types import DecisionInfo, RetryInfo, RunInfo
from ..clock import SYSTEM_CLOCK
from ..errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, RaftmeshError

Outcome = Literal["ok", "failed", "unknown"]
Driver = Literal["sync", "aio"]
T = TypeVar("T")

SUM_VALUE_MAX = 1000
SLEEP_S_MIN, SLEEP_S_MAX = 0.2, 1.0
WAIT_TIMEOUT_S = 60.0
"""How long a client waits for its run before moving on (the drain checks it later)."""
RETRY_DEADLINE_S = 10.0
"""The SDK's retry budget per call: short enough that some submits end unknown during faults."""
PAUSE_AFTER_ERROR_S = 0.2
SLEEP_AGENTS = ("sleep", "sleep_thread", "sleep_process")
"""The same sleep run on the node's loop, in its thread pool and in a worker process
(``raftmesh.chaos.agents``, loaded by every chaos node)."""
AGENTS_MODULE = "raftmesh.chaos.agents"
LARGE_INPUT_SHARE = 0.1
"""Share of runs with 1-3 ``echo`` tasks carrying large non-ASCII text: their submits and
completions are log entries far above pysyncobj's batch size (which once wedged a cluster)."""
URGENT_SHARE = 0.25
"""With an urgent priority (chaos ``--preempt-priority``): share of runs submitted at it."""
DEAD_LETTER_SHARE = 0.2
"""Share of jobs with a ``doomed`` task (fails attempts 1 and 2 with one retry): a dead letter."""
DOOMED = "doomed"
DOOMED_AGENT = "fail_breaker"
"""``fail`` with a breaker that opens on one failure (``raftmesh.chaos.agents``)."""
COST_UNIT = 0.125
"""Sum tasks report cost in eighths: exact in binary, so sums compare exactly in any order."""
WORKFLOW_SHARE = 0.3
"""Share of jobs that are a workflow shape (``make_workflow_job``) instead of a plain DAG."""
WORKFLOW_KINDS = (("flow", 0.5), ("saga", 0.25), ("budget", 0.25))
WorkflowKind = Literal["flow", "saga", "budget"]
EarlyJob = Literal["flow", "saga", "budget", "dead", "urgent", "staged"]
EARLY_JOBS: tuple[EarlyJob, ...] = ("flow", "saga", "budget", "dead", "urgent", "staged")
"""The workload's first jobs, dealt to the clients in turn (client 0's first job, client 1's,
...): one workflow of each kind (the flow's gate approved), a plain job with a dead letter,
one at the urgent priority (with ``urgent_priority``) and a staged submit. A short run on a loaded machine submits
few jobs, and the seeded shares alone once drew no budget job in 47: every kind is still
checked. Fixed by position, so the same seed gives the same jobs."""
_EARLY_WORKFLOWS: dict[EarlyJob, WorkflowKind] = {"flow": "flow", "saga": "saga", "budget": "budget"}
REPLICAS = 3
VOTE_AGENTS = ("slow_sum", "slow_sum", "slow_sum_off")
"""Two replicas give the answer, one a different one: the vote needs the majority."""
FLOW_SLEEP_S = (0.1, 0.6)
APPROVAL_REJECT_SHARE = 0.25
"""Share of flow jobs whose approval gate the client rejects (the run then fails)."""
APPROVAL_TIMEOUT_MS = 45_000
"""A gate no acknowledged call decided (every call's outcome unknown) is rejected by its
timeout, so the run still ends before the drain gives up."""
APPROVER = "chaos-approver"
POLL_S = 0.2
STAGED_SHARE = 0.03
"""Share of jobs that are a staged submit (``make_staged_job``): few, as each puts ~0.7 MB of
inputs and as much output through the log (the ``+large`` jobs put ~0.4 MB on average)."""
STAGED_ECHOES = (3, 4)
STAGED_TEXT_CHARS = (150_000, 250_000)
"""ASCII characters in one staged echo's input (under the 256 KiB input limit)."""
STAGED_TOTAL_CHARS = 600_000
"""At least this many in all: over the 512 KiB of inputs that make a submit staged, in 2+ parts."""
LARGE_INPUT_CHARS = (40_000, 85_000)
"""Characters of CJK text (3 bytes each in UTF-8) in one large input: up to ~250 KB, near the limit."""

# Codes the node returns before proposing anything, so the run cannot exist. Every other
# error after the SDK's retries may follow an attempt that was applied: its outcome is unknown.
ONE_CALL_EVERY = 4
"""Every fourth job of a client without an approval gate goes through ``Client.run`` (submit
and result in one ``RunToEnd`` call, or ``SubmitAndWatchRun`` where a node lacks it) instead of ``submit`` then ``wait``."""
_DEFINITE_FAILURES: tuple[type[RaftmeshError], ...] = (InvalidArgument,)
_REFUSED: tuple[type[RaftmeshError], ...] = (*_DEFINITE_FAILURES, FailedPrecondition)
"""An approve call the cluster refused (decided the other way, no gate): applied nothing."""


now_ms = SYSTEM_CLOCK.now_ms
"""The harness's wall clock: the one in ``raftmesh.clock``."""


@dataclass(frozen=True)
class Job:
    """One DAG to submit and the output every task must end with."""

    key: str
    shape: str
    dag: DAG
    expected: dict[str, Any]
    usage: dict[str, tuple[int, int, float]] = field(default_factory=dict)
    """Per task: the usage one attempt reports (sum tasks; exactly one attempt is accepted)."""
    doomed: bool = False
    expect_status: str = "SUCCEEDED"
    workflow: dict[str, Any] = field(default_factory=dict)
    """What the workflow checks need (``make_workflow_job``); empty for a plain job."""
    staged: bool = False
    """Large enough that the node submits it staged (``make_staged_job``)."""


def sum_usage(value: int) -> tuple[int, int, float]:
    """What a sum task of this value reports (no RNG draw: seeds keep their other draws)."""
    return value, 1 + value % 7, COST_UNIT * (value % 5)


def make_job(
    rng: random.Random, key: str, urgent_priority: int | None = None, early: EarlyJob | None = None
) -> Job:
    """A DAG of a mixed shape, with expected outputs computed from the agents' semantics.

    ``early``: ``dead`` or ``urgent`` (``EARLY_JOBS``) gives the job a dead letter, or the urgent
    priority, whatever its draw says; every RNG draws the same either way.

    Shapes: a chain of 3-6 ``sum`` tasks, or a 1 -> k -> 1 fan-out/fan-in of ``sum`` with
    k in 3-8. Each may get 1-2 ``sleep`` tasks (0.2-1.0 s, so attempts are in flight when
    faults land) as extra dependencies of ``sum`` tasks (their outputs are maps, which
    ``sum`` ignores; each in an isolation mode drawn from ``SLEEP_AGENTS``), and a ``fail`` task that fails its first attempt (retries 2). A seeded
    ``LARGE_INPUT_SHARE`` of jobs also get ``echo`` tasks with large non-ASCII inputs; that
    choice comes from an RNG of its own (seeded by ``key``), so the other draws are unchanged.
    """
    dag = DAG(f"chaos {key}")
    expected: dict[str, Any] = {}
    sums: list[str] = []

    usage: dict[str, tuple[int, int, float]] = {}

    def add_sum(tid: str, deps: Sequence[str]) -> None:
        value = rng.randint(0, SUM_VALUE_MAX)
        u = usage[tid] = sum_usage(value)
        report = {"tokens_in": u[0], "tokens_out": u[1], "cost": u[2]}
        dag.task(tid, "sum", input={"value": value, "usage": report}, deps=list(deps))
        expected[tid] = value + sum(expected[d] for d in deps if isinstance(expected[d], int))
        sums.append(tid)

    if rng.random() < 0.5:
        shape = "chain"
        length = rng.randint(3, 6)
        for i in range(length):
            add_sum(f"c{i}", [f"c{i - 1}"] if i else [])
    else:
        width = rng.randint(3, 8)
        shape = f"fan{width}"
        add_sum("src", [])
        for i in range(width):
            add_sum(f"m{i}", ["src"])
        add_sum("sink", [f"m{i}" for i in range(width)])
    extras: list[str] = []
    isolation = random.Random(f"{key}-isolation")  # its own RNG: the other draws stay unchanged
    for i in range(rng.randint(1, 2)):
        seconds = round(rng.uniform(SLEEP_S_MIN, SLEEP_S_MAX), 2)
        tid = f"sleep{i}"
        dag.task(tid, isolation.choice(SLEEP_AGENTS), input={"seconds": seconds})
        expected[tid] = {"seconds": seconds}
        extras.append(tid)
    if rng.random() < 0.5:
        dag.task("flaky", "fail", input={"times": 1}, retries=2)
        expected["flaky"] = {"times": 1}
        extras.append("flaky")
        shape += "+fail"
    large = random.Random(f"{key}-large")
    if large.random() < LARGE_INPUT_SHARE:
        for i in range(large.randint(1, 3)):
            text = "".join(
                map(chr, large.choices(range(0x4E00, 0x9FA0), k=large.randint(*LARGE_INPUT_CHARS)))
            )
            tid = f"large{i}"
            dag.task(tid, "echo", input={"text": text})
            expected[tid] = {"text": text}
            extras.append(tid)
        shape += "+large"
    # Hang each extra under a random sum task that is not a root (roots keep the shape's head).
    for tid in extras:
        host = rng.choice(sums[1:])
        dag.tasks[host] = dataclasses.replace(dag.tasks[host], deps=(*dag.tasks[host].deps, tid))
    dead = random.Random(f"{key}-dead")  # its own RNG: the draws above stay what they were
    doomed = dead.random() < DEAD_LETTER_SHARE or early == "dead"
    if doomed:
        dag.task(DOOMED, DOOMED_AGENT, input={"times": 2}, retries=1)
        expected[DOOMED] = {"times": 2}
        host = dead.choice(sums[1:])
        dag.tasks[host] = dataclasses.replace(dag.tasks[host], deps=(*dag.tasks[host].deps, DOOMED))
        shape += "+dead"
    urgent = random.Random(f"{key}-urgent").random() < URGENT_SHARE or early == "urgent"
    if urgent_priority is not None and urgent:
        dag.priority = urgent_priority  # every task's default: it preempts the others' attempts
        shape += "+urgent"
    return Job(key, shape, dag, expected, usage, doomed)


def make_workflow_job(
    rng: random.Random, key: str, kind: WorkflowKind | None = None, approve: bool = False
) -> Job:
    """A workflow shape, with what the checker must find (``Job.workflow``).

    ``kind``: that shape instead of the drawn one; ``approve``: a flow's gate is approved
    whatever its draw says (``EARLY_JOBS``). The RNG draws the same either way.

    - ``flow``: ``w0`` -> ``spawn`` (a ``spawner`` that spawns 2-4 ``sum`` tasks with wait=True)
      -> ``after``; ``w0`` -> ``vote`` (3 replicas, fusion vote, one of them the dissenting
      ``slow_sum_off``); ``w0`` -> ``items`` (a list) -> ``each`` (a map of ``item_sum`` over
      it, 2 at a time: each instance's output is in ``expected``); ``w0`` -> ``gate`` (an
      approval gate the client decides: approved it SUCCEEDS, rejected, a seeded
      ``APPROVAL_REJECT_SHARE``, the run FAILS); all -> ``end``.
    - ``saga``: ``s1`` -> ``s2`` (each compensated by ``undo_once``) -> ``s3`` (fails for good):
      ends COMPENSATED, ``s2`` undone before ``s1``.
    - ``budget``: ``src`` -> 3-5 ``spend`` tasks in parallel -> ``sink``, with a ``max_cost``
      above ``src``'s cost and at most the fan's: the fan always reaches it, so the run ends
      FAILED with reason BUDGET_EXCEEDED and ``sink`` never starts.
    """
    r = rng.random()
    drawn = WORKFLOW_KINDS[-1][0]
    for name, share in WORKFLOW_KINDS:
        if r < share:
            drawn = name
            break
        r -= share
    which = kind or drawn
    dag = DAG(f"chaos {key} {which}")
    expected: dict[str, Any] = {}
    usage: dict[str, tuple[int, int, float]] = {}
    wf: dict[str, Any] = {"kind": which}

    def seconds() -> float:
        return round(rng.uniform(*FLOW_SLEEP_S), 2)

    if which == "flow":
        v0 = rng.randint(0, SUM_VALUE_MAX)
        dag.task("w0", "sum", input={"value": v0})
        expected["w0"] = v0
        specs = []
        outputs: list[int] = []
        for i in range(rng.randint(2, 4)):
            deps = sorted(rng.sample(range(i), rng.randint(0, min(i, 2))))
            value = rng.randint(0, SUM_VALUE_MAX)
            specs.append({"value": value, "deps": deps})
            outputs.append(value + sum(outputs[d] for d in deps))
        dag.task("spawn", "spawner", input={"seconds": seconds(), "tasks": specs}, deps=["w0"], retries=2)
        va = rng.randint(0, SUM_VALUE_MAX)
        dag.task("after", "sum", input={"value": va}, deps=["spawn"])  # the spawner's output is a map
        expected["after"] = va
        agents = list(VOTE_AGENTS)
        rng.shuffle(agents)
        vv = rng.randint(0, SUM_VALUE_MAX)
        dag.task(
            "vote",
            "slow_sum",
            input={"value": vv, "seconds": seconds()},
            deps=["w0"],
            retries=2,
            replicas=REPLICAS,
            fusion="vote",
            agents=agents,
        )
        items = [rng.randint(0, SUM_VALUE_MAX) for _ in range(rng.randint(2, 4))]
        dag.task("items", "echo", input=items, deps=["w0"])
        vm = rng.randint(0, SUM_VALUE_MAX)
        dag.task("each", "item_sum", input={"value": vm}, map="items", max_parallel=2)
        expected["items"] = items
        expected["each"] = [vm + it for it in items]
        expected.update({f"each[{i}]": vm + it for i, it in enumerate(items)})
        vg = rng.randint(0, SUM_VALUE_MAX)
        reject = rng.random() < APPROVAL_REJECT_SHARE and not approve
        approval = {"prompt": f"chaos {key}", "timeout_ms": APPROVAL_TIMEOUT_MS, "on_timeout": "reject"}
        dag.task("gate", "sum", input={"value": vg}, deps=["w0"], approval=approval)
        ve = rng.randint(0, SUM_VALUE_MAX)
        # The fused output is a map and the map's a list: ``end`` adds only after's and gate's numbers.
        dag.task("end", "sum", input={"value": ve}, deps=["after", "vote", "gate", "each"])
        if not reject:
            expected["gate"] = vg + v0
            expected["end"] = ve + va + vg + v0
        wf["spawn"] = {"task": "spawn", "outputs": outputs}
        wf["vote"] = {"task": "vote", "answer": vv + v0, "agents": agents}
        wf["approval"] = {"task": "gate", "reject": reject}
        wf["map"] = {"task": "each", "items": len(items)}
        shape = "workflow:flow" + ("+rejected" if reject else "")
        status = "FAILED" if reject else "SUCCEEDED"
        return Job(key, shape, dag, expected, usage, expect_status=status, workflow=wf)
    if which == "saga":
        v1, v2 = rng.randint(0, SUM_VALUE_MAX), rng.randint(0, SUM_VALUE_MAX)
        undo = {"agent": "undo_once", "input": {"key": key}}
        dag.task("s1", "sum", input={"value": v1}, retries=2, compensate=undo)
        dag.task("s2", "sum", input={"value": v2}, deps=["s1"], retries=2, compensate=undo)
        dag.task("s3", "fail", input={"times": 1000}, deps=["s2"], retries=0)
        expected.update(s1=v1, s2=v1 + v2)
        wf["saga"] = {"steps": ["s1", "s2"], "fails": "s3"}
        return Job(key, "workflow:saga", dag, expected, usage, expect_status="COMPENSATED", workflow=wf)
    width = rng.randint(3, 5)

    def add_spend(tid: str, deps: Sequence[str], units: int) -> None:
        u = usage[tid] = (units, 1, COST_UNIT * units)
        report = {"tokens_in": u[0], "tokens_out": u[1], "cost": u[2]}
        value = rng.randint(0, SUM_VALUE_MAX)
        dag.task(tid, "spend", input={"value": value, "seconds": seconds(), "usage": report}, deps=list(deps))
        expected[tid] = value

    add_spend("src", [], rng.randint(1, 4))
    fan = [f"f{i}" for i in range(width)]
    fan_units = [rng.randint(1, 4) for _ in fan]
    for tid, units in zip(fan, fan_units, strict=True):
        add_spend(tid, ["src"], units)
    add_spend("sink", fan, rng.randint(1, 4))
    max_cost = usage["src"][2] + COST_UNIT * rng.randint(1, sum(fan_units))
    dag.budget = {"max_cost": max_cost}
    wf["budget"] = {
        "max_cost": max_cost,
        # What can be in flight at once: the fan, or src or sink alone.
        "bound": max(COST_UNIT * sum(fan_units), usage["src"][2], usage["sink"][2]),
        "never": "sink",
    }
    return Job(key, "workflow:budget", dag, expected, usage, expect_status="FAILED", workflow=wf)


def make_staged_job(rng: random.Random, key: str) -> Job:
    """A run the node submits staged, cheap enough for the chaos machine: ``e0``.. (3-4 ``echo``
    tasks, each input 150-250 K ASCII characters, 600 K at least in all: over the 512 KiB that
    make a submit staged, so it takes 2+ entries) and ``total``, a ``sum`` depending on every
    echo (their outputs are maps, which it ignores), which goes in the last part. Each echo's
    output is its input: the run ends SUCCEEDED with every input whole."""
    dag = DAG(f"chaos {key} staged")
    expected: dict[str, Any] = {}
    n = rng.randint(*STAGED_ECHOES)
    least = -(-STAGED_TOTAL_CHARS // n)
    echoes = [f"e{i}" for i in range(n)]
    for tid in echoes:
        chars = max(rng.randint(*STAGED_TEXT_CHARS), least)
        text = rng.randbytes(chars // 2).hex()
        dag.task(tid, "echo", input={"text": text})
        expected[tid] = {"text": text}
    value = rng.randint(0, SUM_VALUE_MAX)
    u = sum_usage(value)
    report = {"tokens_in": u[0], "tokens_out": u[1], "cost": u[2]}
    dag.task("total", "sum", input={"value": value, "usage": report}, deps=echoes)
    expected["total"] = value
    return Job(key, f"staged{n}", dag, expected, {"total": u}, staged=True)


def next_job(
    rng: random.Random, key: str, urgent_priority: int | None = None, early: EarlyJob | None = None
) -> Job:
    """The client's next job: the plain one its RNG draws, or (a seeded share) a workflow or a
    staged submit; ``early``: that kind of job (``EARLY_JOBS``), a flow approved."""
    job = make_job(rng, key, urgent_priority, early)
    wf = random.Random(f"{key}-workflow")  # its own RNG: the client's draws stay what they were
    drawn = wf.random() < WORKFLOW_SHARE
    forced = _EARLY_WORKFLOWS.get(early) if early is not None else None
    if forced is not None or (drawn and early is None):
        return make_workflow_job(wf, key, forced, approve=forced is not None)
    staged = random.Random(f"{key}-staged")  # its own RNG too
    if early == "staged" or (staged.random() < STAGED_SHARE and early is None):
        return make_staged_job(staged, key)
    return job


@dataclass
class RetryCall:
    """One ``retry`` of a dead letter as the client saw it."""

    request_id: str
    call_ms: int
    return_ms: int = 0
    outcome: Outcome = "unknown"
    requeued: bool = False
    error_code: str = ""

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class ApproveCall:
    """One ``approve`` of the flow's gate as the client saw it."""

    request_id: str
    call_ms: int
    return_ms: int = 0
    outcome: Outcome = "unknown"
    """ok: answered; failed: refused (FAILED_PRECONDITION: decided the other way, no gate); unknown."""
    applied: bool = False
    decision: str = ""
    gate: int = 0
    error_code: str = ""

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class Operation:
    """One submit as the client saw it, then the run's state when its wait ended."""

    client: int
    index: int
    key: str
    shape: str
    tasks: int
    expected: dict[str, Any]
    call_ms: int
    return_ms: int = 0
    outcome: Outcome = "unknown"
    run_id: str = ""
    error_code: str = ""
    error: str = ""
    wait_status: str = ""
    """The run's status when the client stopped waiting ("" if it never waited)."""
    wait_error: str = ""
    usage: dict[str, tuple[int, int, float]] = field(default_factory=dict)
    """Per task: the usage its one accepted attempt reported (see ``Job.usage``)."""
    doomed: bool = False
    retries: list[RetryCall] = field(default_factory=list)
    expect_status: str = "SUCCEEDED"
    workflow: dict[str, Any] = field(default_factory=dict)
    approvals: list[ApproveCall] = field(default_factory=list)
    driver: Driver = "sync"
    one_call: bool = False
    """Submitted and waited for in one call (``Client.run``: ``RunToEnd``)."""
    """The client kind that made every call of this operation: ``raftmesh.Client`` or ``raftmesh.aio.Client``."""
    staged: bool = False
    """A staged submit's job (``Job.staged``): the checker's ``STAGED`` invariant judges it."""

    @property
    def retry_acknowledged(self) -> bool:
        """A retry call came back OK (requeued, or already requeued): the requeue must be in the log."""
        return any(r.outcome == "ok" for r in self.retries)

    def to_json(self) -> dict[str, Any]:
        return {
            "driver": self.driver,
            "doomed": self.doomed,
            "staged": self.staged,
            "workflow": self.workflow,
            "approvals": [a.to_json() for a in self.approvals],
            "retries": [r.to_json() for r in self.retries],
            "client": self.client,
            "index": self.index,
            "key": self.key,
            "shape": self.shape,
            "tasks": self.tasks,
            "call_ms": self.call_ms,
            "return_ms": self.return_ms,
            "outcome": self.outcome,
            "run_id": self.run_id,
            "error_code": self.error_code,
            "error": self.error,
            "wait_status": self.wait_status,
            "wait_error": self.wait_error,
        }


class AioCalls:
    """The calls a DAG client makes, each awaited by a ``raftmesh.aio.Client`` on this thread's
    own event loop (a blocking face, so both client kinds go through one client loop: the
    checker then holds them to the same invariants). Its channels live on that loop."""

    def __init__(
        self, addresses: list[str], retry_deadline_s: float, credentials: Credentials | None
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._sdk = aio.Client(addresses, retry_deadline_s=retry_deadline_s, credentials=credentials)

    def _await(self, call: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(call)

    def submit(self, dag: DAG, *, idempotency_key: str) -> str:
        return self._await(self._sdk.submit(dag, idempotency_key=idempotency_key))

    def run(self, dag: DAG, *, idempotency_key: str, timeout_s: float) -> RunInfo:
        return self._await(self._sdk.run(dag, idempotency_key=idempotency_key, timeout_s=timeout_s))

    def get(self, run_id: str) -> RunInfo:
        return self._await(self._sdk.get(run_id))

    def wait(self, run_id: str, *, timeout_s: float) -> RunInfo:
        return self._await(self._sdk.wait(run_id, timeout_s=timeout_s))

    def approve(
        self, run_id: str, task_id: str, *, reject: bool, by: str, comment: str, request_id: str
    ) -> DecisionInfo:
        return self._await(
            self._sdk.approve(run_id, task_id, reject=reject, by=by, comment=comment, request_id=request_id)
        )

    def retry(self, run_id: str, task_id: str, *, attempt: int, request_id: str) -> RetryInfo:
        return self._await(self._sdk.retry(run_id, task_id, attempt=attempt, request_id=request_id))

    def __enter__(self) -> AioCalls:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self._await(self._sdk.close())
        finally:
            self._loop.close()


class ClientThreads:
    """``clients`` threads each running ``_client_loop(c)`` until asked to stop (all workloads)."""

    THREAD_PREFIX = "chaos-client"
    clients: int
    _stop: threading.Event
    _threads: list[threading.Thread]

    def _init_threads(self) -> None:
        self._stop = threading.Event()
        self._threads = []

    def _client_loop(self, c: int) -> None:
        raise NotImplementedError

    def start(self) -> None:
        for c in range(self.clients):
            t = threading.Thread(
                target=self._client_loop, args=(c,), name=f"{self.THREAD_PREFIX}-{c}", daemon=True
            )
            self._threads.append(t)
            t.start()

    def request_stop(self) -> None:
        """Ask every client to stop after its current call, without waiting (see ``stop``)."""
        self._stop.set()

    def stop(self, timeout_s: float = 30.0) -> list[str]:
        """Ask every client to stop after its current call; returns the threads still running."""
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return [t.name for t in self._threads if t.is_alive()]


@dataclass
class Workload(ClientThreads):
    """``clients`` closed-loop threads against ``addresses``; ``start()``, then ``stop()``.

    Operations are appended to ``operations`` (under a lock) as they are made, so a
    crash of the harness still leaves the history so far.
    """

    addresses: list[str]
    seed: int
    clients: int = 4
    retry_deadline_s: float = RETRY_DEADLINE_S
    wait_timeout_s: float = WAIT_TIMEOUT_S
    clock_ms: Callable[[], int] = now_ms
    operations: list[Operation] = field(default_factory=list)
    urgent_priority: int | None = None
    """A share of the runs get this priority (``URGENT_SHARE``); None: every run at 0."""
    credentials: Credentials | None = None
    """TLS and token of every call (``--secure``); None: plaintext, no token."""
    aio_clients: int = 0
    """The last this many clients drive ``raftmesh.aio.Client`` (``AioCalls``), the others ``raftmesh.Client``."""

    def __post_init__(self) -> None:
        self._init_threads()
        self._lock = threading.Lock()

    def driver_of(self, client: int) -> Driver:
        return "aio" if client >= self.clients - self.aio_clients else "sync"

    def snapshot(self) -> list[Operation]:
        with self._lock:
            return list(self.operations)

    def jobs(self, client: int) -> Iterator[Job]:
        """Client ``client``'s jobs in order, from its seeded RNG (``EARLY_JOBS`` dealt first)."""
        rng = random.Random(f"{self.seed}-client-{client}")
        for i in itertools.count():
            turn = client + self.clients * i
            early = EARLY_JOBS[turn] if turn < len(EARLY_JOBS) else None
            yield next_job(rng, f"chaos-{self.seed}-{client}-{i}", self.urgent_priority, early)

    def _client_loop(self, client: int) -> None:
        jobs = self.jobs(client)
        driver = self.driver_of(client)
        # Each thread has its own client: failover state is per client, as with real users.
        sdk: Client | AioCalls
        if driver == "aio":
            sdk = AioCalls(self.addresses, self.retry_deadline_s, self.credentials)
        else:
            sdk = Client(self.addresses, retry_deadline_s=self.retry_deadline_s, credentials=self.credentials)
        with sdk:
            i = 0
            while not self._stop.is_set():
                job = next(jobs)
                op = Operation(
                    client, i, job.key, job.shape, len(job.dag.tasks), job.expected, self.clock_ms()
                )
                op.usage, op.doomed = job.usage, job.doomed
                op.expect_status, op.workflow, op.driver = job.expect_status, job.workflow, driver
                op.staged = job.staged
                with self._lock:
                    self.operations.append(op)
                if i % ONE_CALL_EVERY == ONE_CALL_EVERY - 1 and "approval" not in op.workflow:
                    self._run(sdk, job, op)
                else:
                    self._submit(sdk, job, op)
                if op.outcome == "ok":
                    if "approval" in op.workflow:
                        self._decide(sdk, op)
                    if not op.one_call:
                        self._wait(sdk, op)
                    if op.doomed and op.wait_status == "FAILED":
                        self._retry_dead_letter(sdk, op)
                else:
                    self._stop.wait(PAUSE_AFTER_ERROR_S)  # back off a little, as a real client would
                i += 1

    def _submit(self, sdk: Client | AioCalls, job: Job, op: Operation) -> None:
        try:
            op.run_id = sdk.submit(job.dag, idempotency_key=job.key)
            op.outcome = "ok"
        except _DEFINITE_FAILURES as exc:
            op.outcome, op.error_code, op.error = "failed", exc.code, exc.message
        except RaftmeshError as exc:
            op.outcome, op.error_code, op.error = "unknown", exc.code, exc.message
        except Exception as exc:  # a transport error the SDK did not translate: may have been applied
            op.outcome, op.error_code, op.error = "unknown", type(exc).__name__, str(exc)
        finally:
            op.return_ms = self.clock_ms()

    def _run(self, sdk: Client | AioCalls, job: Job, op: Operation) -> None:
        """Submit and wait in one call (``Client.run``): a reconnect before the run's id is known
        submits again with the same key, after it watches the run. A call that ends in an error
        may have created the run (its outcome is unknown), unless the submit itself was refused."""
        op.one_call = True
        try:
            run = sdk.run(job.dag, idempotency_key=job.key, timeout_s=self.wait_timeout_s)
            op.run_id, op.outcome, op.wait_status = run.run_id, "ok", run.status
        except _DEFINITE_FAILURES as exc:
            op.outcome, op.error_code, op.error = "failed", exc.code, exc.message
        except RaftmeshError as exc:
            op.outcome, op.error_code, op.error = "unknown", exc.code, exc.message
        except Exception as exc:
            op.outcome, op.error_code, op.error = "unknown", type(exc).__name__, str(exc)
        finally:
            op.return_ms = self.clock_ms()

    def _wait(self, sdk: Client | AioCalls, op: Operation) -> None:
        try:
            op.wait_status = sdk.wait(op.run_id, timeout_s=self.wait_timeout_s).status
        except DeadlineExceeded as exc:
            op.wait_error = f"wait timed out: {exc.message}"
        except RaftmeshError as exc:
            op.wait_error = f"{exc.code}: {exc.message}"
        except Exception as exc:
            op.wait_error = f"{type(exc).__name__}: {exc}"

    def _decide(self, sdk: Client | AioCalls, op: Operation) -> None:
        """Once the gate is open, decide it as the job says: a call, the same call again (one
        request id), a fresh call; each answer is recorded (``ApproveCall``).

        A stop does not end the wait for the gate: an undecided gate would hold its run (and
        the drain after the workloads) until the gate's own timeout, ``APPROVAL_TIMEOUT_MS``."""
        w = op.workflow["approval"]
        deadline = time.monotonic() + self.wait_timeout_s
        while time.monotonic() < deadline:
            try:
                t = sdk.get(op.run_id).tasks.get(w["task"])
            except RaftmeshError:
                t = None
            if t is not None and t.gate is not None and not t.gate.decision:
                break
            if t is not None and t.status not in ("PENDING", "WAITING_APPROVAL"):
                return  # the run failed before the gate opened, or its timeout decided it
            time.sleep(POLL_S)  # the poll interval (a stop must not end this wait: see above)
        else:
            return
        rid = f"{op.key}-approve"
        for request_id in (rid, rid, f"{rid}-again"):
            call = ApproveCall(request_id, self.clock_ms())
            op.approvals.append(call)
            try:
                d = sdk.approve(
                    op.run_id,
                    w["task"],
                    reject=w["reject"],
                    by=APPROVER,
                    comment=op.key,
                    request_id=request_id,
                )
                call.outcome, call.applied, call.decision, call.gate = "ok", d.applied, d.decision, d.gate
            except _REFUSED as exc:
                call.outcome, call.error_code = "failed", exc.code
            except RaftmeshError as exc:
                call.outcome, call.error_code = "unknown", exc.code
            except Exception as exc:
                call.outcome, call.error_code = "unknown", type(exc).__name__
            finally:
                call.return_ms = self.clock_ms()

    def _retry_dead_letter(self, sdk: Client | AioCalls, op: Operation) -> None:
        """Retry the doomed task: a call, the same call again (one request id), a fresh call."""
        try:
            t = sdk.get(op.run_id).tasks.get(DOOMED)
        except RaftmeshError:
            return
        if t is None or t.status != "FAILED":
            return  # node losses do not use retries: the task may have succeeded, or another failed
        rid = f"{op.key}-retry"
        for request_id in (rid, rid, f"{rid}-again"):
            call = RetryCall(request_id, self.clock_ms())
            op.retries.append(call)
            try:
                got = sdk.retry(op.run_id, DOOMED, attempt=t.attempt, request_id=request_id)
                call.outcome, call.requeued = "ok", got.requeued
            except _DEFINITE_FAILURES as exc:
                call.outcome, call.error_code = "failed", exc.code
            except RaftmeshError as exc:
                call.outcome, call.error_code = "unknown", exc.code
            except Exception as exc:
                call.outcome, call.error_code = "unknown", type(exc).__name__
            finally:
                call.return_ms = self.clock_ms()
        self._wait(sdk, op)
