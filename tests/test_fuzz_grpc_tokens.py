"""Fuzz a node that has a tokens file (one node in this process, real gRPC on 127.0.0.1).

Random methods and bodies (``grpc_fuzz.cases``) go with a credential nobody should get past: none,
a garbage ``authorization`` header (junk, unknown schemes, overlong values, ``authorization-bin``
bytes, two headers), a reader's token, a forged ``Node ID:HMAC``. Promise: a call without a valid
credential is UNAUTHENTICATED whatever its method and body, a reader's call to a method that needs
more is PERMISSION_DENIED, never UNKNOWN or INTERNAL, and the node keeps serving. Raw HTTP/2 streams
with non-ASCII bytes in ``authorization`` (which no gRPC client sends) are refused without an answer.
``RAFTMESH_FUZZ_EXAMPLES`` raises the example count; ``scripts/fuzz.py --tokens`` is the long run.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings

from raftmesh.security.tokens import add_token
from raftmesh.testing import grpc_fuzz as gf
from tests.test_fuzz_grpc import inprocess_node

EXAMPLES = int(os.environ.get("RAFTMESH_FUZZ_EXAMPLES", "250"))
SECRET = "fuzz-cluster-secret-" + "0" * 24


class Secured:
    def __init__(
        self, channel: grpc.Channel, address: str, failure: list[BaseException], reader: str, admin: str
    ):
        self.channel, self.address, self.failure = channel, address, failure
        self.reader = reader
        self.admin = (("authorization", f"Bearer {admin}"),)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    d: Path = tmp_path_factory.mktemp("fuzz-tokens")
    tokens = str(d / "tokens.yaml")
    _, admin = add_token(tokens, "root", "admin")
    _, reader = add_token(tokens, "ro", "reader")
    md = (("authorization", f"Bearer {admin}"),)
    with inprocess_node(str(d / "n1"), metadata=md, raft_password=SECRET, tokens_file=tokens) as (
        addr,
        failure,
    ):
        channel = gf.open_channel(addr)
        try:
            yield Secured(channel, addr, failure, reader, admin)
        finally:
            channel.close()


def _after(s: Secured) -> None:
    assert not s.failure, f"the node's loop died: {s.failure}"
    assert gf.serves(s.channel, metadata=s.admin), "the node stopped serving ClusterStatus to the admin"


def test_every_method_refuses_each_kind_of_bad_credential(secured: Secured) -> None:
    """Every RPC, an empty body, each credential kind (a fixed instance of each)."""
    bad = {
        "none": (),
        "garbage": (("authorization", "Bearer " + "x" * 600),),
        "reader": (("authorization", f"Bearer {secured.reader}"),),
        "forged-node": (("authorization", "Node n1:" + "0" * 64),),
    }
    codes: dict[str, set[str]] = {k: set() for k in bad}
    for m in gf.methods():
        for kind, md in bad.items():
            ac = gf.AuthCase(gf.Case(m, (b"",), "empty"), kind, md)
            o = gf.call(secured.channel, ac.case, ac.metadata)
            gf.check_auth(ac, o)
            codes[kind].add(o.code.name)
    assert codes["none"] == codes["garbage"] == codes["forged-node"] == {"UNAUTHENTICATED"}, codes
    assert "PERMISSION_DENIED" in codes["reader"] and "OK" in codes["reader"], codes
    _after(secured)


def test_random_credentials_methods_and_bodies(secured: Secured) -> None:
    tally = gf.Tally()
    kinds: dict[str, int] = {}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(gf.auth_cases(secured.reader, SECRET))
    def fuzz(ac: gf.AuthCase) -> None:
        o = gf.call(secured.channel, ac.case, ac.metadata)
        tally.add(o)
        kinds[ac.kind] = kinds.get(ac.kind, 0) + 1
        gf.check_auth(ac, o)
        assert not secured.failure, f"the node's loop died after {ac!r}: {secured.failure}"

    fuzz()
    print(f"inputs tried: {tally.tried}, crashes: 0, codes: {sorted(tally.by_code.items())}, kinds: {kinds}")
    assert set(kinds) == set(gf.AUTH_KINDS), kinds
    _after(secured)


def test_raw_binary_authorization_headers_are_refused(secured: Secured) -> None:
    """Bytes no gRPC client would send (controls, NUL, non-ASCII) in ``authorization``, on a raw
    HTTP/2 stream: the stream ends without a response message, and the node keeps serving."""
    path = "/raftmesh.v1.Cluster/ClusterStatus"
    # The hand-made stream is a real call: with the admin token it gets the status back.
    ok = gf.raw_http2_call(secured.address, path, b"", secured.admin[0][1].encode())
    assert ok.ended and ok.data, ok
    rng = random.Random(1107)
    values = [b"Bearer \x00\xff", b"\x80" * 40, b"Node n1:\r\n" + b"a" * 64, b"Bearer \x7f"]
    values += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))) for _ in range(12)]
    for v in values:
        answer = gf.raw_http2_call(secured.address, path, b"", v)
        assert answer.ended, f"{v!r}: the stream was neither answered nor reset ({answer})"
        assert not answer.data, f"{v!r}: the node answered a response message ({answer})"
    _after(secured)
