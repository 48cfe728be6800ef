"""Errors to gRPC statuses: the one place a node does it, for every service.

Every servicer method is wrapped by ``unary`` or ``stream``. A ``RaftmeshError``
becomes the status its class names (``raftmesh.errors``); anything else is a bug:
it is logged with its traceback and reaches the client as ``INTERNAL`` with a
bounded message. Every message goes through ``errors.clip_message``, so an error
that echoes a large input cannot overflow the status trailer.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from ..errors import RaftmeshError, clip_message

log = logging.getLogger(__name__)

S = TypeVar("S")
Req = TypeVar("Req")
Resp = TypeVar("Resp")


def status_of(exc: BaseException, where: str) -> tuple[grpc.StatusCode, str]:
    """The status and message for an error raised while serving ``where``."""
    if isinstance(exc, RaftmeshError):
        code = getattr(grpc.StatusCode, exc.code, grpc.StatusCode.UNKNOWN)
        return code, clip_message(exc.message)
    log.error("%s failed", where, exc_info=exc)
    return grpc.StatusCode.INTERNAL, clip_message(f"internal error in {where}: {type(exc).__name__}: {exc}")


def unary(
    fn: Callable[[S, Req, grpc.aio.ServicerContext], Awaitable[Resp]],
) -> Callable[[S, Req, grpc.aio.ServicerContext], Awaitable[Resp]]:
    @functools.wraps(fn)
    async def wrapper(self: S, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        try:
            return await fn(self, request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            code, message = status_of(exc, fn.__qualname__)
            await context.abort(code, message)
        raise AssertionError("unreachable")  # context.abort raises

    return wrapper


def stream(
    fn: Callable[[S, Any, grpc.aio.ServicerContext], AsyncIterator[Resp]],
) -> Callable[[S, Any, grpc.aio.ServicerContext], AsyncIterator[Resp]]:
    """For server-streaming methods (async generators); an error ends the stream with its status."""

    @functools.wraps(fn)
    async def wrapper(self: S, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Resp]:
        try:
            async for item in fn(self, request, context):
                yield item
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            code, message = status_of(exc, fn.__qualname__)
            await context.abort(code, message)

    return wrapper
