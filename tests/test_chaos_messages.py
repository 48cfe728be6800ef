"""The chaos message checker on synthetic histories (pure, fast), and the log's messaging audit.

Each test builds what the senders saw (``MessageCall``), the committed turns the chaos actor
recorded (``Effect``), dead letters and kills, breaks one promise and expects exactly that
invariant to count it, and the harmless look-alikes (a dead-lettered message, a fast message
redelivered after its target moved, a loss on a killed node) not to.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from raftmesh.chaos.message_check import (
    MESSAGE_INVARIANTS,
    MSG_DOUBLE,
    MSG_EXPIRED,
    MSG_FAST_LOST,
    MSG_LOST,
    MSG_PHANTOM,
    MSG_REORDERED_DURABLE,
    MSG_REORDERED_FAST,
    MSG_REPLY,
    MSG_STATE,
    MSG_STUCK,
    MSG_TWICE,
    DeadRecord,
    Effect,
    Kill,
    MessageCall,
    MessageCheck,
    check_messages,
)
from raftmesh.consensus import message_commands
from raftmesh.consensus.codes import Code
from raftmesh.consensus.commands import (
    AckMessage,
    ActorOffer,
    Command,
    Deactivate,
    KvOp,
    Message,
    RegisterNode,
    SendMessages,
    Tick,
    encode_batch,
)
from raftmesh.consensus.context import ApplyContext
from raftmesh.consensus.machine import PROCESSORS, StateMachine
from raftmesh.consensus.messages import Activation, Mailbox, Queued
from raftmesh.consensus.results import MessageAcked, Rejected, Result
from raftmesh.verify.audit import Audit
from raftmesh.verify.message_audit import MessageAudit

T = "chaos_log/k0"


class History:
    """Builds calls and their effects: each ``call`` is sequential (returns before the next)."""

    def __init__(self) -> None:
        self.calls: list[MessageCall] = []
        self.effects: list[Effect] = []
        self.now = 1_000
        self.rev = 100
        self.n: dict[str, int] = {}
        self.seq: dict[tuple[str, str], int] = {}

    def call(
        self,
        path: str = "durable",
        *,
        sender: str = "m0",
        kind: str = "send",
        target: str = T,
        outcome: str = "ok",
        effects: int = 1,
        epoch: int = 5,
        node: str = "n1",
        ttl_ms: int = 0,
    ) -> MessageCall:
        key = (sender, path)
        self.seq[key] = self.seq.get(key, 0) + 1
        mid = f"{sender}-{path[0]}{self.seq[key]}"
        c = MessageCall(sender, path, kind, self.seq[key], mid, target, self.now, ttl_ms)  # type: ignore[arg-type]
        for _ in range(effects):
            self.effect(c, epoch=epoch, node=node)
        self.now += 10
        c.return_ms, c.outcome = self.now, outcome  # type: ignore[assignment]
        if kind == "request" and outcome == "ok" and effects:
            last = self.effects[-1]
            c.reply, c.reply_epoch = {"n": last.n, "epoch": last.epoch, "node": last.node}, last.epoch
        self.calls.append(c)
        self.now += 5
        return c

    def effect(self, c: MessageCall, *, epoch: int = 5, node: str = "n1", **kw: Any) -> Effect:
        n = self.n[c.target] = self.n.get(c.target, 0) + 1
        self.rev += 1
        fields: dict[str, Any] = dict(
            address=c.target,
            n=n,
            mid=c.mid,
            sender=c.sender,
            path=c.path,
            seq=c.seq,
            epoch=epoch,
            node=node,
            start_ms=self.now + 1,
            expires_ms=c.call_ms + (c.ttl_ms or 60_000),
            revision=self.rev,
        )
        fields.update(kw)
        e = Effect(**fields)
        self.effects.append(e)
        return e

    def check(
        self, dead: list[DeadRecord] | None = None, kills: list[Kill] | None = None, **kw: Any
    ) -> MessageCheck:
        return check_messages(self.calls, self.effects, dead or [], kills or [], **kw)


def swap(effects: list[Effect], i: int, j: int) -> None:
    """Commit ``effects[i]`` and ``effects[j]`` in each other's place (revision and ordinal)."""
    a, b = effects[i], effects[j]
    effects[i] = Effect(**{**vars(a), "revision": b.revision, "n": b.n})
    effects[j] = Effect(**{**vars(b), "revision": a.revision, "n": a.n})


def counts(result: MessageCheck) -> dict[str, int]:
    return {name: i.count for name, i in result.invariants.items() if i.count}


