"""The role table covers every RPC a node serves, and trace context parses as W3C says."""

from __future__ import annotations

import pytest

from raftmesh import calls
from raftmesh.consensus.commands import Origin, SubmitRun, decode_command, encode_command
from raftmesh.proto.raftmesh.v1 import cluster_pb2 as pb
from raftmesh.security.roles import METHOD_ROLES, OPEN, Role, allows


def test_every_rpc_has_a_role() -> None:
    methods = {
        f"/{svc.full_name}/{m.name}" for svc in pb.DESCRIPTOR.services_by_name.values() for m in svc.methods
    }
    missing = sorted(methods - METHOD_ROLES.keys())
    assert not missing, f"give these methods a role in raftmesh/security/roles.py: {missing}"


def test_role_order_and_peer_is_nodes_only() -> None:
    assert allows(Role.READER, "/raftmesh.v1.Cluster/GetRun")
    assert not allows(Role.READER, "/raftmesh.v1.Cluster/SubmitRun")
    assert allows(Role.SUBMITTER, "/raftmesh.v1.Cluster/SubmitRun")
    assert not allows(Role.SUBMITTER, "/raftmesh.v1.Cluster/ApproveTask")
    assert allows(Role.OPERATOR, "/raftmesh.v1.Cluster/ApproveTask")
    assert not allows(Role.ADMIN, "/raftmesh.v1.Peer/Exchange")
    assert allows(Role.NODE, "/raftmesh.v1.Peer/Exchange")
    assert not allows(Role.ADMIN, "/raftmesh.v1.Cluster/NoSuchMethod")
    assert METHOD_ROLES["/grpc.health.v1.Health/Check"] == OPEN
    with pytest.raises(ValueError, match="unknown role"):
        Role.parse("root")
    assert Role.parse(" Operator ") is Role.OPERATOR


@pytest.mark.parametrize(
    "header, ok",
    [
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", True),
        ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01", True),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", False),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", False),
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", False),
        ("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", False),
        ("garbage", False),
    ],
)
def test_traceparent(header: str, ok: bool) -> None:
    parsed = calls.parse_traceparent(header)
    assert (parsed is not None) == ok
    if parsed:
        trace, span = parsed
        assert calls.valid_trace_id(trace) and len(span) == 16
        assert calls.parse_traceparent(calls.traceparent(trace, span)) == (trace, span)


def test_origin_rides_with_the_command() -> None:
    c = SubmitRun("r1", 5, run_id="x", origin=Origin("token:alice", "req-1", "a" * 32))
    back = decode_command(encode_command(c))
    assert back.origin == Origin("token:alice", "req-1", "a" * 32)
    assert decode_command(encode_command(SubmitRun("r2", 5))).origin is None


def test_bound_call_is_current_and_gives_the_origin() -> None:
    assert calls.current() is None
    with calls.bound(calls.Call(principal="token:bob", request_id="q", trace_id="b" * 32)):
        call = calls.current()
        assert call is not None and call.origin() == Origin("token:bob", "q", "b" * 32)
    assert calls.current() is None
