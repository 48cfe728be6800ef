"""The dashboard on a secured cluster: HTTPS with the node's certificate, tokens forwarded to the
gRPC API (so its roles, namespaces and reader redaction apply), and a mutual-TLS cluster without
tokens asking the dashboard's callers for a client certificate too."""

from __future__ import annotations

import pathlib
import ssl
import uuid
from collections.abc import Iterator

import httpx
import pytest

from raftmesh.client import Client
from raftmesh.client._security import Credentials
from raftmesh.localcluster import LocalCluster
from raftmesh.security import certs
from raftmesh.security.tokens import add_token

from .dashboard_http import EventStream

pytestmark = pytest.mark.e2e


TOKEN_ONLY = "n3"
"""The node of the secure cluster whose dashboard asks for no client certificate."""


class Secure:
    def __init__(self, c: LocalCluster, tokens: dict[str, str], issued: certs.Issued) -> None:
        self.c = c
        self.tokens = tokens
        self.issued = issued
        self.ssl = ssl.create_default_context(cafile=issued.ca)
        # --tls-client-auth require (the default with TLS): the dashboard asks for a client certificate too.
        self.ssl.load_cert_chain(*issued.client)
        self.no_cert = ssl.create_default_context(cafile=issued.ca)

    def url(self, node: str, path: str) -> str:
        return f"https://{self.c.nodes[node].http}{path}"

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def client(self, who: str) -> Client:
        creds = Credentials(
            token=self.tokens[who], ca=self.issued.ca, cert=self.issued.client[0], key=self.issued.client[1]
        )
        return Client(self.c.addresses, credentials=creds)


def _tls_args(c: LocalCluster, issued: certs.Issued) -> None:
    for node_id, n in c.nodes.items():
        cert, key = issued.nodes[node_id]
        n.argv += ["--tls-cert", cert, "--tls-key", key, "--tls-ca", issued.ca]


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure]:
    from .conftest import dump_logs

    base = tmp_path_factory.mktemp("dashboard-secure")
    issued = certs.init(str(base / "tls"), ["n1", "n2", "n3"])
    path = str(base / "tokens.yaml")
    tokens = {
        who: add_token(path, who, role, ns)[1]
        for who, role, ns in (
            ("admin", "admin", None),
            ("reader", "reader", None),
            ("op", "operator", None),
            ("team", "submitter", "a"),
        )
    }
    creds = Credentials(token=tokens["admin"], ca=issued.ca, cert=issued.client[0], key=issued.client[1])
    c = LocalCluster(
        3,
        base_dir=str(base / "cluster"),
        http=True,
        unsafe_no_fsync=True,
        credentials=creds,
        extra_args=["--tokens-file", path],
    )
    _tls_args(c, issued)
    c.nodes[TOKEN_ONLY].argv += ["--http-client-auth", "none"]  # a token-only dashboard (browsers)
    ok = False
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("RAFTMESH_TOKEN", tokens["admin"])  # LocalCluster's own readiness calls
            c.start()
        yield Secure(c, tokens, issued)
        ok = True
    finally:
        if not ok:
            dump_logs(c)
        c.close()


def test_https_and_roles(secure: Secure) -> None:
    c = secure.c
    n = c.wait_ready()
    admin = secure.client("admin")
    run_id = admin.submit({"tasks": [{"id": "s", "agent": "sleep", "input": {"seconds": 30}}]})
    with httpx.Client(verify=secure.ssl, timeout=20.0) as http:
        whoami = secure.url(n, "/api/v1/whoami")
        none = http.get(whoami)
        assert none.status_code == 401 and none.json()["error"]["code"] == "UNAUTHENTICATED"
        wrong = http.get(whoami, headers={"Authorization": "Bearer rmt_nope"})
        assert wrong.status_code == 401
        me = http.get(whoami, headers=secure.auth("reader")).json()
        assert me["principal"] == "token:reader" and me["role"] == "reader" and me["auth"] is True
        assert "/raftmesh.v1.Cluster/CancelRun" not in me["methods"]
        assert "/raftmesh.v1.Cluster/WatchRuns" in me["methods"]

        cluster = http.get(secure.url(n, "/api/v1/cluster"), headers=secure.auth("reader")).json()
        assert all(m["reachable"] for m in cluster["members"])  # members asked over mTLS with the token

        cancel = secure.url(n, f"/api/v1/runs/{run_id}/cancel")
        denied = http.post(cancel, json={}, headers=secure.auth("reader"))
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "PERMISSION_DENIED"
        assert "may not call /raftmesh.v1.Cluster/CancelRun" in denied.json()["error"]["message"]
        assert http.post(cancel, json={}).status_code == 401
        done = http.post(cancel, json={"reason": "op"}, headers=secure.auth("op"))
        assert done.status_code == 200 and done.json()["status"] == "CANCELLED"

        with EventStream(http, secure.url(n, f"/api/v1/runs/{run_id}/events"), secure.auth("reader")) as s:
            event, snap = s.next()
            assert event == "snapshot" and snap["status"] == "CANCELLED"
            assert s.next()[0] == "end"
        assert http.get(secure.url(n, "/api/v1/events")).status_code == 401


