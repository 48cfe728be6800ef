"""The committed generated code matches the .proto sources (regenerate: python scripts/gen_proto.py)."""

from __future__ import annotations

import pathlib

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

from raftmesh.proto.raftmesh.v1 import cluster_pb2, cluster_pb2_grpc

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_generated_code_matches_proto(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "set.pb"
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    rc = protoc.main(
        [
            "protoc",
            f"-I{ROOT}",
            f"-I{include}",
            f"--descriptor_set_out={out}",
            "raftmesh/proto/raftmesh/v1/cluster.proto",
        ]
    )
    assert rc == 0
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    committed = descriptor_pb2.FileDescriptorProto.FromString(cluster_pb2.DESCRIPTOR.serialized_pb)
    _clear_json_names(fresh.message_type)  # protoc adds json_name to descriptor sets, not to gencode
    assert fresh == committed, (
        "raftmesh/proto is stale: run python scripts/gen_proto.py and commit the result"
    )
    service = fresh.service[0]
    stub_methods = {m for m in dir(cluster_pb2_grpc.ClusterServicer) if not m.startswith("_")}
    assert {m.name for m in service.method} == stub_methods


def _clear_json_names(messages: object) -> None:
    for m in messages:  # type: ignore[attr-defined]
        for f in m.field:
            f.ClearField("json_name")
        _clear_json_names(m.nested_type)
