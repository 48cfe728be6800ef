"""Actors: ``@raftmesh.actor``, the node's ``ActorHost`` and agents' ``ctx.send/request/publish``.

The first half checks the declaration, the registry, the node's offers and the host's
decisions against hand-built replicated states (no I/O). The second half runs the host
for real: a node in this process (``NodeRuntime`` on its own loop and thread, real Raft,
real router), with messages sent through the node's own router.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

import raftmesh
from raftmesh.agents import ActorContext, AgentDefinitionError, AgentRegistry, load_agents
from raftmesh.agents._actors import MAX_HANDLER_ATTEMPTS, ActorHost, _Worker, state_key
from raftmesh.agents._loader import AgentLoadError
from raftmesh.agents._registry import DuplicateAgentError
from raftmesh.clock import ManualClock
from raftmesh.consensus import limits
from raftmesh.consensus.commands import AckMessage, Activate, Deactivate, Message, SendMessages
from raftmesh.consensus.messages import Activation, Mailbox, Queued, reply_key
from raftmesh.consensus.results import MessagesSent
from raftmesh.consensus.state import ClusterState, Member
from raftmesh.messaging.router import MessageRouter
from raftmesh.node.reads import ReadView
from raftmesh.node.runtime import actor_offers
from tests.test_messages import Mesh
from tests.test_node_units import MachineWriter, reads_of

HERE = os.path.dirname(__file__)
AGENTS = os.path.join(HERE, "actor_agents.py")


# ---- declaration and registry ------------------------------------------------------------


def test_actor_declaration_is_loaded_with_the_module() -> None:
    reg = load_agents([AGENTS], entry_points=False)
    assert {"counter", "relay", "asker", "listener", "flaky", "sleepy"} <= set(reg.actors)
    assert "messenger" in reg.agents and "counter" not in reg.agents
    listener = reg.actors["listener"]
    assert listener.topics == ("news",) and listener.idle_s == 0
    assert reg.actors["sleepy"].idle_s == 0.5
    # ``--agents`` picks task agents; actor types stay offered
    assert set(reg.subset(["messenger"]).actors) == set(reg.actors)
    offers = {o.name: o for o in actor_offers(reg)}
    assert set(offers) == set(reg.actors) and offers["counter"].max_activations == 0


def test_public_names() -> None:
    assert raftmesh.Message is Message
    assert raftmesh.ActorContext is ActorContext
    assert callable(raftmesh.actor)


@pytest.mark.parametrize(
    ("kwargs", "body", "needle"),
    [
        ({}, "def on_message(self, ctx, msg): pass", "async def on_message"),
        ({}, "async def on_message(self, ctx): pass", "async def on_message"),
        (
            {},
            "async def on_message(self, ctx, msg): pass\n    def on_activate(self, ctx): pass",
            "on_activate",
        ),
        (
            {},
            "def __init__(self, x): pass\n    async def on_message(self, ctx, msg): pass",
            "no arguments",
        ),
        ({"topics": "news"}, "async def on_message(self, ctx, msg): pass", "list of topic names"),
        ({"topics": ["bad topic"]}, "async def on_message(self, ctx, msg): pass", "topic"),
        ({"idle_s": -1}, "async def on_message(self, ctx, msg): pass", "idle_s"),
        ({"timeout_s": -1}, "async def on_message(self, ctx, msg): pass", "timeout_s"),
        ({"timeout_s": True}, "async def on_message(self, ctx, msg): pass", "timeout_s"),
        ({"max_activations": 10**9}, "async def on_message(self, ctx, msg): pass", "max_activations"),
        ({"capabilities": "gpu"}, "async def on_message(self, ctx, msg): pass", "capabilities"),
    ],
)
def test_bad_actor_declarations_say_what_to_fix(kwargs: dict[str, Any], body: str, needle: str) -> None:
    ns: dict[str, Any] = {"raftmesh": raftmesh, "kwargs": kwargs}
    src = f"@raftmesh.actor('thing', **kwargs)\nclass Thing:\n    {body}\n"
    with pytest.raises(AgentDefinitionError) as e:
        exec(compile(src, "<actor>", "exec"), ns)
    assert needle in str(e.value) and "@raftmesh.actor('thing')" in str(e.value)


def test_bad_actor_type_name() -> None:
    with pytest.raises(AgentDefinitionError, match="actor type"):
        raftmesh.actor("no/slash")
    with pytest.raises(AgentDefinitionError, match="must be a string"):
        raftmesh.actor(3)  # type: ignore[arg-type]


def test_a_function_is_not_an_actor() -> None:
    with pytest.raises(AgentDefinitionError, match="decorate a class"):

        @raftmesh.actor("fn")
        async def fn(ctx: Any, msg: Any) -> None:
            pass


def test_duplicate_actor_types_name_both_places(tmp_path: Any) -> None:
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    for p in (a, b):
        p.write_text(
            "import raftmesh\n\n@raftmesh.actor('dup')\nclass D:\n    async def on_message(self, ctx, msg):\n"
            "        return 1\n"
        )
    with pytest.raises(AgentLoadError) as e:
        load_agents([str(a), str(b)], entry_points=False)
    assert "actor type 'dup' is declared twice" in str(e.value)
    assert "a.py:3" in str(e.value) and "b.py:3" in str(e.value)
    reg = AgentRegistry()
    from raftmesh.agents._declare import declaration_of

    loaded = load_agents([str(a)], entry_points=False)
    reg.add(loaded.actors["dup"])
    reg.add(loaded.actors["dup"])  # the same class again changes nothing
    assert declaration_of(loaded.actors["dup"].cls) is not None
    with pytest.raises(DuplicateAgentError):
        reg.add(load_agents([str(b)], entry_points=False).actors["dup"])


def test_actor_and_agent_names_are_separate_namespaces(tmp_path: Any) -> None:
    p = tmp_path / "both.py"
    p.write_text(
        "import raftmesh\n\n@raftmesh.actor('same')\nclass A:\n    async def on_message(self, ctx, msg):\n"
        "        return 1\n\n@raftmesh.agent('same')\nasync def same(ctx):\n    return 2\n"
    )
    reg = load_agents([str(p)], entry_points=False)
    assert "same" in reg.actors and "same" in reg.agents


# ---- the host's decisions (hand-built states, no I/O) ---------------------------------------


def _state(*acts: Activation, up: bool = True, incarnation: str = "inc1") -> ClusterState:
    st = ClusterState()
    st.members["n1"] = Member("n1", "g", "r", (), 1, incarnation, up, 0)
    for a in acts:
        st.messages.activations[a.address] = a
    st.messages.rebuild_indexes()
    return st


def _msg(i: str, target: str = "counter/a", priority: int = 0, sent_ms: int = 1_700_000_000_000) -> Message:
    return Message(id=i, sender="client:t", target=target, priority=priority, ttl_ms=60_000, sent_ms=sent_ms)


def _host(st: ClusterState, clock: ManualClock | None = None) -> ActorHost:
    reg = load_agents([AGENTS], entry_points=False)
    reads = ReadView(threading.RLock(), lambda: st)
    clock = clock or ManualClock()
    # The writer is never reached by these tests (decide/accept/_next do no I/O); the router
    # only keeps the dead letters for a flush that never runs here.
    router = MessageRouter("n1", "inc1", reads, None, clock, lambda n: None)  # type: ignore[arg-type]
    return ActorHost("n1", "inc1", reg, reads, None, clock, router, ready=lambda: False)  # type: ignore[arg-type]


def test_decide_starts_this_incarnations_activations_only() -> None:
    st = _state(
        Activation("counter/a", "n1", "inc1", 5, 0, 6000),
        Activation("counter/b", "n1", "old", 3, 0, 6000),  # an earlier process's
        Activation("counter/c", "n2", "x", 4, 0, 6000),  # another node's
        Activation("nosuch/d", "n1", "inc1", 6, 0, 6000),  # a type this node did not load
    )
    plan = _host(st).decide(st)
    assert [a.address for a in plan.start] == ["counter/a"] and plan.stop == []
    assert _host(st).decide(_state(*st.messages.activations.values(), up=False)).start == []


def test_decide_stops_moved_and_restarts_newer_epochs() -> None:
    st = _state(Activation("counter/a", "n1", "inc1", 9, 0, 6000))
    host = _host(st)
    host._workers["counter/a"] = _Worker("counter/a", 5, host._actors["counter"], 0.0)  # an older epoch
    host._workers["counter/z"] = _Worker("counter/z", 2, host._actors["counter"], 0.0)  # gone from the state
    plan = host.decide(st)
    assert sorted(plan.stop) == ["counter/a", "counter/z"]
    assert [(a.address, a.epoch) for a in plan.start] == [("counter/a", 9)]


def test_decide_wakes_workers_with_queued_messages() -> None:
    st = _state(Activation("counter/a", "n1", "inc1", 5, 0, 6000))
    st.messages.mailboxes["counter/a"] = Mailbox("counter/a", OrderedDict({1: Queued(1, _msg("m1"), 0)}))
    host = _host(st)
    host._workers["counter/a"] = _Worker("counter/a", 5, host._actors["counter"], 0.0)
    plan = host.decide(st)
    assert plan.start == [] and plan.stop == [] and plan.wake == ["counter/a"]


def test_accept_refuses_with_the_reason() -> None:
    clock = ManualClock()
    st = _state(Activation("counter/a", "n1", "inc1", 5, 0, 6000))
    host = _host(st, clock)
    now = clock.now_ms()
    r = host.accept(_msg("x", sent_ms=now - 120_000), _answers.append_for())
    assert r is not None and not r.retry and "expired" in r.reason
    r = host.accept(_msg("x", target="nosuch/a", sent_ms=now), _answers.append_for())
    assert r is not None and not r.retry and "does not offer actor type 'nosuch'" in r.reason
    r = host.accept(_msg("x", sent_ms=now), _answers.append_for())
    assert r is not None and r.retry and "not activated" in r.reason
    w = _Worker("counter/a", 5, host._actors["counter"], clock.monotonic() + 10)
    host._workers["counter/a"] = w
    assert host.accept(_msg("ok", sent_ms=now), _answers.append_for()) is None and len(w.inbox) == 1
    w.valid_until = clock.monotonic() - 1  # the lease may have ended: stop taking messages
    r = host.accept(_msg("y", sent_ms=now), _answers.append_for())
    assert r is not None and r.retry and "lease" in r.reason
    w.valid_until = clock.monotonic() + 10
    w.inbox = [(0, i, _msg(f"f{i}", sent_ms=now)) for i in range(limits.MAX_INBOX_MESSAGES)]
    r = host.accept(_msg("z", sent_ms=now), _answers.append_for())
    assert r is not None and r.retry and "inbox is full" in r.reason


def test_next_takes_the_highest_priority_fifo_within_one_across_both_paths() -> None:
    clock = ManualClock()
    now = clock.now_ms()
    st = _state(Activation("counter/a", "n1", "inc1", 5, 0, 6000))
    box = Mailbox("counter/a")
    for seq, prio in ((3, 0), (4, 5), (7, 5), (8, 1)):
        box.queue[seq] = Queued(seq, _msg(f"d{seq}", priority=prio, sent_ms=now), 0)
    box.queue[9] = Queued(9, _msg("late", priority=9, sent_ms=now - 120_000), 0)  # expired: the tick's
    st.messages.mailboxes["counter/a"] = box
    host = _host(st, clock)
    w = _Worker("counter/a", 5, host._actors["counter"], clock.monotonic() + 10)
    host._workers["counter/a"] = w
    for i, prio in ((0, 5), (1, 7), (2, 0)):
        heapq.heappush(w.inbox, (-prio, 10 + i, _msg(f"f{i}", priority=prio, sent_ms=now)))
    heapq.heappush(w.inbox, (-8, 99, _msg("gone", priority=8, sent_ms=now - 120_000)))
    answers = _Answers()
    w.pending[99] = answers.append_for("gone")
    order = []
    while (item := host._next(w)) is not None:
        msg, seq, _ = item
        order.append(msg.id)
        if seq:
            del box.queue[seq]  # what the ack does in the replica
    # f1 (7); then priority 5: the durable path first on a tie, by seq, then the fast one;
    # then 1, then 0 (durable before fast on the tie again); expired ones never handled
    assert order == ["f1", "d4", "d7", "f0", "d8", "d3", "f2"]
    # The expired one is refused for good to its sending node, which dead-letters it.
    assert not host.router._dead  # type: ignore[attr-defined]
    assert [(m, e.split(":")[0], r) for m, e, r in answers.got] == [("gone", "expired", False)]


def test_next_skips_seqs_acked_here_until_the_replica_drops_them() -> None:
    clock = ManualClock()
    st = _state(Activation("counter/a", "n1", "inc1", 5, 0, 6000))
    box = Mailbox("counter/a")
    for seq in (1, 2):
        box.queue[seq] = Queued(seq, _msg(f"d{seq}", sent_ms=clock.now_ms()), 0)
    st.messages.mailboxes["counter/a"] = box
    host = _host(st, clock)
    w = _Worker("counter/a", 5, host._actors["counter"], clock.monotonic() + 10)
    w.handled[1] = None
    item = host._next(w)
    assert item is not None and item[1] == 2
    del box.queue[1]
    host._next(w)
    assert 1 not in w.handled  # forgotten once the replica no longer shows it


def test_next_sees_what_is_queued_between_turns_and_a_failed_ack_s_message_again() -> None:
    """The worker keeps the mailbox's seqs in a heap fed by what is new since its last pick: a
    later higher-priority message still goes first, a seq whose ack failed comes back, and a
    mailbox dropped (all acked) and made again by a new send is read afresh."""
    clock = ManualClock()
    now = clock.now_ms()
    st = _state(Activation("counter/a", "n1", "inc1", 5, 0, 6000))
    box = Mailbox("counter/a")
    for seq in (1, 2):
        box.queue[seq] = Queued(seq, _msg(f"d{seq}", sent_ms=now), 0)
    st.messages.mailboxes["counter/a"] = box
    host = _host(st, clock)
    w = _Worker("counter/a", 5, host._actors["counter"], clock.monotonic() + 10)
    item = host._next(w)
    assert item is not None and item[1] == 1
    w.handled[1] = None  # its ack is in flight
    box.queue[5] = Queued(5, _msg("d5", priority=3, sent_ms=now), 0)
    box.queue[6] = Queued(6, _msg("d6", sent_ms=now), 0)
    order = []
    for _ in range(2):
        item = host._next(w)
        assert item is not None
        order.append(item[1])
        del box.queue[item[1]]
    assert order == [5, 2]
    w.handled.pop(1)  # the ack was rejected: the message is handled again, before 6 (FIFO)
    item = host._next(w)
    assert item is not None and item[1] == 1
    for seq in (1, 6):
        del box.queue[seq]
    del st.messages.mailboxes["counter/a"]
    assert host._next(w) is None
    box = st.messages.mailboxes["counter/a"] = Mailbox("counter/a")
    box.queue[9] = Queued(9, _msg("d9", sent_ms=now), 0)
    item = host._next(w)
    assert item is not None and item[0].id == "d9"


def test_applied_events_wake_the_worker_or_ask_for_a_reconcile() -> None:
    from raftmesh.consensus.results import ActivationChanged, MessageQueued

    st = _state(Activation("counter/a", "n1", "inc1", 5, 0, 6000))
    host = _host(st)
    w = _Worker("counter/a", 5, host._actors["counter"], 0.0)
    host._workers["counter/a"] = w
    host.applied([MessageQueued(7, "counter/a", "n1"), MessageQueued(7, "counter/b", "n2")])
    assert w.wake.is_set() and not host._wake.is_set()  # a queued message: only its worker
    host.applied([MessageQueued(9, "counter/new", "n1")])  # no worker yet: reconcile
    assert host._wake.is_set()
    host._wake.clear()
    host.applied([ActivationChanged(10, "counter/c", "n2", 10, True)])
    assert host._wake.is_set()
    host._wake.clear()
    host.applied([])  # the state was replaced (a snapshot): reconcile everything
    assert host._wake.is_set()


# ---- turns against the real state machine (a one-node log, no I/O) --------------------------


class _SteppingClock(ManualClock):
    """Time moves only by the code's own sleeps: a backoff ends at once, its length on the clock."""

    async def sleep(self, seconds: float) -> None:
        self.advance(max(seconds, 0.0))
        await asyncio.sleep(0)


