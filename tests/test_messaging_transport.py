"""The fast path's transport on real gRPC (loopback, in process): routers of three nodes.

Each node is a real ``MessageRouter`` serving ``Peer.Exchange`` through its real
``PeerService``; the nodes share one real ``StateMachine`` as their replica (commands a
router proposes are applied to it and the events fed to every router, as Raft would).
The actor host is a recording ``Deliver`` (what arrived, in which order; it can refuse),
which is what the transport promises things to. Activations are written into the replica
as ``Activate``'s apply writes them (that apply is the consensus part, tested there);
tests that need the messaging commands applied are skipped until they are registered.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from raftmesh import calls
from raftmesh.chaos.proxy import TcpProxy
from raftmesh.clock import SYSTEM_CLOCK, Clock
from raftmesh.consensus import machine as machine_mod
from raftmesh.consensus.commands import (
    AckMessage,
    Activate,
    ActorOffer,
    Command,
    Message,
    NodeDown,
    RecordDeadLetters,
    RegisterNode,
    SendMessages,
    SubscribeTopic,
)
from raftmesh.consensus.machine import StateMachine
from raftmesh.consensus.messages import Activation, Mailbox, Published
from raftmesh.consensus.results import ActivationChanged, Event, Result, TopicPublished
from raftmesh.errors import DeadlineExceeded, FailedPrecondition
from raftmesh.localcluster import free_ports
from raftmesh.messaging import streams
from raftmesh.messaging.api import Done, Refused
from raftmesh.messaging.intake import Intake, Verdict
from raftmesh.messaging.links import TO_ACTOR, Lane, Link, Out
from raftmesh.messaging.router import MessageRouter
from raftmesh.node.decoding import guarded
from raftmesh.node.peers import PeerAccess, PeerService
from raftmesh.node.reads import ReadView
from raftmesh.proto.raftmesh.v1 import cluster_pb2 as pb
from raftmesh.proto.raftmesh.v1 import cluster_pb2_grpc as pb_grpc

NODES = ("n1", "n2", "n3")
_ids = itertools.count(1)


class OffsetClock:
    """The system clock moved by ``offset_ms`` (a node whose clock runs ahead)."""

    def __init__(self, offset_ms: int) -> None:
        self.offset_ms = offset_ms

    def now_ms(self) -> int:
        return SYSTEM_CLOCK.now_ms() + self.offset_ms

    def monotonic(self) -> float:
        return SYSTEM_CLOCK.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass
class Host:
    """The actor host of one node as the router sees it: records what it took."""

    node: str
    got: list[Message] = field(default_factory=list)
    refuse: Callable[[Message], Refused | None] = lambda m: None
    router: MessageRouter | None = None
    answer: bool = True
    epoch_of: Callable[[str], int] = lambda a: 0
    hold: bool = False
    """Keep what it takes unhandled (``holding``) instead of handling it at once."""
    holding: list[tuple[Message, Done]] = field(default_factory=list)
    handled: list[Message] = field(default_factory=list)

    def accept(self, msg: Message, done: Done) -> Refused | None:
        why = self.refuse(msg)
        if why is not None:
            return why
        self.got.append(msg)
        if self.hold:
            self.holding.append((msg, done))
            return None
        self.handled.append(msg)
        done("", False)  # handled at once (the actor host answers when its turn finished)
        if msg.reply_to and self.answer and self.router is not None:
            router = self.router
            reply = Message(
                id=f"r-{msg.id}",
                sender=msg.target,
                correlation_id=msg.id,
                reply_to=msg.reply_to,
                payload={"echo": msg.payload, "by": self.node},
                epoch=self.epoch_of(msg.target),
            )
            asyncio.get_running_loop().call_soon(router.reply, reply)
        return None


@dataclass
class Cluster:
    machine: StateMachine = field(default_factory=StateMachine)
    lock: Any = field(default_factory=threading.RLock)
    routers: dict[str, MessageRouter] = field(default_factory=dict)
    hosts: dict[str, Host] = field(default_factory=dict)
    servers: dict[str, grpc.aio.Server] = field(default_factory=dict)
    addrs: dict[str, str] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    proposed: list[Command] = field(default_factory=list)
    callers: list[calls.Call | None] = field(default_factory=list)
    """The call bound when each command was proposed (the node's proposer stamps its origin)."""

    async def propose(self, cmd: Command, timeout_s: float | None = None) -> Result:
        self.proposed.append(cmd)
        self.callers.append(calls.current())
        with self.lock:
            res, events = self.machine.apply(cmd)
        self.applied(events)
        return res

    async def barrier(self, timeout_s: float | None = None) -> None:
        return None

    def applied(self, events: list[Event]) -> None:
        for r in self.routers.values():
            r.applied(events)

    def reads(self) -> ReadView:
        return ReadView(self.lock, lambda: self.machine.state)

    def activate(self, address: str, node: str, epoch: int) -> None:
        """What ``Activate``'s apply leaves in the replica, and the event it emits."""
        with self.lock:
            st = self.machine.state.messages
            old = st.activations.get(address)
            if old is not None:
                st.by_node.get(old.node, {}).pop(address, None)
            st.activations[address] = Activation(address, node, f"inc{node}", epoch, 0, 2**62)
            st.by_node.setdefault(node, {})[address] = None
        self.applied([ActivationChanged(epoch, address, node, epoch, True)])

    async def serve(self, node: str) -> None:
        router = self.routers[node]
        access = PeerAccess(node, self.reads(), lambda: False, lambda: 1, lambda n: None)
        server = grpc.aio.server()
        pb_grpc.add_PeerServicer_to_server(PeerService(access, router=router), guarded(server))
        server.add_insecure_port(self.addrs[node])
        await server.start()
        self.servers[node] = server

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for s in self.servers.values():
            await s.stop(None)


async def start(
    clocks: dict[str, Clock] | None = None,
    ports: list[int] | None = None,
    dial: dict[tuple[str, str], str] | None = None,
) -> Cluster:
    """Three nodes; ``dial[(a, b)]``: the address node ``a`` dials ``b`` at (a proxy)."""
    c = Cluster()
    ports = ports or free_ports(len(NODES))
    for node, port in zip(NODES, ports, strict=True):
        c.addrs[node] = f"127.0.0.1:{port}"
        res, _ = c.machine.apply(
            RegisterNode(
                f"reg-{node}",
                1000,
                node,
                c.addrs[node],
                "127.0.0.1:1",
                ("echo",),
                4,
                f"inc{node}",
                actors=(ActorOffer("echo"),),
            )
        )
        assert res.ok, res
    for node in NODES:
        clock = (clocks or {}).get(node, SYSTEM_CLOCK)
        routes = {b: addr for (a, b), addr in (dial or {}).items() if a == node}
        router = MessageRouter(
            node, f"inc{node}", c.reads(), c, clock, lambda n, r=routes: r.get(n) or c.addrs.get(n)
        )
        host = Host(node, router=router)
        router.attach(host)
        c.routers[node], c.hosts[node] = router, host
        await c.serve(node)
        c.tasks.append(asyncio.create_task(router.run()))
    return c


async def quiet(c: Cluster, node: str) -> None:
    """Stop ``node``'s router (its streams end; its peers keep theirs to the others)."""
    task = c.tasks[NODES.index(node)]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def msg(sender: str, target: str, n: int, **kw: Any) -> Message:
    return Message(
        id=f"m{next(_ids)}",
        sender=sender,
        target=target,
        payload=n,
        sent_ms=SYSTEM_CLOCK.now_ms(),
        ttl_ms=kw.pop("ttl_ms", 30_000),
        **kw,
    )


async def until(cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.01)


def payloads(host: Host, sender: str, target: str) -> list[Any]:
    return [m.payload for m in host.got if m.sender == sender and m.target == target]


# ---- the receiving side alone -----------------------------------------------------


def test_intake_takes_each_lane_in_order_and_drops_duplicates() -> None:
    it = Intake(max_lanes=2, max_seen=100)
    lane = ("n1", "i", "a/1", "b/1", 0)
    assert it.check(lane, 5, 5, ("m5", "b/1")).deliver  # an unknown lane starts at the sender's base
    it.taken(lane, 5, ("m5", "b/1"))
    assert it.check(lane, 7, 6, ("m7", "b/1")).retry  # 6 is missing: refused, sent again later
    assert not it.check(lane, 5, 5, ("m5x", "b/1")).deliver  # below next: a duplicate
    assert it.check(lane, 6, 6, ("m6", "b/1")).deliver
    it.taken(lane, 6, ("m6", "b/1"))
    assert not it.check(lane, 10, 9, ("m6", "b/1")).deliver  # an id seen before
    assert it.check(lane, 9, 9, ("m9", "b/1")).deliver  # the sender gave up on 7 and 8 (base moved)
    for i in range(5):  # lanes are bounded; a forgotten one restarts at the base
        it.taken(("n1", "i", "a/1", f"x/{i}", 0), 1, (f"y{i}", f"x/{i}"))
    assert len(it) == 2
    assert it.check(lane, 9, 9, ("m9", "b/1")).deliver


def test_intake_a_duplicate_id_at_a_lanes_next_number_moves_the_lane_past_it() -> None:
    """The same message sent again under a new lane number (its lane was forgotten and made
    again): dropped by id, and the next number is taken at once, with no refusal round trip."""
    it = Intake()
    lane = ("n1", "i", "a/1", "b/1", 0)
    assert it.check(lane, 1, 1, ("m1", "b/1")).deliver
    it.taken(lane, 1, ("m1", "b/1"))
    assert it.check(lane, 2, 2, ("m1", "b/1")) == Verdict(False)
    assert it.check(lane, 3, 2, ("m3", "b/1")).deliver


def test_a_link_sends_higher_priority_lanes_first_and_rewinds_what_a_stream_lost() -> None:
    async def main() -> None:
        link = Link("n2", local=False)
        lanes = {p: Lane(("a/1", "b/1", p), next_seq=1) for p in (0, 5)}
        tags = itertools.count(1)
        outs = []
        for p, lane in lanes.items():
            for n in range(3):
                o = Out(msg("a/1", "b/1", n, priority=p), TO_ACTOR, next(tags), lane, lane.next_seq, None)
                lane.next_seq += 1
                lane.entries.append(o)
                outs.append(o)
            link.add_lane(lane)
        sent, _ = link.take(lambda o: False)
        assert [(o.msg.priority, o.seq) for o in sent] == [(5, 1), (5, 2), (5, 3), (0, 1), (0, 2), (0, 3)]
        assert link.take(lambda o: False) == ([], [])
        # The receiver refused priority 5's second message: it and the third go again, in order.
        lanes[5].rewind_to(sent[1])
        link.ready[lanes[5]] = None
        again, _ = link.take(lambda o: False)
        assert [(o.msg.priority, o.seq, o.inflight) for o in again] == [(5, 2, 2), (5, 3, 2)]
        # The stream broke: everything unanswered is sent again on the next one, from each lane's start.
        link.reset()
        assert all(o.inflight == 0 and o.waiting for o in outs) and not link.inflight
        again, _ = link.take(lambda o: False)
        assert [o.seq for o in again] == [1, 2, 3, 1, 2, 3]
        # A frame ends at its byte budget; the rest waits for the next (the writer is woken again).
        link.reset()
        assert len(link.take(lambda o: False, max_bytes=1)[0]) == 1 and link.wake.is_set()

    asyncio.run(main())


# ---- over real streams -------------------------------------------------------------


def test_fast_sends_arrive_once_in_order_per_sender_and_target_local_and_remote() -> None:
    async def main() -> None:
        c = await start()
        try:
            c.activate("echo/a", "n2", 7)
            c.activate("echo/b", "n1", 8)
            c.activate("echo/c", "n3", 9)
            # 64 in flight at a time from several senders to actors on three nodes.
            sem = asyncio.Semaphore(64)

            async def one(src: str, sender: str, target: str, n: int) -> None:
                async with sem:
                    sent = await c.routers[src].send(msg(sender, target, n))
                    assert sent.targets == (target,)

            jobs = []
            for n in range(300):
                for sender, src in (("client:x", "n1"), ("client:y", "n3")):
                    for target in ("echo/a", "echo/b", "echo/c"):
                        jobs.append(one(src, sender, target, n))
            # Sends of one sender are issued in order (the order a client's calls are made).
            await asyncio.gather(*jobs)
            for node, target in (("n2", "echo/a"), ("n1", "echo/b"), ("n3", "echo/c")):
                for sender in ("client:x", "client:y"):
                    assert payloads(c.hosts[node], sender, target) == list(range(300)), (node, sender)
            assert all(r.stats["dead_lettered"] == 0 for r in c.routers.values())
        finally:
            await c.stop()

    asyncio.run(main())


def test_a_refused_message_is_retried_and_later_ones_wait_for_it() -> None:
    async def main() -> None:
        c = await start()
        try:
            c.activate("echo/a", "n2", 3)
            refusals = {"left": 5}

            def full(m: Message) -> Refused | None:
                if m.payload == 10 and refusals["left"] > 0:
                    refusals["left"] -= 1
                    return Refused("inbox full", retry=True)
                return None

            c.hosts["n2"].refuse = full
            await asyncio.gather(*(c.routers["n1"].send(msg("client:x", "echo/a", n)) for n in range(40)))
            assert payloads(c.hosts["n2"], "client:x", "echo/a") == list(range(40))
            assert refusals["left"] == 0 and c.routers["n1"].stats["refused_retry"] >= 5
        finally:
            await c.stop()

    asyncio.run(main())


def test_a_final_refusal_raises_is_dead_lettered_and_the_lane_goes_on() -> None:
    async def main() -> None:
        c = await start()
        try:
            c.activate("echo/a", "n3", 3)
            c.hosts["n3"].refuse = lambda m: (
                Refused("no actor type echo here", retry=False) if m.payload == 1 else None
            )
            r = c.routers["n1"]
            results = await asyncio.gather(
                *(r.send(msg("client:x", "echo/a", n)) for n in range(4)), return_exceptions=True
            )
            assert isinstance(results[1], FailedPrecondition) and "no actor type" in results[1].message
            assert payloads(c.hosts["n3"], "client:x", "echo/a") == [0, 2, 3]
            assert r.stats["dead_lettered"] == 1
            await until(lambda: any(isinstance(p, RecordDeadLetters) for p in c.proposed))
            dl = next(p for p in c.proposed if isinstance(p, RecordDeadLetters))
            assert (
                dl.node_id == "n1"
                and dl.items[0].message.payload == 1
                and "no actor type" in dl.items[0].reason
            )
        finally:
            await c.stop()

    asyncio.run(main())


def test_ttl_expiry_on_either_side_is_a_dead_letter_never_silent() -> None:
    async def main() -> None:
        # n3's clock runs ten minutes ahead: what n1 sends it has expired by n3's clock.
        c = await start({"n3": OffsetClock(600_000)})
        try:
            c.activate("echo/late", "n3", 4)
            with pytest.raises(DeadlineExceeded, match="expired"):  # README: a TTL is DeadlineExceeded
                await c.routers["n1"].send(msg("client:x", "echo/late", 1))
            assert c.routers["n3"].stats["expired_received"] == 1 and not c.hosts["n3"].got

            # A target whose node cannot be reached: the message waits, then expires at the sender.
            await c.servers["n2"].stop(None)
            c.activate("echo/gone", "n2", 5)
            t0 = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                await c.routers["n1"].send(msg("client:x", "echo/gone", 2, ttl_ms=400))
            assert time.monotonic() - t0 < 5
            r = c.routers["n1"]
            assert r.stats["dead_lettered"] == 2
            await until(lambda: sum(isinstance(p, RecordDeadLetters) for p in c.proposed) >= 1)
            reasons = [i.reason for p in c.proposed if isinstance(p, RecordDeadLetters) for i in p.items]
            await until(
                lambda: len([i for p in c.proposed if isinstance(p, RecordDeadLetters) for i in p.items]) == 2
            )
            reasons = [i.reason for p in c.proposed if isinstance(p, RecordDeadLetters) for i in p.items]
            assert any("expired" in x and "n3" in x for x in reasons), reasons
            assert any("expired" in x and "n2" in x for x in reasons), reasons
        finally:
            await c.stop()

    asyncio.run(main())


def test_a_stream_cut_mid_flight_loses_and_repeats_nothing() -> None:
    async def main() -> None:
        c = await start()
        try:
            c.activate("echo/a", "n2", 3)
            r = c.routers["n1"]
            total = 2000
            sends = [asyncio.ensure_future(r.send(msg("client:x", "echo/a", n))) for n in range(total)]
            await until(lambda: len(c.hosts["n2"].got) >= 200)
            # Cut: n2's server goes away mid-flight (every stream breaks, acks in flight are lost)
            # and comes back on the same address; n1 dials again and sends what was unanswered.
            await c.servers["n2"].stop(None)
            await c.serve("n2")
            async with asyncio.timeout(20):
                await asyncio.gather(*sends)
            assert payloads(c.hosts["n2"], "client:x", "echo/a") == list(range(total))
            assert r.stats["sessions_opened"] >= 2
        finally:
            await c.stop()

    asyncio.run(main())


def test_a_peer_gone_silent_mid_flight_is_dialled_again_and_nothing_is_lost_or_repeated() -> None:
    async def main() -> None:
        ports = free_ports(len(NODES))
        with TcpProxy("127.0.0.1", ports[1]) as proxy:  # n1 -> n2 goes through it
            c = await start(ports=ports, dial={("n1", "n2"): proxy.address})
            try:
                c.activate("echo/a", "n2", 3)
                r = c.routers["n1"]
                total = 1000
                sends = [asyncio.ensure_future(r.send(msg("client:x", "echo/a", n))) for n in range(total)]
                await until(lambda: len(c.hosts["n2"].got) >= 100)
                # Everything in flight is held (no error, no data: a partition as TCP sees one).
                await asyncio.to_thread(proxy.block, "hold")
                sends += [
                    asyncio.ensure_future(r.send(msg("client:x", "echo/a", n)))
                    for n in range(total, 2 * total)
                ]
                await until(
                    lambda: r.stats["sessions_opened"] >= 1 and not r.status()["links"]["n2"]["connected"]
                )
                await asyncio.to_thread(proxy.unblock)
                async with asyncio.timeout(30):
                    await asyncio.gather(*sends)
                assert payloads(c.hosts["n2"], "client:x", "echo/a") == list(range(2 * total))
                assert r.stats["sessions_opened"] >= 2
            finally:
                await c.stop()

    asyncio.run(main())


def test_request_reply_and_late_and_stale_replies_are_dropped_and_counted() -> None:
    async def main() -> None:
        c = await start()
        try:
            c.activate("echo/a", "n2", 7)
            c.hosts["n2"].epoch_of = lambda a: 7
            r = c.routers["n1"]
            reply = await r.request(msg("client:x", "echo/a", 41), timeout_s=5)
            assert reply.payload == {"echo": 41, "by": "n2"} and reply.correlation_id.startswith("m")
            # Local target: no stream, same promises.
            c.activate("echo/b", "n1", 8)
            reply = await r.request(msg("client:x", "echo/b", 42), timeout_s=5)
            assert reply.payload == {"echo": 42, "by": "n1"}

            # No answer in time: DEADLINE_EXCEEDED; the answer that comes later is counted, not kept.
            c.hosts["n2"].answer = False
            late = msg("client:x", "echo/a", 43)
            with pytest.raises(DeadlineExceeded):
                await r.request(late, timeout_s=0.2)
            c.routers["n2"].reply(
                Message(
                    id="r-late", sender="echo/a", correlation_id=late.id, reply_to="n1", payload=1, epoch=7
                )
            )
            await until(lambda: r.stats["late_replies"] == 1)

            # A reply from an older activation than the one the requester knows is dropped.
            stale = msg("client:x", "echo/a", 44)
            waiting = asyncio.ensure_future(r.request(stale, timeout_s=1.0))
            await until(lambda: any(m.id == stale.id for m in c.hosts["n2"].got))
            c.routers["n2"].reply(
                Message(
                    id="r-stale", sender="echo/a", correlation_id=stale.id, reply_to="n1", payload=1, epoch=6
                )
            )
            await until(lambda: r.stats["stale_replies"] == 1)
            with pytest.raises(DeadlineExceeded):
                await waiting
        finally:
            await c.stop()

    asyncio.run(main())


def test_fast_publish_reaches_subscribers_and_every_nodes_client_streams() -> None:
    async def main() -> None:
        c = await start()
        try:
            with c.lock:
                c.machine.state.messages.subscriptions["news"] = {"echo": None, "echo/k": None}
            c.activate("echo/src1", "n2", 3)
            c.activate("echo/k", "n3", 4)
            streams = {n: c.routers[n].subscribe("news", from_start=False) for n in NODES}
            firsts = {n: asyncio.ensure_future(anext(s)) for n, s in streams.items()}
            # Each node tells its peers which topics it streams to clients; n1 broadcasts there.
            await until(
                lambda: all(c.routers["n1"].status()["links"][n]["peer_topics"] == 1 for n in ("n2", "n3"))
            )
            p = Message(
                id="p1",
                sender="client:x",
                topic="news",
                source="src1",
                payload="hi",
                sent_ms=SYSTEM_CLOCK.now_ms(),
                ttl_ms=30_000,
            )
            sent = await c.routers["n1"].send(p)
            assert sorted(sent.targets) == ["echo/k", "echo/src1"]
            assert [m.payload for m in c.hosts["n2"].got] == ["hi"] and c.hosts["n2"].got[
                0
            ].target == "echo/src1"
            assert [m.target for m in c.hosts["n3"].got] == ["echo/k"]
            async with asyncio.timeout(5):
                got = await asyncio.gather(*firsts.values())
            assert [m.id for m in got] == ["p1"] * 3
            for s in streams.values():
                await s.aclose()
        finally:
            await c.stop()

    asyncio.run(main())


def test_subscribe_from_start_reads_the_retained_log_then_live_durable_publishes() -> None:
    async def main() -> None:
        c = await start()
        try:

            def publish(seq: int) -> None:
                m = Message(id=f"d{seq}", sender="client:x", topic="t", payload=seq, durable=True)
                with c.lock:
                    c.machine.state.messages.topics.setdefault("t", __import__("collections").deque()).append(
                        Published(seq, m, 0)
                    )
                c.applied([TopicPublished(seq, "t", seq)])

            publish(1)
            publish(2)
            s = c.routers["n2"].subscribe("t", from_start=True)
            assert (await anext(s)).payload == 1
            assert (await anext(s)).payload == 2
            nxt = asyncio.ensure_future(anext(s))
            await asyncio.sleep(0.01)
            publish(3)
            async with asyncio.timeout(5):
                assert (await nxt).payload == 3
            await s.aclose()
        finally:
            await c.stop()

    asyncio.run(main())


def test_exchange_refuses_strangers_and_malformed_frames() -> None:
    async def main() -> None:
        c = await start()
        try:

            async def exchange(frames: list[pb.PeerFrame], to: str = "n2") -> tuple[grpc.StatusCode, str]:
                async def gen() -> Any:
                    for f in frames:
                        yield f
                    await asyncio.sleep(0.5)

                async with grpc.aio.insecure_channel(c.addrs[to]) as ch:
                    call = pb_grpc.PeerStub(ch).Exchange(gen())
                    try:
                        async for _ in call:
                            pass
                    except grpc.aio.AioRpcError as exc:
                        return exc.code(), exc.details() or ""
                return grpc.StatusCode.OK, ""

            await quiet(c, "n1")  # this test speaks for n1: its own router must not dial meanwhile
            code, why = await exchange([pb.PeerFrame(node_id="stranger", incarnation="x")])
            assert code == grpc.StatusCode.FAILED_PRECONDITION and "not a member" in why
            code, why = await exchange([pb.PeerFrame(node_id="n1", incarnation="old")])
            assert code == grpc.StatusCode.FAILED_PRECONDITION
            code, why = await exchange([pb.PeerFrame(node_id="n3", incarnation="incn3")])
            assert code == grpc.StatusCode.FAILED_PRECONDITION and "smaller id dials" in why
            bad = pb.PeerFrame(node_id="n1", incarnation="incn1", messages=[pb.AgentMessage(id="x")])
            code, why = await exchange([pb.PeerFrame(node_id="n1", incarnation="incn1"), bad])
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "one tag" in why, why
        finally:
            await c.stop()

    asyncio.run(main())


def test_an_invalid_message_from_a_peer_is_refused_for_good() -> None:
    async def main() -> None:
        c = await start()
        try:
            c.activate("echo/a", "n2", 3)
            await quiet(c, "n1")  # this test speaks for n1: its own router must not dial meanwhile
            frames: list[pb.PeerFrame] = [pb.PeerFrame(node_id="n1", incarnation="incn1")]
            m = pb.AgentMessage(
                id="bad id",
                sender="client:x",
                target="echo/a",
                payload_json="1",
                ttl_ms=1000,
                sent_ms=SYSTEM_CLOCK.now_ms(),
            )
            frames.append(
                pb.PeerFrame(
                    node_id="n1",
                    incarnation="incn1",
                    messages=[m],
                    tags=[1],
                    lane_seqs=[1],
                    lane_bases=[1],
                    kinds=[0],
                )
            )

            async def gen() -> Any:
                for f in frames:
                    yield f
                await asyncio.sleep(2)

            acks: list[pb.PeerAck] = []
            async with grpc.aio.insecure_channel(c.addrs["n2"]) as ch:
                call = pb_grpc.PeerStub(ch).Exchange(gen())
                async for f in call:
                    acks.extend(f.acks)
                    if acks:
                        call.cancel()
                        break
            assert acks[0].tag == 1 and not acks[0].retry and "invalid message" in acks[0].error
            assert not c.hosts["n2"].got
        finally:
            await c.stop()

    asyncio.run(main())


def applies(*cmds: type[Command]) -> Any:
    """Skip a test that needs the messaging commands applied until consensus registers them."""
    missing = [c.__name__ for c in cmds if c not in machine_mod.PROCESSORS]
    return pytest.mark.skipif(
        bool(missing),
        reason=f"{', '.join(missing)} not applied yet: consensus/message_commands.py (branch mcons) is not merged",
    )


@applies(Activate)
def test_a_target_with_no_activation_is_activated_through_the_log_then_delivered_there() -> None:
    async def main() -> None:
        c = await start()
        try:
            await c.routers["n3"].send(msg("client:x", "echo/new", 1))
            a = c.machine.state.messages.activations["echo/new"]
            assert [m.payload for m in c.hosts[a.node].got] == [1]
            assert sum(isinstance(p, Activate) for p in c.proposed) == 1
        finally:
            await c.stop()

    asyncio.run(main())


@applies(Activate)
def test_work_a_clients_send_starts_runs_as_the_node_not_as_that_client() -> None:
    # The activation (and a new link's dial or pump) outlives the call that needed it: its
    # proposals must carry origin node:ID, not the client's principal and request id.
    async def main() -> None:
        c = await start()
        try:
            with calls.bound(calls.Call(principal="token:alice", request_id="req-1")):
                await c.routers["n3"].send(msg("client:alice", "echo/ctx", 1))
            activations = [
                who for cmd, who in zip(c.proposed, c.callers, strict=True) if isinstance(cmd, Activate)
            ]
            assert len(activations) == 1 and activations == [None]
        finally:
            await c.stop()

    asyncio.run(main())


@applies(RecordDeadLetters)
def test_fast_path_dead_letters_land_in_the_replicated_list() -> None:
    async def main() -> None:
        c = await start()
        try:
            c.activate("echo/a", "n2", 3)
            c.hosts["n2"].refuse = lambda m: Refused("no actor type echo here", retry=False)
            with pytest.raises(FailedPrecondition):
                await c.routers["n1"].send(msg("client:x", "echo/a", 5))
            await until(lambda: len(c.machine.state.messages.dead_letters) == 1)
            d = c.machine.state.messages.dead_letters[0]
            assert d.node == "n1" and d.letter.message.payload == 5 and "no actor type" in d.letter.reason
        finally:
            await c.stop()

    asyncio.run(main())


@applies(SendMessages, AckMessage)
def test_a_durable_request_is_committed_and_answered_by_the_reply_in_the_handlers_ack() -> None:
    async def main() -> None:
        c = await start()
        try:
            req = msg("client:x", "echo/d", 9, durable=True)
            waiting = asyncio.ensure_future(c.routers["n1"].request(req, timeout_s=5))
            await until(lambda: "echo/d" in c.machine.state.messages.mailboxes)
            st = c.machine.state.messages
            queued = next(iter(st.mailboxes["echo/d"].queue.values()))
            a = st.activations["echo/d"]
            assert queued.message.reply_to == "n1"
            # The handler's turn on the activation's node: one AckMessage carrying the reply.
            reply = Message(
                id="r1", sender="echo/d", correlation_id=req.id, reply_to="n1", payload=10, epoch=a.epoch
            )
            res = await c.propose(
                AckMessage("ack-1", SYSTEM_CLOCK.now_ms(), a.node, "echo/d", a.epoch, queued.seq, reply=reply)
            )
            assert res.ok, res
            async with asyncio.timeout(5):
                got = await waiting
            assert got.payload == 10 and got.correlation_id == req.id
            # Asked again with the same id: the reply kept in the state answers at once.
            again = await c.routers["n1"].request(req, timeout_s=1)
            assert again.payload == 10
        finally:
            await c.stop()

    asyncio.run(main())


@applies(Activate)
def test_a_type_no_member_offers_fails_at_once_and_one_with_no_room_waits_until_its_ttl() -> None:
    async def main() -> None:
        c = await start()
        try:
            with pytest.raises(FailedPrecondition, match="no node offers actor type 'nobody'"):
                await c.routers["n1"].send(msg("client:x", "nobody/1", 1))
            for node in NODES:  # every node that offers echo is down: an activation has to wait
                res, _ = c.machine.apply(NodeDown(f"down-{node}", 2000, node, f"inc{node}", "test"))
                assert res.ok, res
            with pytest.raises(DeadlineExceeded):
                await c.routers["n1"].send(msg("client:x", "echo/later", 2, ttl_ms=300))
            # Only nobody/1's: while no node can take echo/later it waits without asking the log.
            assert sum(isinstance(p, Activate) for p in c.proposed) == 1
            await until(lambda: len(c.machine.state.messages.dead_letters) == 2)
            reasons = [d.letter.reason for d in c.machine.state.messages.dead_letters]
            assert "no node offers" in reasons[0] and "expired" in reasons[1], reasons
        finally:
            await c.stop()

    asyncio.run(main())


def test_messages_follow_an_activation_that_moved_in_order() -> None:
    async def main() -> None:
        c = await start()
        try:
            c.activate("echo/m", "n2", 3)
            r = c.routers["n1"]
            await asyncio.gather(*(r.send(msg("client:x", "echo/m", n)) for n in range(50)))
            # The activation moves to n3; n2 now refuses (it no longer holds it). The sender learns
            # of the move from n2's refusal alone (no event here): it looks at its replica again.
            c.hosts["n2"].refuse = lambda m: Refused("not activated here", retry=True)
            with c.lock:
                st = c.machine.state.messages
                st.activations["echo/m"] = Activation("echo/m", "n3", "incn3", 9, 0, 2**62)
            await asyncio.gather(*(r.send(msg("client:x", "echo/m", n)) for n in range(50, 100)))
            assert payloads(c.hosts["n2"], "client:x", "echo/m") == list(range(50))
            assert payloads(c.hosts["n3"], "client:x", "echo/m") == list(range(50, 100))
            # And with the event (as apply emits it): straight to the new node.
            c.activate("echo/m", "n1", 12)
            c.hosts["n3"].refuse = lambda m: Refused("not activated here", retry=True)
            await asyncio.gather(*(r.send(msg("client:x", "echo/m", n)) for n in range(100, 150)))
            assert payloads(c.hosts["n1"], "client:x", "echo/m") == list(range(100, 150))
        finally:
            await c.stop()

    asyncio.run(main())


@applies(SendMessages, AckMessage)
def test_a_durable_request_retried_through_another_node_wakes_there_on_the_committed_reply() -> None:
    """The SDK's failover: committed through n1 (reply_to n1), asked again with the same id through
    n2 before the reply commits. n2 waits on that id: the ReplyCommitted (reply_to n1) wakes it."""

    async def main() -> None:
        c = await start()
        try:
            req = msg("client:x", "echo/f", 9, durable=True)
            first = asyncio.ensure_future(c.routers["n1"].request(req, timeout_s=5))
            await until(lambda: "echo/f" in c.machine.state.messages.mailboxes)
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
            sends = sum(isinstance(p, SendMessages) for p in c.proposed)
            retried = asyncio.ensure_future(c.routers["n2"].request(req, timeout_s=5))
            await until(lambda: sum(isinstance(p, SendMessages) for p in c.proposed) > sends)
            st = c.machine.state.messages
            queued = next(iter(st.mailboxes["echo/f"].queue.values()))
            assert queued.message.reply_to == "n1"
            a = st.activations["echo/f"]
            reply = Message(
                id="r1", sender="echo/f", correlation_id=req.id, reply_to="n1", payload=10, epoch=a.epoch
            )
            res = await c.propose(
                AckMessage("ack-f", SYSTEM_CLOCK.now_ms(), a.node, "echo/f", a.epoch, queued.seq, reply=reply)
            )
            assert res.ok, res
            async with asyncio.timeout(5):
                got = await retried
            assert got.payload == 10
        finally:
            await c.stop()

    asyncio.run(main())


@applies(SendMessages, AckMessage)
def test_a_durable_request_from_another_sender_with_the_same_id_is_its_own_and_gets_its_own_reply() -> None:
    """Ids are per sender: bob reusing alice's request id is queued as his own request and never
    reads the reply kept for alice."""

    async def main() -> None:
        c = await start()
        try:
            alice = Message(
                id="order-1",
                sender="client:alice",
                target="echo/r",
                payload="alice's",
                sent_ms=SYSTEM_CLOCK.now_ms(),
                ttl_ms=30_000,
                durable=True,
            )

            async def answer(n: int, payload: str) -> None:
                await until(
                    lambda: len(c.machine.state.messages.mailboxes.get("echo/r", Mailbox("")).queue) == 1
                )
                st = c.machine.state.messages
                queued = next(iter(st.mailboxes["echo/r"].queue.values()))
                a = st.activations["echo/r"]
                reply = Message(
                    id=f"r{n}",
                    sender="echo/r",
                    correlation_id="order-1",
                    reply_to="n1",
                    payload=payload,
                    epoch=a.epoch,
                )
                ack = AckMessage(
                    f"ack-r{n}", SYSTEM_CLOCK.now_ms(), a.node, "echo/r", a.epoch, queued.seq, reply=reply
                )
                assert (await c.propose(ack)).ok

            waiting = asyncio.ensure_future(c.routers["n1"].request(alice, timeout_s=5))
            await answer(1, "secret for alice")
            assert (await waiting).payload == "secret for alice"
            bob = dataclasses.replace(alice, sender="client:bob", payload="bob's")
            asking = asyncio.ensure_future(c.routers["n2"].request(bob, timeout_s=5))
            await answer(2, "for bob")
            assert (await asking).payload == "for bob"
        finally:
            await c.stop()

    asyncio.run(main())


@applies(RecordDeadLetters)
def test_a_stopping_node_dead_letters_what_it_still_sends_and_records_every_dead_letter() -> None:
    """The runtime's shutdown: the actor host has stopped (its inboxes dead-lettered through the
    router), then ``drain`` gives up every message still waiting and records them all before the
    router and the proposer stop."""

    async def main() -> None:
        c = await start()
        try:
            r = c.routers["n1"]
            c.activate("echo/w", "n9", 4)  # a node n1 cannot reach: what it sends there waits
            c.hosts["n2"].refuse = lambda m: Refused("not activated here yet", retry=True)
            c.activate("echo/v", "n2", 5)
            sends = [
                asyncio.ensure_future(r.send(msg("client:x", t, i)))
                for i in range(3)
                for t in ("echo/w", "echo/v")
            ]
            await until(lambda: r.stats["refused_retry"] > 0)
            r.dead_letter(
                msg("client:x", "echo/z", 1),
                "undeliverable: echo/z was deactivated on n1 (the node is stopping)",
            )
            async with asyncio.timeout(5):
                await r.drain(5.0)
            reasons = [d.letter.reason for d in c.machine.state.messages.dead_letters]
            assert len(reasons) == 7, reasons
            assert sum("the sending node n1 stopped" in why for why in reasons) == 6, reasons
            for s in await asyncio.gather(*sends, return_exceptions=True):
                assert isinstance(s, FailedPrecondition), s
            assert r.status()["lanes"] == 0 and r.status()["pending_dead_letters"] == 0
        finally:
            await c.stop()

    asyncio.run(main())


@applies(Activate)
def test_no_activate_goes_to_the_log_while_no_node_can_take_the_target() -> None:
    """Every node offering the type is down: the replica's placement says so, and the router waits
    for a membership change instead of proposing an ``Activate`` per address per retry."""

    async def main() -> None:
        c = await start()
        try:
            for node in NODES:
                assert c.machine.apply(NodeDown(f"down-{node}", 2000, node, f"inc{node}", "test"))[0].ok
            r = c.routers["n1"]
            sends = [asyncio.ensure_future(r.send(msg("client:x", f"echo/k{i}", i))) for i in range(30)]
            await until(lambda: r.status()["lanes"] == 30)
            await asyncio.sleep(1.0)  # what must not happen meanwhile: a log entry per address
            assert not [p for p in c.proposed if isinstance(p, Activate)]
            back = RegisterNode(
                "reg-n2-again",
                3000,
                "n2",
                c.addrs["n2"],
                "127.0.0.1:1",
                ("echo",),
                4,
                "incn2",
                actors=(ActorOffer("echo"),),
            )
            assert (await c.propose(back)).ok  # MemberChanged: the waiting addresses are placed now
            async with asyncio.timeout(10):
                await asyncio.gather(*sends)
            assert {m.target for m in c.hosts["n2"].got} == {f"echo/k{i}" for i in range(30)}
            assert len([p for p in c.proposed if isinstance(p, Activate)]) == 30
        finally:
            await c.stop()

    asyncio.run(main())


@applies(SubscribeTopic)
def test_a_fast_publish_names_only_the_subscribers_it_reached() -> None:
    async def main() -> None:
        c = await start()
        try:
            for sub, node, epoch in (("echo/s", "n2", 5), ("echo/t", "n3", 6)):
                res, _ = c.machine.apply(
                    SubscribeTopic(f"st-{sub}", 3000, topic="t", subscriber=sub, subscribe=True)
                )
                assert res.ok, res
                c.activate(sub, node, epoch)
            c.hosts["n2"].refuse = lambda m: Refused("undeliverable: handler gone", retry=False)
            sent = await c.routers["n1"].send(dataclasses.replace(msg("client:x", "", 1), topic="t"))
            assert sent.targets == ("echo/t",), sent
            await until(lambda: len(c.machine.state.messages.dead_letters) == 1)
        finally:
            await c.stop()

    asyncio.run(main())


def test_a_message_sent_but_unacknowledged_when_its_ttl_passes_says_its_receiver_may_have_it() -> None:
    async def main() -> None:
        ports = free_ports(len(NODES))
        with TcpProxy("127.0.0.1", ports[1]) as proxy:  # n1 -> n2 goes through it
            c = await start(ports=ports, dial={("n1", "n2"): proxy.address})
            try:
                c.activate("echo/u", "n2", 3)
                r = c.routers["n1"]
                await r.send(msg("client:x", "echo/u", 0))
                await asyncio.to_thread(proxy.block, "hold")  # transmitted, never answered
                with pytest.raises(DeadlineExceeded, match="unacknowledged"):
                    async with asyncio.timeout(20):
                        await r.send(msg("client:x", "echo/u", 1, ttl_ms=1500))
                await until(lambda: len(c.machine.state.messages.dead_letters) == 1)
                [dead] = c.machine.state.messages.dead_letters
                assert "unacknowledged; node n2 may have taken it" in dead.letter.reason, dead.letter.reason
            finally:
                await asyncio.to_thread(proxy.unblock)
                await c.stop()

    asyncio.run(main())


def test_a_stream_that_never_greets_is_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streams, "HELLO_TIMEOUT_S", 0.3)

    async def main() -> None:
        c = await start()
        try:

            async def silent() -> Any:
                await asyncio.sleep(30)
                yield pb.PeerFrame()

            async with grpc.aio.insecure_channel(c.addrs["n2"]) as ch:
                call = pb_grpc.PeerStub(ch).Exchange(silent())
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    async with asyncio.timeout(10):
                        async for _ in call:
                            pass
                assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, info.value
        finally:
            await c.stop()

    asyncio.run(main())


