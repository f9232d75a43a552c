"""dlq-svc's refusals that the shared hierarchy (``relayq_core.errors``) does not have yet.

They carry their gRPC status like every :class:`~relayq_core.errors.RelayqError`, so
:func:`relayq_core.grpc_server.abort_with` stays the one mapping to status codes.
"""

from __future__ import annotations

import grpc

from relayq_core.errors import RelayqError


class Unauthenticated(RelayqError):
    """This call needs `authorization: Bearer <token>` metadata (the dlq-svc admin token)."""

    code = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401


class PermissionDenied(RelayqError):
    """The bearer token is not the dlq-svc admin token."""

    code = grpc.StatusCode.PERMISSION_DENIED
    http_status = 403
