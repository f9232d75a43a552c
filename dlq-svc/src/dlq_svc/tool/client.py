"""The gRPC calls dlq-tool makes, with its metadata, and gRPC errors turned into ServerError.

A synchronous channel: a CLI makes one call at a time, and the replay stream is read as it
arrives so the progress bar moves with the server.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

import grpc

from dlq_svc.tool.errors import ServerError
from dlq_svc.tool.target import Target
from relayq.v1 import dead_letter_pb2, dead_letter_pb2_grpc

# ReplayDeadLetters and DropDeadLetters take at most this many ids per request.
MAX_IDS = 10_000
# ListDeadLetters serves pages of 1..1000.
MAX_PAGE_SIZE = 1000

Metadata = tuple[tuple[str, str], ...]


def call_metadata(target: Target) -> Metadata:
    """``x-relayq-actor`` always; ``authorization: Bearer`` when there is a token."""
    pairs = [("x-relayq-actor", target.actor)]
    if target.token:
        pairs.append(("authorization", f"Bearer {target.token}"))
    return tuple(pairs)


def server_error(exc: grpc.RpcError, target: Target, timeout: float | None) -> ServerError:
    """The one-line error for a failed call (never the transport's traceback)."""
    if not isinstance(exc, grpc.Call):
        return ServerError("UNKNOWN", str(exc) or type(exc).__name__)
    code = exc.code()
    details = exc.details() or ""
    if code is grpc.StatusCode.UNAVAILABLE:
        details = f"cannot reach dlq-svc at {target.address} ({target.source}): {details}"
    elif code is grpc.StatusCode.DEADLINE_EXCEEDED and timeout is not None:
        details = f"no answer from dlq-svc at {target.address} within {timeout:g}s"
    return ServerError(code.name, details or code.name.lower().replace("_", " "))


@dataclass(frozen=True)
class Page:
    """Entries read by :meth:`DlqClient.list_entries`, and whether more match."""

    entries: list[dead_letter_pb2.DeadLetter]
    more: bool


class DeadLetterClient(Protocol):
    """What the commands need from dlq-svc (:class:`DlqClient`, or a fake in unit tests)."""

    def list_entries(
        self, flt: dead_letter_pb2.DeadLetterFilter, *, limit: int, page_size: int | None
    ) -> Page: ...

    def get(self, entry_id: str) -> dead_letter_pb2.DeadLetter: ...

    def stats(self) -> dead_letter_pb2.GetDeadLetterStatsResponse: ...

    def replay(
        self, request: dead_letter_pb2.ReplayDeadLettersRequest
    ) -> Iterator[dead_letter_pb2.ReplayDeadLettersResponse]: ...

    def drop(
        self, request: dead_letter_pb2.DropDeadLettersRequest
    ) -> dead_letter_pb2.DropDeadLettersResponse: ...

    def purge(
        self, request: dead_letter_pb2.PurgeDeadLettersRequest
    ) -> dead_letter_pb2.PurgeDeadLettersResponse: ...


def _channel(target: Target) -> grpc.Channel:
    """Plaintext, or TLS verified against the target's CA (mTLS with its certificate)."""
    if target.tls_ca_file is None:
        return grpc.insecure_channel(target.address)
    key = cert = None
    if target.tls_cert_file is not None and target.tls_key_file is not None:
        key, cert = target.tls_key_file.read_bytes(), target.tls_cert_file.read_bytes()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=target.tls_ca_file.read_bytes(), private_key=key, certificate_chain=cert
    )
    return grpc.secure_channel(target.address, credentials)


class DlqClient:
    """dlq-svc's ``DeadLetterService``, one method per RPC; raises :class:`ServerError`."""

    def __init__(self, target: Target, *, timeout: float) -> None:
        self.target = target
        self.timeout = timeout
        self._metadata = call_metadata(target)
        self._channel = _channel(target)
        self._stub = dead_letter_pb2_grpc.DeadLetterServiceStub(self._channel)

    def __enter__(self) -> DlqClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel (cancelling a replay stream still being read)."""
        self._channel.close()

    @contextmanager
    def _errors(self, timeout: float | None) -> Iterator[None]:
        try:
            yield
        except grpc.RpcError as exc:
            raise server_error(exc, self.target, timeout) from None

    def list_entries(
        self, flt: dead_letter_pb2.DeadLetterFilter, *, limit: int, page_size: int | None
    ) -> Page:
        """Up to ``limit`` entries (0: all), following page tokens, newest first."""
        entries: list[dead_letter_pb2.DeadLetter] = []
        token = ""
        while True:
            want = limit - len(entries) if limit else MAX_PAGE_SIZE
            size = min(page_size or MAX_PAGE_SIZE, want)
            request = dead_letter_pb2.ListDeadLettersRequest(
                filter=flt, page_size=size, page_token=token
            )
            with self._errors(self.timeout):
                reply = self._stub.ListDeadLetters(
                    request, timeout=self.timeout, metadata=self._metadata
                )
            entries.extend(reply.dead_letters)
            token = reply.next_page_token
            if limit and len(entries) >= limit:
                # A last page the server filled beyond what we asked for is cut here.
                return Page(entries[:limit], more=bool(token) or len(entries) > limit)
            if not token:
                return Page(entries, more=False)

    def get(self, entry_id: str) -> dead_letter_pb2.DeadLetter:
        """One entry with its traceback, attempts and audit trail."""
        request = dead_letter_pb2.GetDeadLetterRequest(id=entry_id)
        with self._errors(self.timeout):
            reply = self._stub.GetDeadLetter(request, timeout=self.timeout, metadata=self._metadata)
        return reply.dead_letter

    def stats(self) -> dead_letter_pb2.GetDeadLetterStatsResponse:
        """Counts by task, reason and status, and the oldest active entry."""
        request = dead_letter_pb2.GetDeadLetterStatsRequest()
        with self._errors(self.timeout):
            return self._stub.GetDeadLetterStats(
                request, timeout=self.timeout, metadata=self._metadata
            )

    def replay(
        self, request: dead_letter_pb2.ReplayDeadLettersRequest
    ) -> Iterator[dead_letter_pb2.ReplayDeadLettersResponse]:
        """The replay stream, one message per entry as the server handles it.

        No deadline: a rate-limited replay of many entries takes as long as it takes, and an
        interrupted one loses nothing (each entry is either still active or re-enqueued).
        """
        with self._errors(None):
            yield from self._stub.ReplayDeadLetters(request, metadata=self._metadata)

    def drop(
        self, request: dead_letter_pb2.DropDeadLettersRequest
    ) -> dead_letter_pb2.DropDeadLettersResponse:
        """Drops entries (or counts them, on a dry run)."""
        with self._errors(self.timeout):
            return self._stub.DropDeadLetters(
                request, timeout=self.timeout, metadata=self._metadata
            )

    def purge(
        self, request: dead_letter_pb2.PurgeDeadLettersRequest
    ) -> dead_letter_pb2.PurgeDeadLettersResponse:
        """Deletes dropped entries past the retention (or counts them, on a dry run)."""
        with self._errors(self.timeout):
            return self._stub.PurgeDeadLetters(
                request, timeout=self.timeout, metadata=self._metadata
            )
