"""The worker's ``DeadLetterService`` client: sends a :class:`DeadLetterReport` to dlq-svc.

One ``grpc.aio`` channel per worker process, made on first use on the process's event loop
(after the fork: a channel is never inherited).
"""

from __future__ import annotations

import os

import grpc

from relayq.v1 import dead_letter_pb2, dead_letter_pb2_grpc
from relayq_core.convert import dead_letter_report_to_proto
from relayq_core.deadletter import DeadLetterReport
from relayq_core.tls import ClientTls, aio_channel


class DlqClient:
    """A per-process ``DeadLetterService`` client (TLS when ``tls`` is given)."""

    def __init__(self, address: str, timeout_seconds: float, tls: ClientTls | None = None) -> None:
        self._address = address
        self._timeout = timeout_seconds
        self._tls = tls
        self._pid = -1
        self._channel: grpc.aio.Channel | None = None

    def _stub(self) -> dead_letter_pb2_grpc.DeadLetterServiceAsyncStub:
        if self._channel is None or self._pid != os.getpid():
            self._channel = aio_channel(self._address, self._tls)
            self._pid = os.getpid()
        return dead_letter_pb2_grpc.DeadLetterServiceStub(self._channel)

    async def report(self, report: DeadLetterReport) -> bool:
        """Stores the dead letter; True when dlq-svc already had it. Raises grpc.RpcError."""
        reply: dead_letter_pb2.ReportDeadLetterResponse = await self._stub().ReportDeadLetter(
            dead_letter_report_to_proto(report), timeout=self._timeout
        )
        return reply.duplicate

    async def close(self) -> None:
        """Closes the channel (process shutdown; tests)."""
        channel, self._channel = self._channel, None
        if channel is not None and self._pid == os.getpid():
            await channel.close(None)
