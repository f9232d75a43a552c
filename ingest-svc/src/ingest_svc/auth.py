"""Per-client API keys for ingest: who may submit, checked at both doors.

Keys are configured hashed (``client_name:sha256hex``), in ``RELAYQ_INGEST_API_KEYS_FILE`` (one
a line; blank lines and ``#`` comments allowed) and/or ``RELAYQ_INGEST_API_KEYS``
(comma-separated). When any is configured, every ``IngestService`` call needs ``x-api-key``
metadata and every HTTP request an ``X-API-Key`` header: missing is UNAUTHENTICATED (401),
unknown is PERMISSION_DENIED (403). Health checks, reflection, and the HTTP paths in
:data:`OPEN_PATHS` (``/healthz``, ``/metrics``, the API docs) stay open.

The presented key is hashed and compared with every configured hash in constant time; the
matching client's name is bound to the call's log lines (``client``). Keys are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import structlog
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from relayq.v1 import ingest_pb2
from relayq_core.errors import PermissionDenied, RelayqError, Unauthenticated
from relayq_core.grpc_server import Handler, refusing, with_log_context, wraps_behaviour
from relayq_core.logging import get_logger

log = get_logger(__name__)

#: gRPC metadata key (lower-case on the wire) and HTTP header that carry the key.
METADATA_KEY = "x-api-key"
HTTP_HEADER = "X-API-Key"
_SERVICE_PREFIX = "/" + ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name + "/"
#: HTTP paths that need no key: probes, scrapes and the API's description.
OPEN_PATHS = frozenset({"/healthz", "/metrics", "/docs", "/openapi.json"})
_ENTRY = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._@-]{0,99}):(?P<hash>[0-9a-fA-F]{64})")


def hash_key(key: str) -> str:
    """The form a key is configured in: its SHA-256, hex."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ApiKeys:
    """The configured clients: (SHA-256 of the key, client name)."""

    clients: tuple[tuple[bytes, str], ...]

    @classmethod
    def parse(cls, entries: Iterable[str], source: str) -> ApiKeys:
        """Keys from ``name:sha256hex`` entries; a malformed entry fails start-up, naming
        ``source`` and the entry's position (never its text, which may be a raw key)."""
        clients = []
        for n, raw in enumerate(entries, start=1):
            entry = raw.strip()
            if not entry or entry.startswith("#"):
                continue
            match = _ENTRY.fullmatch(entry)
            if match is None:
                raise ValueError(
                    f"{source}, entry {n}: expected client_name:sha256hex (64 hex digits of the "
                    "key's SHA-256, not the key itself)"
                )
            clients.append((bytes.fromhex(match["hash"]), match["name"]))
        return cls(tuple(clients))

    def identify(self, presented: str | None) -> str:
        """The client whose key this is; Unauthenticated if none was given, PermissionDenied
        if it is not a configured key."""
        if not presented:
            raise Unauthenticated(
                f"this call needs an API key: `{METADATA_KEY}` metadata (gRPC) or the "
                f"`{HTTP_HEADER}` header (HTTP)"
            )
        digest = hashlib.sha256(presented.strip().encode("utf-8", "surrogatepass")).digest()
        found = ""
        # Every configured hash is compared, in constant time: the time taken says nothing
        # about which key, or how much of one, matched.
        for stored, name in self.clients:
            if hmac.compare_digest(digest, stored):
                found = name
        if not found:
            raise PermissionDenied("the API key is not valid")
        return found


def load_api_keys(file: Path | None, inline: str) -> ApiKeys | None:
    """The configured keys (file and inline together), or None when neither is set."""
    if file is None and not inline.strip():
        return None
    clients: tuple[tuple[bytes, str], ...] = ()
    if file is not None:
        lines = file.read_text(encoding="utf-8").splitlines()
        clients += ApiKeys.parse(lines, f"RELAYQ_INGEST_API_KEYS_FILE ({file})").clients
    if inline.strip():
        clients += ApiKeys.parse(inline.split(","), "RELAYQ_INGEST_API_KEYS").clients
    if not clients:
        raise ValueError("API keys are configured but none is listed: every call would fail")
    return ApiKeys(clients)


def _metadata_value(metadata: Any, key: str) -> str | None:
    for k, v in metadata or ():
        if k == key:
            return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
    return None


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Checks ``x-api-key`` on every IngestService call; binds ``client`` for its logs."""

    def __init__(self, keys: ApiKeys) -> None:
        self._keys = keys

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if not method.startswith(_SERVICE_PREFIX) or not wraps_behaviour(handler):
            return handler
        presented = _metadata_value(handler_call_details.invocation_metadata, METADATA_KEY)
        try:
            client = self._keys.identify(presented)
        except RelayqError as error:
            log.warning("ingest_call_refused", method=method, code=error.code.name)
            return refusing(handler, error)
        return with_log_context(handler, client=client)


class ApiKeyMiddleware:
    """The HTTP door's check: ``X-API-Key`` on every request but :data:`OPEN_PATHS` (401/403,
    the JSON error body); binds ``client`` for the request's logs."""

    def __init__(
        self,
        app: ASGIApp,
        keys: ApiKeys,
        error_body: Callable[[str, str], dict[str, Any]],
    ) -> None:
        self.app = app
        self.keys = keys
        self.error_body = error_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        try:
            client = self.keys.identify(Headers(scope=scope).get(HTTP_HEADER))
        except RelayqError as error:
            log.warning("ingest_call_refused", path=scope["path"], code=error.code.name)
            refusal = JSONResponse(
                status_code=error.http_status,
                content=self.error_body(error.code.name, error.message),
            )
            await refusal(scope, receive, send)
            return
        with structlog.contextvars.bound_contextvars(client=client):
            await self.app(scope, receive, send)
