"""The Peer service on real gRPC (loopback, in process): which heartbeats count, and what is kept.

The service runs over a real ``StateMachine``, the node's ``ReadView`` and the leader's real
``Liveness``; the only stand-in is what a ``RaftMember`` would answer ("this node leads", term 1).
"""

from __future__ import annotations

import asyncio
import random
import string
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from raftmesh.clock import ManualClock
from raftmesh.consensus.commands import NodeDown, RegisterNode
from raftmesh.consensus.machine import StateMachine
from raftmesh.localcluster import free_ports
from raftmesh.node.decoding import guarded
from raftmesh.node.liveness import Liveness
from raftmesh.node.peers import PeerAccess, PeerService, no_peer_identity
from raftmesh.node.reads import ReadView
from raftmesh.proto.raftmesh.v1 import cluster_pb2 as pb
from raftmesh.proto.raftmesh.v1 import cluster_pb2_grpc as pb_grpc


@dataclass
class Replica:
    """The applied state the Peer service reads, and the leader's liveness it reports to."""

    machine: StateMachine = field(default_factory=StateMachine)
    lock: Any = field(default_factory=threading.RLock)
    liveness: Liveness = field(default_factory=lambda: Liveness(ManualClock(), "n1", node_down_after_s=5.0))


def register(raft: Replica, node_id: str, incarnation: str, ts: int = 1000) -> None:
    res, _ = raft.machine.apply(
        RegisterNode(
            f"reg-{node_id}-{incarnation}",
            ts,
            node_id,
            "127.0.0.1:1",
            "127.0.0.1:2",
            ("echo",),
            4,
            incarnation,
        )
    )
    assert res.ok, res


async def serve(
    identify: Callable[[Any], str | None] = no_peer_identity,
) -> tuple[grpc.aio.Server, str, Replica]:
    raft = Replica()
    for n in ("n1", "n2", "n3"):
        register(raft, n, f"inc{n}")
    access = PeerAccess(
        node_id="n1",
        reads=ReadView(raft.lock, lambda: raft.machine.state),
        is_leader=lambda: True,
        term=lambda: 1,
        heard_from=raft.liveness.heard_from,
    )
    server = grpc.aio.server()
    pb_grpc.add_PeerServicer_to_server(PeerService(access, identify), guarded(server))
    addr = f"127.0.0.1:{free_ports(1)[0]}"
    server.add_insecure_port(addr)
    await server.start()
    return server, addr, raft


async def beats(
    addr: str, hbs: list[pb.HeartbeatRequest]
) -> tuple[list[pb.HeartbeatResponse], grpc.StatusCode, str]:
    async def gen() -> AsyncIterator[pb.HeartbeatRequest]:
        for hb in hbs:
            yield hb

    out: list[pb.HeartbeatResponse] = []
    async with grpc.aio.insecure_channel(addr) as ch:
        call = pb_grpc.PeerStub(ch).Heartbeat(gen())
        try:
            async for r in call:
                out.append(r)
        except grpc.aio.AioRpcError as exc:
            return out, exc.code(), exc.details() or ""
    return out, grpc.StatusCode.OK, ""


def hb(node_id: str, incarnation: str) -> pb.HeartbeatRequest:
    return pb.HeartbeatRequest(node_id=node_id, incarnation=incarnation, ts_ms=1)


def rand_id(rng: random.Random) -> str:
    return "x" + "".join(rng.choices(string.ascii_letters + string.digits, k=40))


