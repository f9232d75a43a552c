"""dlq-svc's refusals, with the admin token's wording as their default messages.

They carry their gRPC status like every :class:`~relayq_core.errors.RelayqError`, so
:func:`relayq_core.grpc_server.abort_with` stays the one mapping to status codes.
"""

from __future__ import annotations

from relayq_core import errors


class Unauthenticated(errors.Unauthenticated):
    """This call needs `authorization: Bearer <token>` metadata (the dlq-svc admin token)."""


class PermissionDenied(errors.PermissionDenied):
    """The bearer token is not the dlq-svc admin token."""