def _machine_host() -> tuple[Mesh, ActorHost, _SteppingClock]:
    """A host of node n1 (incarnation inc1) whose writes apply to a real state machine."""
    c = Mesh()
    c.ok(c.node("n1", "counter", "relay", "asker", "flaky", incarnation="inc1"))
    clock = _SteppingClock(start_ms=c.ts)
    reg = load_agents([AGENTS], entry_points=False)
    reads = reads_of(c.sm)
    writer = MachineWriter(c.sm)
    router = MessageRouter("n1", "inc1", reads, writer, clock, lambda n: None)  # type: ignore[arg-type]
    host = ActorHost("n1", "inc1", reg, reads, writer, clock, router, ready=lambda: False)  # type: ignore[arg-type]
    return c, host, clock


def _machine_worker(c: Mesh, host: ActorHost, address: str) -> _Worker:
    a = c.act(address)
    w = _Worker(address, a.epoch, host._actors[address.split("/")[0]], host._clock.monotonic() + 1000)
    w.instance = w.adef.cls()
    host._workers[address] = w
    return w


async def _turns(host: ActorHost, w: _Worker, most: int) -> int:
    """Run up to ``most`` turns (fewer if the worker has nothing left); how many ran."""
    for n in range(most):
        item = host._next(w)
        if item is None:
            return n
        await host._turn(w, *item)
    return most