def test_only_current_incarnations_of_up_members_count_and_maps_stay_bounded() -> None:
    async def main() -> None:
        server, addr, node = await serve()
        sched = node.liveness
        try:
            rng = random.Random(7)
            junk = [hb(rand_id(rng), "inc") for _ in range(5000)]
            out, code, _ = await beats(addr, [hb("n2", "incn2"), *junk, hb("n3", "incn3")])
            assert code == grpc.StatusCode.OK and len(out) == 5002
            assert out[0].up and out[-1].up and not any(r.up for r in out[1:-1])
            assert set(sched._last_seen) == {"n2", "n3"} and sched._heard == {"n2", "n3"}

            # A down member's heartbeats (even in its incarnation) do not bring it back or count.
            res, _ = node.machine.apply(NodeDown("d-1", 2000, "n3", "incn3", "test"))
            assert res.ok, res
            sched.overdue(node.machine.state.members.values())  # prunes the maps to the up members
            assert set(sched._last_seen) <= {"n1", "n2"} and "n3" not in sched._heard
            out, code, _ = await beats(addr, [hb("n3", "incn3")])
            assert code == grpc.StatusCode.OK and not out[0].up and "n3" not in sched._heard

            # Another incarnation than the member's: refused, and the current one is not echoed.
            _, code, msg = await beats(addr, [hb("n2", "oldincarnation")])
            assert code == grpc.StatusCode.FAILED_PRECONDITION and "incn2" not in msg, msg
            for bad in (hb("n2", ""), hb("", "incn2"), hb("n2\x1b[2J", "incn2"), hb("n" * 1_000_000, "i")):
                _, code, msg = await beats(addr, [bad])
                assert code == grpc.StatusCode.INVALID_ARGUMENT and len(msg) < 1200, (code, msg[:80])
        finally:
            await server.stop(None)

    asyncio.run(main())


def test_a_peer_credential_must_match_the_node_id_claimed() -> None:
    async def main() -> None:
        server, addr, node = await serve(identify=lambda _ctx: "n2")
        try:
            out, code, _ = await beats(addr, [hb("n2", "incn2")])
            assert code == grpc.StatusCode.OK and out[0].up
            _, code, msg = await beats(addr, [hb("n3", "incn3")])
            assert code == grpc.StatusCode.PERMISSION_DENIED and "n2" in msg
            assert "n3" not in node.liveness._heard
        finally:
            await server.stop(None)

    asyncio.run(main())


def test_undecodable_heartbeat_bytes_are_invalid_argument() -> None:
    async def main() -> None:
        server, addr, _ = await serve()
        try:

            async def gen() -> AsyncIterator[bytes]:
                yield hb("n2", "incn2").SerializeToString()
                yield b"\x0a\x02\xff\xfe"  # field 1 (a string) that is not UTF-8

            async with grpc.aio.insecure_channel(addr) as ch:
                call = ch.stream_stream(
                    "/raftmesh.v1.Peer/Heartbeat",
                    request_serializer=lambda b: b,
                    response_deserializer=pb.HeartbeatResponse.FromString,
                )(gen())
                got = []
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    async for r in call:
                        got.append(r)
            assert len(got) == 1 and got[0].up
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        finally:
            await server.stop(None)

    asyncio.run(main())


def test_a_sender_knows_when_the_leader_counts_it() -> None:
    """``HeartbeatSender.counted`` (which SERVING waits for) follows the leader's answers."""
    from raftmesh.clock import SystemClock
    from raftmesh.node.peers import HeartbeatSender

    async def until(pred: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not pred():
            assert loop.time() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.02)

    async def main() -> None:
        server, addr, node = await serve()
        sender = HeartbeatSender("n4", "incn4", lambda: addr, lambda: 0, SystemClock())
        task = asyncio.ensure_future(sender.run())
        try:
            # Not a member yet (its registration has not committed): answered, not counted.
            await until(lambda: sender.acks >= 2, "two answers")
            assert not sender.counted and "n4" not in node.liveness._heard
            register(node, "n4", "incn4")
            await until(lambda: sender.counted, "the leader to count n4")
            assert "n4" in node.liveness._heard
            res, _ = node.machine.apply(NodeDown("d-4", 3000, "n4", "incn4", "test"))
            assert res.ok, res
            await until(lambda: not sender.counted, "the leader to stop counting n4 once it is down")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await server.stop(None)

    asyncio.run(main())