def test_a_clean_history_of_both_paths_has_no_violation() -> None:
    h = History()
    for i in range(4):
        h.call("durable", kind="send" if i % 2 else "request")
        h.call("fast", kind="request" if i % 2 else "send", target="chaos_log/k1")
    h.call("fast", outcome="unknown", effects=0)
    h.call("durable", outcome="unknown", effects=1)
    result = h.check()
    assert counts(result) == {}, {n: i.examples for n, i in result.invariants.items() if i.count}
    assert set(result.invariants) == set(MESSAGE_INVARIANTS)
    assert result.stats["unknown_with_effect"] == 1 and result.stats["unknown_without_effect"] == 1
    assert result.stats["ordered_pairs_checked"] == {"durable": 3, "fast": 3}


def test_an_acknowledged_durable_message_without_effect_is_lost_unless_dead_lettered() -> None:
    h = History()
    lost = h.call("durable", effects=0)
    expired = h.call("durable", effects=0, ttl_ms=100)
    h.call("durable", outcome="unknown", effects=0)  # may never have been committed
    stuck = h.call("durable", effects=0)
    result = h.check([DeadRecord(expired.mid, "expired")], queued=[stuck.mid])
    assert counts(result) == {MSG_LOST: 1, MSG_STUCK: 1}
    assert lost.mid in result.invariants[MSG_LOST].examples[0]
    assert result.stats["dead_lettered_acknowledged"] == {"durable: expired": 1}


def test_effects_applied_twice_are_reported_but_a_fast_redelivery_after_a_move_is_not() -> None:
    h = History()
    twice = h.call("durable", effects=2)
    h.call("fast", effects=2)  # one activation handled it twice: the receiver's dedup failed
    moved = h.call("fast")
    h.effect(moved, epoch=9, node="n2")  # the target moved to n2: at least once allows it
    restarted = h.call("fast", epoch=9, node="n2")
    h.effect(restarted, epoch=11, node="n2")  # same node, new epoch after a kill: a new process
    rewritten = h.call("durable", epoch=11, node="n2")
    h.effects[-1] = Effect(**{**vars(h.effects[-1]), "version": 2})
    kills = [Kill("n2", h.effects[-2].start_ms - 1)]
    result = h.check(kills=kills)
    assert counts(result) == {MSG_TWICE: 3}, result.invariants[MSG_TWICE].examples
    examples = " ".join(result.invariants[MSG_TWICE].examples)
    assert twice.mid in examples and rewritten.mid in examples
    assert result.stats["fast_redelivered_after_move"] == 2
    # Without the kill, n2's second epoch is the same process: its dedup should have caught it.
    assert counts(h.check())[MSG_TWICE] == 4


def test_reordering_per_sender_is_reported_on_each_path_and_unknown_calls_are_not_ordered() -> None:
    h = History()
    a = h.call("durable")
    b = h.call("durable")
    # b took effect before a although a was acknowledged before b was sent.
    swap(h.effects, -2, -1)
    h.call("fast", target="chaos_log/k1")
    h.call("fast", target="chaos_log/k1", outcome="unknown")
    h.call("fast", target="chaos_log/k1")
    swap(h.effects, -2, -1)  # the unknown one took effect last: it may, its outcome was never known
    h.call("fast", target="chaos_log/k2", sender="m1")
    h.call("fast", target="chaos_log/k2", sender="m1")
    swap(h.effects, -2, -1)
    result = h.check()
    assert counts(result) == {MSG_REORDERED_DURABLE: 1, MSG_REORDERED_FAST: 1}
    assert b.mid in result.invariants[MSG_REORDERED_DURABLE].examples[0]
    assert a.mid in result.invariants[MSG_REORDERED_DURABLE].examples[0]


def test_other_senders_and_targets_do_not_order_each_other() -> None:
    h = History()
    h.call("durable", sender="m0")
    h.call("durable", sender="m1")
    h.call("durable", sender="m0", target="chaos_log/k1")
    swap(h.effects, 0, 1)  # m1's message took effect before m0's first: another sender
    h.effects[2] = Effect(**{**vars(h.effects[2]), "revision": 1})  # another target, earlier
    assert counts(h.check()) == {}