def test_a_full_downstream_mailbox_holds_the_turn_back_instead_of_dead_lettering(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(limits, "MAX_MAILBOX_MESSAGES", 1)
    c, host, clock = _machine_host()
    c.sent(c.msg("counter/b", 0, durable=True))
    seq = c.sent(c.msg("relay/a", {"to": "counter/b", "value": 1}, durable=True, id="d1")).seqs[0]
    w = _machine_worker(c, host, "relay/a")

    async def go() -> None:
        start = clock.monotonic()
        assert await _turns(host, w, 5) == 5  # every turn's ack meets the full mailbox
        assert c.queued("relay/a") == [seq] and host.stats["held_back"] == 5
        assert host.stats["dead_lettered"] == 0 and not c.st.messages.dead_letters
        assert clock.monotonic() - start > 5 * 0.2  # the backoff grows
        c.ok(c.ack("counter/b", c.queued("counter/b")[0]))  # room again
        assert await _turns(host, w, 5) == 1
        assert c.queued("relay/a") == [] and len(c.queued("counter/b")) == 1
        assert not w.held and not w.failures

    asyncio.run(go())


class _RecordingWriter(MachineWriter):
    """Applies to the real machine and keeps what was proposed."""

    def __init__(self, sm: Any) -> None:
        super().__init__(sm)
        self.cmds: list[Any] = []

    async def propose(self, cmd: Any, timeout_s: float | None = None) -> Any:
        self.cmds.append(cmd)
        return await super().propose(cmd, timeout_s)


def test_a_turn_run_again_sends_the_same_message_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ids derive from (sender, handled message, n-th send): a retried turn's sends dedup."""
    monkeypatch.setattr(limits, "MAX_MAILBOX_MESSAGES", 1)
    c, host, _ = _machine_host()
    writer = _RecordingWriter(c.sm)
    host._writer = writer
    c.sent(c.msg("counter/b", 0, durable=True))
    c.sent(c.msg("relay/a", {"to": "counter/b", "value": 1}, durable=True, id="d1"))
    w = _machine_worker(c, host, "relay/a")

    async def go() -> None:
        assert await _turns(host, w, 2) == 2  # d1 twice: held back by the full mailbox
        c.ok(c.ack("counter/b", c.queued("counter/b")[0]))
        assert await _turns(host, w, 1) == 1  # d1 again: applied
        c.ok(c.ack("counter/b", c.queued("counter/b")[0]))
        c.sent(c.msg("relay/a", {"to": "counter/b", "value": 2}, durable=True, id="d2"))
        assert await _turns(host, w, 1) == 1  # d2
        ids = [cmd.sends[0].id for cmd in writer.cmds if isinstance(cmd, AckMessage)]
        assert len(ids) == 4 and ids[0] == ids[1] == ids[2] != ids[3]
        assert c.queued("relay/a") == []

    asyncio.run(go())


def test_a_fast_message_arriving_while_a_deactivation_waits_is_refused_retryable() -> None:
    c, host, clock = _machine_host()
    c.ok(Activate(c.rid(), c.ts, address="counter/a"))
    w = _machine_worker(c, host, "counter/a")

    async def go() -> None:
        gate = asyncio.Event()
        last_ack = asyncio.get_running_loop().create_task(gate.wait())  # a turn's background ack
        w.inflight.add(last_ack)
        d = asyncio.get_running_loop().create_task(host._deactivate(w))
        for _ in range(3):
            await asyncio.sleep(0)
        refused = host.accept(_msg("late", sent_ms=clock.now_ms()), _answers.append_for())
        assert refused is not None and refused.retry and "deactivated" in refused.reason
        gate.set()
        assert await d
        assert not host.router._dead and "counter/a" not in c.st.messages.activations  # type: ignore[attr-defined]

    asyncio.run(go())


class _Answers:
    """What the host answered the senders of the fast messages it took: (id, error, retry)."""

    def __init__(self) -> None:
        self.got: list[tuple[str, str, bool]] = []

    def append_for(self, mid: str = "") -> Callable[[str, bool], None]:
        return lambda error, retry: self.got.append((mid, error, retry))

    def take(self, host: ActorHost, m: Message) -> None:
        assert host.accept(m, self.append_for(m.id)) is None


_answers = _Answers()


def test_a_fast_message_is_acked_once_handled_and_given_back_in_order_when_its_activation_stops() -> None:
    c, host, clock = _machine_host()
    c.ok(Activate(c.rid(), c.ts, address="counter/a"))
    w = _machine_worker(c, host, "counter/a")
    answers = _Answers()

    async def go() -> None:
        for i in range(4):
            answers.take(host, _msg(f"f{i}", sent_ms=clock.now_ms()))
        assert answers.got == []  # taken into the inbox is not handled: nothing acked yet
        assert await _turns(host, w, 2) == 2
        assert answers.got == [("f0", "", False), ("f1", "", False)]  # acked as each turn ended
        # The activation stops (its lease moved) while f2, f3 wait: neither forwarded nor
        # dead-lettered, but given back to their sender (retry), oldest first.
        host._stop(w, "the cluster no longer has it here")
        assert [(m, retry) for m, _, retry in answers.got[2:]] == [("f2", True), ("f3", True)]
        assert all("moved" in e for _, e, _ in answers.got[2:])
        assert not host.router._dead and w.inbox == [] and not w.pending  # type: ignore[attr-defined]

    asyncio.run(go())


def test_a_newer_epoch_on_the_same_node_gives_the_fast_inbox_back_to_be_resent_in_order() -> None:
    c, host, clock = _machine_host()
    c.ok(Activate(c.rid(), c.ts, address="counter/a"))
    epoch = c.act("counter/a").epoch
    answers = _Answers()

    async def go() -> None:
        old = _Worker("counter/a", epoch - 1, host._actors["counter"], clock.monotonic() + 100)
        host._workers["counter/a"] = old
        for i in range(3):
            answers.take(host, _msg(f"w{i}", sent_ms=clock.now_ms()))
        host._ready = lambda: True
        host._reconcile()
        new = host._workers["counter/a"]
        assert new is not old and new.epoch == epoch and old.stopped
        # Given back: the sender resends them (after any it had not sent yet, never behind them).
        assert [(m, r) for m, _, r in answers.got] == [("w0", True), ("w1", True), ("w2", True)]
        assert new.inbox == [] and not host.router._dead  # type: ignore[attr-defined]
        host._stop(new, "test over")
        await asyncio.sleep(0)

    asyncio.run(go())


def test_a_fast_send_to_the_actors_own_address_does_not_wait_for_its_own_turn() -> None:
    """A fast send returns once handled; one to the sending actor itself is handled only after
    the turn that sends it, so the turn does not wait for it (it would wait for itself)."""
    c, host, clock = _machine_host()
    c.ok(Activate(c.rid(), c.ts, address="counter/a"))
    w = _machine_worker(c, host, "counter/a")

    async def go() -> None:
        ctx, _ = host._context(w, _msg("m", sent_ms=clock.now_ms()))
        async with asyncio.timeout(5):
            sent = await ctx.send("counter/a", "later")
        await asyncio.sleep(0)
        lane = host.router._lanes[("counter/a", "counter/a", 0)]  # type: ignore[attr-defined]
        assert [o.msg.id for o in lane.entries] == [sent.id]  # kept in its lane until handled

    asyncio.run(go())


def test_a_fast_message_that_expires_in_the_inbox_is_refused_for_good_to_its_sender() -> None:
    c, host, clock = _machine_host()
    c.ok(Activate(c.rid(), c.ts, address="counter/a"))
    w = _machine_worker(c, host, "counter/a")
    answers = _Answers()
    m = Message("short", "client:t", "counter/a", payload=1, ttl_ms=50, sent_ms=clock.now_ms())
    answers.take(host, m)
    clock.advance(0.1)
    assert host._next(w) is None
    assert answers.got and answers.got[0][0] == "short" and answers.got[0][1].startswith("expired")
    assert not answers.got[0][2] and not w.pending


def test_a_turn_sends_nothing_at_once_after_its_lease_may_have_ended() -> None:
    c, host, clock = _machine_host()
    c.ok(Activate(c.rid(), c.ts, address="asker/a"))
    w = _machine_worker(c, host, "asker/a")
    m = Message(
        "q1",
        "client:t",
        "asker/a",
        payload={"to": "counter/b", "value": 1},
        ttl_ms=60_000,
        sent_ms=clock.now_ms(),
    )

    async def go() -> None:
        ctx, _ = host._context(w, m)
        w.valid_until = clock.monotonic()  # not renewed in time (a node cut off mid-turn)
        for call in (
            ctx.send("counter/b", 1),
            ctx.publish("news", 1),
            ctx.request("counter/b", 1, timeout_s=1.0),
            ctx.request("counter/b", 1, timeout_s=1.0, durable=True),
        ):
            with pytest.raises(raftmesh.errors.StaleToken, match="lease"):
                await call
        await ctx.send("counter/b", 1, durable=True)  # buffered: its ack is fenced by the epoch
        # The turn that met it is not a handler failure: the message waits for a renewed lease.
        await host._turn(w, m, 0, 7)
        assert not w.failures and host.stats["handler_errors"] == 0
        assert [(a, x.id) for _, a, x in w.inbox] == [(7, "q1")]
        assert not host.router._dead  # type: ignore[attr-defined]

    asyncio.run(go())


def test_ctx_locks_are_held_by_the_activation_and_fenced_by_its_epoch() -> None:
    c, host, clock = _machine_host()
    c.ok(Activate(c.rid(), c.ts, address="counter/a"))
    w = _machine_worker(c, host, "counter/a")
    old = _Worker("counter/a", w.epoch - 1, w.adef, clock.monotonic() + 100)

    async def go() -> None:
        ctx, _ = host._context(w, None)
        assert ctx.locks.owner == f"actor:counter/a@{w.epoch}"
        token = await ctx.locks.try_acquire("L", ttl_s=10.0)
        assert token is not None and c.st.locks.locks["L"].holders[ctx.locks.owner].token == token
        assert await ctx.locks.keep_alive("L", token) > 0
        deposed, _ = host._context(old, None)
        with pytest.raises(raftmesh.errors.StaleToken, match="counter/a"):
            await deposed.locks.try_acquire("M", ttl_s=10.0)
        assert "M" not in c.st.locks.locks
        await ctx.locks.release("L", token)
        assert not c.st.locks.locks.get("L") or not c.st.locks.locks["L"].holders

    asyncio.run(go())


class _Hung:
    """A handler that never returns."""

    async def on_message(self, ctx: Any, msg: Any) -> Any:
        await asyncio.Event().wait()


def test_a_hung_handler_is_cancelled_after_timeout_s_and_counts_as_a_failure() -> None:
    assert load_agents([AGENTS], entry_points=False).actors["counter"].timeout_s == 60.0  # the default
    c, host, _ = _machine_host()
    c.sent(c.msg("counter/a", 1, durable=True, id="d1"))
    w = _machine_worker(c, host, "counter/a")
    w.adef = dataclasses.replace(w.adef, cls=_Hung, timeout_s=0.05)
    w.instance = _Hung()

    async def go() -> None:
        async with asyncio.timeout(20):
            assert await _turns(host, w, 10) == MAX_HANDLER_ATTEMPTS
        assert c.queued("counter/a") == []
        [dead] = c.st.messages.dead_letters
        assert "DeadlineExceeded" in dead.letter.reason and "timeout_s=0.05" in dead.letter.reason

    asyncio.run(go())


def test_a_turn_whose_ack_is_rejected_for_good_is_dead_lettered_after_the_attempts() -> None:
    c, host, _ = _machine_host()
    c.sent(c.msg("relay/a", {"to": "nobody/x", "value": 1}, durable=True, id="d1"))
    w = _machine_worker(c, host, "relay/a")

    async def go() -> None:
        # FAILED_PRECONDITION (no node offers "nobody"): not back-pressure, so each counts.
        assert await _turns(host, w, 10) == MAX_HANDLER_ATTEMPTS
        assert c.queued("relay/a") == []
        assert host.stats["dead_lettered"] == 1 and host.stats["held_back"] == 0
        assert not w.failures
        # Dead-lettered by the ack that unqueued it (one command), not by a later batch.
        [dead] = c.st.messages.dead_letters
        assert dead.letter.message.id == "d1" and dead.node == "n1"
        assert dead.letter.reason.startswith(
            f"handler failed {MAX_HANDLER_ATTEMPTS} times: FailedPrecondition"
        )
        assert not host.router._dead  # type: ignore[attr-defined]

    asyncio.run(go())


def test_state_key() -> None:
    assert state_key("counter/a/b") == "actors/counter/a/b"


# ---- the host on a real node ----------------------------------------------------------------


def _run(runtime: Any, coro: Coroutine[Any, Any, Any], timeout_s: float = 30.0) -> Any:
    return asyncio.run_coroutine_threadsafe(coro, runtime.loop).result(timeout_s)


@pytest.fixture
def node(tmp_path: Any) -> Iterator[Any]:
    from raftmesh.localcluster import free_ports, wait_until
    from raftmesh.node.config import Peer, build_config
    from raftmesh.node.runtime import NodeRuntime

    raft_port, grpc_port = free_ports(2)
    raft, grpc_addr = f"127.0.0.1:{raft_port}", f"127.0.0.1:{grpc_port}"
    cfg = build_config("n1", raft, grpc_addr, [Peer("n1", raft, grpc_addr)], str(tmp_path / "n1"), slots=8)
    runtime = NodeRuntime(cfg, registry=load_agents([AGENTS], entry_points=False))
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            asyncio.run(runtime.run())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=serve, name="node-n1", daemon=True)
    thread.start()
    try:

        def ready() -> bool:
            if failure:
                return True
            loop = runtime.loop
            if loop is None or not hasattr(runtime, "raft") or not runtime.raft.is_leader:
                return False
            return bool(runtime.reads.read(lambda st: st.up_member("n1", runtime.incarnation)))

        wait_until(ready, 30.0, "the in-process node to lead and register")
        if failure:
            raise failure[0]
        yield runtime
    finally:
        loop = runtime.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(runtime.stop)
        thread.join(timeout=30)
        assert not thread.is_alive(), "the node did not stop"
        assert not failure, failure


