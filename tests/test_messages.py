"""Agent messaging in the pure state machine: activations (placement, leases, epochs, fencing),
durable mailboxes (effect-once acks, TTL to dead letters, bounds), topics and replies.

Every applied command is checked for index and encoding round-trip equality (``Cluster``).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from typing import Any

import pytest

from raftmesh.clock import ManualClock
from raftmesh.consensus import Code, limits
from raftmesh.consensus.commands import (
    AckMessage,
    Activate,
    ActorOffer,
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
    decode_command,
    encode_command,
)
from raftmesh.consensus.messages import Activation, in_delivery_order, reply_key
from raftmesh.consensus.results import (
    ActivationChanged,
    ActivationResult,
    ChangedResult,
    MessageAcked,
    MessageQueued,
    MessagesSent,
    RenewResult,
    ReplyCommitted,
    Result,
    TopicPublished,
    expect,
)
from raftmesh.node.liveness import Liveness
from raftmesh.node.reads import ReadView
from raftmesh.node.scheduler import Scheduler
from tests.test_machine import Cluster
from tests.test_node_units import MachineWriter, reads_of

LEASE = limits.ACTIVATION_LEASE_MS


class Mesh(Cluster):
    """A state machine with builders for the messaging commands."""

    def __init__(self) -> None:
        super().__init__()
        self._m = 0

    def node(
        self, node: str, *actors: str | ActorOffer, incarnation: str = "inc-1", rid: str | None = None
    ) -> RegisterNode:
        offers = tuple(a if isinstance(a, ActorOffer) else ActorOffer(a) for a in actors)
        return RegisterNode(
            rid or self.rid(), self.ts, node, f"{node}:1", f"{node}:2", (), 1, incarnation, actors=offers
        )

    def msg(self, target: str = "", payload: Any = None, **kw: Any) -> Message:
        self._m += 1
        kw.setdefault("sent_ms", self.ts)
        kw.setdefault("ttl_ms", 60_000)
        return Message(
            kw.pop("id", f"m{self._m}"), kw.pop("sender", "client:t"), target, payload=payload, **kw
        )

    def send(self, *msgs: Message, fence: Fence | None = None, rid: str | None = None) -> SendMessages:
        return SendMessages(rid or self.rid(), self.ts, messages=msgs, fence=fence)

    def sent(self, *msgs: Message) -> MessagesSent:
        return expect(self.ok(self.send(*msgs)), MessagesSent)

    def ack(self, address: str, seq: int, **kw: Any) -> AckMessage:
        a = self.st.messages.activations.get(address)
        kw.setdefault("node_id", a.node if a else "n1")
        kw.setdefault("epoch", a.epoch if a else 0)
        return AckMessage(self.rid(), kw.pop("ts", self.ts), address=address, seq=seq, **kw)

    def act(self, address: str) -> Activation:
        return self.st.messages.activations[address]

    def queued(self, address: str) -> list[int]:
        box = self.st.messages.mailboxes.get(address)
        return list(box.queue) if box else []

    def tick(self, ts: int) -> Result:
        self.ts = ts
        return self.ok(Tick(self.rid(), ts))

    def renew(self, node: str, *items: tuple[str, int], incarnation: str = "inc-1") -> RenewResult:
        return expect(
            self.ok(
                RenewActivations(self.rid(), self.ts, node_id=node, incarnation=incarnation, items=items)
            ),
            RenewResult,
        )

    def dead_reasons(self) -> list[tuple[str, str]]:
        return [(d.letter.message.id, d.letter.reason) for d in self.st.messages.dead_letters]


@pytest.fixture
def c() -> Mesh:
    mesh = Mesh()
    mesh.ok(mesh.node("n1", "room", "bidder"))
    mesh.ok(mesh.node("n2", "room"))
    return mesh


# ---- registration --------------------------------------------------------------------------


def test_register_keeps_actor_offers_sorted_and_checks_their_bounds(c: Mesh) -> None:
    c.ok(c.node("n3", ActorOffer("room", ("gpu", "arm"), 5)))
    assert c.st.members["n3"].actors == {"room": ActorOffer("room", ("arm", "gpu"), 5)}
    bad: list[tuple[str | ActorOffer, ...]] = [
        ("room", "room"),
        (ActorOffer("room", max_activations=limits.MAX_ACTIVATIONS_PER_NODE + 1),),
        (ActorOffer("room", ("a", "a")),),
        ("bad type",),
    ]
    for actors in bad:
        res = c.unchanged(c.node("n4", *actors), Code.INVALID_ARGUMENT)
        assert res.message


# ---- durable sends, placement, activation ----------------------------------------------------


def test_offered_types_are_an_index_kept_by_registrations(c: Mesh) -> None:
    """A send checks its target type against a per-type count (O(1)), not every member."""
    assert c.st.actor_offers == {"room": 2, "bidder": 1}
    c.ok(c.node("n2", "bidder", incarnation="inc-2"))  # re-registered with other offers
    assert c.st.actor_offers == {"room": 1, "bidder": 2}
    c.ok(c.node("n1", incarnation="inc-2"))
    assert c.st.actor_offers == {"bidder": 1}
    assert (
        "no node offers actor type 'room'"
        in c.unchanged(c.send(c.msg("room/a")), Code.FAILED_PRECONDITION).message
    )
    c.st.actor_offers.clear()
    c.st.rebuild_indexes()
    assert c.st.actor_offers == {"bidder": 1}


def test_send_activates_the_target_on_the_least_loaded_node(c: Mesh) -> None:
    sent = c.sent(c.msg("room/a"))
    rev = c.st.revision
    a = c.act("room/a")
    assert (a.node, a.epoch, a.deadline_ms) == ("n1", rev, c.ts + LEASE)  # tie: the lower node id
    assert sent.targets == (("room/a",),) and c.queued("room/a") == list(sent.seqs)
    assert ActivationChanged(rev, "room/a", "n1", rev, True) in c.events
    assert MessageQueued(rev, "room/a", "n1") in c.events
    c.sent(c.msg("room/b"))
    assert c.act("room/b").node == "n2"  # n1 holds one already
    c.sent(c.msg("room/a"))  # an activated target keeps its activation
    assert c.act("room/a").epoch == rev and len(c.queued("room/a")) == 2


def test_send_is_validated_whole_and_all_or_nothing(c: Mesh) -> None:
    c.unchanged(c.send(), Code.INVALID_ARGUMENT)
    c.unchanged(c.send(c.msg("room/a"), c.msg("room/b", topic="t")), Code.INVALID_ARGUMENT)
    c.unchanged(c.send(c.msg("room/a"), c.msg("nobody/x")), Code.FAILED_PRECONDITION)
    assert not c.st.messages.mailboxes and not c.st.messages.activations


def test_unset_ttl_and_time_are_filled_and_an_expired_message_is_dead_lettered_at_once(c: Mesh) -> None:
    sent = c.sent(c.msg("room/a", ttl_ms=0, sent_ms=0))
    q = c.st.messages.mailboxes["room/a"].queue[sent.seqs[0]].message
    assert (q.sent_ms, q.ttl_ms, q.durable) == (c.ts, limits.DEFAULT_MESSAGE_TTL_MS, True)
    old = c.msg("room/b", sent_ms=c.ts - 10, ttl_ms=5)
    sent = c.sent(old)
    assert sent.targets == ((),) and "room/b" not in c.st.messages.activations
    assert c.dead_reasons() == [(old.id, "expired before it was committed")]


def test_a_retried_send_with_the_same_request_id_queues_once(c: Mesh) -> None:
    cmd = c.send(c.msg("room/a"), rid="send-1")
    first = c.ok(cmd)
    again = c.unchanged(cmd)
    assert again == first and len(c.queued("room/a")) == 1


def test_placement_respects_max_activations_and_skips_down_nodes(c: Mesh) -> None:
    c.ok(c.node("n3", ActorOffer("solo", max_activations=1)))
    c.sent(c.msg("solo/a"))
    assert c.act("solo/a").node == "n3"
    c.sent(c.msg("solo/b"))  # n3 is full for solo: b waits unplaced
    assert "solo/b" not in c.st.messages.activations and "solo/b" in c.st.messages.unplaced
    c.ok(NodeDown(c.rid(), c.ts, node_id="n2", incarnation="inc-1"))
    c.sent(c.msg("room/x"), c.msg("room/y"))
    assert c.act("room/x").node == "n1" and c.act("room/y").node == "n1"


def test_an_unplaced_address_is_placed_when_a_node_offering_it_registers(c: Mesh) -> None:
    c.ok(c.node("n3", "lonely"))
    c.ok(NodeDown(c.rid(), c.ts, node_id="n3", incarnation="inc-1"))
    c.sent(c.msg("lonely/k"))  # a member offered it once: the message waits
    assert c.st.messages.unplaced == {"lonely/k": None}
    c.ok(c.node("n3", "lonely", incarnation="inc-2"))
    assert c.act("lonely/k").node == "n3" and not c.st.messages.unplaced


def test_activate_grants_once_and_says_why_it_cannot(c: Mesh) -> None:
    res = expect(c.ok(Activate(c.rid(), c.ts, address="room/a")), ActivationResult)
    assert res.created and res.epoch == c.st.revision and res.node == "n1"
    again = expect(c.unchanged(Activate(c.rid(), c.ts, address="room/a")), ActivationResult)
    assert (again.epoch, again.created) == (res.epoch, False)
    c.unchanged(Activate(c.rid(), c.ts, address="ghost/a"), Code.FAILED_PRECONDITION)
    c.unchanged(Activate(c.rid(), c.ts, address="no-slash"), Code.INVALID_ARGUMENT)
    c.ok(c.node("n3", ActorOffer("solo", max_activations=1)))
    c.ok(Activate(c.rid(), c.ts, address="solo/1"))
    c.unchanged(Activate(c.rid(), c.ts, address="solo/2"), Code.FAILED_PRECONDITION)


# ---- acks: effect-once, fencing --------------------------------------------------------------


def test_an_ack_commits_the_turn_atomically_and_once(c: Mesh) -> None:
    c.ok(c.node("n3", "ledger"))
    [seq] = c.sent(c.msg("room/a", reply_to="n2", correlation_id="")).seqs
    reply = c.msg("", "ok", correlation_id="req-9")
    turn = c.ack(
        "room/a",
        seq,
        kv=(KvOp("put", "actors/room/a", {"n": 1}),),
        sends=(c.msg("ledger/x", "entry"),),
        reply=reply,
    )
    res = expect(c.ok(turn), MessageAcked)
    assert res.applied and res.revision == c.st.revision
    assert c.st.kv.get("actors/room/a").value == {"n": 1}  # type: ignore[union-attr]
    assert len(c.queued("ledger/x")) == 1 and c.queued("room/a") == []
    assert "room/a" not in c.st.messages.mailboxes
    # Kept for the request's sender (ids are per sender): another's request "req-9" is not answered by it.
    assert list(c.st.messages.replies) == [reply_key("client:t", "req-9")]
    kept = c.st.messages.replies[reply_key("client:t", "req-9")][1]
    assert (kept.epoch, kept.reply_to) == (c.act("room/a").epoch, "n2")
    assert ReplyCommitted(res.revision, "req-9", "n2") in c.events
    # Redelivered and handled again: the same seq applies nothing.
    dup = c.ack("room/a", seq, kv=(KvOp("put", "actors/room/a", {"n": 2}),), sends=(c.msg("ledger/x"),))
    assert expect(c.unchanged(dup), MessageAcked) == MessageAcked(False, c.st.revision)
    assert c.st.kv.get("actors/room/a").value == {"n": 1}  # type: ignore[union-attr]


def test_a_stale_epoch_or_another_node_is_fenced_out(c: Mesh) -> None:
    [seq] = c.sent(c.msg("room/a")).seqs
    epoch = c.act("room/a").epoch
    c.unchanged(c.ack("room/a", seq, epoch=epoch - 1), Code.ABORTED)
    c.unchanged(c.ack("room/a", seq, node_id="n2"), Code.ABORTED)
    c.unchanged(c.ack("room/zzz", 0, epoch=epoch), Code.ABORTED)
    fence = Fence(actor="room/a", token=epoch)
    c.ok(KvTxn(c.rid(), c.ts, success=(KvOp("put", "k", 1),), fence=fence))
    stale = Fence(actor="room/a", token=epoch - 1)
    c.unchanged(KvTxn(c.rid(), c.ts, success=(KvOp("put", "k", 2),), fence=stale), Code.ABORTED)
    c.unchanged(c.send(c.msg("room/b"), fence=stale), Code.ABORTED)
    c.ok(c.send(c.msg("room/b"), fence=fence))


def test_a_fast_path_turn_has_no_mailbox_entry(c: Mesh) -> None:
    c.ok(Activate(c.rid(), c.ts, address="room/a"))
    c.unchanged(c.ack("room/a", 0))  # nothing to commit
    res = expect(c.ok(c.ack("room/a", 0, kv=(KvOp("put", "x", 1),))), MessageAcked)
    assert res.applied and c.st.kv.get("x") is not None
    c.unchanged(c.ack("room/a", 0, kv=(KvOp("get", "x"),)), Code.INVALID_ARGUMENT)
    c.unchanged(c.ack("room/a", -1), Code.INVALID_ARGUMENT)
    c.unchanged(c.ack("room/a", 0, reply=c.msg("")), Code.INVALID_ARGUMENT)  # a reply names its request


# ---- leases --------------------------------------------------------------------------------


def test_a_renewed_lease_lives_and_an_idle_one_ends_at_its_deadline(c: Mesh) -> None:
    c.ok(Activate(c.rid(), c.ts, address="room/a"))
    a = c.act("room/a")
    assert c.st.next_deadline_ms() == a.deadline_ms
    c.ts += LEASE - 1
    res = c.renew("n1", ("room/a", a.epoch), ("room/gone", 1))
    assert res == RenewResult(1, ("room/gone",)) and c.act("room/a").deadline_ms == c.ts + LEASE
    c.tick(c.ts + LEASE)
    assert "room/a" not in c.st.messages.activations
    assert ActivationChanged(c.st.revision, "room/a", "n1", a.epoch, False) in c.events


def test_an_expired_lease_with_queued_messages_moves_with_a_newer_epoch(c: Mesh) -> None:
    [seq] = c.sent(c.msg("room/a", ttl_ms=10 * LEASE)).seqs
    old = c.act("room/a")
    c.ok(NodeDown(c.rid(), c.ts, node_id="n1", incarnation="inc-1"))
    assert c.act("room/a").epoch == old.epoch  # kept until the lease ends: n1 may still be handling
    assert c.renew("n1", ("room/a", old.epoch)).lost == ("room/a",)  # a down node renews nothing
    c.tick(old.deadline_ms)
    new = c.act("room/a")
    assert new.node == "n2" and new.epoch > old.epoch and c.queued("room/a") == [seq]
    c.unchanged(c.ack("room/a", seq, node_id="n1", epoch=old.epoch), Code.ABORTED)
    assert expect(c.ok(c.ack("room/a", seq)), MessageAcked).applied


def test_a_new_incarnation_drops_the_old_processes_activations_at_once(c: Mesh) -> None:
    c.sent(c.msg("bidder/q"))
    c.ok(Activate(c.rid(), c.ts, address="bidder/idle"))
    old = c.act("bidder/q")
    c.ok(c.node("n1", "room", "bidder", incarnation="inc-2"))
    assert "bidder/idle" not in c.st.messages.activations
    new = c.act("bidder/q")  # queued: placed again at once (n1's new process is the only offer)
    assert (new.node, new.incarnation) == ("n1", "inc-2") and new.epoch > old.epoch
    c.ok(c.node("n1", "room", "bidder", incarnation="inc-2"))  # same process again: kept
    assert c.act("bidder/q").epoch == new.epoch


def test_deactivate_gives_up_an_idle_activation_only(c: Mesh) -> None:
    [seq] = c.sent(c.msg("room/a")).seqs
    a = c.act("room/a")
    c.unchanged(
        Deactivate(c.rid(), c.ts, node_id="n1", address="room/a", epoch=a.epoch), Code.FAILED_PRECONDITION
    )
    c.ok(c.ack("room/a", seq))
    stale = c.unchanged(Deactivate(c.rid(), c.ts, node_id="n1", address="room/a", epoch=a.epoch - 1))
    assert stale == RenewResult(0, ("room/a",))
    c.ok(Deactivate(c.rid(), c.ts, node_id="n1", address="room/a", epoch=a.epoch))
    assert "room/a" not in c.st.messages.activations


def test_a_freed_slot_places_an_unplaced_address(c: Mesh) -> None:
    c.ok(c.node("n3", ActorOffer("solo", max_activations=1)))
    c.ok(Activate(c.rid(), c.ts, address="solo/1"))
    c.sent(c.msg("solo/2"))
    assert "solo/2" in c.st.messages.unplaced
    epoch = c.act("solo/1").epoch
    c.ok(Deactivate(c.rid(), c.ts, node_id="n3", address="solo/1", epoch=epoch))
    assert c.act("solo/2").node == "n3" and not c.st.messages.unplaced


# ---- TTL and dead letters --------------------------------------------------------------------


def test_a_queued_message_past_its_ttl_becomes_a_dead_letter(c: Mesh) -> None:
    m = c.msg("room/a", ttl_ms=1000)
    [seq] = c.sent(m).seqs
    epoch = c.act("room/a").epoch
    assert c.st.next_deadline_ms() == m.expires_ms
    c.tick(m.expires_ms)
    assert c.queued("room/a") == [] and c.dead_reasons() == [(m.id, "expired")]
    late = c.ack("room/a", seq, epoch=epoch, node_id="n1", kv=(KvOp("put", "x", 1),))
    assert expect(c.unchanged(late), MessageAcked).applied is False


def test_an_ack_after_the_ttl_is_not_applied_and_dead_letters_it(c: Mesh) -> None:
    m = c.msg("room/a", ttl_ms=1000)
    [seq] = c.sent(m).seqs
    res = expect(c.ok(c.ack("room/a", seq, ts=m.expires_ms, kv=(KvOp("put", "x", 1),))), MessageAcked)
    assert not res.applied and c.st.kv.get("x") is None
    assert c.dead_reasons() == [(m.id, "expired")]


def test_an_ack_that_gives_up_dead_letters_the_message_in_the_same_command(c: Mesh) -> None:
    m = c.msg("room/a", reply_to="n9")
    [seq] = c.sent(m).seqs
    a = c.act("room/a")
    for bad in (
        c.ack("room/a", 0, dead_letter="gave up"),  # a fast message has no mailbox entry
        c.ack("room/a", seq, dead_letter="gave up", kv=(KvOp("put", "x", 1),)),
        c.ack("room/a", seq, dead_letter="\x00"),
        c.ack("room/a", seq, dead_letter="x" * (limits.MAX_DEAD_LETTER_REASON_CHARS + 1)),
    ):
        assert c.unchanged(bad, Code.INVALID_ARGUMENT).message
    # A fenced give-up leaves the message queued for the next activation: not dead-lettered.
    c.unchanged(c.ack("room/a", seq, epoch=a.epoch - 1, dead_letter="gave up"), Code.ABORTED)
    assert c.queued("room/a") == [seq] and c.dead_reasons() == []
    err = Message("r1", "room/a", "", correlation_id=m.id, reply_to="n9", payload={"error": "E"})
    res = expect(c.ok(c.ack("room/a", seq, dead_letter="handler failed 3 times: E", reply=err)), MessageAcked)
    assert res.applied and c.queued("room/a") == []
    assert c.dead_reasons() == [(m.id, "handler failed 3 times: E")]
    assert c.st.messages.dead_letters[-1].node == "n1"
    assert reply_key(m.sender, m.id) in c.st.messages.replies
    # Effect-once: a retried give-up (another request id) applies nothing more.
    assert not expect(c.ok(c.ack("room/a", seq, dead_letter="again")), MessageAcked).applied
    assert len(c.st.messages.dead_letters) == 1


def test_an_ack_without_a_dead_letter_encodes_as_before() -> None:
    plain = AckMessage("r", 1, node_id="n1", address="room/a", epoch=3, seq=4)
    assert "dead_letter" not in plain.to_map()
    assert decode_command(encode_command(plain)) == plain
    given_up = replace(plain, dead_letter="gave up")
    assert decode_command(encode_command(given_up)) == given_up


def test_one_ack_acknowledges_many_effect_free_turns_each_once(c: Mesh) -> None:
    ms = [c.msg("room/a", ttl_ms=1000 if i == 3 else 0) for i in range(5)]
    seqs = c.sent(*ms).seqs
    a = c.act("room/a")
    for bad in (
        c.ack("room/a", 0, also=(seqs[1],)),  # with a seq
        c.ack("room/a", seqs[0], also=(seqs[1],), kv=(KvOp("put", "x", 1),)),  # effect-free only
        c.ack("room/a", seqs[0], also=(seqs[1], seqs[1])),
        c.ack("room/a", seqs[0], also=(seqs[0],)),
        c.ack("room/a", seqs[0], also=(-1,)),
        c.ack("room/a", seqs[0], also=tuple(range(10**6, 10**6 + limits.MAX_ACKS_PER_COMMAND))),
    ):
        assert c.unchanged(bad, Code.INVALID_ARGUMENT).message
    c.unchanged(c.ack("room/a", seqs[0], also=(seqs[1],), epoch=a.epoch - 1), Code.ABORTED)
    assert expect(c.ok(c.ack("room/a", seqs[1])), MessageAcked).applied  # acked alone before
    # seqs[1] was acked already, seqs[3] expired (dead-lettered, not acked): the rest applies once.
    batch = c.ack("room/a", seqs[0], also=(seqs[1], seqs[2], seqs[3]), ts=ms[3].expires_ms)
    assert expect(c.ok(batch), MessageAcked).applied
    assert c.queued("room/a") == [seqs[4]] and c.dead_reasons() == [(ms[3].id, "expired")]
    again = c.ack("room/a", seqs[0], also=(seqs[2],))
    assert expect(c.unchanged(again), MessageAcked).applied is False
    assert decode_command(encode_command(batch)) == batch
    assert "also" not in c.ack("room/a", seqs[4]).to_map()


def test_recorded_dead_letters_are_bounded_and_counted(c: Mesh, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_MESSAGE_DEAD_LETTERS", 3)
    items = tuple(MessageDeadLetter(c.msg("room/a"), "undeliverable: peer gone") for _ in range(5))
    res = c.ok(RecordDeadLetters(c.rid(), c.ts, node_id="n2", items=items))
    assert res == ChangedResult(5)
    assert [d.letter.message.id for d in c.st.messages.dead_letters] == [i.message.id for i in items[2:]]
    assert c.st.messages.dead_letters_total == 5 and c.st.messages.dead_letters[0].node == "n2"
    bad = (MessageDeadLetter(c.msg("room/a"), "bad\nreason"),)
    c.unchanged(RecordDeadLetters(c.rid(), c.ts, node_id="n2", items=bad), Code.INVALID_ARGUMENT)
    c.unchanged(RecordDeadLetters(c.rid(), c.ts, node_id="n2", items=()), Code.INVALID_ARGUMENT)


# ---- bounds ----------------------------------------------------------------------------------


def test_a_full_mailbox_rejects_the_whole_send(c: Mesh, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_MAILBOX_MESSAGES", 2)
    c.sent(c.msg("room/a"))
    c.unchanged(c.send(c.msg("room/b"), c.msg("room/a"), c.msg("room/a")), Code.RESOURCE_EXHAUSTED)
    monkeypatch.setattr(limits, "MAX_QUEUED_MESSAGES", 2)
    c.unchanged(c.send(c.msg("room/b"), c.msg("room/c")), Code.RESOURCE_EXHAUSTED)
    c.sent(c.msg("room/b"))


# ---- topics --------------------------------------------------------------------------------


def sub(c: Mesh, topic: str, subscriber: str, subscribe: bool = True) -> SubscribeTopic:
    return SubscribeTopic(c.rid(), c.ts, topic=topic, subscriber=subscriber, subscribe=subscribe)


def test_a_publish_fans_out_to_type_and_key_subscribers_and_is_retained(c: Mesh) -> None:
    assert c.ok(sub(c, "bids", "room")) == ChangedResult(1)
    assert c.unchanged(sub(c, "bids", "room")) == ChangedResult(0)
    c.ok(sub(c, "bids", "bidder/alice"))
    c.ok(sub(c, "bids", "room/lot7"))
    c.ok(sub(c, "bids", "ghost"))  # nobody offers it: that leg is a dead letter, not silence
    p = c.msg("", 42, topic="bids", source="lot7")
    sent = c.sent(p)
    assert sorted(sent.targets[0]) == ["bidder/alice", "room/lot7"]  # the type and key legs coincide
    seq = sent.seqs[0]
    assert c.queued("room/lot7") == [seq] and c.queued("bidder/alice") == [seq]
    leg = c.st.messages.mailboxes["bidder/alice"].queue[seq].message
    assert (leg.target, leg.topic, leg.id) == ("bidder/alice", "bids", p.id)  # each leg names its subscriber
    assert [x.seq for x in c.st.messages.topics["bids"]] == [seq]
    assert TopicPublished(c.st.revision, "bids", seq) in c.events
    assert c.dead_reasons() == [(p.id, "undeliverable: no node offers actor type 'ghost'")]
    assert c.st.messages.dead_letters[0].letter.message.target == "ghost/lot7"
    c.sent(c.msg("", 1, topic="bids"))
    assert c.queued("room/default") != []
    c.ok(sub(c, "bids", "room", subscribe=False))
    assert set(c.st.messages.subscriptions["bids"]) == {"bidder/alice", "room/lot7", "ghost"}


def test_topic_logs_are_bounded(c: Mesh, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_TOPIC_RETAINED", 2)
    monkeypatch.setattr(limits, "MAX_TOPICS_RETAINED", 2)
    for _ in range(3):
        c.sent(c.msg("", 1, topic="a"))
    assert len(c.st.messages.topics["a"]) == 2
    c.sent(c.msg("", 1, topic="b"))
    c.sent(c.msg("", 1, topic="a"))  # "a" is now the newest-written
    c.sent(c.msg("", 1, topic="c"))
    assert sorted(c.st.messages.topics) == ["a", "c"]


def test_subscriptions_are_bounded(c: Mesh, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_SUBSCRIBERS_PER_TOPIC", 1)
    c.ok(sub(c, "t", "room"))
    c.unchanged(sub(c, "t", "bidder"), Code.RESOURCE_EXHAUSTED)
    monkeypatch.setattr(limits, "MAX_SUBSCRIPTIONS", 1)
    c.unchanged(sub(c, "u", "bidder"), Code.RESOURCE_EXHAUSTED)
    c.unchanged(sub(c, "u", "bad type"), Code.INVALID_ARGUMENT)


# ---- replies -------------------------------------------------------------------------------


def test_replies_are_kept_once_and_forgotten_by_age_and_count(
    c: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "MAX_RETAINED_REPLIES", 2)
    c.ok(Activate(c.rid(), c.ts, address="room/a"))
    for i in range(3):
        c.ok(c.ack("room/a", 0, reply=c.msg("", i, correlation_id=f"q{i}", reply_to="n2")))
    c.ok(c.ack("room/a", 0, reply=c.msg("", "again", correlation_id="q2")))
    assert list(c.st.messages.replies) == [reply_key("", "q1"), reply_key("", "q2")]
    assert c.st.messages.replies[reply_key("", "q2")][1].payload == 2  # the first answer stands
    c.ts += limits.REPLY_RETENTION_MS + 1
    c.renew("n1", ("room/a", c.act("room/a").epoch))
    c.tick(c.ts)
    assert not c.st.messages.replies


def test_a_snapshot_restores_every_messaging_structure(c: Mesh) -> None:
    c.ok(sub(c, "t", "room"))
    c.sent(c.msg("room/a"), c.msg("", 1, topic="t"), c.msg("bidder/b"))
    c.ok(RecordDeadLetters(c.rid(), c.ts, node_id="n1", items=(MessageDeadLetter(c.msg("room/z"), "gone"),)))
    copy = type(c.st).decode(c.st.encode())
    assert copy.digest() == c.st.digest() and copy.messages.encode() == c.st.messages.encode()
    assert copy.messages.index_snapshot() == c.st.messages.index_snapshot()


# ---- the leader ticks when messaging's deadlines are due -----------------------------------------


def test_the_scheduler_ticks_when_a_lease_or_a_message_ttl_is_due(c: Mesh) -> None:
    clock = ManualClock(start_ms=c.ts)
    s = Scheduler(reads_of(c.sm), MachineWriter(c.sm), lambda: True, "n1", Liveness(clock, "n1", 60.0), clock)
    m = c.msg("room/a", ttl_ms=LEASE // 2)
    c.sent(m)
    c.ok(Activate(c.rid(), c.ts, address="room/b"))
    assert [x for x in s.decide(c.st) if isinstance(x, Tick)] == []  # nothing due yet

    def step() -> None:
        async def go() -> None:
            for cmd in s.decide(c.st):
                await s._propose(cmd)

        asyncio.run(go())

    clock.advance(LEASE / 2000)  # the message's TTL
    step()
    assert c.queued("room/a") == [] and c.dead_reasons() == [(m.id, "expired")]
    assert "room/b" in c.st.messages.activations
    clock.advance(LEASE / 2000)  # the leases (room/a's went idle: dropped, not moved)
    step()
    assert c.st.messages.activations == {}


def test_the_cluster_caps_and_malformed_fences_and_renewals(c: Mesh, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_ACTIVATIONS", 1)
    c.ok(Activate(c.rid(), c.ts, address="room/a"))
    c.unchanged(Activate(c.rid(), c.ts, address="room/b"), Code.RESOURCE_EXHAUSTED)
    c.sent(c.msg("room/b"))  # a durable message waits for room instead
    assert "room/b" in c.st.messages.unplaced
    bad = KvTxn(c.rid(), c.ts, success=(KvOp("put", "k", 1),), fence=Fence(actor="no-slash", token=1))
    c.unchanged(bad, Code.INVALID_ARGUMENT)
    monkeypatch.setattr(limits, "MAX_ACTIVATIONS_PER_NODE", 1)
    items = (("room/a", 1), ("room/b", 1))
    cmd = RenewActivations(c.rid(), c.ts, node_id="n1", incarnation="inc-1", items=items)
    c.unchanged(cmd, Code.INVALID_ARGUMENT)
    monkeypatch.setattr(limits, "MAX_ACTOR_TYPES_PER_NODE", 1)
    c.unchanged(c.node("n5", "room", "bidder"), Code.INVALID_ARGUMENT)


def test_renewals_and_acks_leave_bounded_heaps_on_every_replica(c: Mesh) -> None:
    """Followers never ask for the next deadline (only the leader does): the heaps must stay
    bounded by themselves."""
    c.sent(c.msg("room/keep", ttl_ms=limits.MAX_MESSAGE_TTL_MS))  # a live entry at the heap's top
    epoch = c.act("room/keep").epoch
    for _ in range(300):
        c.ts += 100
        c.renew("n1", ("room/keep", epoch))
        [seq] = c.sent(c.msg("room/other", ttl_ms=limits.MAX_MESSAGE_TTL_MS)).seqs
        c.ok(c.ack("room/other", seq))
        c.sent(c.msg("", 1, topic="t"))
    store = c.st.messages
    assert len(store.lease_deadlines) <= 2 * len(store.activations) + 64
    assert len(store.expiries) <= 2 * store.queued + 64
    assert len(store.topic_order) <= 2 * len(store.topics) + 64


def test_a_handler_takes_the_highest_priority_first_then_commit_order(c: Mesh) -> None:
    low, high1, high2 = c.msg("room/a", priority=-1), c.msg("room/a", priority=5), c.msg("room/a", priority=5)
    c.sent(low, high1)
    c.sent(high2, c.msg("room/a"))
    order = [q.message.id for q in in_delivery_order(c.st.messages.mailboxes["room/a"])]
    assert order[:2] == [high1.id, high2.id] and order[-1] == low.id


def test_the_read_views_digest_covers_messaging(c: Mesh) -> None:
    """``status --digest`` (the read view's incremental digest) equals the state's."""
    view = ReadView(threading.RLock(), lambda: c.st)
    c.ok(SubscribeTopic(c.rid(), c.ts, topic="t", subscriber="room"))
    for cmd in (c.send(c.msg("room/a")), c.send(c.msg("", 1, topic="t"))):
        c.ok(cmd)
        assert view.digest() == (c.st.revision, c.st.digest())
    c.ok(c.ack("room/a", c.queued("room/a")[0]))
    assert view.digest() == (c.st.revision, c.st.digest())