def test_an_activation_that_moves_with_messages_unhandled_gets_them_all_in_order() -> None:
    """Both nodes live: n2 takes five messages and stops before handling them (its lease moved).
    None of the sends returns before a handler took its message; n2 gives them back (retry),
    n1 resends them where the target is now, and n3 handles all, once each, in the sender's
    order, also after newer messages sent straight to n3. Nothing is dead-lettered."""

    async def main() -> None:
        c = await start()
        try:
            c.activate("echo/mv", "n2", 5)
            c.hosts["n2"].hold = True
            first = [msg("client:x", "echo/mv", i) for i in range(5)]
            sends = [asyncio.create_task(c.routers["n1"].send(m)) for m in first]
            await until(lambda: len(c.hosts["n2"].holding) == 5)
            await asyncio.sleep(0.05)
            assert not any(t.done() for t in sends)  # taken into the inbox is not handled
            # n2's activation stops (by its local lease clock) before n1 learns it moved.
            c.hosts["n2"].hold = False
            c.hosts["n2"].refuse = lambda m: Refused("not activated here", retry=True)
            for _, done in c.hosts["n2"].holding:
                done("moved: echo/mv stopped on n2", True)
            await until(lambda: c.routers["n1"].stats["refused_retry"] >= 1)
            c.activate("echo/mv", "n3", 9)
            later = [msg("client:x", "echo/mv", i) for i in range(5, 8)]
            sends += [asyncio.create_task(c.routers["n1"].send(m)) for m in later]
            async with asyncio.timeout(10):
                await asyncio.gather(*sends)
            assert [m.id for m in c.hosts["n3"].handled] == [m.id for m in first + later]
            assert not c.hosts["n2"].handled
            assert not any(isinstance(p, RecordDeadLetters) for p in c.proposed)
        finally:
            await c.stop()

    asyncio.run(main())