def _durable(runtime: Any, *msgs: Message) -> Any:
    """Commit durable messages the way the router's durable path does (one SendMessages)."""
    cmd = SendMessages(f"s-{uuid.uuid4().hex}", runtime.clock.now_ms(), messages=msgs)
    res = _run(runtime, runtime.proposer.propose(cmd))
    assert isinstance(res, MessagesSent), res
    return res


def _out(runtime: Any, i: str, target: str = "", payload: Any = None, **kw: Any) -> Message:
    return Message(
        id=i,
        sender=kw.pop("sender", "client:test"),
        target=target,
        payload=payload,
        ttl_ms=kw.pop("ttl_ms", 60_000),
        sent_ms=runtime.clock.now_ms(),
        **kw,
    )


def _kv(runtime: Any, key: str) -> Any:
    def value(st: ClusterState) -> Any:
        e = st.kv.get(key)
        return None if e is None else e.value

    return runtime.reads.read(value)


def _queued(runtime: Any, address: str) -> int:
    return int(runtime.reads.read(lambda st: len(st.messages.mailboxes.get(address, Mailbox(address)).queue)))


def test_durable_messages_are_handled_once_each_with_their_state(node: Any) -> None:
    from raftmesh.localcluster import wait_until

    _durable(node, *(_out(node, f"m{i}", "counter/a", i) for i in range(20)))
    wait_until(lambda: (_kv(node, "actors/counter/a") or {}).get("n") == 20, 30.0, "20 turns of counter/a")
    st = _kv(node, "actors/counter/a")
    assert st["seen"] == list(range(20))  # in order, each once
    wait_until(lambda: _queued(node, "counter/a") == 0, 10.0, "the mailbox to empty")
    act = node.reads.read(lambda s: s.messages.activations["counter/a"])
    assert act.node == "n1" and node.actors.activations() == {"counter/a": act.epoch}
    # The host counts an ack once its commit's answer reaches the loop, which may be just after the
    # replica shows it: wait for the count, do not race it.
    wait_until(lambda: node.actors.stats["acks"] >= 20, 10.0, "the host to count its 20 acks")
    assert node.actors.stats["acks_not_applied"] == 0


