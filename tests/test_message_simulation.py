"""Deterministic simulation of agent messaging in the replicated state machine, from a seed.

A seeded generator plays clients (durable sends and publishes), the nodes (handler turns
acknowledged with KV effects and sends, renewals, give-ups, restarts, fast-path dead letters,
some of them stale or duplicated), and the leader (ticks, nodes marked down). Several replicas
apply the same log through its wire form; some snapshot and restore, or crash back to an
older snapshot and replay the log. After every entry an invariant checker holds:

- at most one activation per address, and each new activation of an address has a greater
  epoch than every one before it (epochs grow);
- no acknowledged message is applied twice (each turn writes a KV key once per message:
  its version stays 1), and no ack of a message past its TTL is applied;
- no queued message is lost: each is still queued, acknowledged once, or dead-lettered
  "expired" after its TTL passed;
- the derived indexes equal a rebuild, and every replica has the leader's digest.

A failure names its seed; replay it with ``RAFTMESH_SIM_SEED=<seed> pytest tests/test_message_simulation.py``.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from dataclasses import dataclass, field

import pytest

from raftmesh.consensus import ClusterState, StateMachine, activations, encode_batch, limits
from raftmesh.consensus.commands import (
    AckMessage,
    Activate,
    ActorOffer,
    Command,
    Deactivate,
    Fence,
    KvOp,
    KvTxn,
    Message,
    MessageDeadLetter,
    NodeDown,
    RecordDeadLetters,
    RegisterNode,
    RenewActivations,
    SendMessages,
    SubscribeTopic,
    Tick,
)
from raftmesh.consensus.messages import MessageStore
from raftmesh.consensus.results import (
    ActivationChanged,
    Event,
    MessageAcked,
    MessageQueued,
    MessagesSent,
    Rejected,
    Result,
    decode_result,
)

ENTRIES = 600
REPLICAS = 3
NODES = ("n1", "n2", "n3", "n4")
TYPES = ("room", "bidder", "clerk")
KEYS = tuple(f"k{i}" for i in range(6))
LEASE = limits.ACTIVATION_LEASE_MS
FULL_CHECK_EVERY = 5
"""Entries between full checks of the state (every entry is checked by its results and events)."""


def seeds() -> list[int]:
    replay = os.environ.get("RAFTMESH_SIM_SEED")
    return [int(s) for s in replay.split(",")] if replay else list(range(10))


@dataclass
class Replica:
    sm: StateMachine = field(default_factory=StateMachine)
    applied: int = 0
    snapshot: bytes = field(default_factory=lambda: ClusterState().encode())
    snapshot_applied: int = 0

    def catch_up(self, log: list[bytes]) -> None:
        while self.applied < len(log):
            self.sm.apply_batch(log[self.applied])
            self.applied += 1


@dataclass
class Checker:
    """What the log promised, followed from results and events, checked against the state."""

    epochs: dict[str, int] = field(default_factory=dict)
    """address -> the newest epoch ever granted."""
    sent: dict[tuple[str, int], Message] = field(default_factory=dict)
    """(address, seq) -> the message queued there."""
    acked: set[tuple[str, int]] = field(default_factory=set)
    given_up: set[tuple[str, int]] = field(default_factory=set)
    """Unqueued by an ack with a dead-letter reason (the handler gave up on them)."""
    counts: Counter[str] = field(default_factory=Counter)

    def results(
        self, cmds: list[Command], results: list[Result], time_before_ms: int, before: dict[str, object]
    ) -> None:
        for cmd, res in zip(cmds, results, strict=True):
            if isinstance(res, Rejected):
                self.counts[f"rejected {res.code}"] += 1
                continue
            if cmd.request_id in before:  # a retried command: the first answer, nothing new
                assert res == before[cmd.request_id], (cmd, res)
                continue
            if isinstance(cmd, SendMessages) and isinstance(res, MessagesSent):
                self.queue(cmd.messages, res)
            elif isinstance(cmd, AckMessage) and isinstance(res, MessageAcked):
                if res.applied:
                    assert cmd.epoch == self.epochs.get(cmd.address), f"a stale epoch's turn applied: {cmd}"
                if cmd.seq and res.applied:
                    key = (cmd.address, cmd.seq)
                    assert key in self.sent and key not in self.acked | self.given_up, (
                        f"ack applied twice: {key}"
                    )
                    now = max(time_before_ms, cmd.ts_ms)
                    assert now < self.sent[key].expires_ms, f"an expired message was acknowledged: {key}"
                    if cmd.dead_letter:
                        self.given_up.add(key)
                        self.counts["given up"] += 1
                        continue
                    self.acked.add(key)
                    self.counts["acked"] += 1
                    self.queue(cmd.sends, None)
                elif cmd.seq:
                    self.counts["ack not applied"] += 1
            elif isinstance(cmd, KvTxn) and cmd.fence is not None:
                assert cmd.fence.token == self.epochs.get(cmd.fence.actor), (
                    f"a stale epoch's write applied: {cmd}"
                )
            self.counts[type(cmd).__name__] += 1

    def queue(self, msgs: tuple[Message, ...], res: MessagesSent | None) -> None:
        if res is None:
            return  # a turn's sends: found from the mailboxes by ``state``
        for m, seq, targets in zip(msgs, res.seqs, res.targets, strict=True):
            for a in targets:
                self.sent[(a, seq)] = m

    def events(self, events: list[Event]) -> None:
        active: dict[str, int] = {}
        for ev in events:
            if not isinstance(ev, ActivationChanged):
                continue
            if ev.active:
                assert ev.address not in active, f"two activations of {ev.address} at once"
                assert ev.epoch > self.epochs.get(ev.address, 0), f"epoch of {ev.address} did not grow"
                self.epochs[ev.address] = ev.epoch
                active[ev.address] = ev.epoch
                self.counts["activations"] += 1
            else:
                active.pop(ev.address, None)
                self.counts["deactivations"] += 1

    def learn(self, events: list[Event], st: ClusterState) -> None:
        """Messages queued by a command (a turn's sends among them), read from their mailboxes."""
        for ev in events:
            if isinstance(ev, MessageQueued):
                box = st.messages.mailboxes.get(ev.address)
                for seq, q in box.queue.items() if box else ():
                    self.sent.setdefault((ev.address, seq), q.message)

    def state(self, st: ClusterState) -> None:
        store = st.messages
        for address, a in store.activations.items():
            assert a.address == address and self.epochs.get(address) == a.epoch
            # A restarted node's old activations went with its old process.
            assert st.members[a.node].incarnation == a.incarnation
            assert address in store.by_node[a.node]
        self.counts["unplaced seen"] += len(store.unplaced)
        for address in store.unplaced:
            assert address not in store.activations and store.mailboxes[address].queue
            assert activations.place(st, address) is None, f"{address} waits though a node has room"
        # Turn sends are queued too: learn them from the mailboxes (their seqs are new).
        for address, box in store.mailboxes.items():
            assert box.queue, "an empty mailbox is kept"
            for seq, q in box.queue.items():
                self.sent.setdefault((address, seq), q.message)
                assert (address, seq) not in self.acked
        dead = Counter((d.letter.message.id, d.letter.message.target) for d in store.dead_letters)
        for (address, seq), m in self.sent.items():
            box = store.mailboxes.get(address)
            if (address, seq) in self.acked or (box is not None and seq in box.queue):
                continue
            if (address, seq) in self.given_up:
                assert dead[(m.id, address)] > 0, f"message {address}#{seq} given up without a dead letter"
                continue
            # Neither queued nor acknowledged: it must have expired and be a dead letter.
            assert m.expires_ms <= st.time_ms, f"message {address}#{seq} lost before its TTL"
            assert dead[(m.id, address)] > 0, f"message {address}#{seq} vanished without a dead letter"
        for key, e in st.kv.entries.items():
            if key.startswith("eff/"):
                assert e.version == 1, f"a handler's effect was applied twice: {key}"
        assert store.queued == sum(len(b.queue) for b in store.mailboxes.values())


class Generator:
    """Plausible commands from the replicated state the proposers would read (the leader's)."""

    def __init__(self, rng: random.Random, sm: StateMachine) -> None:
        self.rng = rng
        self.sm = sm
        self.ts = 1_000_000
        self.n = 0
        self.incarnations: dict[str, int] = {}
        self.past: list[Command] = []
        self.old_epochs: list[tuple[str, int, str]] = []
        """(address, epoch, node) of activations that were replaced: their acks must be fenced."""

    @property
    def st(self) -> ClusterState:
        return self.sm.state

    def rid(self) -> str:
        self.n += 1
        return f"r{self.n}"

    def msg(self, target: str = "", topic: str = "", **kw: object) -> Message:
        self.n += 1
        ttl = self.rng.choice((300, 2_000, LEASE * 3, 60_000))
        return Message(
            f"m{self.n}",
            "client:sim",
            target,
            topic,
            payload={"i": self.n},
            ttl_ms=ttl,
            sent_ms=self.ts - self.rng.choice((0, 0, 0, 50, 400)),
            priority=self.rng.randint(-1, 1),
            **kw,  # type: ignore[arg-type]
        )

    def address(self) -> str:
        return f"{self.rng.choice(TYPES)}/{self.rng.choice(KEYS)}"

    def register(self, node: str, new: bool) -> RegisterNode:
        if new or node not in self.incarnations:
            self.incarnations[node] = self.incarnations.get(node, 0) + 1
        offered = [t for t in TYPES if self.rng.random() < 0.7] or [TYPES[0]]
        actors = tuple(ActorOffer(t, (), self.rng.choice((0, 0, 2))) for t in offered)
        inc = f"i{self.incarnations[node]}"
        return RegisterNode(self.rid(), self.ts, node, f"{node}:1", f"{node}:2", (), 1, inc, actors=actors)

    def turn(self) -> Command | None:
        """A node handles one queued message of one of its activations (maybe stale, maybe again)."""
        store = self.st.messages
        boxes = [a for a in sorted(store.mailboxes) if a in store.activations]
        if not boxes:
            return None
        address = self.rng.choice(boxes)
        a = store.activations[address]
        box = store.mailboxes[address]
        seq = self.rng.choice(list(box.queue))
        q = box.queue[seq]
        kv = (KvOp("put", f"eff/{address}/{q.message.id}", seq),)
        sends = (self.msg(self.address()),) if self.rng.random() < 0.2 else ()
        reply = None
        if self.rng.random() < 0.2:
            reply = Message(f"re{self.n}", address, payload="ok", correlation_id=f"c{seq}", reply_to=a.node)
        epoch, node = a.epoch, a.node
        if self.old_epochs and self.rng.random() < 0.1:
            old = self.rng.choice(self.old_epochs)
            address, epoch, node = old
        ts = self.ts + self.rng.choice((0, 0, 0, 1_500))  # sometimes the turn ends past a short TTL
        if self.rng.random() < 0.1:  # the handler gave up: unqueued and dead-lettered at once
            return AckMessage(
                self.rid(),
                ts,
                node_id=node,
                address=address,
                epoch=epoch,
                seq=seq,
                reply=reply,
                dead_letter="handler failed 3 times: E",
            )
        return AckMessage(
            self.rid(),
            ts,
            node_id=node,
            address=address,
            epoch=epoch,
            seq=seq,
            kv=kv,
            sends=sends,
            reply=reply,
        )

    def next_batch(self) -> list[Command]:
        rng = self.rng
        self.ts += rng.choice((0, 10, 100, 500, 1_000))
        store = self.st.messages
        roll = rng.random()
        cmds: list[Command] = []
        if roll < 0.25:
            msgs = [self.msg(self.address()) for _ in range(rng.randint(1, 3))]
            if rng.random() < 0.2:
                msgs.append(self.msg(topic="news", source=rng.choice(("", "k1"))))
            cmds.append(SendMessages(self.rid(), self.ts, messages=tuple(msgs)))
        elif roll < 0.5:
            turn = self.turn()
            if turn is not None:
                cmds.append(turn)
        elif roll < 0.62:
            for node in NODES:
                items = tuple((a, store.activations[a].epoch) for a in sorted(store.by_node.get(node, ())))
                if items and rng.random() < 0.8:
                    if rng.random() < 0.1:
                        items = (*items, ("room/k0", 1))  # a stale one: reported lost
                    inc = f"i{self.incarnations.get(node, 1)}"
                    cmds.append(
                        RenewActivations(self.rid(), self.ts, node_id=node, incarnation=inc, items=items)
                    )
        elif roll < 0.72:
            self.ts += rng.choice((LEASE // 2, LEASE, 2_000))
            cmds.append(Tick(self.rid(), self.ts))
        elif roll < 0.77:
            node = rng.choice(NODES)
            cmds.append(self.register(node, new=rng.random() < 0.6))
        elif roll < 0.81:
            node = rng.choice(NODES)
            m = self.st.members.get(node)
            if m is not None and m.up:
                cmds.append(NodeDown(self.rid(), self.ts, node_id=node, incarnation=m.incarnation))
        elif roll < 0.85:
            cmds.append(Activate(self.rid(), self.ts, address=self.address()))
        elif roll < 0.89 and store.activations:
            a = store.activations[rng.choice(sorted(store.activations))]
            cmds.append(Deactivate(self.rid(), self.ts, node_id=a.node, address=a.address, epoch=a.epoch))
        elif roll < 0.92:
            sub = rng.choice((*TYPES, "room/k1", "clerk/k2"))
            cmds.append(
                SubscribeTopic(
                    self.rid(), self.ts, topic="news", subscriber=sub, subscribe=rng.random() < 0.8
                )
            )
        elif roll < 0.94:
            dead = MessageDeadLetter(self.msg(self.address()), "undeliverable: peer gone")
            cmds.append(RecordDeadLetters(self.rid(), self.ts, node_id=rng.choice(NODES), items=(dead,)))
        elif roll < 0.97 and store.activations:
            a = store.activations[rng.choice(sorted(store.activations))]
            epoch = a.epoch if rng.random() < 0.5 else a.epoch - 1
            fence = Fence(actor=a.address, token=epoch)
            cmds.append(
                KvTxn(self.rid(), self.ts, success=(KvOp("put", f"state/{a.address}", self.n),), fence=fence)
            )
        elif self.past:
            cmds.append(rng.choice(self.past[-50:]))  # a proposer's retry: same request id
        self.past.extend(c for c in cmds if not isinstance(c, Tick))
        return cmds

    def remember(self, events: list[Event]) -> None:
        for ev in events:
            if isinstance(ev, ActivationChanged) and not ev.active:
                self.old_epochs.append((ev.address, ev.epoch, ev.node))
        del self.old_epochs[:-20]


def simulate(seed: int) -> Checker:
    rng = random.Random(seed)
    replicas = [Replica() for _ in range(REPLICAS)]
    leader = replicas[0]
    gen = Generator(rng, leader.sm)
    checker = Checker()
    log: list[bytes] = []

    def append(cmds: list[Command]) -> None:
        dedup = leader.sm.state.dedup
        time_before_ms = leader.sm.state.time_ms
        before = {c.request_id: decode_result(dedup[c.request_id][2]) for c in cmds if c.request_id in dedup}
        payload = encode_batch(cmds)
        log.append(payload)
        results, events = leader.sm.apply_batch(payload)
        leader.applied += 1
        checker.events(events)
        checker.learn(events, leader.sm.state)
        checker.results(cmds, results, time_before_ms, before)
        if len(log) % FULL_CHECK_EVERY == 0:
            checker.state(leader.sm.state)
        gen.remember(events)

    for node in NODES[:3]:
        append([gen.register(node, new=True)])
    append([SubscribeTopic(gen.rid(), gen.ts, topic="news", subscriber="room")])
    while len(log) < ENTRIES:
        batch = gen.next_batch()
        if batch:
            append(batch)
        st = leader.sm.state
        assert st.messages.index_snapshot() == MessageStore.decode(st.messages.encode()).index_snapshot()
        for r in replicas[1:]:
            roll = rng.random()
            if roll < 0.03:
                data = r.sm.snapshot()
                r.sm = StateMachine()
                r.sm.restore(data)
                r.snapshot, r.snapshot_applied = data, r.applied
            elif roll < 0.05:
                r.sm = StateMachine()
                r.sm.restore(r.snapshot)
                r.applied = r.snapshot_applied
            if rng.random() < 0.15:
                r.catch_up(log)
                assert r.sm.digest() == leader.sm.digest(), (
                    f"seed {seed}: replica diverged at entry {len(log)}"
                )
                assert r.sm.state.index_snapshot() == st.index_snapshot()
    checker.state(leader.sm.state)
    checker.counts["expired"] += sum(
        d.letter.reason == "expired" for d in leader.sm.state.messages.dead_letters
    )
    for r in replicas:
        r.catch_up(log)
    assert len({r.sm.digest() for r in replicas}) == 1, f"seed {seed}: replicas ended with different digests"
    return checker


@pytest.mark.parametrize("seed", seeds())
def test_message_simulation(seed: int) -> None:
    try:
        checker = simulate(seed)
    except AssertionError as exc:
        raise AssertionError(f"seed {seed} (replay: RAFTMESH_SIM_SEED={seed}): {exc}") from exc
    COVERED.update(checker.counts)


COVERED: Counter[str] = Counter()


def test_the_simulation_reaches_every_messaging_path() -> None:
    """Over the seeds, the log went through each path the invariants are about."""
    if os.environ.get("RAFTMESH_SIM_SEED"):
        pytest.skip("a replay runs one seed")
    if not COVERED:
        for seed in seeds()[:4]:
            COVERED.update(simulate(seed).counts)
    for what in (
        "acked",
        "given up",
        "ack not applied",
        "activations",
        "deactivations",
        "RenewActivations",
        "Deactivate",
        "RecordDeadLetters",
        "rejected ABORTED",
        "unplaced seen",
        "expired",
    ):
        assert COVERED[what] > 0, f"no seed reached {what!r}: {dict(COVERED)}"