def test_messages_given_back_to_a_newer_epoch_on_the_same_node_are_taken_again_in_order() -> None:
    """A message given back unhandled is not a duplicate when it comes again (only handled ids
    are remembered), and nothing of its lane sent since overtakes it."""

    async def main() -> None:
        c = await start()
        try:
            c.activate("echo/same", "n2", 5)
            c.hosts["n2"].hold = True
            first = [msg("client:x", "echo/same", i) for i in range(3)]
            sends = [asyncio.create_task(c.routers["n1"].send(m)) for m in first]
            await until(lambda: len(c.hosts["n2"].holding) == 3)
            c.hosts["n2"].hold = False
            held, c.hosts["n2"].holding = c.hosts["n2"].holding, []
            held[0][1]("", False)  # the first one was handled before the activation stopped
            for _, done in held[1:]:
                done("moved: a newer epoch of echo/same started on n2", True)
            c.activate("echo/same", "n2", 6)
            sends.append(asyncio.create_task(c.routers["n1"].send(msg("client:x", "echo/same", 3))))
            async with asyncio.timeout(10):
                await asyncio.gather(*sends)
            got = [m.payload for m in c.hosts["n2"].got]
            assert got == [0, 1, 2, 1, 2, 3] and [m.payload for m in c.hosts["n2"].handled] == [1, 2, 3]
            assert c.routers["n2"].stats["duplicates"] == 0
            assert not any(isinstance(p, RecordDeadLetters) for p in c.proposed)
        finally:
            await c.stop()

    asyncio.run(main())


