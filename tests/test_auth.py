"""Bearer tokens, roles, node identity, ownership and namespaces (``raftmesh.security``).

The first part checks the tokens file, the authenticator and the ownership rules without
a node; the rest runs one real 3-node cluster started with ``--tokens-file`` and checks
each role's allowed and refused calls (UNAUTHENTICATED vs PERMISSION_DENIED), the CLI's
exit code 7, SIGHUP reloads, expired tokens, that the nodes still talk to each other
(a DAG across nodes, a fast message to an actor on another node), lock lease handles,
who may cancel, and namespace isolation of runs and keys.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from raftmesh import calls
from raftmesh.client import DAG, Client
from raftmesh.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from raftmesh.localcluster import LocalCluster, wait_until
from raftmesh.proto.raftmesh.v1 import cluster_pb2 as pb
from raftmesh.proto.raftmesh.v1 import cluster_pb2_grpc as pb_grpc
from raftmesh.security import ownership
from raftmesh.security.roles import Role
from raftmesh.security.tokens import (
    TokenAuthenticator,
    add_token,
    hash_token,
    node_metadata,
    parse_tokens,
    read_tokens_file,
)

ROOT = pathlib.Path(__file__).resolve().parent.parent
SECRET = "s" * 32


def _cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAFTMESH_")}
    return subprocess.run(
        [sys.executable, "-m", "raftmesh.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**base, **(env or {})},
    )


# ---- the tokens file ---------------------------------------------------------------------


def test_tokens_add_makes_a_private_file_and_prints_the_token_once(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "tokens.yaml")
    out = _cli("tokens", "add", "--file", path, "--subject", "alice", "--role", "admin", "--json")
    assert out.returncode == 0, out.stderr
    made = json.loads(out.stdout)
    assert set(made) == {"subject", "role", "token", "namespaces"}
    assert made["subject"] == "alice" and made["role"] == "admin" and made["namespaces"] == ["*"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = pathlib.Path(path).read_text()
    assert made["token"] not in text and hash_token(made["token"]) in text  # only the hash is kept
    second = _cli(
        "tokens", "add", "--file", path, "--subject", "bob", "--role", "submitter",
        "--namespaces", "a,b", "--expires", "2030-01-01T00:00:00Z",
    )  # fmt: skip
    assert second.returncode == 0, second.stderr
    token = second.stdout.strip()
    listed = _cli("tokens", "list", "--file", path, "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)["tokens"]
    assert rows == [
        {"subject": "alice", "role": "admin", "namespaces": ["*"], "expires": None},
        {"subject": "bob", "role": "submitter", "namespaces": ["a", "b"], "expires": "2030-01-01T00:00:00Z"},
    ]
    assert token not in listed.stdout and made["token"] not in listed.stdout
    bad = _cli("tokens", "add", "--file", path, "--subject", "x", "--role", "node")
    assert bad.returncode == 2


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ({"subject": "eve", "role": "root", "sha256": "a" * 64}, "unknown role"),
        ({"subject": "eve", "role": "admin", "sha256": "xyz"}, "64 lowercase hex"),
        ({"subject": "eve", "role": "node", "sha256": "a" * 64}, "nodes only"),
        ({"subject": "e ve", "role": "admin", "sha256": "a" * 64}, "spaces"),
        ({"subject": "eve", "role": "admin", "sha256": "a" * 64, "expires": "soon"}, "ISO-8601"),
        ({"subject": "eve", "role": "admin", "sha256": "a" * 64, "namespaces": ["bad ns"]}, "namespace"),
        ({"subject": "eve", "role": "admin", "sha256": "a" * 64, "colour": "red"}, "unknown key"),
    ],
)
def test_a_bad_entry_is_named(entry: dict[str, Any], says: str) -> None:
    good = {"subject": "ok", "role": "reader", "sha256": "b" * 64}
    with pytest.raises(InvalidArgument) as err:
        parse_tokens(json.dumps({"tokens": [good, entry]}), "t.json")
    assert "token entry 2" in err.value.message and says in err.value.message


def test_one_token_one_entry() -> None:
    e = {"subject": "a", "role": "reader", "sha256": "c" * 64}
    with pytest.raises(InvalidArgument, match="same hash"):
        parse_tokens(json.dumps({"tokens": [e, e | {"subject": "b"}]}), "t.json")


def test_authenticator_bearer_node_expiry_and_reload(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "tokens.yaml")
    _, alice = add_token(path, "alice", "operator", "team1")
    _, old = add_token(path, "old", "reader", None, "2020-01-01T00:00:00Z")
    now = [1_700_000_000_000]
    auth = TokenAuthenticator(path, SECRET, now_ms=lambda: now[0])
    who = auth.authenticate({"authorization": f"Bearer {alice}"}, {})
    assert (who.name, who.role, who.namespaces) == ("token:alice", Role.OPERATOR, ("team1",))
    for md, says in (
        ({}, "RAFTMESH_TOKEN"),
        ({"authorization": "Bearer nope"}, "not known"),
        ({"authorization": f"Bearer {old}"}, "expired"),
        ({"authorization": f"Basic {alice}"}, "scheme"),
        ({"authorization": "Node n1:" + "0" * 64}, "cluster secret"),
    ):
        with pytest.raises(Unauthenticated) as err:
            auth.authenticate(md, {})
        assert says in err.value.message
    [(_, node_auth)] = node_metadata("n1", SECRET)
    assert auth.authenticate({"authorization": node_auth}, {}).name == "node:n1"
    [(_, other_secret)] = node_metadata("n1", "t" * 32)
    with pytest.raises(Unauthenticated):
        auth.authenticate({"authorization": other_secret}, {})
    # A bad file on reload keeps the old table and says why; a good one replaces it.
    pathlib.Path(path).write_text("tokens: [{subject: x}]")
    assert "token entry 1" in auth.reload()
    assert auth.authenticate({"authorization": f"Bearer {alice}"}, {}).name == "token:alice"
    pathlib.Path(path).write_text("tokens: []\n")
    assert auth.reload() == ""
    with pytest.raises(Unauthenticated):
        auth.authenticate({"authorization": f"Bearer {alice}"}, {})
    with pytest.raises(InvalidArgument, match="cluster secret"):
        TokenAuthenticator(path, "")


def test_a_reload_reads_an_emptied_file_twice_and_warns_of_a_writable_one(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    import threading

    path = str(tmp_path / "tokens.yaml")
    _, alice = add_token(path, "alice", "admin", None)
    full = pathlib.Path(path).read_text()
    auth = TokenAuthenticator(path, SECRET)
    # Truncated by a writer that has not written yet: the second read sees the written file.
    pathlib.Path(path).write_text("")
    done: list[str] = []
    with auth._reloading:  # the reload waits for the one in progress (serialised)
        t = threading.Thread(target=lambda: done.append(auth.reload(settle_s=5)))
        t.start()
    wait_until(lambda: auth._reloading.locked(), 10, "the reload reading")
    pathlib.Path(path).write_text(full)  # written during the settle time (or before the first read)
    t.join(60)
    assert done == [""] and auth.authenticate({"authorization": f"Bearer {alice}"}, {}).name == "token:alice"
    # Really empty on both reads: installed, and said loudly.
    pathlib.Path(path).write_text("")
    with caplog.at_level("WARNING", logger="raftmesh.security.tokens"):
        assert auth.reload(settle_s=0) == ""
    assert "no tokens" in caplog.text and auth.size == 0
    pathlib.Path(path).write_text(full)
    os.chmod(path, 0o664)
    caplog.clear()
    with caplog.at_level("WARNING", logger="raftmesh.security.tokens"):
        assert auth.reload() == ""
    assert "writable by its group" in caplog.text and auth.size == 1


def test_with_mutual_tls_a_node_credential_needs_that_nodes_certificate(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "tokens.yaml")
    add_token(path, "alice", "admin", None)
    [(_, n1)] = node_metadata("n1", SECRET)
    md = {"authorization": n1}
    mtls = TokenAuthenticator(path, SECRET, peer_cn=True)
    assert mtls.authenticate(md, {"x509_common_name": [b"n1"]}).name == "node:n1"
    for ctx, says in (({"x509_common_name": [b"n2"]}, "'n2'"), ({}, "missing")):
        with pytest.raises(Unauthenticated, match=says):
            mtls.authenticate(md, ctx)
    plain = TokenAuthenticator(path, SECRET)  # no client certificates asked for: the HMAC is the proof
    assert plain.authenticate(md, {}).name == "node:n1"
    with pytest.raises(Unauthenticated):  # but a certificate presented must be the node's own
        plain.authenticate(md, {"x509_common_name": [b"client"]})


def test_plaintext_tokens_off_loopback_are_warned_about(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import warnings

    from raftmesh.client import _security
    from raftmesh.node.config import Peer, build_config
    from raftmesh.node.runtime import NodeRuntime

    monkeypatch.setattr(_security, "_warned_plaintext", False)
    creds = _security.Credentials(token="rmt_x")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        creds.channel("127.0.0.1:1").close()
        creds.channel("localhost:1").close()
        assert not seen
        creds.channel("10.255.255.1:1").close()
        creds.channel("10.255.255.2:1").close()
    assert len(seen) == 1 and "without TLS" in str(seen[0].message)
    path = str(tmp_path / "tokens.yaml")
    add_token(path, "alice", "admin", None)
    for grpc_addr, warned in (("127.0.0.1:1", False), ("0.0.0.0:1", True)):
        caplog.clear()
        cfg = build_config(
            "n1",
            "127.0.0.1:2",
            grpc_addr,
            [Peer("n1", "127.0.0.1:2", grpc_addr)],
            str(tmp_path / "d"),
            raft_password=SECRET,
            tokens_file=path,
        )
        with caplog.at_level("WARNING", logger="raftmesh.node.runtime"):
            NodeRuntime(cfg)
        assert ("TLS is off" in caplog.text) == warned


def test_a_node_refuses_to_start_with_a_bad_tokens_file_or_without_the_secret(tmp_path: pathlib.Path) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("tokens:\n  - {subject: alice, role: wizard, sha256: " + "a" * 64 + "}\n")
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    node = ["node", "--id", "n1", "--raft", "127.0.0.1:1", "--grpc", "127.0.0.1:2"]
    node += ["--data-dir", str(tmp_path / "d"), "--tokens-file", str(tokens)]
    bad = _cli(*node, "--raft-secret-file", str(secret))
    assert bad.returncode == 2 and "token entry 1 ('alice')" in bad.stderr and "wizard" in bad.stderr
    config = tmp_path / "node.json"  # the --config key is the same setting
    config.write_text(json.dumps({"tokens_file": str(tokens), "raft-secret-file": str(secret)}))
    bad = _cli(*node[:-2], "--config", str(config))
    assert bad.returncode == 2 and "token entry 1 ('alice')" in bad.stderr
    tokens.write_text("tokens: []\n")
    no_secret = _cli(*node)
    assert no_secret.returncode == 2 and "cluster secret" in no_secret.stderr


# ---- ownership rules, without a node -----------------------------------------------------


def _call(principal: str, role: str, *namespaces: str) -> calls.Call:
    return calls.Call(principal=principal, role=role, namespaces=namespaces or ("*",))


def test_ownership_rules() -> None:
    with calls.bound(_call("token:a", "submitter")):
        ownership.check_run("", "token:a", "r1", cancel=True)
        with pytest.raises(PermissionDenied, match="only its own runs"):
            ownership.check_run("", "token:b", "r1", cancel=True)
        ownership.check_run("", "token:b", "r1")  # seeing it is fine
        assert ownership.principal_or("ipv4:1.2.3.4:5") == "token:a"
    with calls.bound(_call("token:op", "operator")):
        ownership.check_run("", "token:b", "r1", cancel=True)
    with calls.bound(_call("token:t", "submitter", "a", "b")):
        ownership.check_key("a/x")
        ownership.check_key("b/")
        for key in ("c/x", "x", "", "ab/x", "a"):
            with pytest.raises(PermissionDenied):
                ownership.check_key(key)
        ownership.check_namespace("a")
        with pytest.raises(PermissionDenied):
            ownership.check_namespace("")
        with pytest.raises(PermissionDenied, match="namespace"):
            ownership.check_run("c", "token:t", "r1")
        assert ownership.restricted() and ownership.may_see("b") and not ownership.may_see("c")
    with calls.bound(_call(calls.ANONYMOUS, "admin")):
        assert ownership.principal_or("ipv4:1.2.3.4:5") == "ipv4:1.2.3.4:5"
        ownership.check_key("anything")
    ownership.check_key("no call bound: the node acting on its own")


# ---- a real cluster with tokens ------------------------------------------------------------


class Secured:
    def __init__(self, cluster: LocalCluster, tokens: dict[str, str], path: str) -> None:
        self.c = cluster
        self.tokens = tokens
        self.path = path

    def client(self, who: str | None, *addresses: str) -> Client:
        token = self.tokens[who] if who is not None else None
        return Client(list(addresses) or self.c.addresses, token=token, retry_deadline_s=30)

    def hup(self) -> None:
        for n in self.c.nodes.values():
            assert n.pid is not None
            os.kill(n.pid, signal.SIGHUP)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    from tests import messaging_actors

    base = tmp_path_factory.mktemp("auth")
    path = str(base / "tokens.yaml")
    tokens: dict[str, str] = {}
    for who, role, ns in (
        ("admin", "admin", None),
        ("reader", "reader", None),
        ("alice", "submitter", None),
        ("bob", "submitter", None),
        ("op", "operator", None),
        ("team", "submitter", "a"),
    ):
        tokens[who] = add_token(path, who, role, ns)[1]
    tokens["expired"] = add_token(path, "expired", "admin", None, "2020-01-01T00:00:00Z")[1]
    cluster = LocalCluster(
        3,
        base_dir=str(base / "cluster"),
        extra_args=["--tokens-file", path],
        agents_modules=[messaging_actors.SOURCE],
        env={"PYTHONPATH": str(ROOT)},
    )
    # LocalCluster's own status calls (leader, readiness) read RAFTMESH_TOKEN.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAFTMESH_TOKEN", tokens["admin"])
        try:
            cluster.start()
            yield Secured(cluster, tokens, path)
        except BaseException:
            for n in cluster.nodes.values():
                print(n.id, pathlib.Path(n.log_path).read_text()[-3000:])
            raise
        finally:
            cluster.close()


def _code(fn: Any, *args: Any, **kw: Any) -> grpc.StatusCode:
    try:
        out = fn(*args, timeout=30, **kw)
        if hasattr(out, "__next__"):
            next(out)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def _md(token: str | None) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")] if token else []


@pytest.mark.e2e
def test_each_role_gets_what_it_may_and_is_told_what_it_may_not(secured: Secured) -> None:
    t = secured.tokens
    U, P, OK = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.OK
    with grpc.insecure_channel(secured.c.addresses[0]) as ch:
        cl, kv, peer = pb_grpc.ClusterStub(ch), pb_grpc.KvStub(ch), pb_grpc.PeerStub(ch)
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        assert _code(health_pb2_grpc.HealthStub(ch).Check, health_pb2.HealthCheckRequest()) == OK  # probes
        status = pb.ClusterStatusRequest()
        for token in (None, "wrong", t["expired"]):
            assert _code(cl.ClusterStatus, status, metadata=_md(token)) == U
        try:
            cl.ClusterStatus(status, timeout=30)
        except grpc.RpcError as exc:
            assert "RAFTMESH_TOKEN" in (exc.details() or "")
        submit = pb.SubmitRunRequest(tasks=[pb.TaskSpec(id="a", agent="echo", input_json="1")])
        put = pb.KvPutRequest(key="k", value_json="1")
        beat = pb.HeartbeatRequest(node_id="n9", incarnation="x")
        expected = {
            # who: (status, list runs, submit, kv put, pause, peer heartbeat)
            "reader": (OK, OK, P, P, P, P),
            "alice": (OK, OK, OK, OK, P, P),
            "op": (OK, OK, OK, OK, None, P),
            "admin": (OK, OK, OK, OK, None, P),
        }
        run_id = cl.SubmitRun(submit, metadata=_md(t["admin"]), timeout=30).run_id
        for who, want in expected.items():
            md = _md(t[who])
            got = (
                _code(cl.ClusterStatus, status, metadata=md),
                _code(cl.ListRuns, pb.ListRunsRequest(), metadata=md),
                _code(cl.SubmitRun, submit, metadata=md),
                _code(kv.Put, put, metadata=md),
                _code(cl.PauseRun, pb.PauseRunRequest(run_id=run_id), metadata=md),
                _code(peer.Heartbeat, iter([beat]), metadata=md),
            )
            assert got[:4] + got[5:] == want[:4] + want[5:], who
            assert (got[4] == P) == (want[4] == P), who  # an operator's pause may find the run ended
        # A node credential made with the wrong secret is refused; no token passes as a node.
        [(_, forged)] = node_metadata("n1", "not the cluster secret!")
        assert _code(cl.ClusterStatus, status, metadata=[("authorization", forged)]) == U
        assert _code(cl.ClusterStatus, status, metadata=[("authorization", f"Node n1:{t['admin']}")]) == U


@pytest.mark.e2e
def test_the_cli_exits_7_when_refused(secured: Secured) -> None:
    addrs = ",".join(secured.c.addresses)
    env = {"RAFTMESH_ADDRESSES": addrs}
    none = _cli("status", env=env)
    assert none.returncode == 7 and "--token" in none.stderr
    assert _cli("--token", "wrong", "status", env=env).returncode == 7
    assert _cli("status", env=env | {"RAFTMESH_TOKEN": secured.tokens["reader"]}).returncode == 0
    assert _cli("--token", secured.tokens["reader"], "kv", "put", "k", "1", env=env).returncode == 7
    assert _cli("--token", secured.tokens["alice"], "kv", "put", "k", "1", env=env).returncode == 0


@pytest.mark.e2e
def test_sighup_reload_adds_and_revokes_tokens(secured: Secured) -> None:
    _, carol = add_token(secured.path, "carol", "reader")
    secured.hup()

    def works(token: str) -> bool:
        with Client(secured.c.addresses, token=token, retry_deadline_s=0) as c:
            try:
                c.status()
            except Unauthenticated:
                return False
        return True

    wait_until(lambda: all(works_at(secured, carol, a) for a in secured.c.addresses), 30, "carol accepted")
    entries = [e for e in read_tokens_file(secured.path) if e.subject != "carol"]
    from raftmesh.security.tokens import write_tokens_file

    write_tokens_file(secured.path, entries)
    secured.hup()
    wait_until(lambda: not any(works_at(secured, carol, a) for a in secured.c.addresses), 30, "carol revoked")
    assert works(secured.tokens["reader"])
    # A broken file on SIGHUP: the nodes keep serving with the tokens they had.
    text = pathlib.Path(secured.path).read_text()
    pathlib.Path(secured.path).write_text("tokens: {not: a list}\n")
    try:
        secured.hup()
        log = pathlib.Path(secured.c.nodes["n1"].log_path)
        wait_until(lambda: "tokens file not reloaded" in log.read_text(), 30, "the reload refused")
        assert works(secured.tokens["reader"])
    finally:
        pathlib.Path(secured.path).write_text(text)
        secured.hup()


def works_at(secured: Secured, token: str, address: str) -> bool:
    with Client([address], token=token, retry_deadline_s=0) as c:
        try:
            c.status_of(address)
        except Unauthenticated:
            return False
    return True


@pytest.mark.e2e
def test_nodes_still_talk_to_each_other(secured: Secured) -> None:
    c = secured.client("admin")
    dag = DAG("spread")
    for i in range(12):
        dag.task(f"s{i}", "sum", input={"value": i})
    dag.task("total", "sum", input={"value": 0}, deps=[f"s{i}" for i in range(12)])
    run = c.run(dag, timeout_s=90)
    assert run.status == "SUCCEEDED", run.error
    assert run.tasks["total"].output == sum(range(12))
    assert run.submitter == "token:admin"
    # A fast request through n1 to an actor on another node crosses a Peer.Exchange stream.
    n1 = secured.c.nodes["n1"].grpc
    pinned = secured.client("admin", n1)
    for i in range(9):
        pinned.messages.send(f"tally/p{i}", {"seq": 0}, durable=True)
    elsewhere = wait_until(
        lambda: [a for a in pinned.messages.activations("tally/p") if a.node != "n1"],
        60,
        "an activation on another node",
    )
    reply = pinned.messages.request(elsewhere[0].address, {"get": True}, timeout_s=20)
    assert reply.payload["node"] != "n1"
    pinned.close()


@pytest.mark.e2e
def test_a_lock_is_released_only_with_its_lease_handle(secured: Secured) -> None:
    alice, bob = secured.client("alice"), secured.client("bob")
    granted, token, _ = alice.locks.acquire("jobs", owner="alice-1", ttl_s=30, wait_s=0)
    assert granted
    handle = alice.locks.lease_of("alice-1", token)
    assert len(handle) == 32
    for lease in ("0" * 32, None):
        with pytest.raises((PermissionDenied, InvalidArgument)):
            bob.locks.release("alice-1", "jobs", token, lease=lease)
    listed = bob.locks.list("jobs")
    assert listed[0]["holders"][0]["owner"] == "alice-1" and handle not in json.dumps(listed)
    bob.locks.release("alice-1", "jobs", token, lease=handle)  # the handle is the proof, not the client
    assert bob.locks.list("jobs")[0]["holders"] == []
    with alice.lock("jobs", ttl_s=5) as held:  # the SDK's context manager renews and releases
        assert held.handle
    alice.close()
    bob.close()


@pytest.mark.e2e
def test_a_replayed_lock_request_id_gives_another_caller_neither_the_lease_nor_the_wait(
    secured: Secured,
) -> None:
    t = secured.tokens
    with grpc.insecure_channel(secured.c.addresses[0]) as ch:
        locks = pb_grpc.LocksStub(ch)
        item = [pb.LockItem(name="replayed", mode="exclusive")]
        req = pb.LockAcquireRequest(owner="alice-w", locks=item, ttl_ms=60000, request_id="job-42-lock")
        first = locks.Acquire(req, metadata=_md(t["alice"]), timeout=30)
        assert first.granted and first.lease
        with pytest.raises(grpc.RpcError) as refused:
            locks.Acquire(req, metadata=_md(t["bob"]), timeout=30)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        again = locks.Acquire(req, metadata=_md(t["alice"]), timeout=30)  # alice's own retry
        assert again.lease == first.lease
        # A replay of a waiting request neither learns the grant nor cancels alice's wait.
        wait = pb.LockAcquireRequest(
            owner="alice-2", locks=item, ttl_ms=60000, wait_ms=30000, request_id="job-43-lock"
        )
        waiting = locks.Acquire.future(wait, metadata=_md(t["alice"]), timeout=60)
        listing = pb.LockListRequest(prefix="replayed")
        wait_until(
            lambda: "alice-2" in locks.List(listing, metadata=_md(t["admin"]), timeout=30).locks[0].waiters,
            30,
            "alice's second request waiting",
        )
        replay = pb.LockAcquireRequest(
            owner="alice-2", locks=item, ttl_ms=60000, wait_ms=100, request_id="job-43-lock"
        )
        with pytest.raises(grpc.RpcError) as refused:
            locks.Acquire(replay, metadata=_md(t["bob"]), timeout=30)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        locks.Release(
            pb.LockReleaseRequest(owner="alice-w", name="replayed", token=first.token, lease=first.lease),
            metadata=_md(t["alice"]),
            timeout=30,
        )
        second = waiting.result()
        assert second.granted and second.lease
        locks.Release(
            pb.LockReleaseRequest(owner="alice-2", name="replayed", token=second.token, lease=second.lease),
            metadata=_md(t["alice"]),
            timeout=30,
        )


@pytest.mark.e2e
def test_a_submitter_cancels_only_its_own_runs(secured: Secured) -> None:
    alice, bob, op = secured.client("alice"), secured.client("bob"), secured.client("op")
    slow = DAG("slow")
    slow.task("z", "sleep", input={"seconds": 60})
    mine = alice.submit(slow)
    assert alice.get(mine).submitter == "token:alice"
    with pytest.raises(PermissionDenied, match="only its own runs"):
        bob.cancel(mine)
    assert alice.get(mine).status == "RUNNING"
    theirs = bob.submit(slow)
    op.cancel(theirs)  # an operator may cancel any run
    gated = DAG("gated")
    gated.task("g", "echo", input=1, approval={"prompt": "ok?"})
    run_id = alice.submit(gated)
    wait_until(lambda: alice.get(run_id).tasks["g"].status == "WAITING_APPROVAL", 60, "the gate open")
    with pytest.raises(PermissionDenied):
        alice.approve(run_id, "g")  # approving is an operator's
    assert op.approve(run_id, "g", by="someone else").by == "token:op"  # the principal, not the claim
    assert alice.cancel(mine) == "CANCELLED"
    for c in (alice, bob, op):
        c.close()


@pytest.mark.e2e
def test_a_token_limited_to_namespaces_sees_and_touches_only_them(secured: Secured) -> None:
    team, admin = secured.client("team"), secured.client("admin")
    dag = DAG("ns")
    dag.task("a", "echo", input=1)
    ours = team.submit(dag, namespace="a")
    for ns in ("", "b"):
        with pytest.raises(PermissionDenied):
            team.submit(dag, namespace=ns)
    other = admin.submit(dag, namespace="b", idempotency_key="admins-key")
    with pytest.raises(PermissionDenied):  # a key names a run cluster-wide: not a way to see it
        team.submit(dag, namespace="a", idempotency_key="admins-key")
    default = admin.submit(dag)
    assert admin.get(ours).namespace == "a"
    team.wait(ours, timeout_s=60)
    for run_id in (other, default):
        with pytest.raises(PermissionDenied):
            team.get(run_id)
        with pytest.raises(PermissionDenied):
            team.cancel(run_id)
        with pytest.raises(PermissionDenied):
            for _ in team.watch(run_id, timeout_s=10):
                pass
    seen = {r["run_id"] for r in team.list_runs(limit=1000)}
    assert ours in seen and other not in seen and default not in seen
    assert {r["namespace"] for r in team.list_runs(limit=1000)} == {"a"}
    assert {r["run_id"] for r in admin.list_runs(limit=1000, namespace="b")} == {other}
    with pytest.raises(PermissionDenied):
        team.list_runs(namespace="b")
    team.kv.put("a/x", 1)
    assert team.kv.get("a/x").value == 1
    for key in ("b/x", "x"):
        with pytest.raises(PermissionDenied):
            team.kv.put(key, 1)
        with pytest.raises(PermissionDenied):
            team.kv.get(key)
    with pytest.raises(PermissionDenied):
        team.kv.list("")
    assert [e.key for e in team.kv.list("a/")] == ["a/x"]
    granted, token, _ = team.locks.acquire("a/lock", owner="team-1", wait_s=0)
    assert granted
    team.locks.release("team-1", "a/lock", token)
    with pytest.raises(PermissionDenied):
        team.locks.acquire("b/lock", owner="team-1", wait_s=0)
    # A lease's revoke deletes its keys: refused while it holds a key outside the namespaces.
    lease = team.kv.lease_grant(30)
    team.kv.put("a/leased", 1, lease=lease)
    admin.kv.put("b/leased", 1, lease=lease)
    with pytest.raises(PermissionDenied) as refused:
        team.kv.lease_revoke(lease)
    assert "b/leased" not in str(refused.value)  # another namespace's key names stay unseen
    admin.kv.delete("b/leased")
    assert team.kv.lease_revoke(lease) == ["a/leased"]
    with pytest.raises(NotFound):
        admin.get("r-nope")
    team.close()
    admin.close()


@pytest.mark.e2e
def test_a_runs_tasks_reach_only_its_namespace(secured: Secured) -> None:
    team, admin = secured.client("team"), secured.client("admin")
    grab = DAG("grab")
    grab.task("hold", "kv_put", input={"key": "a/q", "value": 1}, locks=["b/db"])
    with pytest.raises(PermissionDenied, match="b/db"):  # a declared lock outside the token's namespaces
        team.submit(grab, namespace="a")
    out, fine = DAG("out"), DAG("in")
    out.task("out", "kv_put", input={"key": "b/pwned", "value": 1}, retries=0)
    fine.task("in", "kv_put", input={"key": "a/fine", "value": 1}, retries=0)
    run = team.wait(team.submit(out, namespace="a"), timeout_s=60)
    assert run.tasks["out"].status == "FAILED" and "outside this run's namespace" in run.tasks["out"].error
    assert team.wait(team.submit(fine, namespace="a"), timeout_s=60).tasks["in"].status == "SUCCEEDED"
    assert team.kv.get("a/fine").value["value"] == 1
    assert admin.kv.get("b/pwned") is None
    team.close()
    admin.close()


@pytest.mark.e2e
def test_dead_letters_are_listed_only_for_the_callers_namespaces(secured: Secured) -> None:
    team, admin = secured.client("team"), secured.client("admin")
    boom = DAG("boom")
    boom.task("boom", "fail", input={"times": 99}, retries=0)
    theirs = admin.submit(boom, namespace="b")
    ours = team.submit(boom, namespace="a")
    for c, run_id in ((admin, theirs), (team, ours)):
        c.wait(run_id, timeout_s=60)
    assert {theirs, ours} <= {d.run_id for d in admin.dead_letters(limit=1000)}
    seen = {d.run_id for d in team.dead_letters(limit=1000)}
    assert ours in seen and theirs not in seen
    with pytest.raises(PermissionDenied, match="not namespace-scoped"):
        team.messages.dead_letters()
    admin.messages.dead_letters()
    team.close()
    admin.close()


@pytest.mark.e2e
def test_a_kv_lease_is_attached_renewed_and_revoked_only_by_its_grantee(secured: Secured) -> None:
    alice, bob, op = secured.client("alice"), secured.client("bob"), secured.client("op")
    lease = alice.kv.lease_grant(60)
    alice.kv.put("alices/k", 1, lease=lease)
    with pytest.raises(PermissionDenied, match="another principal"):
        bob.kv.put("bobs/k", 1, lease=lease)
    with pytest.raises(PermissionDenied, match="another principal"):
        bob.kv.lease_keep_alive(lease)
    with pytest.raises(PermissionDenied, match="another principal"):
        bob.kv.lease_revoke(lease)
    assert bob.kv.get("bobs/k") is None and alice.kv.get("alices/k") is not None
    alice.kv.lease_keep_alive(lease)
    op.kv.lease_keep_alive(lease)  # an operator or admin may manage any lease
    assert alice.kv.lease_revoke(lease) == ["alices/k"]
    for c in (alice, bob, op):
        c.close()


@pytest.mark.e2e
def test_a_clients_messages_carry_its_tokens_subject_as_sender(secured: Secured) -> None:
    t = secured.tokens
    alice = secured.client("alice")
    with grpc.insecure_channel(secured.c.addresses[0]) as ch:
        msgs = pb_grpc.MessagesStub(ch)
        for claimed in ("client:bob", ""):
            spoof = pb.AgentMessage(
                sender=claimed, target="tally/spoof", payload_json=json.dumps({"seq": 1 if claimed else 2})
            )
            msgs.Send(pb.SendMessageRequest(message=spoof), metadata=_md(t["alice"]), timeout=30)
    alice.messages.send("tally/spoof", {"seq": 3})  # the SDK's client:<client id> too
    state = alice.messages.request("tally/spoof", {"get": True}, timeout_s=20).payload["state"]
    assert state["n"] == 3 and set(state["last"]) == {"client:alice"}
    alice.close()


@pytest.mark.e2e
def test_cluster_script_secure_makes_an_admin_token(tmp_path: pathlib.Path) -> None:
    from tests.test_cli import _free_base

    script, d = str(ROOT / "scripts" / "cluster.sh"), str(tmp_path / "c")
    env = {**os.environ, "RAFTMESH_BIN": f"{sys.executable} -m raftmesh.cli.main"}
    env.pop("RAFTMESH_TOKEN", None)

    def sh(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [script, *args, "--dir", d], capture_output=True, text=True, timeout=120, env=env
        )

    os.makedirs(d)
    loose = pathlib.Path(d, "raft.secret")
    loose.write_text("")  # left empty and world-readable (say, by an earlier failed run)
    os.chmod(loose, 0o644)
    try:
        up = sh("up", "3", "--secure", "--base-port", str(_free_base()))
        assert up.returncode == 0, up.stderr
        assert stat.S_IMODE(os.stat(loose).st_mode) == 0o600 and loose.read_text()
        lines = dict(ln.split("=", 1) for ln in pathlib.Path(d, "env").read_text().split())
        assert set(lines) >= {"RAFTMESH_ADDRESSES", "RAFTMESH_TOKEN"}
        assert stat.S_IMODE(os.stat(pathlib.Path(d, "env")).st_mode) == 0o600
        [admin] = read_tokens_file(str(pathlib.Path(d, "tokens.yaml")))
        assert (admin.subject, admin.role) == ("admin", Role.ADMIN)
        assert admin.sha256 == hash_token(lines["RAFTMESH_TOKEN"])
        with_token = _cli("status", "--json", env=lines)
        assert with_token.returncode == 0, with_token.stderr
        dag = tmp_path / "dag.json"  # TLS and tokens together: the nodes still run work
        dag.write_text(
            json.dumps({"tasks": [{"id": f"t{i}", "agent": "sum", "input": {"value": i}} for i in range(6)]})
        )
        sub = _cli("submit", str(dag), "--wait", "--json", env=lines)
        assert sub.returncode == 0 and json.loads(sub.stdout)["submitter"] == "token:admin", sub.stderr
        without_token = {k: v for k, v in lines.items() if k != "RAFTMESH_TOKEN"}  # TLS, no token
        assert _cli("status", env=without_token).returncode == 7
    finally:
        sh("down")