def test_a_turns_durable_sends_and_kv_commit_with_its_ack(node: Any) -> None:
    from raftmesh.localcluster import wait_until

    _durable(node, _out(node, "r1", "relay/r", {"to": "counter/c", "value": "hello"}))
    wait_until(lambda: (_kv(node, "actors/counter/c") or {}).get("n") == 1, 30.0, "counter/c got the relay")
    assert _kv(node, "actors/counter/c")["seen"] == ["hello"]
    assert _kv(node, "relayed/r1") == "hello"


def test_durable_and_fast_publishes_reach_the_declared_type_subscriber(node: Any) -> None:
    from raftmesh.localcluster import wait_until

    wait_until(
        lambda: node.reads.read(lambda st: "listener" in st.messages.subscriptions.get("news", {})),
        10.0,
        "the node to subscribe listener to news",
    )
    _durable(node, _out(node, "p1", topic="news", payload="extra", source="s1"))
    wait_until(lambda: (_kv(node, "actors/listener/s1") or {}).get("got") == ["extra"], 30.0, "listener/s1")
    _run(node, node.router.send(_out(node, "p2", topic="news", payload="fast", source="s1")))
    wait_until(
        lambda: (_kv(node, "actors/listener/s1") or {}).get("got") == ["extra", "fast"], 30.0, "the fast one"
    )


