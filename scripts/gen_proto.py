#!/usr/bin/env python3
"""Regenerate the protobuf and gRPC code from raftmesh/proto/**/*.proto.

The repository root is the proto path, so generated imports are absolute
(``raftmesh.proto.raftmesh.v1``). tests/test_proto_drift.py fails when the
committed code no longer matches the .proto sources.
"""

from __future__ import annotations

import pathlib
import sys

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "raftmesh" / "proto"


def main() -> int:
    protos = sorted(str(p.relative_to(ROOT)) for p in PROTO_DIR.rglob("*.proto"))
    include = str(pathlib.Path(protoc.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{ROOT}",
        f"-I{include}",
        f"--python_out={ROOT}",
        f"--pyi_out={ROOT}",
        f"--grpc_python_out={ROOT}",
        *protos,
    ]
    rc = protoc.main(args)
    if rc != 0:
        print("protoc failed", file=sys.stderr)
        return rc
    for pkg in {PROTO_DIR / "raftmesh", *(PROTO_DIR / "raftmesh").rglob("*")}:
        if pkg.is_dir():
            (pkg / "__init__.py").touch()
    print("generated:", ", ".join(protos))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
