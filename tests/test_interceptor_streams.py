"""The call interceptor wraps every kind of streaming handler grpc.aio serves."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from raftmesh.node.interceptor import CallInterceptor


def test_a_stream_handler_that_writes_through_its_context_is_served() -> None:
    """grpc's health ``Watch`` is a coroutine that streams with ``context.write``, not an async
    generator: through the interceptor it answered UNKNOWN ("'async for' requires an object with
    __aiter__ method, got coroutine") on every node."""

    async def main() -> tuple[int, int]:
        server = grpc.aio.server(interceptors=[CallInterceptor()])
        servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = health_pb2_grpc.HealthStub(ch)
                call = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
                first = await call.read()
                await servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
                second = await call.read()
                call.cancel()
                return first.status, second.status
        finally:
            await server.stop(None)

    assert asyncio.run(main()) == (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