def test_effects_show_double_activations_and_state_that_skipped_a_turn() -> None:
    h = History()
    h.call(epoch=5, node="n1")
    h.call(epoch=9, node="n2")
    h.call(epoch=5, node="n1")  # a stale epoch committed after the newer one
    result = h.check()
    assert counts(result) == {MSG_DOUBLE: 1}

    h = History()
    h.call(epoch=5, node="n1")
    h.call(epoch=9, node="n2")
    late = h.call(epoch=9, node="n2")
    # An epoch-5 turn that started after epoch 9's first turn yet committed before the third.
    h.effects.insert(2, Effect(**{**vars(h.effects[1]), "epoch": 5, "node": "n1", "mid": late.mid, "n": 99}))
    assert counts(h.check())[MSG_DOUBLE] == 1

    h = History()
    h.call()
    h.call()
    h.effects[1] = Effect(**{**vars(h.effects[1]), "n": 1})  # two turns from one state
    assert counts(h.check()) == {MSG_DOUBLE: 1}

    h = History()
    h.call()
    h.call()
    h.effects[1] = Effect(**{**vars(h.effects[1]), "n": 3})  # the state saw a turn that never committed
    assert counts(h.check()) == {MSG_STATE: 1}


def test_an_acknowledged_fast_message_is_never_lost_whichever_node_died() -> None:
    """A fast message is acknowledged once its handler took it: one acknowledged with no effect
    and no dead letter is lost, even if the node that held its target was killed after."""
    h = History()
    h.call("fast", node="n1")
    lost = h.call("fast", effects=0)
    h.call("fast", node="n2", epoch=9)
    result = h.check(kills=[Kill("n1", lost.return_ms + 500)])
    assert counts(result) == {MSG_FAST_LOST: 1}
    assert counts(h.check()) == {MSG_FAST_LOST: 1}
    # A dead-lettered fast message is not lost.
    result = h.check([DeadRecord(lost.mid, "undeliverable: target moved")])
    assert counts(result) == {}


def test_an_expired_message_must_not_take_effect() -> None:
    h = History()
    d = h.call("durable", ttl_ms=100)
    h.effects[-1] = Effect(**{**vars(h.effects[-1]), "start_ms": d.call_ms + 101})
    f = h.call("fast", ttl_ms=100)
    h.effects[-1] = Effect(**{**vars(h.effects[-1]), "start_ms": f.call_ms + 130})  # within the slack
    g = h.call("fast", ttl_ms=100)
    h.effects[-1] = Effect(**{**vars(h.effects[-1]), "start_ms": g.call_ms + 400})
    result = h.check()
    assert counts(result) == {MSG_EXPIRED: 2}
    assert result.stats["latest_fast_start_after_expiry_ms"] == 30


def test_a_reply_must_come_from_a_committed_turn() -> None:
    h = History()
    r = h.call("fast", kind="request")
    r.reply = {"n": 7, "epoch": 5, "node": "n1"}  # no committed turn 7
    s = h.call("durable", kind="request")
    s.reply_epoch = 4
    result = h.check()
    assert counts(result) == {MSG_REPLY: 2}


def test_effects_of_messages_never_sent_or_refused_are_phantoms() -> None:
    h = History()
    h.call("durable", outcome="failed", effects=1)
    stranger = MessageCall("zz", "durable", "send", 1, "zz-d1", T, 0)
    h.effect(stranger)
    result = h.check()
    assert counts(result) == {MSG_PHANTOM: 2}


def test_the_logs_findings_count_as_violations() -> None:
    h = History()
    h.call()
    audit = MessageAudit()
    audit.early_grants.append("log #9: chaos_log/k0 granted to n2 epoch 9 while n1 epoch 5's lease ran")
    result = h.check(audit=audit)
    assert counts(result) == {MSG_DOUBLE: 1}
    assert result.stats["log"]["acks_applied"] == 0
    assert "not audited" in h.check(audit_unavailable="compacted").stats["log"]


# ---- the log's messaging audit -------------------------------------------------------------


def _activate(m: StateMachine, address: str, node: str, epoch: int, deadline: int, inc: str = "i1") -> None:
    m.state.messages.activations[address] = Activation(address, node, inc, epoch, 0, deadline)


def _step(audit: MessageAudit, m: StateMachine, index: int, cmd: Any, res: Any, change: Any = None) -> None:
    """One command as the machine would have applied it: ``change(m)`` is its effect on the state."""
    pre = audit.before(cmd, m)
    m.state.time_ms = max(m.state.time_ms, cmd.ts_ms)
    if change is not None:
        change(m)
    audit.after(index, cmd, res, m, pre)


