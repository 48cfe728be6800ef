"""The messaging surface (README "Messages"): the ``Messages`` gRPC service's validation and
statuses, ``client.messages`` and the CLI's JSON shapes and exit codes.

The first half serves ``MessagesService`` on loopback in this process over a real state machine
(``MachineWriter``: each command applied at once, as a one-node log would) and the node's real
``MessageRouter``: what a bad request gets never depends on the other nodes. The e2e half runs a
real 3-node cluster (``tests/messaging_actors.py`` declares the actors).
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import pathlib
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from raftmesh.client import Client
from raftmesh.clock import SYSTEM_CLOCK
from raftmesh.consensus import StateMachine, limits
from raftmesh.consensus.commands import ActorOffer, Message, MessageDeadLetter, RegisterNode, SendMessages
from raftmesh.consensus.messages import Activation, DeadMessage, Mailbox, Queued
from raftmesh.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, ResourceExhausted
from raftmesh.localcluster import LocalCluster, free_ports, wait_until
from raftmesh.messaging import MessageRouter
from raftmesh.messaging.router import PUBLIC_COUNTERS
from raftmesh.node.access import NodeAccess
from raftmesh.node.messages_service import (
    MessagesService,
    client_sender,
    request_message_id,
    send_request_id,
    subscriber_error,
)
from raftmesh.proto.raftmesh.v1 import cluster_pb2 as pb
from raftmesh.proto.raftmesh.v1 import cluster_pb2_grpc as pb_grpc
from tests.test_cli import cli
from tests.test_node_units import MachineWriter, reads_of


@dataclass
class Served:
    sm: StateMachine
    address: str
    stub: pb_grpc.MessagesStub
    client: Client


@pytest.fixture
def served() -> Iterator[Served]:
    """``MessagesService`` on 127.0.0.1 over a state machine, in a loop thread of its own."""
    sm = StateMachine()
    reads = reads_of(sm)
    writer = MachineWriter(sm)
    (port,) = free_ports(1)
    address = f"127.0.0.1:{port}"
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop: asyncio.Event | None = None

    async def serve() -> None:
        nonlocal stop
        stop = asyncio.Event()
        router = MessageRouter("n1", "inc1", reads, writer, SYSTEM_CLOCK, lambda _n: None)
        access = NodeAccess(writer, reads, SYSTEM_CLOCK, lambda: True, 5.0)
        server = grpc.aio.server()
        pb_grpc.add_MessagesServicer_to_server(MessagesService(access, router), server)
        server.add_insecure_port(address)
        await server.start()
        started.set()
        await stop.wait()
        await server.stop(0.5)

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(10), "the service did not start"
    channel = grpc.insecure_channel(address)
    client = Client([address], timeout_s=5.0, retry_deadline_s=5.0)
    try:
        yield Served(sm, address, pb_grpc.MessagesStub(channel), client)
    finally:
        client.close()
        channel.close()
        assert stop is not None
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)
        assert not thread.is_alive()
        loop.close()


def status_of(call: object) -> tuple[grpc.StatusCode, str]:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    raise AssertionError("the call succeeded")


def msg(**kw: object) -> pb.AgentMessage:
    fields: dict[str, object] = {"target": "counter/a", "payload_json": "1"}
    fields.update(kw)
    return pb.AgentMessage(**fields)  # type: ignore[arg-type]


BAD_SENDS: list[tuple[pb.AgentMessage, str]] = [
    (msg(target="counter"), "must be TYPE/KEY"),
    (msg(target="bad type/k"), "target's type"),
    (msg(target="counter/a", topic="news"), "either a target"),
    (msg(target=""), "either a target"),
    (msg(priority=limits.MAX_MESSAGE_PRIORITY + 1), "priority 1001 is outside"),
    (msg(ttl_ms=limits.MAX_MESSAGE_TTL_MS + 1), "ttl_ms"),
    (msg(payload_json="{nope"), "payload_json"),
    (msg(payload_bytes=b"x" * (limits.MAX_MESSAGE_PAYLOAD_BYTES + 1)), "payload is"),
    (msg(sender="counter/b"), "a client's sender is client:NAME"),
    (msg(sender="task:r1/t1"), "a client's sender is client:NAME"),
    (msg(id="has space"), "message id"),
    (msg(type="x" * (limits.MAX_MESSAGE_TYPE_CHARS + 1)), "message type"),
    (msg(target="", topic="news", correlation_id="c1"), "a publish has no correlation_id"),
]


@pytest.mark.parametrize(("message", "says"), BAD_SENDS)
@pytest.mark.parametrize("durable", [False, True])
def test_a_bad_send_is_invalid_argument_saying_what_to_fix(
    served: Served, message: pb.AgentMessage, says: str, durable: bool
) -> None:
    message.durable = durable
    code, details = status_of(lambda: served.stub.Send(pb.SendMessageRequest(message=message), timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert says in details


def test_bad_requests_and_reads_are_invalid_argument(served: Served) -> None:
    s = served.stub
    cases = [
        (
            lambda: s.Request(pb.MessageRequest(message=msg(target="", topic="t")), timeout=5),
            "names a target",
        ),
        (lambda: s.Request(pb.MessageRequest(message=msg(), timeout_s=-1), timeout=5), "timeout_s -1"),
        (lambda: s.Request(pb.MessageRequest(message=msg(), timeout_s=1e9), timeout=5), "is outside"),
        (lambda: s.Request(pb.MessageRequest(message=msg(target="x")), timeout=5), "TYPE/KEY"),
        (lambda: s.DeadLetters(pb.MessageDeadLettersRequest(limit=100_000), timeout=5), "limit must be"),
        (lambda: s.ListActivations(pb.ListActivationsRequest(limit=100_000), timeout=5), "limit must be"),
        (lambda: s.ListActivations(pb.ListActivationsRequest(prefix="x" * 1000), timeout=5), "prefix"),
        (
            lambda: s.SubscribeActor(pb.SubscribeActorRequest(topic="t", subscriber="a b"), timeout=5),
            "subscriber",
        ),
        (lambda: s.SubscribeActor(pb.SubscribeActorRequest(topic="", subscriber="a"), timeout=5), "topic"),
        (
            lambda: s.Send(pb.SendMessageRequest(message=msg(), request_id="\x1b"), timeout=5),
            "control characters",
        ),
        (lambda: next(iter(s.Subscribe(pb.SubscribeRequest(topic="a b"), timeout=5))), "topic"),
    ]
    for call, says in cases:
        code, details = status_of(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (says, code, details)
        assert says in details, (says, details)


def test_the_sdk_refuses_what_no_node_would_take_before_calling() -> None:
    with Client(["127.0.0.1:1"], timeout_s=1, retry_deadline_s=0) as c:
        m = c.messages
        for call, says in [
            (lambda: m.send("counter/a", {1, 2}), "neither bytes nor JSON"),
            (lambda: m.send("counter/a", 1, ttl_ms=-1), "ttl_ms -1"),
            (lambda: m.send("counter/a", 1, priority=5000), "priority 5000"),
            (lambda: m.send("counter/a", float("nan")), "JSON"),
            (lambda: m.request("counter/a", 1, timeout_s=0), "timeout_s 0"),
            (lambda: m.subscribe(""), "topic"),
            (lambda: m.dead_letters(limit=-1), "limit"),
            (lambda: m.activations(limit=-1), "limit"),
        ]:
            with pytest.raises(InvalidArgument, match=says):
                call()


def test_a_client_is_one_sender_across_connections_and_a_durable_send_one_command() -> None:
    assert (
        client_sender("ipv4:127.0.0.1:53211")
        == client_sender("ipv4:127.0.0.1:40001")
        == "client:ipv4:127.0.0.1"
    )
    assert client_sender("ipv6:[::1]:5000") == "client:ipv6:[::1]"
    assert client_sender("") == "client:unknown"
    assert send_request_id("client:a", "m1") == send_request_id("client:a", "m1")
    assert send_request_id("client:a", "m1") != send_request_id("client:b", "m1")
    assert request_message_id("client:a", "m1") == request_message_id("client:a", "m1")
    assert request_message_id("client:a", "m1") != request_message_id("client:b", "m1")
    assert limits.name_error("id", request_message_id("client:a", "m1"), limits.MAX_MESSAGE_ID_CHARS) == ""
    assert limits.request_id_error("request_id", send_request_id("client:" + "x" * 250, "y" * 128)) == ""
    assert subscriber_error("counter") == "" and subscriber_error("counter/k1") == ""
    assert subscriber_error("") and subscriber_error("a b") and subscriber_error("a b/k")


def test_the_sdk_surface_is_the_documented_one() -> None:
    from raftmesh.client._messages import MessagesClient

    def params(name: str) -> list[str]:
        sig = inspect.signature(getattr(MessagesClient, name))
        return [f"{p.kind.name}:{p.name}={p.default!r}" for p in list(sig.parameters.values())[1:]]

    pos, kw = "POSITIONAL_OR_KEYWORD", "KEYWORD_ONLY"
    empty = "<class 'inspect._empty'>"
    assert params("send") == [
        f"{pos}:target={empty}",
        f"{pos}:payload={empty}",
        f"{kw}:durable=False",
        f"{kw}:type=''",
        f"{kw}:ttl_ms=0",
        f"{kw}:priority=0",
        f"{kw}:id=None",
    ]
    assert params("request") == [
        f"{pos}:target={empty}",
        f"{pos}:payload={empty}",
        f"{kw}:timeout_s=30.0",
        f"{kw}:durable=False",
        f"{kw}:type=''",
    ]
    assert params("publish") == [
        f"{pos}:topic={empty}",
        f"{pos}:payload={empty}",
        f"{kw}:durable=False",
        f"{kw}:source=''",
        f"{kw}:type=''",
    ]
    assert params("subscribe") == [f"{pos}:topic={empty}", f"{kw}:from_start=False"]
    assert params("dead_letters") == [f"{pos}:limit=100"]
    assert params("subscribe_actor") == [
        f"{pos}:topic={empty}",
        f"{pos}:subscriber={empty}",
        f"{pos}:unsubscribe=False",
    ]
    assert params("activations") == [f"{pos}:prefix=''", f"{pos}:limit=100"]
    with Client(["127.0.0.1:1"]) as c:
        assert c.messages is c.messages and c.messages.sender == f"client:{c.client_id}"


def _fill(sm: StateMachine) -> None:
    """Activations, a mailbox and dead letters, as the state machine keeps them."""
    store = sm.state.messages
    for i, address in enumerate(["counter/b", "counter/a", "bidder/x"]):
        store.activations[address] = Activation(address, f"n{i + 1}", "inc", 10 + i, 1_000, 7_000)
    store.mailboxes["counter/a"] = Mailbox("counter/a")
    for seq in (4, 5):
        m = Message(f"m{seq}", "client:x", target="counter/a", ttl_ms=1000, sent_ms=900, durable=True)
        store.mailboxes["counter/a"].queue[seq] = Queued(seq, m, 900)
    for seq in (6, 7, 8):
        m = Message(f"d{seq}", "client:x", target="counter/a", payload=b"\x00\x01", ttl_ms=5, sent_ms=1)
        store.dead_letters.append(DeadMessage(seq, 2_000 + seq, MessageDeadLetter(m, "expired"), ""))
    store.dead_letters_total = 12
    store.rebuild_indexes()


def test_activations_and_dead_letters_read_the_replicated_state(served: Served) -> None:
    _fill(served.sm)
    m = served.client.messages
    acts = m.activations()
    assert [a.address for a in acts] == ["bidder/x", "counter/a", "counter/b"]
    a = next(a for a in acts if a.address == "counter/a")
    assert a.to_json() == {
        "address": "counter/a",
        "node": "n2",
        "epoch": 11,
        "granted_ms": 1_000,
        "lease_deadline_ms": 7_000,
        "queued": 2,
    }
    assert [a.address for a in m.activations("counter/", limit=1)] == ["counter/a"]
    dead = m.dead_letters(limit=2)
    assert [d.seq for d in dead] == [8, 7]  # newest first
    d = dead[0].to_json()
    assert d["reason"] == "expired" and d["node"] == "" and d["recorded_ms"] == 2_008
    assert d["message"]["payload"] == {"bytes_hex": "0001"} and d["message"]["id"] == "d8"
    total = served.stub.DeadLetters(pb.MessageDeadLettersRequest(), timeout=5).total
    assert total == 12


def test_a_durable_send_commits_once_per_sender_and_id_and_says_why_not(served: Served) -> None:
    now = SYSTEM_CLOCK.now_ms()
    offer = (ActorOffer("counter"),)
    res, _ = served.sm.apply(RegisterNode("reg-n1", now, "n1", "n1:1", "n1:2", (), 1, "inc", actors=offer))
    assert res.ok, res
    m = served.client.messages
    first = m.send("counter/a", {"n": 1}, durable=True, id="x1")
    assert first.seq > 0 and first.targets == ("counter/a",)
    assert m.send("counter/a", {"n": 1}, durable=True, id="x1") == first  # a retry: the same message
    with Client([served.address], timeout_s=5.0) as other:  # another sender's x1 is another message
        assert other.messages.send("counter/a", {"n": 2}, durable=True, id="x1").seq > first.seq
    raw = served.stub.Send(pb.SendMessageRequest(message=msg(durable=True)), timeout=5)
    queued = [q.message for q in served.sm.state.messages.mailboxes["counter/a"].queue.values()]
    assert [q.id for q in queued] == ["x1", "x1", raw.id]
    assert queued[0].sender == m.sender and queued[2].sender == "client:ipv4:127.0.0.1"
    assert all(q.durable and q.ttl_ms == limits.DEFAULT_MESSAGE_TTL_MS and q.sent_ms >= now for q in queued)
    (act,) = m.activations()
    assert (act.address, act.node, act.queued) == ("counter/a", "n1", 3) and act.epoch > 0

    with pytest.raises(FailedPrecondition, match="no node offers actor type 'ghost'"):
        m.send("ghost/a", 1, durable=True)
    assert m.subscribe_actor("news", "counter") is True
    assert m.subscribe_actor("news", "counter") is False
    published = m.publish("news", "hi", durable=True, source="s1")
    assert published.targets == ("counter/s1",) and published.seq > 0

    room = limits.MAX_MAILBOX_MESSAGES - 3
    for start in range(0, room, limits.MAX_MESSAGES_PER_SEND):
        batch = tuple(
            Message(f"fill{i}", "client:t", "counter/a", ttl_ms=600_000, sent_ms=now, durable=True)
            for i in range(start, min(room, start + limits.MAX_MESSAGES_PER_SEND))
        )
        res, _ = served.sm.apply(SendMessages(f"fill-{start}", now, messages=batch))
        assert res.ok, res
    with pytest.raises(ResourceExhausted, match="mailbox of 'counter/a' is full"):
        m.send("counter/a", 1, durable=True)
    full = cli("send", "counter/a", "1", "--durable", addresses=served.address)
    assert full.returncode == 5 and "RESOURCE_EXHAUSTED" in full.stderr


def test_cli_messaging_exit_codes_without_a_cluster(served: Served) -> None:
    """2: bad input (said by the CLI or by the node); 4: no node reachable (after --retry-deadline)."""
    bad_json = cli("send", "counter/a", "{nope", addresses=served.address)
    assert bad_json.returncode == 2 and "payload must be JSON" in bad_json.stderr
    bad_target = cli("send", "counter", "1", "--json", addresses=served.address)
    assert bad_target.returncode == 2 and "TYPE/KEY" in bad_target.stderr
    assert cli("subscribe", "t", "--count", "0", addresses=served.address).returncode == 2
    assert cli("publish", "t", "1", addresses=None).returncode == 2
    unreachable = cli("--timeout", "1", "--retry-deadline", "1", "actors", "--json", addresses="127.0.0.1:1")
    assert unreachable.returncode == 4, unreachable.stderr
    negative = cli("--retry-deadline", "-1", "actors", addresses=served.address)
    assert negative.returncode == 2 and "--retry-deadline" in negative.stderr
    _fill(served.sm)
    acts = cli("actors", "--json", "--prefix", "counter/", addresses=served.address)
    assert acts.returncode == 0, acts.stderr
    assert [a["address"] for a in json.loads(acts.stdout)["activations"]] == ["counter/a", "counter/b"]
    dead = cli("dead-letters", "--messages", "--json", "--limit", "1", addresses=served.address)
    assert dead.returncode == 0, dead.stderr
    (one,) = json.loads(dead.stdout)["dead_letters"]
    assert set(one) == {"message", "reason", "node", "recorded_ms", "seq"} and one["seq"] == 8
    assert set(one["message"]) >= {"id", "sender", "target", "topic", "type", "payload", "ttl_ms", "durable"}


def test_cli_subscribe_actor_changes_the_replicated_subscriptions(served: Served) -> None:
    first = cli("subscribe-actor", "ticks", "counter", "--json", addresses=served.address)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {"topic": "ticks", "subscriber": "counter", "changed": True}
    assert list(served.sm.state.messages.subscriptions["ticks"]) == ["counter"]
    again = cli("subscribe-actor", "ticks", "counter", "--json", addresses=served.address)
    assert json.loads(again.stdout)["changed"] is False
    off = cli("subscribe-actor", "ticks", "counter", "--unsubscribe", "--json", addresses=served.address)
    assert json.loads(off.stdout)["changed"] is True
    assert "counter" not in served.sm.state.messages.subscriptions.get("ticks", {})
    bad = cli("subscribe-actor", "ticks", "no such", "--json", addresses=served.address)
    assert bad.returncode == 2 and "subscriber" in bad.stderr


def test_every_messaging_limit_has_a_row_in_the_readme_limits_table() -> None:
    root = pathlib.Path(__file__).resolve().parent.parent
    source = (root / "raftmesh/consensus/limits.py").read_text()
    block = source.split("# ---- agent messaging", 1)[1].split("# ---- the checks", 1)[0]
    names = re.findall(r"^([A-Z_]+) = ", block, re.M)
    assert len(names) > 20, names
    readme = (root / "README.md").read_text()
    table = readme.split("\n## Limits\n", 1)[1].split("\n## ", 1)[0]
    assert [n for n in names if f"`{n}`" not in table and f"`{n}," not in table] == []


# ---- end to end: a real 3-node cluster ----------------------------------------------------


@pytest.fixture
def actors3(make_cluster: Callable[..., LocalCluster]) -> LocalCluster:
    from tests import messaging_actors

    repo = str(pathlib.Path(__file__).resolve().parent.parent)
    return make_cluster(3, agents_modules=[messaging_actors.SOURCE], env={"PYTHONPATH": repo})


def state_of(c: Client, address: str) -> dict[str, Any]:
    reply = c.messages.request(address, {"get": True}, timeout_s=20)
    out: dict[str, Any] = reply.payload
    return out


@pytest.mark.e2e
def test_both_paths_deliver_in_order_per_sender_and_the_cli_shapes(actors3: LocalCluster) -> None:
    c = actors3.client()
    m = c.messages
    senders = {"fast": actors3.client(), "durable": actors3.client()}  # one sender per path

    wrong: list[object] = []

    def send_all(path: str) -> None:
        for i in range(20):
            try:
                sent = senders[path].messages.send("tally/o", {"seq": i}, durable=path == "durable")
            except Exception as exc:  # reported by the test, not lost in the thread
                wrong.append(exc)
                return
            if sent.targets != ("tally/o",) or (sent.seq > 0) != (path == "durable"):
                wrong.append(sent)

    threads = [threading.Thread(target=send_all, args=(p,)) for p in senders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert wrong == []
    got = wait_until(lambda: (s := state_of(c, "tally/o"))["state"].get("n") == 40 and s, 60, "40 handled")
    assert got["state"].get("reordered", 0) == 0
    assert set(got["state"]["last"].values()) == {19}
    (act,) = m.activations("tally/o")
    assert act.node == got["node"] and act.epoch == got["epoch"] and act.queued == 0

    # the same durable id sent again is the same message: queued (and handled) once
    first = m.send("tally/o", {"seq": 100}, durable=True, id="once-1")
    again = m.send("tally/o", {"seq": 100}, durable=True, id="once-1")
    assert again.seq == first.seq
    wait_until(lambda: state_of(c, "tally/o")["state"]["n"] == 41, 30, "the durable send handled")
    assert state_of(c, "tally/o")["state"].get("duplicates", 0) == 0

    addrs = ",".join(actors3.addresses)
    sent_cli = cli("send", "tally/cli", '{"seq": 1}', "--durable", "--json", addresses=addrs)
    assert sent_cli.returncode == 0, sent_cli.stderr
    out = json.loads(sent_cli.stdout)
    assert set(out) == {"id", "seq", "targets"} and out["seq"] > 0 and out["targets"] == ["tally/cli"]
    req = cli("request", "tally/cli", '{"get": true}', "--timeout", "20", "--json", addresses=addrs)
    assert req.returncode == 0, req.stderr
    reply = json.loads(req.stdout)
    assert reply["payload"]["state"]["n"] == 1 and reply["epoch"] > 0 and reply["correlation_id"]
    durable_reply = c.messages.request("tally/cli", {"get": True}, durable=True, timeout_s=20)
    counts = []
    for sender in ("client:a", "client:b"):  # one id, two senders: two requests, two replies
        request = pb.MessageRequest(
            message=pb.AgentMessage(
                id="same", sender=sender, target="tally/cli", payload_json='{"seq": 5}', durable=True
            ),
            timeout_s=20,
        )
        with grpc.insecure_channel(actors3.addresses[0]) as ch:
            answer = pb_grpc.MessagesStub(ch).Request(request, timeout=30).reply
        counts.append(json.loads(answer.payload_json)["state"]["n"])
    assert counts == [2, 3]
    assert durable_reply.payload["state"]["n"] == 1 and durable_reply.epoch == reply["epoch"]
    acts = json.loads(cli("actors", "--prefix", "tally/", "--json", addresses=addrs).stdout)["activations"]
    # Every node's fast-path counters, in its status: the 20 fast sends went through some node.
    counted = [
        json.loads(cli("status", "--json", addresses=a).stdout)["messaging"] for a in actors3.addresses
    ]
    assert all(set(n) == set(PUBLIC_COUNTERS) for n in counted), counted
    assert sum(n["sent"] for n in counted) >= 20 and sum(n["delivered"] for n in counted) >= 20, counted
    assert {a["address"] for a in acts} == {"tally/o", "tally/cli"}
    with grpc.insecure_channel(actors3.addresses[0]) as ch:  # served, and listed by reflection
        assert "raftmesh.v1.Messages" in ProtoReflectionDescriptorDatabase(ch).get_services()
    for path in (["--durable"], []):  # both paths refuse a type no node offers, at once
        nobody = cli("send", "nosuchtype/x", "1", *path, addresses=addrs)
        assert nobody.returncode == 5 and "FAILED_PRECONDITION" in nobody.stderr, nobody.stderr


@pytest.mark.e2e
def test_topics_reach_subscribed_actors_and_client_streams(actors3: LocalCluster) -> None:
    c = actors3.client()
    addrs = ",".join(actors3.addresses)
    pub = cli("publish", "bids", '{"ask": 12}', "--durable", "--source", "lamp", "--json", addresses=addrs)
    assert pub.returncode == 0, pub.stderr
    assert json.loads(pub.stdout)["targets"] == ["board/lamp"]
    wait_until(lambda: state_of(c, "board/lamp") == [{"ask": 12}], 30, "the board got the bid")
    assert c.messages.subscribe_actor("bids", "tally/bids") is True
    assert c.messages.subscribe_actor("bids", "tally/bids") is False  # already subscribed
    sent = c.messages.publish("bids", {"ask": 13}, durable=True, source="lamp")
    assert set(sent.targets) == {"board/lamp", "tally/bids"}
    # a client stream from the start replays the retained durable publishes
    sub = cli(
        "subscribe", "bids", "--from-start", "--count", "2", "--wait-timeout", "30", "--json", addresses=addrs
    )
    assert sub.returncode == 0, sub.stderr
    lines = [json.loads(x) for x in sub.stdout.splitlines()]
    assert [x["payload"] for x in lines] == [{"ask": 12}, {"ask": 13}]
    assert all(x["topic"] == "bids" and x["durable"] for x in lines)
    # and a live one sees a fast publish made after it started
    with c.messages.subscribe("bids") as stream:
        seen: list[Any] = []

        def read() -> None:
            for msg in stream:
                seen.append(msg.payload)
                return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()

        def published() -> bool:
            c.messages.publish("bids", {"ask": 14}, source="lamp")
            reader.join(timeout=1)
            return bool(seen)

        wait_until(published, 30, "a live subscriber to see a fast publish")
        assert seen[0] == {"ask": 14}
        # the CLI's line names the actor subscribers only, and says this stream is not counted
        human = cli("publish", "bids", '{"ask": 15}', "--source", "lamp", addresses=addrs)
        assert human.returncode == 0, human.stderr
        assert set(human.stdout.rstrip().split(" -> ")[1].split(", ")) == {"board/lamp", "tally/bids"}, human
    human = cli("publish", "quiet", '"hi"', addresses=addrs)
    assert human.returncode == 0, human.stderr
    assert human.stdout.rstrip().endswith("-> (no actor subscriber; client streams are not counted)"), human
    timed_out = cli("subscribe", "quiet", "--count", "1", "--wait-timeout", "2", "--json", addresses=addrs)
    assert timed_out.returncode == 4


@pytest.mark.e2e
def test_ttl_sends_what_expires_to_the_dead_letters_on_both_paths(actors3: LocalCluster) -> None:
    c = actors3.client()
    m = c.messages
    m.send("slow/d", {"sleep_s": 4}, durable=True, id="d-busy")
    expiring = [m.send("slow/d", {"n": i}, durable=True, ttl_ms=500, id=f"d-exp-{i}").id for i in range(3)]
    # A fast send returns once its handler took it: f-busy's returns after its 4 s turn, and
    # the ones waiting behind it in the inbox expire there: their sends raise, dead-lettered.
    with ThreadPoolExecutor(4) as pool:
        busy = pool.submit(m.send, "slow/f", {"sleep_s": 4}, id="f-busy")
        wait_until(lambda: m.activations("slow/f"), 30, "f-busy to activate slow/f")
        sends = [pool.submit(m.send, "slow/f", {"n": i}, ttl_ms=500, id=f"f-exp-{i}") for i in range(3)]
        busy.result(60)
        for f in sends:
            with pytest.raises(DeadlineExceeded):
                f.result(60)
    fast = [f"f-exp-{i}" for i in range(3)]

    def dead() -> dict[str, str]:
        return {d.message.id: d.reason for d in m.dead_letters(limit=100)}

    got = wait_until(lambda: (d := dead()) and set(expiring + fast) <= set(d) and d, 60, "6 dead letters")
    assert all("expired" in got[i] for i in expiring + fast), got
    assert state_of(c, "slow/d") == ["d-busy"] and state_of(c, "slow/f") == ["f-busy"]
    addrs = ",".join(actors3.addresses)
    listed = json.loads(cli("dead-letters", "--messages", "--json", addresses=addrs).stdout)["dead_letters"]
    assert set(expiring + fast) <= {d["message"]["id"] for d in listed}
    late = cli("request", "slow/t", '{"sleep_s": 3}', "--timeout", "1", addresses=addrs)
    assert late.returncode == 4 and "DEADLINE" not in late.stdout, (late.returncode, late.stderr)
    with pytest.raises(DeadlineExceeded):
        m.request("slow/t", {"sleep_s": 3}, timeout_s=1)


@pytest.mark.e2e
def test_an_activation_moves_after_its_node_is_killed_and_keeps_its_state(actors3: LocalCluster) -> None:
    c = actors3.client(timeout_s=5.0, retry_deadline_s=60.0)
    m = c.messages
    for i in range(5):
        m.send("tally/mover", {"seq": i}, durable=True)
    first = wait_until(lambda: (s := state_of(c, "tally/mover"))["state"]["n"] == 5 and s, 30, "5 handled")
    actors3.kill(first["node"])
    for i in range(5, 10):  # queued while the key has no live activation: handled once it moves
        m.send("tally/mover", {"seq": i}, durable=True)
    moved = wait_until(
        lambda: (a := m.activations("tally/mover")) and a[0].node != first["node"] and a[0],
        60,
        "the activation to move off the killed node",
    )
    assert moved.epoch > first["epoch"]
    after = wait_until(lambda: (s := state_of(c, "tally/mover"))["state"]["n"] == 10 and s, 60, "10 handled")
    assert after["node"] == moved.node and after["epoch"] == moved.epoch
    assert after["state"].get("reordered", 0) == 0 and after["state"].get("duplicates", 0) == 0


@pytest.mark.e2e
def test_a_client_stream_fails_over_when_its_node_dies(actors3: LocalCluster) -> None:
    c = actors3.client(timeout_s=5.0, retry_deadline_s=60.0)
    c.messages.publish("feed", {"i": 0}, durable=True)
    with c.messages.subscribe("feed", from_start=True) as sub:
        stream = iter(sub)
        assert next(stream).payload == {"i": 0}
        on = c.addresses[c._current]  # the node this stream reads from
        victim = next(n for n, p in actors3.nodes.items() if p.grpc == on)
        actors3.kill(victim)
        others = actors3.client([a for a in actors3.addresses if a != on], retry_deadline_s=60.0)
        others.messages.publish("feed", {"i": 1}, durable=True)
        guard = threading.Timer(60.0, sub.close)  # a stream that never fails over ends the test
        guard.start()
        try:
            after = [m.payload for m in itertools.islice(stream, 1)]
        finally:
            guard.cancel()
    assert after == [{"i": 1}]  # the retained {"i": 0} read again on the new node is dropped


class _CutAfterRequest(MessagesService):
    """The real service, but the first ``Request``'s answer is lost after the request was delivered
    and answered (the node's connection to the client broke): the client sees ``UNAVAILABLE``."""

    cut = 1

    async def Request(self, request: pb.MessageRequest, context: grpc.aio.ServicerContext) -> pb.MessageReply:
        reply = await super().Request(request, context)
        if self.cut:
            self.cut -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "connection lost")
        return reply


