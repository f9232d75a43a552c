"""The shape every relayq gRPC server shares: grpc.aio, health, reflection, graceful stop.

A service builds its servicers, hands them to :func:`start_server`, and gets the stock
``grpc.health.v1.Health`` service and server reflection (so ``grpcurl list`` works) for free,
and with them what every server must do the same way: TLS when certificates are configured, an
explicit request size limit (``RESOURCE_EXHAUSTED`` beyond it), and ``INVALID_ARGUMENT`` for a
request whose bytes are not the message the method takes (grpcio would answer ``UNKNOWN``).
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
import structlog
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from relayq_core.errors import InvalidArgument, RelayqError
from relayq_core.logging import get_logger
from relayq_core.settings import DEFAULT_MAX_MESSAGE_BYTES
from relayq_core.tls import ServerTls

log = get_logger(__name__)


#: The most a status message may take on the wire. It travels percent-encoded (a non-ASCII
#: byte takes 3) in the trailers, and clients drop a call whose metadata passes 8 KiB, turning
#: a refusal that quotes a long value back into RESOURCE_EXHAUSTED without its message.
MAX_DETAILS_WIRE_BYTES = 4096


def bounded_details(message: str, limit: int = MAX_DETAILS_WIRE_BYTES) -> str:
    """``message``, cut so that its percent-encoded form fits in ``limit`` bytes."""
    size = 0
    for i, char in enumerate(message):
        size += sum(
            1 if 0x20 <= b < 0x7F and b != 0x25 else 3
            for b in char.encode("utf-8", "surrogatepass")
        )
        if size > limit - 40:  # room for the marker
            return message[:i] + "…(truncated)"
    return message


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], error: RelayqError) -> NoReturn:
    """Ends the RPC with the status that belongs to ``error`` (the one mapping to gRPC codes)."""
    await context.abort(error.code, bounded_details(error.message))
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
    tls: bool = False

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
    tls: ServerTls | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> RunningServer:
    """Starts a grpc.aio server on ``address`` (port 0: a free one), with health and reflection.

    ``tls`` given: TLS only (``add_secure_port``), else plaintext. A request larger than
    ``max_message_bytes`` is refused with ``RESOURCE_EXHAUSTED`` before it is parsed.
    """
    regs = list(registrations)
    server = grpc.aio.server(
        # Innermost, so that an outer check (auth) refuses a call before its body is judged.
        interceptors=[*interceptors, RequestParseInterceptor()],
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            # grpc sets SO_REUSEPORT by default: a second server on a busy port would then bind
            # it too and the kernel would split the clients between two processes (a stale
            # ingest, another stack) without a word. One port, one server: the second fails.
            ("grpc.so_reuseport", 0),
            *options,
        ],
    )
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
    try:
        if tls is not None:
            port = server.add_secure_port(address, tls.credentials())
        else:
            port = server.add_insecure_port(address)
    except RuntimeError:  # grpc's "Failed to bind": the port is taken or the address is wrong
        port = 0
    if port == 0:
        raise OSError(
            errno.EADDRINUSE, f"could not bind the gRPC server to {address}: is the port in use?"
        )
    await server.start()
    for name in (*names, ""):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(
        server=server, port=port, health=health_servicer, names=names, tls=tls is not None
    )


# Lazy aliases: grpc's classes are generic only in the stubs.
type Handler = grpc.RpcMethodHandler[Any, Any]
type Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler]]


def rebuild_handler(
    handler: Handler,
    *,
    unary: Callable[[Any, Any], Awaitable[Any]] | None = None,
    stream: Callable[[Any, Any], AsyncIterator[Any]] | None = None,
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> Handler:
    """A unary-request handler like ``handler``, with its behaviour (and deserializer) replaced.

    ``unary`` replaces a unary-response behaviour, ``stream`` a streaming-response one.
    """
    deserializer = request_deserializer or handler.request_deserializer
    if handler.response_streaming:
        assert stream is not None, "a streaming response needs a streaming behaviour"
        return grpc.unary_stream_rpc_method_handler(
            stream,
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )
    assert unary is not None, "a unary response needs a unary behaviour"
    return grpc.unary_unary_rpc_method_handler(
        unary, request_deserializer=deserializer, response_serializer=handler.response_serializer
    )


def wraps_behaviour(handler: Handler | None) -> bool:
    """Whether :func:`rebuild_handler` can wrap this handler: a unary request and an async
    behaviour (every relayq servicer method, health's Check and Watch; not reflection's stream)."""
    if handler is None or handler.request_streaming:
        return False
    if handler.response_streaming:
        return inspect.isasyncgenfunction(handler.unary_stream)
    return inspect.iscoroutinefunction(handler.unary_unary)


def refusing(handler: Handler, error: RelayqError) -> Handler:
    """A handler of ``handler``'s shape that ends every call with ``error``."""

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await abort_with(context, error)

    async def stream(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        await abort_with(context, error)
        yield  # pragma: no cover  (makes this an async generator, as a streaming handler is)

    return rebuild_handler(handler, unary=unary, stream=stream)


def with_log_context(handler: Handler, **fields: Any) -> Handler:
    """``handler`` with ``fields`` bound to every log line its behaviour writes."""
    # The stubs type behaviours as blocking; on a grpc.aio server they are async.
    inner_unary: Any = handler.unary_unary
    inner_stream: Any = handler.unary_stream

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        with structlog.contextvars.bound_contextvars(**fields):
            return await inner_unary(request, context)

    async def stream(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        with structlog.contextvars.bound_contextvars(**fields):
            async for item in inner_stream(request, context):
                yield item

    return rebuild_handler(handler, unary=unary, stream=stream)


@dataclass(frozen=True)
class _Unparsable:
    """What the tolerant deserializer hands the behaviour instead of a request it could not
    parse; the behaviour wrapper answers INVALID_ARGUMENT with ``message``."""

    message: str


def _tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    message_type = getattr(deserializer, "__self__", None)
    descriptor = getattr(message_type, "DESCRIPTOR", None)
    name = getattr(descriptor, "full_name", None) or "request"

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as exc:
            # "Error parsing message with type 'X': String field had bad UTF-8": keep the why.
            why = str(exc).rpartition(": ")[2]
            return _Unparsable(f"the request is not a valid {name} message ({why})")
        # Whatever else the parser raises, the bytes are the client's mistake.
        except Exception:
            return _Unparsable(f"the request is not a valid {name} message")

    return parse


class RequestParseInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Answers INVALID_ARGUMENT for a request whose bytes do not parse as the method's message.

    grpcio's own answer is UNKNOWN ("Unexpected <class 'DecodeError'>"), which reads as a
    server fault. :func:`start_server` installs this on every server.
    """

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if not wraps_behaviour(handler) or handler.request_deserializer is None:
            return handler
        inner_unary: Any = handler.unary_unary
        inner_stream: Any = handler.unary_stream

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if isinstance(request, _Unparsable):
                await abort_with(context, InvalidArgument(request.message))
            return await inner_unary(request, context)

        async def stream(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            if isinstance(request, _Unparsable):
                await abort_with(context, InvalidArgument(request.message))
            async for item in inner_stream(request, context):
                yield item

        return rebuild_handler(
            handler,
            unary=unary,
            stream=stream,
            request_deserializer=_tolerant(handler.request_deserializer),
        )


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