def test_a_copy_of_a_message_held_unhandled_is_answered_once_it_is_handled() -> None:
    """The stream breaks while n2 holds a message: n1 sends it again; n2 neither delivers the
    copy nor acks it before the handler took the first (an ack means handled)."""

    async def main() -> None:
        c = await start()
        try:
            c.activate("echo/slow", "n2", 5)
            c.hosts["n2"].hold = True
            m = msg("client:x", "echo/slow", 1)
            send = asyncio.create_task(c.routers["n1"].send(m))
            await until(lambda: len(c.hosts["n2"].holding) == 1)
            opened = c.routers["n1"].stats["sessions_opened"]
            link = c.routers["n1"]._links["n2"]
            c.routers["n1"]._streams._aborts["n2"]()  # cut the stream n1 dialled
            await until(lambda: c.routers["n1"].stats["sessions_opened"] > opened and link.connected)
            await until(
                lambda: (
                    c.routers["n2"].stats["duplicates"] + len(c.routers["n2"]._held[(m.id, m.target)]) >= 2
                )
            )
            await asyncio.sleep(0.1)
            assert not send.done() and len(c.hosts["n2"].got) == 1
            c.hosts["n2"].holding[0][1]("", False)
            async with asyncio.timeout(10):
                await send
            assert len(c.hosts["n2"].got) == 1 and not c.routers["n2"]._held
        finally:
            await c.stop()

    asyncio.run(main())


