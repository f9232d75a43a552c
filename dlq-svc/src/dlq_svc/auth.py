"""The admin token: mutating RPCs need ``authorization: Bearer <token>`` when one is configured.

Replay, Drop and Purge change what the DLQ holds or re-run jobs, so they are for operators.
The read RPCs stay open, and so does ``ReportDeadLetter``: workers call it, and it relies on
network isolation (dlq-svc is reachable only from inside the deployment). A separate worker
token is a follow-up. The token is compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc

from dlq_svc.errors import PermissionDenied, Unauthenticated
from dlq_svc.validation import actor
from relayq.v1 import dead_letter_pb2
from relayq_core.errors import RelayqError
from relayq_core.grpc_server import refusing
from relayq_core.logging import get_logger

log = get_logger(__name__)

_SERVICE = dead_letter_pb2.DESCRIPTOR.services_by_name["DeadLetterService"].full_name
#: The RPCs that need the admin token.
ADMIN_METHODS = frozenset(
    f"/{_SERVICE}/{name}" for name in ("ReplayDeadLetters", "DropDeadLetters", "PurgeDeadLetters")
)
ACTOR_KEY = "x-relayq-actor"

Metadata = Iterable[tuple[str, str | bytes]]


def metadata_value(metadata: Metadata | None, key: str) -> str | None:
    """The first value of ``key`` in call metadata (keys are lower-case on the wire)."""
    for k, v in metadata or ():
        if k == key:
            return v.decode(errors="replace") if isinstance(v, bytes) else v
    return None


def check_bearer(metadata: Metadata | None, token: str) -> RelayqError | None:
    """The refusal for this call's ``authorization`` metadata, or None if it carries ``token``."""
    header = metadata_value(metadata, "authorization")
    if header is None:
        return Unauthenticated(
            "this call needs `authorization: Bearer <token>` metadata (the dlq-svc admin token, "
            "RELAYQ_DLQ_ADMIN_TOKEN)"
        )
    scheme, _, presented = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return Unauthenticated("the authorization metadata must be `Bearer <token>`")
    if not hmac.compare_digest(presented.strip().encode(), token.encode()):
        return PermissionDenied()
    return None


class AdminTokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses :data:`ADMIN_METHODS` calls without the admin token; other calls pass."""

    def __init__(self, token: str, methods: frozenset[str] = ADMIN_METHODS) -> None:
        if not token:
            raise ValueError("an empty admin token would let anyone in; leave auth off instead")
        self._token = token
        self._methods = methods

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method not in self._methods:
            return handler
        metadata = handler_call_details.invocation_metadata or ()
        error = check_bearer(metadata, self._token)
        if error is None:
            return handler
        log.warning(
            "dlq_call_refused",
            method=method,
            code=error.code.name,
            actor=actor(metadata_value(metadata, ACTOR_KEY)),
        )
        return refusing(handler, error)
