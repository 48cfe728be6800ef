"""The one interceptor every gRPC call to a node passes: who, may they, under which trace.

For each call it
1. takes the request id (``x-request-id`` metadata, else a new one) and the trace
   (W3C ``traceparent`` metadata, else a new trace id);
2. authenticates the caller with the node's ``Authenticator`` (none configured: an open
   cluster, everyone is ``anonymous`` with every role), answering ``UNAUTHENTICATED``;
3. checks the role the method needs (``raftmesh.security.roles.METHOD_ROLES``),
   answering ``PERMISSION_DENIED`` (a method the table does not name is refused);
4. binds a ``raftmesh.calls.Call`` for the handler, so the proposer stamps the
   command's ``Origin`` and log lines carry the ids;
5. reports the method, final status code and duration to the ``CallObserver``
   (Prometheus metrics), for unary and streaming calls alike.

It wraps the handlers' behaviours rather than running before them, so the bound call is
in the handler's own context (grpc.aio runs an interceptor and the handler in one task,
but a wrapped behaviour does not rely on that).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from .. import calls
from ..errors import PermissionDenied, RaftmeshError, Unauthenticated, clip_message
from ..security.roles import OPEN, Role, allows, required_role

MAX_REQUEST_ID_CHARS = 128
"""A caller's ``x-request-id`` longer than this (or with non-printable characters) is replaced."""
MAX_WRAPPED_METHODS = 1024
"""Wrapped handlers kept (one per served method; more than the proto has)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    name: str
    """``token:SUBJECT``, ``cert:CN``, ``node:ID`` or ``anonymous``."""
    role: Role
    namespaces: tuple[str, ...] = ("*",)


class Authenticator(Protocol):
    """Says who a call comes from (``raftmesh.security``); raises ``Unauthenticated``."""

    def authenticate(self, metadata: Mapping[str, str], auth_context: Mapping[str, Any]) -> Principal: ...


class CallObserver(Protocol):
    """Told about every finished call (the node's metrics)."""

    def observe(self, method: str, code: grpc.StatusCode, seconds: float) -> None: ...


_ID_PREFIX = os.urandom(8).hex()
_ids = itertools.count()


def _request_id(given: str | None) -> str:
    if given and len(given) <= MAX_REQUEST_ID_CHARS and given.isprintable():
        return given
    # 32 hex digits like a uuid4, unique across processes (a random prefix per process) without a
    # getrandom() call per gRPC call: a request id correlates log lines and audit rows, it guards nothing.
    return f"{_ID_PREFIX}{next(_ids) & 0xFFFF_FFFF_FFFF_FFFF:016x}"


def _trace(header: str | None) -> tuple[str, str]:
    parsed = calls.parse_traceparent(header) if header else None
    return parsed if parsed is not None else (calls.new_trace_id(), "")


def _code_of(context: grpc.aio.ServicerContext, exc: BaseException | None) -> grpc.StatusCode:
    if exc is None:
        code = context.code()
        return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.OK
    if isinstance(exc, grpc.aio.AbortError):
        code = context.code()
        return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
    if isinstance(exc, RaftmeshError):
        return getattr(grpc.StatusCode, exc.code, grpc.StatusCode.UNKNOWN)
    if isinstance(exc, BaseException) and type(exc).__name__ == "CancelledError":
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


async def _responses(out: Any) -> AsyncIterator[Any]:
    """A streaming handler's responses: what an async generator yields, or nothing from a
    coroutine that streams with ``context.write`` (grpc's health ``Watch``: iterating it
    failed every such call with UNKNOWN, "'async for' requires an object with __aiter__")."""
    if hasattr(out, "__aiter__"):
        async for response in out:
            yield response
    else:
        await out


class CallInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        authenticator: Authenticator | None = None,
        observer: CallObserver | None = None,
    ) -> None:
        self.authenticator = authenticator
        self.observer = observer
        self._wrapped: dict[str, tuple[Any, Any]] = {}
        """method -> (grpc's handler, its wrapped copy): wrapped once, not on every call."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            wrapped: grpc.RpcMethodHandler = cached[1]
            return wrapped
        wrapped = self._wrap(handler, method)
        if len(self._wrapped) < MAX_WRAPPED_METHODS:  # bounded: a stranger names any method it likes
            self._wrapped[method] = (handler, wrapped)
        return wrapped

    # ---- per call -------------------------------------------------------------------

    def _admit(self, method: str, context: grpc.aio.ServicerContext) -> calls.Call:
        """The call's ``Call``; raises Unauthenticated / PermissionDenied."""
        md: dict[str, str] = {}
        for key, value in context.invocation_metadata() or ():
            if isinstance(value, str):
                md.setdefault(key.lower(), value)
        trace_id, span_id = _trace(md.get("traceparent"))
        request_id = _request_id(md.get("x-request-id"))
        if self.authenticator is None:
            who = Principal(calls.ANONYMOUS, Role.NODE)
        else:
            need = required_role(method)
            if need == OPEN:
                who = Principal(calls.ANONYMOUS, Role.READER, ())
            else:
                who = self.authenticator.authenticate(md, context.auth_context() or {})
                if not allows(who.role, method):
                    raise PermissionDenied(
                        f"{who.name} has role {who.role.label}, which may not call {method}"
                        + (
                            "; ask an admin for a token with a role that may"
                            if need is not None
                            else " (no role may: it is not a method this node serves to callers)"
                        )
                    )
        return calls.Call(
            principal=who.name,
            role=who.role.label,
            namespaces=who.namespaces,
            request_id=request_id,
            trace_id=trace_id,
            span_id=span_id,
            method=method,
        )

    def _done(
        self, method: str, context: grpc.aio.ServicerContext, start: float, exc: BaseException | None
    ) -> None:
        if self.observer is not None:
            self.observer.observe(method, _code_of(context, exc), time.perf_counter() - start)

    async def _refuse(self, context: grpc.aio.ServicerContext, exc: RaftmeshError) -> None:
        code = getattr(grpc.StatusCode, exc.code, grpc.StatusCode.UNKNOWN)
        await context.abort(code, clip_message(exc.message))

    def _wrap(self, handler: Any, method: str) -> Any:
        """``handler`` is grpc's method-handler namedtuple (typed loosely by grpc-stubs)."""
        fix: dict[str, Any] = {}
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                start = time.perf_counter()
                exc: BaseException | None = None
                try:
                    try:
                        call = self._admit(method, context)
                    except (Unauthenticated, PermissionDenied) as refused:
                        await self._refuse(context, refused)
                    token = calls.bind(call)
                    try:
                        return await inner_uu(request, context)
                    finally:
                        calls.unbind(token)
                except BaseException as e:
                    exc = e
                    raise
                finally:
                    self._done(method, context, start, exc)

            fix["unary_unary"] = unary_unary
        elif handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                start = time.perf_counter()
                exc: BaseException | None = None
                try:
                    try:
                        call = self._admit(method, context)
                    except (Unauthenticated, PermissionDenied) as refused:
                        await self._refuse(context, refused)
                    calls.bind(call)  # grpc.aio serves each call in its own task: no reset needed
                    async for response in _responses(inner_us(request, context)):
                        yield response
                except BaseException as e:
                    exc = e
                    raise
                finally:
                    self._done(method, context, start, exc)

            fix["unary_stream"] = unary_stream
        elif handler.stream_unary is not None:
            inner_su = handler.stream_unary

            async def stream_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
                start = time.perf_counter()
                exc: BaseException | None = None
                try:
                    try:
                        call = self._admit(method, context)
                    except (Unauthenticated, PermissionDenied) as refused:
                        await self._refuse(context, refused)
                    calls.bind(call)
                    return await inner_su(requests, context)
                except BaseException as e:
                    exc = e
                    raise
                finally:
                    self._done(method, context, start, exc)

            fix["stream_unary"] = stream_unary
        elif handler.stream_stream is not None:
            inner_ss = handler.stream_stream

            async def stream_stream(
                requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                start = time.perf_counter()
                exc: BaseException | None = None
                try:
                    try:
                        call = self._admit(method, context)
                    except (Unauthenticated, PermissionDenied) as refused:
                        await self._refuse(context, refused)
                    calls.bind(call)
                    async for response in _responses(inner_ss(requests, context)):
                        yield response
                except BaseException as e:
                    exc = e
                    raise
                finally:
                    self._done(method, context, start, exc)

            fix["stream_stream"] = stream_stream
        return handler._replace(**fix)
