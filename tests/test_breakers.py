"""Circuit breakers per (agent type, node), in the pure state machine.

They move only on committed outcomes (completions, failures, timeouts), never on lost or
fenced attempts; placement and ``apply`` avoid an open breaker and allow one probe when
it is half-open; the state survives snapshot and restore. A seeded simulation checks the
same across leader failovers (a new leader plans from its own, possibly restored, replica).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

import msgpack
import pytest

from raftmesh.consensus import (
    Assign,
    Assignment,
    ClusterState,
    Code,
    Command,
    Complete,
    Completion,
    Fail,
    Failure,
    RegisterNode,
    Result,
    StateMachine,
    SubmitRun,
    TaskSpec,
    TaskStatus,
    Tick,
    encode_batch,
    limits,
)
from raftmesh.consensus.breakers import BreakerState, state_of
from raftmesh.consensus.commands import AgentOffer, NodeDown, decode_command, encode_command
from raftmesh.consensus.placement import plan_assignments, unfit
from raftmesh.consensus.results import AssignResult, ReportResult
from raftmesh.consensus.state import Breaker

T0 = 1_000_000
COOLDOWN = 5_000


class Machine:
    """A state machine with helpers; every change is checked against a snapshot round trip."""

    def __init__(self) -> None:
        self.sm = StateMachine()
        self.ts = T0
        self._n = 0

    @property
    def st(self) -> ClusterState:
        return self.sm.state

    def rid(self) -> str:
        self._n += 1
        return f"q{self._n}"

    def apply(self, cmd: Command) -> Result:
        res, _ = self.sm.apply(cmd)
        copy = ClusterState.decode(self.st.encode())
        assert copy.digest() == self.st.digest()
        assert copy.index_snapshot() == self.st.index_snapshot()
        return res

    def ok(self, cmd: Command) -> Result:
        res = self.apply(cmd)
        assert res.ok, res
        return res

    def register(self, node: str, *offers: AgentOffer, slots: int = 4, inc: str = "i1") -> None:
        self.ok(
            RegisterNode(
                self.rid(),
                self.ts,
                node,
                f"{node}:1",
                f"{node}:2",
                tuple(o.name for o in offers),
                slots,
                inc,
                offers,
            )
        )

    def submit(self, run_id: str, *tasks: TaskSpec) -> SubmitRun:
        return SubmitRun(self.rid(), self.ts, run_id, "", tasks, 0, run_id, "t")

    def start(self, run_id: str, task_id: str, node: str) -> Assign:
        t = self.st.task(run_id, task_id)
        assert t is not None
        return Assign(self.rid(), self.ts, (Assignment(run_id, task_id, node, t.attempt + 1),))

    def finish(self, run_id: str, task_id: str, ok: bool) -> Result:
        t = self.st.task(run_id, task_id)
        assert t is not None and t.status is TaskStatus.RUNNING
        if ok:
            return self.ok(
                Complete(self.rid(), self.ts, t.node, (Completion(run_id, task_id, t.attempt, t.token, 1),))
            )
        return self.ok(
            Fail(self.rid(), self.ts, t.node, (Failure(run_id, task_id, t.attempt, t.token, "boom"),))
        )

    def breaker(self, node: str, agent: str = "work") -> Breaker | None:
        return self.st.members[node].breakers.get(agent)

    def bstate(self, node: str, agent: str = "work") -> BreakerState:
        return state_of(self.breaker(node, agent), self.ts)


def work(failures: int = 3, cooldown_ms: int = COOLDOWN, **kw: object) -> AgentOffer:
    return AgentOffer("work", breaker_failures=failures, breaker_cooldown_ms=cooldown_ms, **kw)


@pytest.fixture
def m() -> Machine:
    mm = Machine()
    mm.register("n1", work())
    mm.register("n2", work())
    return mm


def fail_on(m: Machine, node: str, times: int, run_prefix: str = "f") -> None:
    for i in range(times):
        rid = f"{run_prefix}{node}{i}"
        m.ok(m.submit(rid, TaskSpec("t", "work")))
        m.ok(m.start(rid, "t", node))
        m.finish(rid, "t", ok=False)


def test_opens_after_consecutive_failures_and_a_success_resets_the_streak(m: Machine) -> None:
    fail_on(m, "n1", 2)
    assert m.breaker("n1") == Breaker(2, 0) and m.bstate("n1") is BreakerState.CLOSED
    m.ok(m.submit("ok", TaskSpec("t", "work")))
    m.ok(m.start("ok", "t", "n1"))
    m.finish("ok", "t", ok=True)
    assert m.breaker("n1") is None  # a success clears the record: closed and clean
    fail_on(m, "n1", 3, "g")
    b = m.breaker("n1")
    assert b == Breaker(3, m.ts + COOLDOWN) and m.bstate("n1") is BreakerState.OPEN
    assert m.breaker("n2") is None  # per node


def test_placement_and_apply_avoid_an_open_breaker_then_allow_exactly_one_probe(m: Machine) -> None:
    fail_on(m, "n1", 3)
    m.ok(m.submit("r", TaskSpec("a", "work"), TaskSpec("b", "work"), TaskSpec("c", "work")))
    plan = plan_assignments(m.st, m.ts, {})
    assert {a.node_id for a in plan} == {"n2"}
    res = m.apply(m.start("r", "a", "n1"))
    assert res.code is Code.FAILED_PRECONDITION and "open until" in res.message
    m.ts += COOLDOWN
    assert m.bstate("n1") is BreakerState.HALF_OPEN
    plan = plan_assignments(m.st, m.ts, {})
    assert [a.node_id for a in plan].count("n1") == 1  # one probe, the rest to n2
    # apply enforces it too: two items for the half-open node in one command
    items = tuple(Assignment("r", t, "n1", 1) for t in ("a", "b"))
    res = m.ok(Assign(m.rid(), m.ts, items))
    assert isinstance(res, AssignResult) and res.accepted == 1
    assert "probe is running" in res.rejected[0].reason
    assert m.apply(m.start("r", "c", "n1")).code is Code.FAILED_PRECONDITION


def test_a_successful_probe_closes_and_a_failed_one_reopens(m: Machine) -> None:
    fail_on(m, "n1", 3)
    m.ts += COOLDOWN
    fail_on(m, "n1", 1, "probe")  # the probe fails: open for another cool-down
    assert m.breaker("n1") == Breaker(4, m.ts + COOLDOWN) and m.bstate("n1") is BreakerState.OPEN
    m.ts += COOLDOWN - 1
    assert m.bstate("n1") is BreakerState.OPEN
    m.ts += 1
    m.ok(m.submit("p2", TaskSpec("t", "work")))
    m.ok(m.start("p2", "t", "n1"))
    m.finish("p2", "t", ok=True)
    assert m.breaker("n1") is None and m.bstate("n1") is BreakerState.CLOSED


def test_a_failure_while_open_does_not_extend_the_cool_down(m: Machine) -> None:
    m.ok(m.submit("late", TaskSpec("t", "work")))
    m.ok(m.start("late", "t", "n1"))
    fail_on(m, "n1", 3)
    until = m.breaker("n1").open_until_ms
    m.ts += 10
    m.finish("late", "t", ok=False)  # started before the breaker opened
    assert m.breaker("n1") == Breaker(4, until)


def test_lost_and_fenced_attempts_do_not_count(m: Machine) -> None:
    m.ok(m.submit("r", TaskSpec("a", "work", retries=5)))
    for _ in range(4):  # the node is lost with the attempt, four times
        m.ok(m.start("r", "a", "n1"))
        m.ok(NodeDown(m.rid(), m.ts, "n1", m.st.members["n1"].incarnation, "lost"))
        m.register("n1", work(), inc=f"i{m.rid()}")
    m.ok(m.start("r", "a", "n1"))
    t = m.st.task("r", "a")
    assert t is not None
    m.register("n1", work(), inc="restarted")  # a restart loses the attempt too
    stale = Fail(m.rid(), m.ts, "n1", (Failure("r", "a", t.attempt, t.token, "late"),))
    assert m.apply(stale).code is Code.ABORTED
    assert m.breaker("n1") is None


def test_timeouts_count_as_failures(m: Machine) -> None:
    for i in range(3):
        m.ok(m.submit(f"to{i}", TaskSpec("t", "work", timeout_ms=100)))
        m.ok(m.start(f"to{i}", "t", "n2"))
        m.ts += 100
        m.ok(Tick(m.rid(), m.ts))
    assert m.bstate("n2") is BreakerState.OPEN and m.breaker("n2").failures == 3


def test_the_offering_nodes_own_policy_applies() -> None:
    m = Machine()
    m.register("n1", work(failures=1, cooldown_ms=100))
    m.register("n2", work(failures=0))  # no breaker
    fail_on(m, "n1", 1)
    assert m.breaker("n1") == Breaker(1, m.ts + 100)
    fail_on(m, "n2", 50)
    assert m.breaker("n2") is None and not unfit(m.st, "n2", TaskSpec("x", "work"), m.ts)


def test_breakers_survive_snapshot_restore_and_re_registration(m: Machine) -> None:
    fail_on(m, "n1", 3)
    fail_on(m, "n2", 1)
    data = m.sm.snapshot()
    restored = StateMachine()
    restored.restore(data)
    assert restored.digest() == m.sm.digest()
    assert restored.state.members["n1"].breakers == m.st.members["n1"].breakers
    # the node restarts offering the same type: the breaker stays (it is the node's record)
    m.register("n1", work(), AgentOffer("other"), inc="i2")
    assert m.bstate("n1") is BreakerState.OPEN
    # a type no longer offered takes its breaker with it
    m.register("n2", AgentOffer("other"), inc="i2")
    assert m.st.members["n2"].breakers == {}


def bad_offers() -> list[tuple[AgentOffer, str]]:
    return [
        (AgentOffer("bad name"), "may contain only"),
        (AgentOffer("w", capabilities=("gpu", "gpu")), "twice"),
        (AgentOffer("w", capabilities=("has space",)), "capability"),
        (AgentOffer("w", capabilities=tuple(f"c{i}" for i in range(limits.MAX_CAPABILITIES + 1))), "limit"),
        (AgentOffer("w", concurrency=-1), "concurrency"),
        (AgentOffer("w", concurrency=limits.MAX_AGENT_CONCURRENCY + 1), "concurrency"),
        (AgentOffer("w", breaker_failures=limits.MAX_BREAKER_FAILURES + 1), "breaker_failures"),
        (AgentOffer("w", breaker_cooldown_ms=-5), "breaker_cooldown_ms"),
        (AgentOffer("w", timeout_ms=limits.MAX_TIMEOUT_MS + 1), "timeout_ms"),
        (AgentOffer("w", retries=limits.MAX_RETRIES + 1), "retries"),
    ]


@pytest.mark.parametrize(("offer", "words"), bad_offers())
def test_bad_offers_are_rejected_and_change_nothing(offer: AgentOffer, words: str) -> None:
    m = Machine()
    before = m.sm.digest()
    cmd = RegisterNode(m.rid(), m.ts, "n1", "g", "r", (offer.name,), 4, "i", (offer,))
    res = m.apply(decode_command(encode_command(cmd)))  # through the wire form, as in the log
    assert res.code is Code.INVALID_ARGUMENT and words in res.message, res
    assert m.sm.digest() == before


def test_offers_must_match_agents_and_are_bounded() -> None:
    m = Machine()
    mismatch = RegisterNode(m.rid(), m.ts, "n1", "g", "r", ("a", "b"), 4, "i", (AgentOffer("a"),))
    assert m.apply(mismatch).code is Code.INVALID_ARGUMENT
    twice = RegisterNode(m.rid(), m.ts, "n1", "g", "r", ("a",), 4, "i", (AgentOffer("a"), AgentOffer("a")))
    assert m.apply(twice).code is Code.INVALID_ARGUMENT
    many = tuple(f"a{i}" for i in range(limits.MAX_AGENT_TYPES_PER_NODE + 1))
    assert m.apply(RegisterNode(m.rid(), m.ts, "n1", "g", "r", many, 4, "i")).code is Code.INVALID_ARGUMENT
    slots = RegisterNode(m.rid(), m.ts, "n1", "g", "r", ("a",), limits.MAX_NODE_SLOTS + 1, "i")
    assert m.apply(slots).code is Code.INVALID_ARGUMENT
    assert m.st.members == {}


@pytest.mark.parametrize(
    "offer",
    [["w"], ["w", "gpu", 0, 5, 1, 0, 0], ["w", ["gpu"], 0, 5, 1.5, 0, 0], ["w", ["gpu"], 0, True, 1, 0, 0]],
)
def test_malformed_offers_do_not_decode(offer: list[object]) -> None:
    m = Machine()
    cmd = RegisterNode(m.rid(), m.ts, "n1", "g", "r", ("w",), 4, "i").to_map() | {"offers": [offer]}
    batch = msgpack.packb([cmd], use_bin_type=True)
    results, _ = m.sm.apply_batch(batch)
    assert results[0].code is Code.INVALID_ARGUMENT and "undecodable" in results[0].message
    assert m.st.members == {}


def test_registrations_from_before_offers_still_apply() -> None:
    """A journal written before offers existed replays: each type gets the default offer."""
    m = Machine()
    legacy = RegisterNode(m.rid(), m.ts, "n1", "g", "r", ("echo",), 4, "i")
    assert "offers" not in legacy.to_map()  # the old wire form
    results, _ = m.sm.apply_batch(encode_batch([legacy]))
    assert results[0].ok
    assert m.st.members["n1"].offers == {"echo": AgentOffer("echo")}


# ---- simulation: breakers and placement across leader failovers ----------------------


NODES = ("n0", "n1", "n2", "n3")
STEPS = 400
FAIL_RATE = {"n0": 0.05, "n1": 0.85, "n2": 0.3, "n3": 0.5}
"""Chance an attempt fails, per node: n1 is the broken one."""


def sim_seeds() -> list[int]:
    replay = os.environ.get("RAFTMESH_BREAKER_SEED")
    return [int(s) for s in replay.split(",")] if replay else list(range(8))


@dataclass
class Model:
    """Breakers recomputed from the outside, from committed outcomes only."""

    offers: dict[str, dict[str, AgentOffer]] = field(default_factory=dict)
    breakers: dict[tuple[str, str], Breaker] = field(default_factory=dict)
    transitions: dict[str, int] = field(default_factory=lambda: {"opened": 0, "closed": 0, "reopened": 0})

    def outcome(self, node: str, agent: str, ok: bool, now: int) -> None:
        offer = self.offers.get(node, {}).get(agent)
        if offer is None:
            return
        key = (node, agent)
        b = self.breakers.get(key)
        if ok:
            if b is not None and b.open_until_ms:
                self.transitions["closed"] += 1
            self.breakers.pop(key, None)
            return
        if offer.breaker_failures == 0:
            return
        b = self.breakers.setdefault(key, Breaker())
        b.failures += 1
        if b.open_until_ms and now >= b.open_until_ms:
            b.open_until_ms = max(1, now + offer.breaker_cooldown_ms)
            self.transitions["reopened"] += 1
        elif not b.open_until_ms and b.failures >= offer.breaker_failures:
            b.open_until_ms = max(1, now + offer.breaker_cooldown_ms)
            self.transitions["opened"] += 1

    def state(self) -> dict[tuple[str, str], Breaker]:
        return dict(self.breakers)


def running_attempts(st: ClusterState) -> dict[tuple[str, str], tuple[str, int, int, str]]:
    return {
        (r.run_id, t.spec.id): (t.node, t.attempt, t.token, t.spec.agent)
        for r in st.runs.values()
        for t in r.tasks.values()
        if t.status is TaskStatus.RUNNING
    }


def simulate_failovers(seed: int) -> Model:
    rng = random.Random(seed)
    replicas = [StateMachine() for _ in range(3)]
    applied = [0, 0, 0]
    log: list[Command] = []
    leader = 0
    model = Model()
    now = T0
    n = 0
    stale: list[tuple[str, Failure | Completion]] = []

    def rid() -> str:
        nonlocal n
        n += 1
        return f"s{seed}-{n}"

    def catch_up(i: int) -> None:
        while applied[i] < len(log):
            replicas[i].apply(log[applied[i]])
            applied[i] += 1

    # registration: n0..n3 offer "work" with the breaker policy chosen by the seed; only
    # n0 and n2 offer it with the "gpu" capability; everyone offers "echo".
    for node in NODES:
        caps = ("gpu",) if node in ("n0", "n2") else ()
        offers = (
            AgentOffer("echo"),
            AgentOffer(
                "work",
                caps,
                concurrency=rng.choice((0, 1, 2)),
                breaker_failures=rng.choice((1, 2, 3)),
                breaker_cooldown_ms=rng.choice((200, 500, 1500)),
            ),
        )
        model.offers[node] = {o.name: o for o in offers}
        log.append(
            RegisterNode(rid(), now, node, f"{node}:1", f"{node}:2", ("echo", "work"), 3, "i0", offers)
        )
    for i in range(3):
        catch_up(i)
    runs = 0
    incarnations = dict.fromkeys(NODES, 0)
    for _ in range(STEPS):
        now += rng.choice((10, 50, 100, 200))
        roll = rng.random()
        if roll < 0.04:
            # failover: another replica leads; it may have restarted from a snapshot first
            leader = rng.choice([i for i in range(3) if i != leader])
            if rng.random() < 0.5:
                data = replicas[leader].snapshot()
                replicas[leader] = StateMachine()
                replicas[leader].restore(data)
            catch_up(leader)
            continue
        if roll < 0.07:
            node = rng.choice(NODES)
            incarnations[node] += 1
            offers_ = tuple(model.offers[node].values())
            cmd: Command = RegisterNode(
                rid(),
                now,
                node,
                f"{node}:1",
                f"{node}:2",
                ("echo", "work"),
                3,
                f"i{incarnations[node]}",
                offers_,
            )
        elif roll < 0.25:
            runs += 1
            requires = ("gpu",) if rng.random() < 0.3 else ()
            agent = "work" if rng.random() < 0.85 else "echo"
            spec = TaskSpec("t", agent, retries=rng.choice((0, 2)), timeout_ms=rng.choice((0, 0, 300)))
            if agent == "work":
                spec = TaskSpec(
                    "t", agent, retries=spec.retries, timeout_ms=spec.timeout_ms, requires=requires
                )
            cmd = SubmitRun(rid(), now, f"run{runs}", "", (spec,), 0, "", "sim")
        elif roll < 0.55:
            plan = plan_assignments(replicas[leader].state, now, {})
            if not plan:
                continue
            cmd = Assign(rid(), now, tuple(plan))
        elif roll < 0.62:
            cmd = Tick(rid(), now)
        elif roll < 0.66 and stale:
            # a result from before a failover or a node loss arrives late: fenced
            node, item = stale.pop(rng.randrange(len(stale)))
            cmd = (
                Fail(rid(), now, node, (item,))
                if isinstance(item, Failure)
                else Complete(rid(), now, node, (item,))
            )
        else:
            running = sorted(running_attempts(replicas[leader].state).items())
            if not running:
                continue
            (run_id, task_id), (node, attempt, token, agent) = rng.choice(running)
            if rng.random() < 0.1:
                # the leader loses the node (its attempt is lost, not failed)
                inc = replicas[leader].state.members[node].incarnation
                late: Failure | Completion = (
                    Failure(run_id, task_id, attempt, token, "late")
                    if rng.random() < 0.5
                    else Completion(run_id, task_id, attempt, token, 1)
                )
                stale.append((node, late))
                cmd = NodeDown(rid(), now, node, inc, "sim")
            elif rng.random() < FAIL_RATE[node] and agent == "work":
                cmd = Fail(rid(), now, node, (Failure(run_id, task_id, attempt, token, "flaky"),))
            else:
                cmd = Complete(rid(), now, node, (Completion(run_id, task_id, attempt, token, 1),))
        step_check(replicas[leader], cmd, model)
        log.append(cmd)
        applied[leader] += 1
        if isinstance(cmd, NodeDown):
            # bring the node back as a new incarnation
            node = cmd.node_id
            incarnations[node] += 1
            reg = RegisterNode(
                rid(),
                now,
                node,
                f"{node}:1",
                f"{node}:2",
                ("echo", "work"),
                3,
                f"i{incarnations[node]}",
                tuple(model.offers[node].values()),
            )
            step_check(replicas[leader], reg, model)
            log.append(reg)
            applied[leader] += 1
    for i in range(3):
        catch_up(i)
    digests = {r.digest() for r in replicas}
    assert len(digests) == 1, "replicas diverged"
    st = replicas[0].state
    got = {(node, a): b for node, mem in st.members.items() for a, b in mem.breakers.items()}
    assert got == model.state()
    return model


def step_check(sm: StateMachine, cmd: Command, model: Model) -> None:
    """Apply ``cmd`` on the leader's replica; check placement rules and feed the model."""
    st = sm.state
    before = running_attempts(st)
    type_running: dict[tuple[str, str], int] = {}
    for node, _, _, agent in before.values():
        type_running[(node, agent)] = type_running.get((node, agent), 0) + 1
    now = max(st.time_ms, cmd.ts_ms)
    res, _ = sm.apply(cmd)
    assert res.code is not Code.INTERNAL, res
    after = running_attempts(st)
    started = {k: v for k, v in after.items() if before.get(k) != v}
    ended = {k: v for k, v in before.items() if after.get(k) != v}
    for (run_id, task_id), (node, _, _, agent) in started.items():
        assert isinstance(cmd, Assign)
        t = st.task(run_id, task_id)
        assert t is not None
        mem = st.members[node]
        offer = mem.offers[agent]
        assert set(t.spec.requires) <= set(offer.capabilities), (node, t.spec.requires)
        b = model.breakers.get((node, agent))
        bs = state_of(b, now)
        assert bs is not BreakerState.OPEN, f"{run_id} started on {node} with the breaker open"
        if bs is BreakerState.HALF_OPEN:
            assert type_running.get((node, agent), 0) == 0, "a second attempt on a half-open breaker"
        type_running[(node, agent)] = type_running.get((node, agent), 0) + 1
        if offer.concurrency:
            assert type_running[(node, agent)] <= offer.concurrency
    if isinstance(cmd, (Complete, Fail)) and isinstance(res, ReportResult):
        refused = {(r.run_id, r.task_id) for r in res.rejected}
        for item in cmd.items:
            key = (item.run_id, item.task_id)
            if key in ended and key not in refused:
                model.outcome(ended[key][0], ended[key][3], isinstance(cmd, Complete), st.time_ms)
    elif isinstance(cmd, Tick):
        for node, _, _, agent in ended.values():  # single-task runs: only timeouts end attempts
            model.outcome(node, agent, False, st.time_ms)
    got = {(node, a): b for node, mem in st.members.items() for a, b in mem.breakers.items()}
    assert got == model.state(), (cmd, got, model.state())


@pytest.mark.parametrize("seed", sim_seeds())
def test_breakers_and_placement_hold_across_leader_failovers(seed: int) -> None:
    try:
        model = simulate_failovers(seed)
    except AssertionError as exc:
        raise AssertionError(
            f"breaker simulation seed {seed} failed: {exc}\n"
            f"replay with: RAFTMESH_BREAKER_SEED={seed} pytest tests/test_breakers.py"
        ) from exc
    # the log exercised the interesting paths
    assert model.transitions["opened"] > 0 and model.transitions["closed"] + model.transitions["reopened"] > 0
