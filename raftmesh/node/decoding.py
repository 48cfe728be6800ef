"""Request bytes that do not decode get INVALID_ARGUMENT, not grpc's UNKNOWN.

grpc turns an exception in a request deserializer into ``UNKNOWN`` ("Unexpected
DecodeError ..."), which tells the caller nothing it can fix and looks like a server
bug. ``guarded(server)`` is handed to the generated ``add_*Servicer_to_server``
functions in place of the server: it wraps each method's deserializer so that a
``DecodeError`` becomes an ``Undecodable`` value, and each method's behaviour so that
such a value is answered with ``INVALID_ARGUMENT`` before the servicer sees it (for a
request stream: when the bad message is read).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from ..errors import clip_message


class Undecodable:
    """What a request deserializer returns for bytes that are not the request message."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _message(bad: Undecodable) -> str:
    return clip_message(
        f"the request bytes are not a valid message of this method ({bad.reason}); "
        "use the raftmesh.v1 protos (raftmesh/proto) to encode requests"
    )


def _deserializer(inner: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return inner(data)
        except DecodeError as exc:
            return Undecodable(str(exc))

    return deserialize


async def _checked(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message(request))
        yield request


def _guard(handler: Any) -> Any:
    if handler is None or handler.request_deserializer is None:
        return handler
    fix: dict[str, Any] = {"request_deserializer": _deserializer(handler.request_deserializer)}
    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message(request))
            return await inner_uu(request, context)

        fix["unary_unary"] = unary_unary
    elif handler.unary_stream is not None:
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if isinstance(request, Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message(request))
            async for response in inner_us(request, context):
                yield response

        fix["unary_stream"] = unary_stream
    elif handler.stream_unary is not None:
        inner_su = handler.stream_unary

        async def stream_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            return await inner_su(_checked(requests, context), context)

        fix["stream_unary"] = stream_unary
    elif handler.stream_stream is not None:
        inner_ss = handler.stream_stream

        async def stream_stream(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            async for response in inner_ss(_checked(requests, context), context):
                yield response

        fix["stream_stream"] = stream_stream
    return handler._replace(**fix)


class _GuardedGeneric(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler) -> None:
        self._inner = inner

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        return _guard(self._inner.service(handler_call_details))


def guarded(server: grpc.aio.Server) -> Any:
    """Pass this to ``add_XServicer_to_server`` instead of ``server``."""
    return _GuardedServer(server)


class _GuardedServer:
    """The part of a ``grpc.aio.Server`` that generated code registers handlers with, guarded."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers([_GuardedGeneric(h) for h in handlers])

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, Any]) -> None:
        self._server.add_registered_method_handlers(  # type: ignore[attr-defined]
            service, {name: _guard(h) for name, h in handlers.items()}
        )