def test_fast_messages_waiting_when_their_activation_moves_are_all_handled_in_order(node: Any) -> None:
    """The activation ends (its lease given up, the node alive) while fast messages wait in its
    inbox: no send returns before its message was handled, each is handled (in the next
    activation), in the sender's order; none is dead-lettered or lost."""
    n = 40

    async def scenario() -> tuple[int, list[int], int]:
        sends = [
            asyncio.ensure_future(node.router.send(_out(node, f"mv{i}", "counter/mv", i))) for i in range(n)
        ]
        async with asyncio.timeout(30):
            while (_kv(node, "actors/counter/mv") or {}).get("n", 0) < 2:
                await asyncio.sleep(0.005)
            assert not all(t.done() for t in sends)
            epoch = node.reads.read(lambda st: st.messages.activations["counter/mv"].epoch)
            cmd = Deactivate(
                f"d-{uuid.uuid4().hex}", node.clock.now_ms(), node_id="n1", address="counter/mv", epoch=epoch
            )
            assert (await node.proposer.propose(cmd)).ok
            done = await asyncio.gather(*sends)
        return epoch, done, node.actors.stats["given_back"]

    epoch, done, given_back = _run(node, scenario(), 60.0)
    assert len(done) == n and given_back >= 1  # some waited when it ended: given back, sent again
    seen = _kv(node, "actors/counter/mv")["seen"]
    # In order; one given back from its turn may have committed just before the end (handled
    # again: at least once), never out of order.
    assert list(dict.fromkeys(seen)) == list(range(n)) and seen == sorted(seen)
    assert node.reads.read(lambda st: st.messages.activations["counter/mv"].epoch) > epoch
    assert not node.reads.read(
        lambda st: [d for d in st.messages.dead_letters if d.letter.message.target == "counter/mv"]
    )