def test_a_fast_request_asked_again_through_any_node_gets_the_kept_reply_not_a_second_turn() -> None:
    """The chaos run's double handling: a client's fast request went through n1 to echo/k on n3,
    was handled, and n1 died before the client had the reply; the client asked again (the same
    id) through n2, and through n1 again. n3 answers each with the reply it kept: one turn."""

    async def main() -> None:
        c = await start()
        try:
            c.activate("echo/k", "n3", 15)
            c.hosts["n3"].epoch_of = lambda a: 15
            m = msg("client:m1", "echo/k", 20)
            first = await c.routers["n1"].request(m, timeout_s=5)
            assert first.payload == {"echo": 20, "by": "n3"}
            again = await c.routers["n2"].request(m, timeout_s=5)
            assert again.payload == first.payload and again.correlation_id == m.id and again.epoch == 15
            # Through the node that had the reply already (it drops a reply it saw, unless asked again).
            once_more = await c.routers["n1"].request(m, timeout_s=5)
            assert once_more.payload == first.payload
            assert [x.id for x in c.hosts["n3"].handled] == [m.id]
            assert (
                c.routers["n3"].stats["duplicates"] == c.routers["n3"].stats["requests_answered_again"] == 2
            )
        finally:
            await c.stop()

    asyncio.run(main())