def test_the_audit_turns_activations_into_spans_and_flags_a_grant_before_the_lease_ended() -> None:
    m, audit = StateMachine(), MessageAudit()
    _step(audit, m, 1, Tick("r1", 1_000), None, lambda m: _activate(m, T, "n1", 10, 7_000))
    # Expired by a tick at its deadline and re-placed on n2: fine.
    _step(audit, m, 2, Tick("r2", 7_000), None, lambda m: _activate(m, T, "n2", 20, 13_000))
    # Replaced on n3 before n2's lease ran out, by a command that is not n2 letting go: flagged.
    _step(audit, m, 3, Tick("r3", 9_000), None, lambda m: _activate(m, T, "n3", 30, 15_000))
    # n3 restarts (a new incarnation): its activation may move at once.
    _step(
        audit,
        m,
        4,
        RegisterNode("r4", 9_500, node_id="n3", incarnation="i2"),
        None,
        lambda m: _activate(m, T, "n1", 40, 15_500),
    )
    # n1 gives it up itself; granted again at once elsewhere, fine. A lower epoch is flagged.
    _step(
        audit,
        m,
        5,
        Deactivate("r5", 9_600, node_id="n1", address=T, epoch=40),
        None,
        lambda m: _activate(m, T, "n2", 35, 15_600),
    )
    assert [(s.node, s.epoch, s.end_reason) for s in audit.spans] == [
        ("n1", 10, "tick"),
        ("n2", 20, "tick"),
        ("n3", 30, "register_node"),
        ("n1", 40, "deactivate"),
        ("n2", 35, ""),
    ]
    assert len(audit.early_grants) == 1 and "n3 epoch 30" in audit.early_grants[0]
    assert len(audit.epoch_regressions) == 1


def test_the_audit_judges_every_applied_ack_against_the_activation_before_it() -> None:
    m, audit = StateMachine(), MessageAudit()
    _activate(m, T, "n1", 10, 60_000)
    msg = Message("m0-d1", "client:x", T, payload={"id": "m0-d1"}, sent_ms=1_000, ttl_ms=5_000, durable=True)
    box = m.state.messages.mailboxes[T] = Mailbox(T)
    box.queue[7] = Queued(7, msg, 1_000)

    def pop(seq: int) -> Any:
        return lambda m: m.state.messages.mailboxes[T].queue.pop(seq, None)

    ok = AckMessage("a1", 2_000, node_id="n1", address=T, epoch=10, seq=7)
    _step(audit, m, 1, ok, MessageAcked(True, 5), pop(7))
    again = AckMessage("a2", 2_100, node_id="n1", address=T, epoch=10, seq=7)
    _step(audit, m, 2, again, MessageAcked(False, 5))
    stale = AckMessage("a3", 2_200, node_id="n2", address=T, epoch=9, seq=0)
    _step(audit, m, 3, stale, Rejected(Code.ABORTED, "stale epoch"))
    _step(audit, m, 4, stale, MessageAcked(True, 6))  # a broken machine let it through
    box.queue[8] = Queued(8, msg, 1_000)
    late = AckMessage("a5", 6_500, node_id="n1", address=T, epoch=10, seq=8)  # past 1_000 + 5_000
    _step(audit, m, 5, late, MessageAcked(True, 7), pop(8))
    _step(
        audit, m, 6, AckMessage("a6", 6_600, node_id="n1", address=T, epoch=10, seq=8), MessageAcked(True, 8)
    )
    assert (audit.acks_not_applied, audit.acks_rejected, len(audit.acks)) == (1, 1, 4)
    assert [a.index for a in audit.stale_acks] == [4]
    assert [(a.index, a.logical_id) for a in audit.expired_acks] == [(5, "m0-d1")]
    assert [a.index for a in audit.unqueued_acks] == [6]
    # The host retries an ack with one request id until it hears back: the machine echoes the
    # first answer (applied) and applies nothing, even though the epoch has moved on since.
    m.state.dedup["a1"] = (2_000, "ack_message", b"")
    _activate(m, T, "n2", 20, 70_000)
    _step(audit, m, 7, ok, MessageAcked(True, 5))
    assert len(audit.acks) == 4 and [a.index for a in audit.stale_acks] == [4]


# ---- the audit on the real machine's log ------------------------------------------------------


def _unfenced_ack(ctx: ApplyContext, cmd: AckMessage) -> Result:
    """A broken machine: it applies a turn under whatever activation the address has now."""
    a = ctx.state.messages.activations.get(cmd.address)
    if a is not None:
        cmd = replace(cmd, epoch=a.epoch, node_id=a.node)
    return message_commands.ack(ctx, cmd)


