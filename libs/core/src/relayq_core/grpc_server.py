"""The shape every relayq gRPC server shares: grpc.aio, health, reflection, graceful stop.

A service builds its servicers, hands them to :func:`serve`, and gets the stock
``grpc.health.v1.Health`` service and server reflection (so ``grpcurl list`` works) for free.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from relayq_core.errors import RelayqError
from relayq_core.logging import get_logger

log = get_logger(__name__)


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], error: RelayqError) -> NoReturn:
    """Ends the RPC with the status that belongs to ``error`` (the one mapping to gRPC codes)."""
    await context.abort(error.code, error.message)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


@dataclass(frozen=True)
class Registration:
    """One service to mount: its full name and the function that adds its servicer."""

    full_name: str
    add: Callable[[grpc.aio.Server], None]


@dataclass
class RunningServer:
    """A started server: its bound port and its health servicer (to flip NOT_SERVING on stop)."""

    server: grpc.aio.Server
    port: int
    health: HealthServicer
    names: Sequence[str]

    async def stop(self, grace: float = 5.0) -> None:
        """Reports NOT_SERVING, then lets in-flight RPCs finish for up to ``grace`` seconds."""
        for name in (*self.names, ""):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(grace)


async def start_server(
    registrations: Iterable[Registration],
    address: str,
    *,
    interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = (),
    options: Sequence[tuple[str, Any]] = (),
) -> RunningServer:
    """Starts a grpc.aio server on ``address`` (port 0: a free one), with health and reflection."""
    regs = list(registrations)
    server = grpc.aio.server(interceptors=list(interceptors), options=list(options))
    for reg in regs:
        reg.add(server)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [reg.full_name for reg in regs]
    reflection.enable_server_reflection(
        [
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind gRPC server to {address}")
    await server.start()
    for name in (*names, ""):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server=server, port=port, health=health_servicer, names=names)


async def run_until_signalled(
    running: RunningServer,
    *,
    grace: float = 5.0,
    on_stop: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Serves until SIGTERM or SIGINT, then stops gracefully and runs ``on_stop``."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("server_stopping", grace_seconds=grace)
    await running.stop(grace)
    if on_stop is not None:
        await on_stop()
    log.info("server_stopped")