def test_a_fast_request_asked_again_after_its_reply_is_gone_fails_at_once_not_at_its_deadline() -> None:
    """The handling node keeps a reply only so long (its TTL, a count and a byte bound) and only
    for the activation that gave it: a copy asked after that is not handled again (the id was
    handled), and its requester is told so at once instead of waiting out its deadline."""

    async def main() -> None:
        c = await start()
        try:
            c.activate("echo/k", "n3", 15)
            c.hosts["n3"].epoch_of = lambda a: 15
            m = msg("client:m1", "echo/k", 20)
            first = await c.routers["n1"].request(m, timeout_s=5)
            assert first.payload == {"echo": 20, "by": "n3"}
            c.routers["n3"]._kept.clear()  # as the bounds evict it
            c.routers["n3"]._kept_bytes = 0
            loop = asyncio.get_running_loop()
            start_s = loop.time()
            with pytest.raises(FailedPrecondition, match="no longer kept"):
                await c.routers["n2"].request(m, timeout_s=20)
            assert loop.time() - start_s < 10, "the requester waited for its deadline"
            # A kept reply of an activation that has ended is not given either (its epoch is stale).
            m2 = msg("client:m1", "echo/k", 21)
            await c.routers["n1"].request(m2, timeout_s=5)
            c.activate("echo/k", "n3", 16)
            with pytest.raises(FailedPrecondition, match="no longer kept"):
                await c.routers["n2"].request(m2, timeout_s=20)
            assert [x.id for x in c.hosts["n3"].handled] == [m.id, m2.id]
        finally:
            await c.stop()

    asyncio.run(main())