def _moved_activation_log(audit: Audit) -> tuple[int, int]:
    """k0 is activated; its node stops renewing (paused), the lease runs out and a tick re-places
    k0 (a message is queued) with a new epoch; then the paused activation's late turn for a fast
    message (seq 0) arrives with its old epoch. Returns (old epoch, new epoch)."""

    def feed(*cmds: Command) -> None:
        audit.feed(encode_batch(list(cmds)))

    for node in ("n1", "n2"):
        feed(
            RegisterNode(
                f"reg-{node}",
                1_000,
                node,
                f"{node}:1",
                f"{node}:2",
                (),
                1,
                "i1",
                actors=(ActorOffer("chaos_log"),),
            )
        )
    msg = Message(
        "m0-d1", "client:m0", T, payload={"id": "m0-d1"}, sent_ms=1_000, ttl_ms=60_000, durable=True
    )
    feed(SendMessages("send-1", 1_100, messages=(msg,)))
    old = audit.machine.state.messages.activations[T]
    feed(Tick("tick", old.deadline_ms + 1))
    new = audit.machine.state.messages.activations[T]
    assert new.epoch > old.epoch  # placement may pick the same node: a new activation all the same
    put = KvOp("put", "chaos-msg/eff/x", {"late": True})
    feed(
        AckMessage(
            "late-turn", old.deadline_ms + 50, node_id=old.node, address=T, epoch=old.epoch, seq=0, kv=(put,)
        )
    )
    return old.epoch, new.epoch


def test_the_real_machine_refuses_a_moved_activations_turn_and_the_audit_agrees() -> None:
    audit = Audit()
    _moved_activation_log(audit)
    ma = audit.messages
    assert ma.acks_rejected == 1 and not ma.acks and not ma.early_grants and not ma.epoch_regressions
    assert [s.end_reason for s in ma.spans] == ["tick", ""]
    assert counts(check_messages([], [], [], audit=audit.messages)) == {}


def test_the_audit_counts_each_seq_of_a_batch_ack_that_the_machine_acknowledged() -> None:
    audit = Audit()
    _moved_activation_log(audit)
    act = audit.machine.state.messages.activations[T]
    [first] = list(audit.machine.state.messages.mailboxes[T].queue)
    short = Message("m0-d2", "client:m0", T, payload={"id": "m0-d2"}, sent_ms=act.granted_ms, ttl_ms=10)
    more = Message("m0-d3", "client:m0", T, payload={"id": "m0-d3"}, sent_ms=act.granted_ms, ttl_ms=60_000)
    audit.feed(encode_batch([SendMessages("send-2", act.granted_ms, messages=(short, more))]))
    seqs = list(audit.machine.state.messages.mailboxes[T].queue)
    batch = AckMessage(
        "batch",
        act.granted_ms + 20,
        node_id=act.node,
        address=T,
        epoch=act.epoch,
        seq=seqs[0],
        also=tuple(seqs[1:]),
    )
    audit.feed(encode_batch([batch]))
    ma = audit.messages
    # m0-d2 expired: dead-lettered by the machine, so not an ack; the other two were acknowledged.
    assert sorted(a.logical_id for a in ma.acks) == ["m0-d1", "m0-d3"] and seqs[0] == first
    assert not ma.stale_acks and not ma.expired_acks and not ma.unqueued_acks
    assert T not in audit.machine.state.messages.mailboxes
    assert audit.machine.state.messages.dead_letters[-1].letter.message.id == "m0-d2"


def test_a_stale_turn_let_through_by_the_machine_is_a_double_activation() -> None:
    audit = Audit(machine=StateMachine(processors={**PROCESSORS, AckMessage: _unfenced_ack}))
    old, new = _moved_activation_log(audit)
    [stale] = audit.messages.stale_acks
    assert (stale.epoch, stale.current_epoch) == (old, new)
    result = check_messages([], [], [], audit=audit.messages)
    assert counts(result) == {MSG_DOUBLE: 1}


def test_a_relays_forwards_must_take_effect_once_each_and_in_its_order() -> None:
    relay, sink = "chaos_relay/k0", "chaos_log/k1"
    h = History()
    forwards = []
    for _ in range(3):
        c = h.call("durable", target=relay)
        r = h.effects[-1] = Effect(**{**vars(h.effects[-1]), "to": sink})
        forwards.append(MessageCall(relay, "durable", "send", r.n, f"{c.mid}.r", sink, r.start_ms))
    for f in forwards:
        h.effect(f)
    assert counts(h.check()) == {} and h.check().stats["relayed"] == 3
    lost = h.effects.pop()  # the last forward never took effect
    assert counts(h.check()) == {MSG_LOST: 1}
    h.effects.append(lost)
    swap(h.effects, -2, -1)
    assert counts(h.check()) == {MSG_REORDERED_DURABLE: 1}
    swap(h.effects, -2, -1)
    h.effect(forwards[0])  # sent on twice
    assert counts(h.check()) == {MSG_TWICE: 1}