def test_a_failing_handler_is_dead_lettered_and_acked(node: Any) -> None:
    from raftmesh.localcluster import wait_until

    _durable(node, _out(node, "bad1", "flaky/x", "boom"))

    def dead() -> list[Any]:
        return list(
            node.reads.read(lambda st: [d for d in st.messages.dead_letters if d.letter.message.id == "bad1"])
        )

    wait_until(dead, 30.0, "the failed message's dead letter")
    [d] = dead()
    assert "handler failed 3 times" in d.letter.reason and "cannot handle 'boom'" in d.letter.reason
    wait_until(lambda: _queued(node, "flaky/x") == 0, 10.0, "the failed message to leave the mailbox")


def test_an_idle_activation_is_given_up_and_comes_back_with_its_state(node: Any) -> None:
    from raftmesh.localcluster import wait_until

    def epoch() -> int | None:
        a = node.reads.read(lambda st: st.messages.activations.get("sleepy/s"))
        return None if a is None else int(a.epoch)

    _durable(node, _out(node, "s1", "sleepy/s", 1))
    wait_until(lambda: (_kv(node, "actors/sleepy/s") or {}).get("activations") == 1, 30.0, "first activation")
    first = epoch()
    wait_until(lambda: epoch() is None, 30.0, "the idle activation to be given up")
    # The host drops its copy when the applied event reaches its loop, just after the state.
    wait_until(lambda: "sleepy/s" not in node.actors.activations(), 10.0, "the host to drop the activation")
    _durable(node, _out(node, "s2", "sleepy/s", 2))
    wait_until(lambda: (_kv(node, "actors/sleepy/s") or {}).get("activations") == 2, 30.0, "re-activation")
    second = epoch()
    assert first is not None and second is not None and second > first
    assert _kv(node, "woke/s") == second


# ---- the fast path and requests (through the node's router) ---------------------------------