def test_the_dashboard_asks_for_a_client_certificate_as_the_grpc_port_does(secure: Secure) -> None:
    """Tokens + --tls-client-auth require: the dashboard is no way around mutual TLS, unless the
    node opts out with --http-client-auth none (a token-only dashboard)."""
    c = secure.c
    c.wait_ready()
    strict = next(n for n in c.nodes if n != TOKEN_ONLY)
    with (
        httpx.Client(verify=secure.no_cert, timeout=10.0) as http,
        pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)),
    ):
        http.get(secure.url(strict, "/api/v1/whoami"), headers=secure.auth("reader"))
    with httpx.Client(verify=secure.ssl, timeout=10.0) as http:
        assert (
            http.get(secure.url(strict, "/api/v1/whoami"), headers=secure.auth("reader")).status_code == 200
        )
    with httpx.Client(verify=secure.no_cert, timeout=10.0) as http:
        me = http.get(secure.url(TOKEN_ONLY, "/api/v1/whoami"), headers=secure.auth("reader"))
        assert me.status_code == 200 and me.json()["principal"] == "token:reader"
        assert (
            http.get(secure.url(TOKEN_ONLY, "/api/v1/whoami")).status_code == 401
        )  # the token is the credential


def test_a_namespace_token_sees_only_its_runs(secure: Secure) -> None:
    n = secure.c.wait_ready()
    admin, team = secure.client("admin"), secure.client("team")
    other = admin.submit({"tasks": [{"id": "x", "agent": "echo", "input": 1}]}, namespace="b")
    with httpx.Client(verify=secure.ssl, timeout=20.0) as http:
        with EventStream(http, secure.url(n, "/api/v1/events"), secure.auth("team")) as s:
            s.until(lambda e, d: e == "runs" and "snapshot" in d, 10, "the snapshot")
            key = uuid.uuid4().hex
            admin.submit({"tasks": [{"id": "x", "agent": "echo", "input": 2}]}, namespace="b")
            mine = team.submit(
                {"tasks": [{"id": "x", "agent": "echo", "input": 3}]}, namespace="a", idempotency_key=key
            )
            _, ev = s.until(lambda e, d: e == "runs" and "run" in d, 30, "a run change")
            assert ev["run"]["run_id"] == mine and ev["run"]["namespace"] == "a"
        runs = http.get(secure.url(n, "/api/v1/runs"), headers=secure.auth("team")).json()["runs"]
        assert runs and {r["namespace"] for r in runs} == {"a"}
        other_run = http.get(secure.url(n, f"/api/v1/runs/{other}"), headers=secure.auth("team"))
        assert other_run.status_code == 403
        foreign = http.get(
            secure.url(n, "/api/v1/runs"), params={"namespace": "b"}, headers=secure.auth("team")
        )
        assert foreign.status_code == 403


def test_mutual_tls_without_tokens_asks_dashboard_callers_for_a_certificate(tmp_path: pathlib.Path) -> None:
    issued = certs.init(str(tmp_path / "tls"), ["n1"])
    creds = Credentials(ca=issued.ca, cert=issued.client[0], key=issued.client[1])
    c = LocalCluster(
        1, base_dir=str(tmp_path / "cluster"), http=True, unsafe_no_fsync=True, credentials=creds
    )
    _tls_args(c, issued)
    with c:
        url = f"https://{c.nodes['n1'].http}/api/v1/whoami"
        with (
            httpx.Client(verify=ssl.create_default_context(cafile=issued.ca), timeout=10.0) as http,
            pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)),
        ):
            http.get(url)
        with_cert = ssl.create_default_context(cafile=issued.ca)
        with_cert.load_cert_chain(*issued.client)
        with httpx.Client(verify=with_cert, timeout=10.0) as http:
            me = http.get(url).json()
            assert me["auth"] is False and me["node_id"] == "n1"
