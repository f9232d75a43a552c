"""One port, one server: a relayq gRPC server refuses a port another process listens on.

grpc sets SO_REUSEPORT unless told not to, and then a second server binds a busy port without
an error and the kernel shares the clients out between the two: a stale ingest left running, or
a second local stack, would take half the calls meant for the other.
"""

from __future__ import annotations

import errno
import socket

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from relayq_core.grpc_server import start_server

pytestmark = pytest.mark.integration


async def test_a_second_server_on_the_same_port_fails() -> None:
    first = await start_server([], "127.0.0.1:0")
    try:
        with pytest.raises(OSError) as refused:
            await start_server([], f"127.0.0.1:{first.port}")
        assert refused.value.errno == errno.EADDRINUSE
        assert f"127.0.0.1:{first.port}" in str(refused.value)
        assert "in use" in str(refused.value)
        # The first server still has the port to itself and answers.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await first.stop(0)


async def test_a_port_held_by_any_listener_fails() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(OSError, match="in use"):
            await start_server([], f"127.0.0.1:{port}")


async def test_the_port_is_free_again_after_stop() -> None:
    first = await start_server([], "127.0.0.1:0")
    port = first.port
    await first.stop(0)
    again = await start_server([], f"127.0.0.1:{port}")
    try:
        assert again.port == port
    finally:
        await again.stop(0)