def test_fast_send_and_request_reach_the_activation(node: Any) -> None:
    from raftmesh.localcluster import wait_until

    for i in range(5):
        _run(node, node.router.send(_out(node, f"f{i}", "counter/f", i)))
    wait_until(lambda: (_kv(node, "actors/counter/f") or {}).get("n") == 5, 30.0, "5 fast turns")
    assert _kv(node, "actors/counter/f")["seen"] == list(range(5))  # FIFO from one sender
    reply = _run(node, node.router.request(_out(node, "q1", "counter/f", "q", reply_to="n1"), 10.0))
    act = node.reads.read(lambda st: st.messages.activations["counter/f"])
    assert reply.correlation_id == "q1" and reply.epoch == act.epoch
    assert reply.payload == {"n": 6, "node": "n1", "epoch": act.epoch}


def test_durable_request_is_answered_through_the_log(node: Any) -> None:
    reply = _run(
        node, node.router.request(_out(node, "dq1", "counter/d", "x", durable=True, reply_to="n1"), 10.0)
    )
    assert reply.payload["n"] == 1 and reply.correlation_id == "dq1"
    kept = node.reads.read(lambda st: st.messages.replies.get(reply_key("client:test", "dq1")))
    assert kept is not None and kept[1].payload == reply.payload


def test_a_request_inside_a_turn_and_a_failing_handlers_error_reply(node: Any) -> None:
    from raftmesh.agents import HandlerError
    from raftmesh.agents._messaging import reply_payload

    reply = _run(
        node,
        node.router.request(
            _out(node, "a1", "asker/a", {"to": "counter/g", "value": 7}, reply_to="n1"), 20.0
        ),
    )
    assert reply.payload["n"] == 1 and _kv(node, "actors/counter/g")["seen"] == [7]
    err = _run(node, node.router.request(_out(node, "b1", "flaky/y", "bad", reply_to="n1"), 20.0))
    with pytest.raises(HandlerError, match="cannot handle 'bad'"):
        reply_payload(err)


def test_task_agents_send_and_request(node: Any) -> None:
    from raftmesh import DAG, Client

    client = Client([node.config.grpc], timeout_s=10.0)
    try:
        dag = DAG("talk")
        dag.task("t", "messenger", input={"to": "counter/t"})
        run = client.run(dag, timeout_s=60)
        assert run.status == "SUCCEEDED", run
        # the durable send was committed before the request was made: the request is turn 2
        assert run.tasks["t"].output["n"] == 2
        assert _kv(node, "actors/counter/t")["seen"] == ["from-task", "ask"]
        dag = DAG("talk-sync")
        dag.task("t", "messenger_sync", input={"to": "counter/u"})
        run = client.run(dag, timeout_s=60)
        assert run.status == "SUCCEEDED", run
        assert run.tasks["t"].output["n"] == 2
        assert _kv(node, "actors/counter/u")["seen"] == ["from-thread", "ask"]
    finally:
        client.close()


def test_effect_free_turns_are_acked_each_once_while_the_next_ones_run(node: Any) -> None:
    from raftmesh.localcluster import wait_until

    sink = node.registry.actors["sink"].cls
    before = sink.count
    for b in range(0, 500, 250):
        _durable(node, *(_out(node, f"k{i}", "sink/s", i) for i in range(b, b + 250)))
    wait_until(lambda: _queued(node, "sink/s") == 0, 60.0, "the sink's mailbox to empty")
    assert sink.count - before == 500  # each handled once
    acked = node.reads.read(lambda st: st.messages.mailboxes.get("sink/s"))
    assert acked is None and node.actors.stats["acks_not_applied"] == 0


# ---- a real cluster: the activation moves when its node dies ------------------------------------


@pytest.mark.e2e
def test_an_activation_moves_after_its_node_is_killed_and_keeps_its_state(make_cluster: Any) -> None:
    from raftmesh import DAG

    c = make_cluster(3, agents_modules=[AGENTS])
    client = c.client()

    def talk(run: str, send: str) -> Any:
        dag = DAG(run)
        dag.task("t", "messenger", input={"to": "counter/k", "send": send, "timeout_s": 60.0})
        info = client.run(dag, timeout_s=120)
        assert info.status == "SUCCEEDED", info
        return info.tasks["t"].output

    first = talk("before", "one")
    assert first["n"] == 2
    c.kill(first["node"])
    second = talk("after", "two")
    # another node, a newer epoch, and the state the last committed turn left: the durable
    # send queued while no live node held the key was handled there, then the request
    assert second["node"] != first["node"] and second["epoch"] > first["epoch"]
    assert second["n"] == 4
    entry = client.kv.get("actors/counter/k")
    assert entry is not None and entry.value["seen"] == ["one", "ask", "two", "ask"]


def test_a_worker_started_inside_a_peers_call_does_not_carry_that_call() -> None:
    """A delivery from a peer (its Exchange handler, its call bound) can start a worker through
    reconcile: the worker, its Deactivate proposal and its log lines must not be the peer's."""
    from raftmesh import calls

    c, host, _clock = _machine_host()
    c.ok(Activate(c.rid(), c.ts, address="counter/a"))
    seen: list[calls.Call | None] = []
    work = host._work

    async def watched(w: _Worker) -> None:
        seen.append(calls.current())
        await work(w)

    host._work = watched  # type: ignore[method-assign]

    async def go() -> None:
        host._ready = lambda: True
        peer = calls.Call("node:n2", "node", request_id="rq", trace_id="ab" * 16, method="Exchange")
        with calls.bound(peer):
            host._reconcile()
        w = host._workers["counter/a"]
        for _ in range(3):
            await asyncio.sleep(0)
        assert seen == [None]
        host._stop(w, "test over")
        await asyncio.sleep(0)

    asyncio.run(go())