def test_a_fast_request_retried_after_unavailable_is_answered_by_the_kept_reply_not_handled_again() -> None:
    """The SDK's retry of a fast request keeps its id: the node that handled the first attempt
    answers the retry with the reply it kept, and does not run the handler again."""
    sm = StateMachine()
    assert sm.apply(
        RegisterNode(
            "reg-n1", 1, "n1", "127.0.0.1:1", "127.0.0.1:2", (), 1, "inc1", actors=(ActorOffer("echo"),)
        )
    )[0].ok
    sm.state.messages.activations["echo/q"] = Activation("echo/q", "n1", "inc1", 3, 1, 2**62)
    sm.state.messages.rebuild_indexes()
    reads, writer = reads_of(sm), MachineWriter(sm)
    (port,) = free_ports(1)
    address = f"127.0.0.1:{port}"
    taken: list[Message] = []
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop: asyncio.Event | None = None

    async def serve() -> None:
        nonlocal stop
        stop = asyncio.Event()
        router = MessageRouter("n1", "inc1", reads, writer, SYSTEM_CLOCK, lambda _n: None)

        class Host:
            def accept(self, m: Message, done: Callable[[str, bool], None]) -> None:
                taken.append(m)
                done("", False)
                answer = Message(
                    f"r-{m.id}", m.target, correlation_id=m.id, reply_to=m.reply_to, payload=len(taken)
                )
                asyncio.get_running_loop().call_soon(router.reply, answer)

        router.attach(Host())
        running = asyncio.create_task(router.run())
        server = grpc.aio.server()
        access = NodeAccess(writer, reads, SYSTEM_CLOCK, lambda: True, 5.0)
        pb_grpc.add_MessagesServicer_to_server(_CutAfterRequest(access, router), server)
        server.add_insecure_port(address)
        await server.start()
        started.set()
        await stop.wait()
        await server.stop(0.5)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    try:
        assert started.wait(10), "the service did not start"
        with Client([address], timeout_s=5.0, retry_deadline_s=5.0) as client:
            reply = client.messages.request("echo/q", "hi", timeout_s=5)
        assert reply.payload == 1 and len(taken) == 1 and reply.correlation_id == taken[0].id
    finally:
        assert stop is not None
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)
        assert not thread.is_alive()
        loop.close()
