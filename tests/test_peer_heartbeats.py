"""The Peer service on real gRPC (loopback, in process): which heartbeats count, and what is kept.

The service runs over a real ``StateMachine`` and the real ``Scheduler``; the only stand-in
is the holder that a ``RaftMember`` would be (a lock, the machine, "this node leads").
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

from raftmesh.consensus.commands import NodeDown, RegisterNode
from raftmesh.consensus.machine import StateMachine
from raftmesh.localcluster import free_ports
from raftmesh.node.decoding import guarded
from raftmesh.node.peers import PeerService, no_peer_identity
from raftmesh.node.scheduler import Scheduler
from raftmesh.proto.raftmesh.v1 import cluster_pb2 as pb
from raftmesh.proto.raftmesh.v1 import cluster_pb2_grpc as pb_grpc


@dataclass
class Replica:
    """What the Peer service and the scheduler read of a Raft member: its applied state."""

    machine: StateMachine = field(default_factory=StateMachine)
    lock: Any = field(default_factory=threading.RLock)
    is_leader: bool = True
    term: int = 1


@dataclass
class Config:
    node_id: str = "n1"


@dataclass
class Node:
    raft: Replica
    scheduler: Scheduler
    config: Config = field(default_factory=Config)


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
) -> tuple[grpc.aio.Server, str, Node]:
    raft = Replica()
    for n in ("n1", "n2", "n3"):
        register(raft, n, f"inc{n}")
    node = Node(raft, Scheduler(raft, None, "n1"))  # type: ignore[arg-type]  # no proposals in these tests
    server = grpc.aio.server()
    pb_grpc.add_PeerServicer_to_server(PeerService(node, identify), guarded(server))  # type: ignore[arg-type]
    addr = f"127.0.0.1:{free_ports(1)[0]}"
    server.add_insecure_port(addr)
    await server.start()
    return server, addr, node


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
        sched = node.scheduler
        try:
            rng = random.Random(7)
            junk = [hb(rand_id(rng), "inc") for _ in range(5000)]
            out, code, _ = await beats(addr, [hb("n2", "incn2"), *junk, hb("n3", "incn3")])
            assert code == grpc.StatusCode.OK and len(out) == 5002
            assert out[0].up and out[-1].up and not any(r.up for r in out[1:-1])
            assert set(sched._last_seen) == {"n2", "n3"} and sched._heard == {"n2", "n3"}

            # A down member's heartbeats (even in its incarnation) do not bring it back or count.
            res, _ = node.raft.machine.apply(NodeDown("d-1", 2000, "n3", "incn3", "test"))
            assert res.ok, res
            sched._check_liveness(3000)  # prunes the maps to the up members
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
            assert "n3" not in node.scheduler._heard
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
