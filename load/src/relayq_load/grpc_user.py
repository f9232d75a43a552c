"""A Locust ``User`` that speaks gRPC (Locust ships HTTP users only).

grpc's gevent integration (``grpc.experimental.gevent.init_gevent``) makes a blocking call yield
to other greenlets, so each Locust user can make plain synchronous stub calls. It must run after
gevent's monkey-patching (importing ``locust`` does that) and before any channel exists, which
importing this module guarantees.

Every call fires Locust's ``request`` event: ``request_type="grpc"``, ``name`` the method name,
``response_time`` in milliseconds, ``exception`` a :class:`~relayq_load.report.CallError` when
the call did not end OK. Locust's own statistics, and this package's ghz report, listen to it.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, ClassVar

import grpc
import grpc.experimental.gevent as grpc_gevent
from google.protobuf.message import Message
from locust import User
from locust.env import Environment
from locust.exception import LocustError

from relayq_load.calls import Method
from relayq_load.report import CallError

grpc_gevent.init_gevent()

REQUEST_TYPE = "grpc"
_channels: dict[tuple[str, bool, int], grpc.Channel] = {}
_next_user = itertools.count()


def shared_channel(target: str, *, insecure: bool, index: int) -> grpc.Channel:
    """Channel number ``index`` to ``target``, made once per process and shared by users."""
    key = (target, insecure, index)
    channel = _channels.get(key)
    if channel is None:
        # A distinct channel argument per index keeps grpc from folding the channels into one
        # subchannel (one TCP connection): --connections really opens that many connections.
        options = [("grpc.channel_id", index)]
        if insecure:
            channel = grpc.insecure_channel(target, options=options)
        else:
            channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(), options=options)
        _channels[key] = channel
    return channel


def close_channels() -> None:
    """Closes every shared channel (end of a run)."""
    for channel in _channels.values():
        channel.close()
    _channels.clear()


class GrpcUser(User):
    """Base class: a user with a gRPC channel to ``host`` and a timed :meth:`unary` call.

    ``host`` is ``HOST:PORT`` (Locust's ``-H``). Users share ``connections`` channels,
    round-robin, as ghz's workers share its ``--connections``.
    """

    abstract = True
    insecure: ClassVar[bool] = True
    connections: ClassVar[int] = 1
    timeout: ClassVar[float] = 20.0
    metadata: ClassVar[tuple[tuple[str, str], ...]] = ()

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        if not self.host:
            raise LocustError("a gRPC user needs a host (HOST:PORT): pass -H/--host")
        self.user_number = next(_next_user)
        self.channel = shared_channel(
            self.host,
            insecure=self.insecure,
            index=self.user_number % max(1, self.connections),
        )
        self._callables: dict[str, grpc.UnaryUnaryMultiCallable[Any, Any]] = {}

    def _callable(self, method: Method) -> grpc.UnaryUnaryMultiCallable[Any, Any]:
        call = self._callables.get(method.path)
        if call is None:
            call = self.channel.unary_unary(
                method.path,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=method.response_class.FromString,
            )
            self._callables[method.path] = call
        return call

    def unary(self, method: Method, request: Message) -> Message | None:
        """Calls ``method``, reports it to Locust, and returns the response (None on error)."""
        call = self._callable(method)
        response: Message | None = None
        exception: Exception | None = None
        start = time.perf_counter_ns()
        try:
            response = call(request, timeout=self.timeout, metadata=self.metadata or None)
        except grpc.RpcError as exc:
            if isinstance(exc, grpc.Call):
                exception = CallError(exc.code(), exc.details() or "")
            else:
                exception = CallError(grpc.StatusCode.UNKNOWN, str(exc))
        elapsed_ns = time.perf_counter_ns() - start
        self.environment.events.request.fire(
            request_type=REQUEST_TYPE,
            name=method.descriptor.name,
            response_time=elapsed_ns / 1e6,
            response_length=response.ByteSize() if response is not None else 0,
            response=response,
            context={"latency_ns": elapsed_ns},
            exception=exception,
        )
        return response