def test_a_fast_request_asked_again_while_its_handler_holds_it_answers_every_node_that_asked() -> None:
    """The copy through n2 arrives while n3's handler still holds the first (through n1): the
    copy is not delivered, and the one reply goes to both n1 and n2."""

    async def main() -> None:
        c = await start()
        try:
            c.activate("echo/k", "n3", 15)
            host = c.hosts["n3"]
            host.hold = True
            m = msg("client:m1", "echo/k", 7)
            first = asyncio.create_task(c.routers["n1"].request(m, timeout_s=5))
            await until(lambda: len(host.holding) == 1)
            again = asyncio.create_task(c.routers["n2"].request(m, timeout_s=5))
            await until(lambda: len(c.routers["n3"]._held.get((m.id, m.target), ())) == 2)
            held, done = host.holding[0]
            # As the actor host does: the reply goes out with the turn's end, then its sender is acked.
            c.routers["n3"].reply(
                Message(
                    id=f"r-{m.id}",
                    sender=m.target,
                    correlation_id=m.id,
                    reply_to=held.reply_to,
                    payload="handled once",
                    epoch=15,
                )
            )
            done("", False)
            async with asyncio.timeout(10):
                replies = await asyncio.gather(first, again)
            assert [r.payload for r in replies] == ["handled once", "handled once"]
            assert len(host.got) == 1 and not c.routers["n3"]._askers
        finally:
            await c.stop()

    asyncio.run(main())
