"""relayq's domain errors: a shallow hierarchy whose docstring is the default message.

Each error names the gRPC status it maps to (``code``), so there is one mapping from domain
errors to status codes: :func:`relayq_core.grpc_server.abort_with`. Clients never see tracebacks.
"""

from __future__ import annotations

import grpc


class RelayqError(Exception):
    """relayq failed to handle the request."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    http_status: int = 500

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or self.__class__.__name__).strip())

    @property
    def message(self) -> str:
        """The text shown to the client."""
        return str(self.args[0])


class InvalidArgument(RelayqError):
    """The request is not valid."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 422


class NotFound(RelayqError):
    """No such object."""

    code = grpc.StatusCode.NOT_FOUND
    http_status = 404


class AlreadyExists(RelayqError):
    """The idempotency key was already used for a different job."""

    code = grpc.StatusCode.ALREADY_EXISTS
    http_status = 409


class ResourceExhausted(RelayqError):
    """The request is larger than this server accepts."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 413


class Unauthenticated(RelayqError):
    """This call needs credentials."""

    code = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401


class PermissionDenied(RelayqError):
    """The credentials given do not allow this call."""

    code = grpc.StatusCode.PERMISSION_DENIED
    http_status = 403


class Unavailable(RelayqError):
    """A dependency (broker or database) is unavailable; retry with the same idempotency key."""

    code = grpc.StatusCode.UNAVAILABLE
    http_status = 503


class JobError(Exception):
    """The job failed.

    Raised by handlers. Whether another attempt can help is data on the error (``retryable``),
    not a subclass: bad input or a business rule is ``retryable=False`` and dead-letters at once;
    anything else (including any unexpected exception) is retried under the task's policy.
    ``retry_after`` (seconds) asks for at least that long before the next attempt (an HTTP
    ``Retry-After``), capped by the policy's ``max_delay_seconds``.
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        retryable: bool = True,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message or (self.__doc__ or "").strip().splitlines()[0])
        self.retryable = retryable
        self.retry_after = retry_after

    @classmethod
    def permanent(cls, message: str) -> JobError:
        """A failure no retry can fix (bad payload, business rule)."""
        return cls(message, retryable=False)
