"""The node's web dashboard: the page's static files and a JSON + server-sent-events gateway.

It runs on the node's own asyncio loop (aiohttp) and is only a gateway: every ``/api/v1``
call goes to the node's own gRPC API (``grpc.aio``, dialled like a peer: TLS when the node
has it) carrying the caller's ``Authorization`` header, so roles, namespaces, ownership and
reader redaction stay the gRPC API's. Nothing here reads the replicated state directly.

Bounds: at most ``max_streams`` open event streams (503 beyond), POST bodies of at most
``MAX_BODY_BYTES``, every query parameter validated. A POST needs ``application/json`` and,
when the browser sends an ``Origin``, this server's own (so a foreign page cannot act with
a visitor's token: tokens never travel in URLs or cookies, only in the header).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import json
import logging
import os
import re
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ..client._audit import AuditEventInfo, AuditTrail
from ..client._types import TERMINAL
from ..node.tls import NodeChannels, NodeTls
from ..proto.raftmesh.v1 import cluster_pb2 as pb
from ..proto.raftmesh.v1 import cluster_pb2_grpc as pb_grpc
from . import params, shapes
from .errors import ApiError, bad, error_response, from_rpc
from .listener import BoundedSite, plaintext_warning

log = logging.getLogger(__name__)

STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")
MAX_BODY_BYTES = 64 * 1024
DEFAULT_MAX_STREAMS = 64
CALL_TIMEOUT_S = 10.0
MEMBER_STATUS_TIMEOUT_S = 1.0
"""/cluster asks every member at once; one that does not answer within this is unreachable."""
OFFLOAD_BYTES = 256 * 1024
"""Answers whose protobuf is larger than this are turned into JSON in a thread, not on the node's
loop (a run of a few tasks can hold megabytes of outputs: seconds of the loop's Raft and gRPC work)."""
MAX_LARGE_CONVERSIONS = 2
"""Large answers converted at once per node; a request for another one is answered 503 (retry)."""
MAX_OTHER_CONNECTIONS = 128
"""Connections beyond the event streams' (``max_streams``); more are closed as they are accepted."""
KEEPALIVE_S = 15.0
"""An idle keep-alive connection is closed after this (aiohttp's default holds it about an hour)."""
STOP_S = 1.0
"""A stopping node waits this long for requests in flight; open event streams are cut then."""
PING_S = 5.0
"""An idle event stream sends ``event: ping`` this often (and so notices a client that left)."""
SSE_WRITE_S = 2 * PING_S
"""An event-stream write that cannot finish within this (a client that stopped reading: its
socket buffers are full) closes the stream, freeing its slot and its gRPC stream."""
CLUSTER_SAMPLE_S = 1.0
LEADER_SAMPLE_S = 0.25
LEADER_CHANGES = 20
MAX_AUTH_HEADER = 4096
_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")
"""What a bearer token may hold: printable ASCII, no spaces (gRPC metadata takes nothing else)."""

CSP = (
    "default-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "style-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
"""The page loads only its own files and talks only to this node (an injected script cannot run)."""

_PLACEHOLDER = (
    "<!doctype html><meta charset=utf-8><title>raftmesh</title>"
    "<p>raftmesh dashboard: the page is not installed (raftmesh/dashboard/static/index.html); "
    'the API is at <a href="/api/v1/cluster">/api/v1/cluster</a>.</p>'
)


@dataclass(frozen=True)
class DashboardNode:
    """What the dashboard needs of its node (``NodeRuntime`` fills it)."""

    node_id: str
    grpc: str
    """The node's own gRPC address (what the gateway dials)."""
    tls: NodeTls | None
    auth: bool
    """Whether the node checks tokens."""
    leader: Callable[[], tuple[str, int]]
    """(leader id, term) as this node sees them now."""
    client_auth: str = "none"
    """With TLS, "require": callers need a client certificate signed by the node's CA (the
    default follows ``--tls-client-auth``; ``--http-client-auth`` overrides it)."""


class _MalformedRequests(logging.Filter):
    """aiohttp logs every request its parser refuses (answered 400) as an ERROR with a traceback:
    anyone reaching the port could fill the node's log so. Such a record becomes one DEBUG line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            record.msg, record.args = "malformed HTTP request refused (400): %s", (str(exc)[:200],)
            record.exc_info, record.exc_text = None, None
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def _quiet_malformed_requests() -> None:
    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _MalformedRequests) for f in logger.filters):
        logger.addFilter(_MalformedRequests())


def _self_target(addr: str) -> str:
    host, _, port = addr.rpartition(":")
    if host.strip("[]") in ("0.0.0.0", "::", ""):
        return f"127.0.0.1:{port}"
    return addr


class Dashboard:
    """``await Dashboard(...).start(HOST:PORT)``; ``await close()``."""

    def __init__(self, node: DashboardNode, max_streams: int = DEFAULT_MAX_STREAMS) -> None:
        self.node = node
        self.max_streams = max_streams
        self.streams = 0
        self._channels = NodeChannels(node.tls)
        self._open: dict[str, grpc.aio.Channel] = {}
        self.leader_changes: collections.deque[dict[str, Any]] = collections.deque(maxlen=LEADER_CHANGES)
        self._cluster_cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._runner: web.AppRunner | None = None
        self._sampler: asyncio.Task[None] | None = None
        self.url = ""
        self.http_host = ""
        self._last_leader: tuple[str, int] | None = None
        self._large = asyncio.Semaphore(MAX_LARGE_CONVERSIONS)

    # ---- lifecycle ------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._middleware])
        r = app.router
        r.add_get("/", self._index)
        r.add_get("/api/v1/whoami", self._whoami)
        r.add_get("/api/v1/cluster", self._cluster)
        r.add_get("/api/v1/runs", self._runs)
        r.add_get("/api/v1/runs/{run_id}", self._run)
        r.add_get("/api/v1/runs/{run_id}/audit", self._audit)
        r.add_get("/api/v1/runs/{run_id}/events", self._run_events)
        r.add_post("/api/v1/runs/{run_id}/cancel", self._cancel)
        r.add_post("/api/v1/runs/{run_id}/pause", self._pause)
        r.add_post("/api/v1/runs/{run_id}/resume", self._resume)
        r.add_post("/api/v1/runs/{run_id}/tasks/{task_id}/rerun", self._rerun)
        r.add_post("/api/v1/runs/{run_id}/tasks/{task_id}/approve", self._approve)
        r.add_post("/api/v1/runs/{run_id}/tasks/{task_id}/reject", self._reject)
        r.add_get("/api/v1/approvals", self._approvals)
        r.add_get("/api/v1/locks", self._locks)
        r.add_get("/api/v1/kv", self._kv)
        r.add_get("/api/v1/dead-letters", self._dead_letters)
        r.add_get("/api/v1/events", self._events)
        if os.path.isdir(STATIC_DIR):
            r.add_static("/static/", STATIC_DIR, follow_symlinks=False)
        return app

    async def start(self, addr: str) -> None:
        host, _, port = addr.rpartition(":")
        host = host.strip("[]")
        self.http_host = host
        tls = self.node.tls
        ctx: ssl.SSLContext | None = None
        if tls is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(tls.cert, tls.key)
            if self.node.client_auth == "require":
                # The dashboard calls the API with the node's own certificate: unless told otherwise
                # (--http-client-auth none, a token-only dashboard) it asks its callers for one, as
                # the gRPC port does.
                ctx.verify_mode = ssl.CERT_REQUIRED
                ctx.load_verify_locations(cafile=tls.ca)
        _quiet_malformed_requests()
        warning = plaintext_warning(addr, tls is not None, self.node.auth)
        if warning:
            log.warning("%s", warning)
        # handler_cancellation: a client that goes away cancels its handler (and so its gRPC stream).
        self._runner = web.AppRunner(
            self.app(),
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=STOP_S,
            keepalive_timeout=KEEPALIVE_S,
        )
        await self._runner.setup()
        site = BoundedSite(self._runner, host, int(port), ctx, self.max_streams + MAX_OTHER_CONNECTIONS)
        await site.start()
        self.url = f"{'https' if ctx else 'http'}://{addr}"
        self._sampler = asyncio.create_task(self._sample_leader(), name="dashboard-leader")
        log.info("node %s serving the dashboard on %s", self.node.node_id, self.url)

    async def close(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            await asyncio.gather(self._sampler, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        for ch in self._open.values():
            await ch.close(None)
        self._open.clear()

    async def _sample_leader(self) -> None:
        """The leader changes this node sees (polled: Raft reports no event on this loop)."""
        while True:
            try:
                self._note_leader()
            except Exception:
                # One failed look must not end the sampling for good (/cluster reads its ring).
                log.exception("dashboard: reading the node's leader failed; sampling goes on")
            await asyncio.sleep(LEADER_SAMPLE_S)

    def _note_leader(self) -> None:
        now = self.node.leader()
        if now != self._last_leader:
            self._last_leader = now
            self.leader_changes.appendleft(
                {"time_ms": int(time.time() * 1000), "leader": now[0] or None, "term": now[1]}
            )

    # ---- plumbing -------------------------------------------------------------------

    def _channel(self, target: str) -> grpc.aio.Channel:
        ch = self._open.get(target)
        if ch is None:
            ch = self._channels.dial(target)
            self._open[target] = ch
        return ch

    def _stub(self, target: str | None = None) -> pb_grpc.ClusterStub:
        return pb_grpc.ClusterStub(self._channel(target or _self_target(self.node.grpc)))

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            if request.path.startswith("/api/") and not self.node.auth and not self._host_ok(request.host):
                raise ApiError(
                    403,
                    "PERMISSION_DENIED",
                    f"Host {request.host[:80]!r} is not this dashboard's address: an open cluster's dashboard "
                    "answers only requests to an IP address, localhost or its --http host (so a page "
                    "that re-points its own name at this node cannot use it); or turn tokens on",
                )
            resp = await handler(request)
        except ApiError as err:
            resp = error_response(err)
        except grpc.RpcError as exc:
            resp = error_response(from_rpc(exc))
        except web.HTTPRequestEntityTooLarge:
            resp = error_response(
                ApiError(413, "RESOURCE_EXHAUSTED", f"the body is larger than {MAX_BODY_BYTES} bytes")
            )
        except web.HTTPException as exc:
            if exc.status < 400 or not request.path.startswith("/api/"):
                raise
            resp = error_response(ApiError(exc.status, exc.reason.upper().replace(" ", "_"), exc.reason))
        except (asyncio.CancelledError, ConnectionError):
            raise  # the client went away
        except Exception:
            log.exception("dashboard request %s %s failed", request.method, request.path)
            resp = error_response(
                ApiError(500, "INTERNAL", "the dashboard failed to answer; see the node's log")
            )
        if not resp.prepared:
            resp.headers.setdefault("X-Content-Type-Options", "nosniff")
            resp.headers.setdefault("Referrer-Policy", "no-referrer")
            resp.headers.setdefault("Content-Security-Policy", CSP)
            if request.path.startswith("/api/"):
                resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    def _host_ok(self, host: str) -> bool:
        """Whether ``host`` (the request's Host header) names this node (DNS rebinding guard)."""
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        name = name.strip("[]").lower()
        try:
            ipaddress.ip_address(name)
            return True
        except ValueError:
            pass
        if name in ("localhost", self.http_host.lower()):
            return True
        return self.node.tls is not None and self.node.tls.covers(name)

    def _metadata(self, request: web.Request) -> tuple[tuple[str, str], ...]:
        """The caller's bearer token for the gRPC call (none: anonymous, as on an open cluster)."""
        header = request.headers.get("Authorization", "").strip()
        if not header:
            return ()
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise ApiError(401, "UNAUTHENTICATED", "send 'Authorization: Bearer TOKEN'")
        if len(header) > MAX_AUTH_HEADER:
            raise ApiError(401, "UNAUTHENTICATED", "the Authorization header is too long")
        token = value.strip()
        if not _TOKEN_CHARS.fullmatch(token):
            # grpc.aio fails such metadata with an error that is not an RpcError: refuse it here.
            raise ApiError(
                401,
                "UNAUTHENTICATED",
                "a bearer token is printable ASCII with no spaces, tabs or other controls",
            )
        return (("authorization", f"Bearer {token}"),)

    async def _unary(
        self,
        request: web.Request,
        method: str,
        req: Any,
        target: str | None = None,
        timeout: float = CALL_TIMEOUT_S,
    ) -> Any:
        return await getattr(self._stub(target), method)(
            req, metadata=self._metadata(request), timeout=timeout
        )

    async def _json_text(self, size: int, build: Callable[[], Any], compact: bool = True) -> str:
        """``build()`` as JSON text; when the answer is over ``OFFLOAD_BYTES`` (``size``: its protobuf's),
        in a thread, at most ``MAX_LARGE_CONVERSIONS`` at once (503 beyond: the caller retries)."""
        seps = (",", ":") if compact else None
        if size <= OFFLOAD_BYTES:
            return json.dumps(build(), separators=seps)
        if self._large.locked():
            raise ApiError(
                503,
                "UNAVAILABLE",
                f"this node is converting {MAX_LARGE_CONVERSIONS} large answers already (busy); retry shortly",
            )
        async with self._large:
            return await asyncio.to_thread(lambda: dumps_in_pieces(build(), seps))

    async def _json_response(self, size: int, build: Callable[[], Any]) -> web.Response:
        text = await self._json_text(size, build, compact=False)  # as web.json_response writes it
        return web.Response(text=text, content_type="application/json")

    # ---- pages ----------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.StreamResponse:
        params.query(request)
        path = os.path.join(STATIC_DIR, "index.html")
        if os.path.isfile(path):
            return web.FileResponse(path, headers={"Cache-Control": "no-cache"})
        return web.Response(text=_PLACEHOLDER, content_type="text/html")

    # ---- reads ----------------------------------------------------------------------

    async def _whoami(self, request: web.Request) -> web.Response:
        params.query(request)
        return web.json_response(shapes.whoami(await self._unary(request, "WhoAmI", pb.WhoAmIRequest())))

    async def _cluster(self, request: web.Request) -> web.Response:
        params.query(request)
        return web.json_response(await self._cluster_json(request))

    async def _cluster_json(self, request: web.Request) -> dict[str, Any]:
        own: pb.ClusterStatusResponse = await self._unary(request, "ClusterStatus", pb.ClusterStatusRequest())
        md = self._metadata(request)

        async def ask(m: pb.Member) -> pb.ClusterStatusResponse | None:
            if m.id == own.node_id:
                return own
            try:
                out: pb.ClusterStatusResponse = await self._stub(m.grpc).ClusterStatus(
                    pb.ClusterStatusRequest(), metadata=md, timeout=MEMBER_STATUS_TIMEOUT_S
                )
                return out
            except grpc.RpcError:
                return None

        answers = await asyncio.gather(*(ask(m) for m in own.members))
        self._note_leader()  # so the ring's newest entry is never older than the answer's leader
        base = shapes.cluster(own)
        members = []
        for m, a in zip(base["members"], answers, strict=True):
            m = dict(m)
            m["reachable"] = a is not None
            m["term"] = a.term if a is not None else None
            m["leader"] = (a.leader or None) if a is not None else None
            m["commit_index"] = a.commit_index if a is not None else None
            m["last_applied"] = a.last_applied if a is not None else None
            m["apply_lag"] = max(0, a.commit_index - a.last_applied) if a is not None else None
            members.append(m)
        return {
            "node_id": own.node_id,
            "leader": own.leader or None,
            "term": own.term,
            "has_quorum": own.has_quorum,
            "commit_index": own.commit_index,
            "revision": own.revision,
            "members": members,
            "leader_changes": list(self.leader_changes),
        }

    async def _runs(self, request: web.Request) -> web.Response:
        q = params.query(request, "status", "namespace", "limit", "offset")
        req = pb.ListRunsRequest(
            limit=params.whole(q, "limit", 1, 1000, 100),
            offset=params.whole(q, "offset", 0, params.MAX_OFFSET, 0),
            namespace=params.namespace(q),
            status=params.run_status(q),
        )
        resp: pb.ListRunsResponse = await self._unary(request, "ListRuns", req)
        return web.json_response({"runs": [shapes.summary(r) for r in resp.runs]})

    async def _run(self, request: web.Request) -> web.Response:
        params.query(request)
        run_id = params.run_id(request)
        run: pb.Run = await self._unary(request, "GetRun", pb.GetRunRequest(run_id=run_id))
        return await self._json_response(run.ByteSize(), lambda: shapes.run(run))

    async def _audit(self, request: web.Request) -> web.Response:
        q = params.query(request, "limit")
        run_id = params.run_id(request)
        req = pb.GetAuditRequest(run_id=run_id, limit=params.whole(q, "limit", 1, 10_000, 1000))
        # As ``Client.audit``: this node first; the first whole history wins, else the longest.
        own: pb.ClusterStatusResponse = await self._unary(request, "ClusterStatus", pb.ClusterStatusRequest())
        targets = [None] + [m.grpc for m in own.members if m.id != own.node_id]
        best: AuditTrail | None = None
        error: ApiError | None = None
        for target in targets:
            try:
                resp: pb.GetAuditResponse = await self._unary(request, "GetAudit", req, target)
            except grpc.RpcError as exc:
                err = from_rpc(exc)
                if err.status in (400, 401, 403):
                    raise err from None
                if error is None or err.status == 404:
                    error = err
                continue
            trail = AuditTrail(
                run_id, resp.complete, resp.node_id, [AuditEventInfo.from_pb(e) for e in resp.events]
            )
            if trail.complete:
                return web.json_response(trail.to_dict())
            if best is None or len(trail.events) > len(best.events):
                best = trail
        if best is not None:
            return web.json_response(best.to_dict())
        raise error or ApiError(404, "NOT_FOUND", f"run {run_id!r} not found")

    async def _approvals(self, request: web.Request) -> web.Response:
        q = params.query(request, "run", "limit")
        run = q.get("run", "")
        if run:
            params.check_id("run", run)
        req = pb.ListApprovalsRequest(run_id=run, limit=params.whole(q, "limit", 1, 1000, 100))
        resp = await self._unary(request, "ListApprovals", req)
        return web.json_response(
            {"approvals": [shapes.approval(a) for a in resp.approvals], "more": resp.more}
        )

    async def _locks(self, request: web.Request) -> web.Response:
        q = params.query(request, "prefix")
        stub = pb_grpc.LocksStub(self._channel(_self_target(self.node.grpc)))
        resp = await stub.List(
            pb.LockListRequest(prefix=params.prefix(q)),
            metadata=self._metadata(request),
            timeout=CALL_TIMEOUT_S,
        )
        return web.json_response({"locks": [shapes.lock(lk) for lk in resp.locks]})

    async def _kv(self, request: web.Request) -> web.Response:
        q = params.query(request, "prefix", "limit")
        stub = pb_grpc.KvStub(self._channel(_self_target(self.node.grpc)))
        resp = await stub.List(
            pb.KvListRequest(prefix=params.prefix(q), limit=params.whole(q, "limit", 1, 1000, 100)),
            metadata=self._metadata(request),
            timeout=CALL_TIMEOUT_S,
        )

        def build() -> dict[str, Any]:
            entries = [e for e in (shapes.kv_entry(x) for x in resp.entries) if e is not None]
            return {"entries": entries, "revision": resp.revision}

        return await self._json_response(resp.ByteSize(), build)

    async def _dead_letters(self, request: web.Request) -> web.Response:
        q = params.query(request, "limit")
        limit = params.whole(q, "limit", 1, 1000, 100)
        md = self._metadata(request)
        tasks_call = self._stub().ListDeadLetters(
            pb.ListDeadLettersRequest(limit=limit), metadata=md, timeout=CALL_TIMEOUT_S
        )
        msgs = pb_grpc.MessagesStub(self._channel(_self_target(self.node.grpc)))
        msgs_call = msgs.DeadLetters(
            pb.MessageDeadLettersRequest(limit=limit), metadata=md, timeout=CALL_TIMEOUT_S
        )
        tasks, messages = await asyncio.gather(tasks_call, msgs_call)
        return await self._json_response(
            tasks.ByteSize() + messages.ByteSize(),
            lambda: {
                "tasks": [shapes.dead_letter(d) for d in tasks.dead_letters],
                "messages": [shapes.dead_message(d) for d in messages.dead_letters],
            },
        )

    # ---- actions --------------------------------------------------------------------

    async def _body(self, request: web.Request, allowed: dict[str, type]) -> dict[str, Any]:
        params.query(request)
        ctype = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if ctype != "application/json":
            raise ApiError(415, "UNSUPPORTED_MEDIA_TYPE", "send the body as Content-Type: application/json")
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"{request.scheme}://{request.host}":
            raise ApiError(403, "PERMISSION_DENIED", f"Origin {origin[:80]!r} is not this dashboard's")
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            raise ApiError(413, "RESOURCE_EXHAUSTED", f"the body is larger than {MAX_BODY_BYTES} bytes")
        raw = await request.read()
        try:
            body = json.loads(raw) if raw.strip() else {}
        except (ValueError, UnicodeDecodeError):
            raise bad("the body is not JSON") from None
        if not isinstance(body, dict):
            raise bad("the body must be a JSON object")
        allowed = {**allowed, "request_id": str}
        for k, v in body.items():
            want = allowed.get(k)
            if want is None:
                raise bad(f"unknown field {k[:40]!r}; this action takes {sorted(allowed) or 'no fields'}")
            if not isinstance(v, want) or (want is int and isinstance(v, bool)):
                raise bad(f"{k} must be a {want.__name__}")
        rid = body.get("request_id")
        if rid is not None and not _REQUEST_ID.fullmatch(rid):
            raise bad(
                "request_id must be 8 to 64 letters, digits, '-' or '_' (one per action, reused on its retry)"
            )
        return body

    async def _cancel(self, request: web.Request) -> web.Response:
        # A request_id is accepted and checked like the other actions', but CancelRun takes none:
        # a cancel is idempotent by itself (asked again it answers cancelled=false).
        body = await self._body(request, {"reason": str})
        run_id = params.run_id(request)
        req = pb.CancelRunRequest(run_id=run_id, reason=body.get("reason", ""))
        return web.json_response(shapes.cancel(run_id, await self._unary(request, "CancelRun", req)))

    async def _pause(self, request: web.Request) -> web.Response:
        body = await self._body(request, {"cancel_running": bool})
        run_id = params.run_id(request)
        req = pb.PauseRunRequest(
            run_id=run_id, cancel_running=body.get("cancel_running", False), request_id=_request_id(body)
        )
        return web.json_response(shapes.control(run_id, await self._unary(request, "PauseRun", req)))

    async def _resume(self, request: web.Request) -> web.Response:
        body = await self._body(request, {})
        run_id = params.run_id(request)
        req = pb.ResumeRunRequest(run_id=run_id, request_id=_request_id(body))
        return web.json_response(shapes.control(run_id, await self._unary(request, "ResumeRun", req)))

    async def _rerun(self, request: web.Request) -> web.Response:
        body = await self._body(request, {})
        run_id, task_id = params.run_id(request), params.task_id(request)
        req = pb.RerunTaskRequest(run_id=run_id, task_id=task_id, request_id=_request_id(body))
        return web.json_response(shapes.rerun(run_id, task_id, await self._unary(request, "RerunTask", req)))

    async def _approve(self, request: web.Request) -> web.Response:
        return await self._decide(request, reject=False)

    async def _reject(self, request: web.Request) -> web.Response:
        return await self._decide(request, reject=True)

    async def _decide(self, request: web.Request, reject: bool) -> web.Response:
        body = await self._body(request, {"comment": str})
        run_id, task_id = params.run_id(request), params.task_id(request)
        # As ``Client.approve``: the open gate's id goes with the decision, so it decides that gate only.
        run: pb.Run = await self._unary(request, "GetRun", pb.GetRunRequest(run_id=run_id))
        task = next((t for t in run.tasks if t.id == task_id), None)
        if task is None:
            raise ApiError(404, "NOT_FOUND", f"run {run_id!r} has no task {task_id!r}")
        if not task.HasField("gate") or not task.gate.id:
            raise ApiError(
                409, "FAILED_PRECONDITION", f"task {task_id!r} of run {run_id!r} has no approval gate open"
            )
        req = pb.ApproveTaskRequest(
            run_id=run_id,
            task_id=task_id,
            gate=task.gate.id,
            reject=reject,
            by="dashboard",  # with tokens the node records the token's principal instead
            comment=body.get("comment", ""),
            request_id=_request_id(body),
        )
        return web.json_response(
            shapes.decision(run_id, task_id, await self._unary(request, "ApproveTask", req))
        )

    # ---- event streams --------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _stream(self, request: web.Request) -> AsyncIterator[_Sse]:
        """An open ``text/event-stream`` response, counted against ``max_streams``."""
        self._check_room()
        self.streams += 1
        try:
            resp = web.StreamResponse(
                headers={
                    "Content-Type": "text/event-stream",
                    "Cache-Control": "no-store",
                    "X-Accel-Buffering": "no",
                    "X-Content-Type-Options": "nosniff",
                }
            )
            await resp.prepare(request)
            try:
                yield _Sse(resp)
            except _Stalled:
                log.info("dashboard: closed an event stream to %s: it stopped reading", request.remote)
                if request.transport is not None:
                    request.transport.abort()
        finally:
            self.streams -= 1

    def _check_room(self) -> None:
        if self.streams >= self.max_streams:
            raise ApiError(
                503,
                "UNAVAILABLE",
                f"this node serves at most {self.max_streams} event streams at once; retry later",
            )

    async def _run_events(self, request: web.Request) -> web.StreamResponse:
        params.query(request)
        run_id = params.run_id(request)
        self._check_room()  # before the gRPC stream is opened (checked again once it answered)
        call = self._stub().WatchRun(pb.WatchRunRequest(run_id=run_id), metadata=self._metadata(request))
        try:
            first = await _first(call)  # an error before any byte is sent is an HTTP status
            async with self._stream(request) as sse:
                try:
                    await self._pump_run(sse, first, call)
                except grpc.RpcError as exc:
                    await sse.error(from_rpc(exc))
                except ApiError as err:  # too busy to convert a large snapshot: the page retries
                    await sse.error(err)
            return sse.resp
        finally:
            call.cancel()

    async def _pump_run(self, sse: _Sse, first: Any, call: Any) -> None:
        quiet_since = time.monotonic()
        async for e in _chain(first, call):
            which = e.WhichOneof("event")
            if which == "snapshot":
                await sse.send_text(
                    "snapshot", await self._json_text(e.snapshot.ByteSize(), _run_json(e.snapshot))
                )
                status = shapes.run_status(e.snapshot.status)
                if status in TERMINAL:
                    await sse.send("end", {"status": status})
                    return
            elif which == "task":
                await sse.send("task", shapes.task_event(e.revision, e.task))
            elif which == "run":
                ev = shapes.run_event(e.run)
                await sse.send("run", ev)
                if ev["status"] in TERMINAL:
                    await sse.send("end", {"status": ev["status"]})
                    return
            elif time.monotonic() - quiet_since >= PING_S:
                await sse.send("ping", {})
            else:
                continue  # a heartbeat: pings go out only every PING_S
            quiet_since = time.monotonic()
        await sse.error(ApiError(503, "UNAVAILABLE", "the node ended the run's stream"))

    async def _events(self, request: web.Request) -> web.StreamResponse:
        q = params.query(request, "namespace", "limit", "status")
        req = pb.WatchRunsRequest(
            limit=params.whole(q, "limit", 1, 1000, 100),
            namespace=params.namespace(q),
            status=params.run_status(q),
        )
        self._check_room()
        call = self._stub().WatchRuns(req, metadata=self._metadata(request))
        try:
            first = await _first(call)
            cluster = await self._cluster_cached(request)
            async with self._stream(request) as sse:
                out: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=1000)
                await out.put(("cluster", cluster))

                async def runs() -> None:
                    try:
                        async for e in _chain(first, call):
                            if e.is_snapshot:
                                await out.put(("runs", {"snapshot": [shapes.summary(r) for r in e.snapshot]}))
                            elif e.HasField("changed"):
                                await out.put(("runs", {"run": shapes.summary(e.changed)}))
                        raise ApiError(503, "UNAVAILABLE", "the node ended the runs stream")
                    except grpc.RpcError as exc:
                        await out.put(("error", from_rpc(exc)))
                    except ApiError as err:
                        await out.put(("error", err))

                async def clusters() -> None:
                    last = cluster
                    while True:
                        await asyncio.sleep(CLUSTER_SAMPLE_S)
                        try:
                            now = await self._cluster_cached(request)
                        except grpc.RpcError as exc:
                            await out.put(("error", from_rpc(exc)))
                            return
                        if now != last:
                            await out.put(("cluster", now))
                            last = now

                workers = [asyncio.create_task(runs()), asyncio.create_task(clusters())]
                try:
                    while True:
                        try:
                            async with asyncio.timeout(PING_S):
                                event, data = await out.get()
                        except TimeoutError:
                            await sse.send("ping", {})
                            continue
                        if isinstance(data, ApiError):
                            await sse.error(data)
                            break
                        await sse.send(event, data)
                finally:
                    for w in workers:
                        w.cancel()
                    await asyncio.gather(*workers, return_exceptions=True)
            return sse.resp
        finally:
            call.cancel()

    async def _cluster_cached(self, request: web.Request) -> dict[str, Any]:
        """/cluster for this caller, shared by its streams for a sample period (one member query a second)."""
        key = request.headers.get("Authorization", "")
        hit = self._cluster_cache.get(key)
        now = time.monotonic()
        if hit is not None and now - hit[0] < CLUSTER_SAMPLE_S * 0.9:
            return hit[1]
        out = await self._cluster_json(request)
        if len(self._cluster_cache) >= self.max_streams:  # bounded: one entry per distinct caller at most
            self._cluster_cache.clear()
        self._cluster_cache[key] = (now, out)
        return out


class _Stalled(Exception):
    """The client has not read an event stream's writes for ``SSE_WRITE_S``."""


class _Sse:
    def __init__(self, resp: web.StreamResponse) -> None:
        self.resp = resp

    async def send(self, event: str, data: Any) -> None:
        await self.send_text(event, json.dumps(data, separators=(",", ":")))

    async def send_text(self, event: str, payload: str) -> None:
        try:
            async with asyncio.timeout(SSE_WRITE_S):
                await self.resp.write(f"event: {event}\ndata: {payload}\n\n".encode())
        except TimeoutError:
            raise _Stalled from None

    async def error(self, err: ApiError) -> None:
        """The stream's last event: the page reconnects (with backoff) after it."""
        await self.send("error", {"error": {"code": err.code, "message": err.message}})


def dumps_in_pieces(obj: Any, seps: tuple[str, str] | None, depth: int = 3) -> str:
    """``json.dumps(obj, separators=seps)``'s text, made by one call per piece ``depth`` levels down
    (a run's tasks, a list's entries): one call on a whole large answer holds the GIL, and so stalls
    the node's loop, for all of it (0.1 s for 15 MB), a piece only for itself."""
    item, key = seps if seps is not None else (", ", ": ")
    if depth and isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
        parts = (json.dumps(k) + key + dumps_in_pieces(v, seps, depth - 1) for k, v in obj.items())
        return "{" + item.join(parts) + "}"
    if depth and isinstance(obj, list):
        return "[" + item.join(dumps_in_pieces(v, seps, depth - 1) for v in obj) + "]"
    return json.dumps(obj, separators=seps)


def _run_json(run: pb.Run) -> Callable[[], dict[str, Any]]:
    return lambda: shapes.run(run)


def _request_id(body: dict[str, Any]) -> str:
    """The caller's id for this action (a retry with it applies once), else a fresh one."""
    rid = body.get("request_id")
    return rid if isinstance(rid, str) and rid else uuid.uuid4().hex


async def _first(call: Any) -> Any:
    """The stream's first message (None when it ends at once), raising its error before any byte is sent."""
    it = call.__aiter__()
    try:
        return await it.__anext__()
    except StopAsyncIteration:
        return None


async def _chain(first: Any, call: Any) -> AsyncIterator[Any]:
    if first is None:
        return
    yield first
    async for e in call:
        yield e
