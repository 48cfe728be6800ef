"""TLS (README "TLS"): ``raftmesh certs init``, the node's TLS flags, and real clusters whose every
gRPC port and node-to-node channel (peer message streams, heartbeats) is TLS."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from raftmesh.agents import AgentNode
from raftmesh.cli.main import main as cli_main
from raftmesh.client import Client
from raftmesh.client._security import Credentials
from raftmesh.errors import AlreadyExists, InvalidArgument, Unavailable
from raftmesh.localcluster import LocalCluster, wait_until
from raftmesh.node.tls import load_tls
from raftmesh.security import certs
from tests.test_cli import _free_base

ROOT = pathlib.Path(__file__).resolve().parent.parent


def load(path: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pathlib.Path(path).read_bytes())


# ---- certs init ---------------------------------------------------------------------------


def test_certs_init_makes_a_ca_that_signs_node_and_client_certificates(tmp_path: pathlib.Path) -> None:
    out = certs.init(str(tmp_path / "tls"), ["n1", "n2"], hosts=["127.0.0.1", "db.example", "::1"], days=30)
    ca = load(out.ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert set(out.nodes) == {"n1", "n2"}
    for node, (cert_path, key_path) in out.nodes.items():
        cert = load(cert_path)
        cert.verify_directly_issued_by(ca)  # raises if the CA did not sign it
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == node
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
        assert san.get_values_for_type(x509.DNSName) == ["db.example", node]
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
        assert 29 <= days <= 30
        assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    client = load(out.client[0])
    client.verify_directly_issued_by(ca)
    assert list(client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    for key in (out.ca_key, out.client[1]):
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    # every node's files load as node TLS (key matches certificate)
    tls = load_tls(*out.nodes["n1"], out.ca, None)
    assert tls is not None and tls.client_auth == "require"


def test_certs_init_refuses_to_overwrite_without_force_and_prints_json(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = str(tmp_path / "tls")
    assert cli_main(["certs", "init", d, "--nodes", "n1,n2", "--json"]) == 0
    paths = json.loads(capsys.readouterr().out)
    assert paths["ca"] == os.path.join(d, "ca.pem") and paths["nodes"]["n2"]["key"] == os.path.join(
        d, "n2-key.pem"
    )
    assert paths["client"] == {
        "cert": os.path.join(d, "client.pem"),
        "key": os.path.join(d, "client-key.pem"),
    }
    before = pathlib.Path(d, "ca.pem").read_bytes()
    with pytest.raises(AlreadyExists, match="--force"):
        certs.init(d, ["n1"])
    assert cli_main(["certs", "init", d, "--nodes", "n1"]) == 5
    assert "--force" in capsys.readouterr().err
    assert pathlib.Path(d, "ca.pem").read_bytes() == before
    assert cli_main(["certs", "init", d, "--nodes", "n1", "--force"]) == 0
    assert pathlib.Path(d, "ca.pem").read_bytes() != before
    for bad, why in (
        (["--nodes", ""], "--nodes"),
        (["--nodes", "n 1"], "node id"),
        (["--nodes", "client"], "client"),
    ):
        assert cli_main(["certs", "init", str(tmp_path / "x"), *bad]) == 2
        assert why in capsys.readouterr().err
    assert cli_main(["certs", "init", str(tmp_path / "x"), "--nodes", "n1", "--days", "0"]) == 2


# ---- node flags ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> certs.Issued:
    return certs.init(str(tmp_path_factory.mktemp("tls")), ["n1", "n2", "n3"])


def node_args(tmp_path: pathlib.Path, *tls: str) -> list[str]:
    return [
        "node",
        "--id",
        "n1",
        "--raft",
        "127.0.0.1:1",
        "--grpc",
        "127.0.0.1:2",
        "--data-dir",
        str(tmp_path / "data"),
        *tls,
    ]


def test_bad_tls_flags_are_usage_errors_that_name_the_flag(
    issued: certs.Issued, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, key = issued.nodes["n1"]
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    cases = [
        (["--tls-cert", cert], "missing --tls-key, --tls-ca"),
        (["--tls-cert", cert, "--tls-key", key], "missing --tls-ca"),
        (["--tls-ca", issued.ca], "missing --tls-cert, --tls-key"),
        (["--tls-client-auth", "require"], "--tls-client-auth require needs TLS"),
        (["--tls-cert", str(junk), "--tls-key", key, "--tls-ca", issued.ca], "--tls-cert"),
        (["--tls-cert", cert, "--tls-key", str(junk), "--tls-ca", issued.ca], "--tls-key"),
        (["--tls-cert", cert, "--tls-key", key, "--tls-ca", str(junk)], "--tls-ca"),
        (["--tls-cert", cert, "--tls-key", key, "--tls-ca", str(tmp_path / "nope.pem")], "cannot read it"),
        (
            ["--tls-cert", cert, "--tls-key", issued.nodes["n2"][1], "--tls-ca", issued.ca],
            "is not the key of",
        ),
    ]
    for flags, why in cases:
        assert cli_main(node_args(tmp_path, *flags)) == 2, flags
        err = capsys.readouterr().err
        assert why in err, (flags, err)
    with pytest.raises(SystemExit) as exit_info:  # argparse's own usage error
        cli_main(node_args(tmp_path, "--tls-client-auth", "optional"))
    assert exit_info.value.code == 2
    # the same keys in a --config file, validated the same way
    cfg = tmp_path / "node.json"
    cfg.write_text(
        json.dumps({"tls_cert": cert, "tls_key": key, "tls_ca": issued.ca, "tls_client_auth": "optional"})
    )
    assert cli_main([*node_args(tmp_path), "--config", str(cfg)]) == 2
    assert "--tls-client-auth must be one of none, require" in capsys.readouterr().err
    with pytest.raises(InvalidArgument, match="--tls-cert, --tls-key and --tls-ca together"):
        load_tls(cert, None, None, "none")
    assert load_tls(None, None, None, "none") is None


# ---- a real TLS cluster ----------------------------------------------------------------------------


def tls_cluster(
    make_cluster: Callable[..., LocalCluster],
    issued: certs.Issued,
    size: int,
    client_auth: str,
    token: str | None = None,
    **kw: Any,
) -> LocalCluster:
    """A started cluster whose nodes serve ``issued``'s certificates; its client carries the
    client certificate (and ``token``)."""
    creds = Credentials(token=token, ca=issued.ca, cert=issued.client[0], key=issued.client[1])
    c = make_cluster(size, start=False, credentials=creds, **kw)
    for node_id, n in c.nodes.items():
        cert, key = issued.nodes[node_id]
        n.argv += [
            "--tls-cert",
            cert,
            "--tls-key",
            key,
            "--tls-ca",
            issued.ca,
            "--tls-client-auth",
            client_auth,
        ]
    return c.start()


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAFTMESH_")}
    return subprocess.run(
        [sys.executable, "-m", "raftmesh.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, **env},
    )


def health(addr: str, channel: grpc.Channel) -> Any:
    with channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)


@pytest.fixture
def secure3(make_cluster: Callable[..., LocalCluster], issued: certs.Issued) -> Iterator[LocalCluster]:
    from tests import messaging_actors, tls_agents

    yield tls_cluster(
        make_cluster,
        issued,
        3,
        "require",
        agents_modules=[messaging_actors.SOURCE, tls_agents.SOURCE],
        env={"PYTHONPATH": str(ROOT)},
    )


@pytest.mark.e2e
def test_a_mutual_tls_cluster_runs_dags_fast_messages_and_heartbeats_and_refuses_the_rest(
    secure3: LocalCluster, issued: certs.Issued, tmp_path: pathlib.Path
) -> None:
    # Every node SERVING means each one's heartbeats reached the leader and were answered:
    # heartbeats travel over the nodes' mutual TLS (the start waited for it).
    assert all(secure3.serving(n) for n in secure3.nodes)
    c = secure3.client()
    run = c.run(
        {
            "tasks": [
                {"id": "a", "agent": "sum", "input": {"value": 2}},
                {"id": "b", "agent": "sum", "input": {"value": 3}, "deps": ["a"]},
            ]
        },
        timeout_s=60,
    )
    assert run.status == "SUCCEEDED", run
    # agents reach their own node over mutual TLS with the node's certificate (AgentNode.credentials)
    tasks = [{"id": m, "agent": f"selfcall_{m}", "input": {}} for m in ("thread", "process")]
    selfcalls = c.run({"tasks": tasks}, timeout_s=90)
    assert selfcalls.status == "SUCCEEDED", selfcalls
    for t in selfcalls.tasks.values():
        assert t.output["tls"] and t.output["leader"] in secure3.nodes and t.output["node"] == t.node, t

    # The fast path crosses nodes on Peer.Exchange streams (TLS): send through a node that does not
    # host the actor, and a fast request's reply comes back the same way.
    c.messages.send("tally/tls", {"seq": 0}, durable=True)
    (act,) = wait_until(lambda: c.messages.activations("tally/tls"), 30, "an activation")
    other = next(n for n in secure3.nodes if n != act.node)
    via = secure3.client([secure3.nodes[other].grpc])
    for i in range(1, 6):
        via.messages.send("tally/tls", {"seq": i})
    reply = via.messages.request("tally/tls", {"get": True}, timeout_s=20)
    assert reply.payload["node"] == act.node and reply.payload["state"]["n"] == 6, reply.payload
    assert via.status_of(secure3.nodes[other].grpc).messaging["sent"] >= 5

    addr = secure3.nodes["n1"].grpc
    # plaintext against a TLS port: refused
    with pytest.raises(grpc.RpcError) as plain:
        health(addr, grpc.insecure_channel(addr))
    assert plain.value.code() == grpc.StatusCode.UNAVAILABLE
    # the wrong CA: the node's certificate does not verify, and the error says to check the CA
    other_ca = certs.init(str(tmp_path / "other"), ["n1"])
    wrong = Client(
        [addr],
        retry_deadline_s=0,
        credentials=Credentials(ca=other_ca.ca, cert=other_ca.client[0], key=other_ca.client[1]),
    )
    with wrong, pytest.raises(Unavailable, match=r"CERTIFICATE_VERIFY_FAILED.*RAFTMESH_CA"):
        wrong.status()
    # --tls-client-auth require: TLS without a client certificate, or one from another CA, refused
    for creds in (
        Credentials(ca=issued.ca),
        Credentials(ca=issued.ca, cert=other_ca.client[0], key=other_ca.client[1]),
    ):
        with Client([addr], retry_deadline_s=0, credentials=creds) as refused, pytest.raises(Unavailable):
            refused.status()
    # the CLI: --ca/--cert/--key, or the same from the environment
    env = {"RAFTMESH_ADDRESSES": ",".join(secure3.addresses)}
    flags = ["--ca", issued.ca, "--cert", issued.client[0], "--key", issued.client[1]]
    st = run_cli(*flags, "status", "--json", env=env)
    assert st.returncode == 0 and json.loads(st.stdout)["leader"] in secure3.nodes, st.stderr
    creds_env = {
        "RAFTMESH_CA": issued.ca,
        "RAFTMESH_CERT": issued.client[0],
        "RAFTMESH_KEY": issued.client[1],
    }
    hl = run_cli("health", "--json", env={**env, **creds_env})
    assert hl.returncode == 0 and set(json.loads(hl.stdout).values()) == {"SERVING"}, hl.stdout + hl.stderr
    no_cert = run_cli("--ca", issued.ca, "--timeout", "3", "health", env=env)
    assert no_cert.returncode == 4 and "UNREACHABLE" in no_cert.stdout


@pytest.mark.e2e
def test_without_client_auth_the_ca_alone_is_enough(
    make_cluster: Callable[..., LocalCluster], issued: certs.Issued
) -> None:
    one = tls_cluster(make_cluster, issued, 1, "none")
    addr = one.nodes["n1"].grpc
    with Client([addr], retry_deadline_s=5, ca=issued.ca) as c:
        assert c.status().leader == "n1"
    env = {"RAFTMESH_ADDRESSES": addr}
    st = run_cli("--ca", issued.ca, "status", "--json", env=env)
    assert st.returncode == 0 and json.loads(st.stdout)["leader"] == "n1", st.stderr
    st = run_cli("status", "--json", env={**env, "RAFTMESH_CA": issued.ca})
    assert st.returncode == 0, st.stderr
    # still TLS: a plaintext client is refused, and a server name the certificate lacks fails
    assert run_cli("--timeout", "3", "health", env=env).returncode == 4
    bad_name = run_cli(
        *("--timeout", "3", "--retry-deadline", "1", "status"),
        env={**env, "RAFTMESH_CA": issued.ca, "RAFTMESH_SERVER_NAME": "elsewhere"},
    )
    assert bad_name.returncode == 4 and "Hostname" in bad_name.stderr, bad_name.stderr


@pytest.mark.e2e
def test_cluster_script_up_secure_and_a_cli_submit_from_its_env(tmp_path: pathlib.Path) -> None:
    script = str(ROOT / "scripts" / "cluster.sh")
    d = str(tmp_path / "c")
    env = {**os.environ, "RAFTMESH_BIN": f"{sys.executable} -m raftmesh.cli.main"}

    def sh(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [script, *args, "--dir", d], capture_output=True, text=True, timeout=180, env=env
        )

    try:
        up = sh("up", "3", "--secure", "--base-port", str(_free_base()))
        assert up.returncode == 0, up.stderr
        tls = pathlib.Path(d, "tls")
        assert stat.S_IMODE((tls / "ca-key.pem").stat().st_mode) == 0o600
        values = dict(ln.split("=", 1) for ln in pathlib.Path(d, "env").read_text().splitlines())
        assert values["RAFTMESH_CA"] == str(tls / "ca.pem") and os.path.isabs(values["RAFTMESH_CA"])
        assert values["RAFTMESH_CERT"] == str(tls / "client.pem")
        for n in ("n1", "n2", "n3"):
            assert f"--tls-cert\n{tls / n}.pem\n" in pathlib.Path(d, n, "cmd").read_text()
        dag = tmp_path / "dag.json"
        dag.write_text(json.dumps({"tasks": [{"id": "a", "agent": "sum", "input": {"value": 4}}]}))
        sub = run_cli("submit", str(dag), "--wait", "--json", env=values)
        assert sub.returncode == 0 and json.loads(sub.stdout)["status"] == "SUCCEEDED", (
            sub.stdout + sub.stderr
        )
        plain = run_cli("--timeout", "3", "health", env={"RAFTMESH_ADDRESSES": values["RAFTMESH_ADDRESSES"]})
        assert plain.returncode == 4
        # restart keeps the TLS flags (the node serves again, over TLS)
        rs = sh("restart", "n2")
        assert rs.returncode == 0 and "it serves" in rs.stdout, rs.stderr
        assert sh("restart", "n2", "--secure").returncode == 1
    finally:
        down = sh("down")
        assert down.returncode == 0, down.stderr


def test_an_agent_reaches_its_tls_node_with_the_node_certificate(
    issued: certs.Issued, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("RAFTMESH_CA", "RAFTMESH_CERT", "RAFTMESH_KEY", "RAFTMESH_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    cert, key = issued.nodes["n2"]
    node = AgentNode("n2", "a", "/tmp", "127.0.0.1:1", (), issued.ca, cert, key)
    creds = node.credentials()
    assert (creds.ca, creds.cert, creds.key, creds.tls) == (issued.ca, cert, key, True)
    # a process worker rebuilds its AgentNode from this dict (agents/_worker.py)
    assert {"tls_ca", "tls_cert", "tls_key"} <= set(dataclasses.asdict(node))
    plain = AgentNode("n2", "a", "/tmp", "127.0.0.1:1", ()).credentials()
    assert not plain.tls


def test_the_node_certificate_names_the_hosts_it_was_made_for(
    issued: certs.Issued, tmp_path: pathlib.Path
) -> None:
    tls = load_tls(*issued.nodes["n1"], issued.ca, "none")
    assert tls is not None
    assert tls.covers("127.0.0.1") and tls.covers("localhost") and tls.covers("n1")
    assert not tls.covers("10.0.0.1") and not tls.covers("n2") and not tls.covers("::1")
    wild = certs.init(str(tmp_path / "w"), ["n1"], hosts=["*.mesh.example", "::1"])
    tls = load_tls(*wild.nodes["n1"], wild.ca, None)
    assert tls is not None and tls.covers("a.mesh.example") and tls.covers("[::1]")
    assert not tls.covers("a.b.mesh.example") and not tls.covers("mesh.example")
