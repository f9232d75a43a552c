"""Health checks: plain functions, and the same checks as data for ``stack.json``.

Every check answers a bool quickly (about a second at most) and never raises: "not yet" and
"broken" look the same to a poller, which decides on its own timeout.
"""

from __future__ import annotations

import subprocess
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Protocol

import grpc
import redis as redis_client
from grpc_health.v1 import health_pb2, health_pb2_grpc

from relayq_devstack.postgres import pg_binary

_CELERY_IMPORT = threading.Lock()
# Loopback servers must never be reached through a proxy from the developer's environment.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def grpc_healthy(address: str, timeout: float = 1.0) -> bool:
    """True if the standard gRPC health service at ``address`` reports the server SERVING."""
    channel = grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)])
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False
    finally:
        channel.close()


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """True if ``GET url`` answers 200."""
    try:
        with _NO_PROXY.open(url, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def celery_nodes(redis_url: str, timeout: float = 1.0) -> set[str]:
    """Names of the Celery workers answering a broadcast ping on this broker."""
    with _CELERY_IMPORT:
        # Heavy import, only for processes that ping. Celery builds its top-level names lazily,
        # and two threads doing that at once get an ImportError: serialise the first access.
        from celery import Celery

    app = Celery("relayq-devstack-ping", broker=redis_url, set_as_current=False)
    try:
        replies: list[dict[str, Any]] = app.control.ping(timeout=timeout) or []
        return {name for reply in replies for name in reply}
    except Exception:  # any broker trouble means "not ready"
        return set()
    finally:
        app.close()


def celery_workers_ready(
    redis_url: str, expected: int, *, name_prefix: str = "", timeout: float = 1.0
) -> bool:
    """True if at least ``expected`` workers (whose node name starts with ``name_prefix``)
    answer a ping."""
    nodes = celery_nodes(redis_url, timeout)
    return sum(1 for n in nodes if n.startswith(name_prefix)) >= expected


def redis_ping(url: str, timeout: float = 1.0) -> bool:
    """True if Redis at ``url`` answers PING (false while it is still loading its data)."""
    client = redis_client.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout
    )
    try:
        return bool(client.ping())
    except redis_client.RedisError:
        return False
    finally:
        client.close()


def postgres_ready(url: str, timeout: float = 2.0) -> bool:
    """True if PostgreSQL at ``url`` accepts connections (``pg_isready``)."""
    try:
        done = subprocess.run(
            [str(pg_binary("pg_isready")), "-q", "-d", url, "-t", str(max(1, round(timeout)))],
            check=False,
            timeout=timeout + 1,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


class HealthCheck(Protocol):
    """A check that can be run, described, and stored in ``stack.json``."""

    kind: ClassVar[str]

    def __call__(self) -> bool: ...
    def describe(self) -> str: ...


@dataclass(frozen=True)
class GrpcHealth:
    """gRPC health service of the server at ``address`` says SERVING."""

    address: str
    kind: ClassVar[str] = "grpc"

    def __call__(self) -> bool:
        return grpc_healthy(self.address)

    def describe(self) -> str:
        return f"grpc {self.address}"


@dataclass(frozen=True)
class HttpOk:
    """``GET url`` answers 200."""

    url: str
    kind: ClassVar[str] = "http"

    def __call__(self) -> bool:
        return http_ok(self.url)

    def describe(self) -> str:
        return self.url


@dataclass(frozen=True)
class CeleryWorkers:
    """At least ``expected`` workers named ``name_prefix...`` answer a ping on the broker."""

    redis_url: str
    expected: int = 1
    name_prefix: str = ""
    kind: ClassVar[str] = "celery"

    def __call__(self) -> bool:
        return celery_workers_ready(self.redis_url, self.expected, name_prefix=self.name_prefix)

    def describe(self) -> str:
        return f"celery ping {self.name_prefix or 'workers'}*"


@dataclass(frozen=True)
class RedisPing:
    """Redis answers PING."""

    url: str
    kind: ClassVar[str] = "redis"

    def __call__(self) -> bool:
        return redis_ping(self.url)

    def describe(self) -> str:
        return self.url


@dataclass(frozen=True)
class PostgresReady:
    """PostgreSQL accepts connections."""

    url: str
    kind: ClassVar[str] = "postgres"

    def __call__(self) -> bool:
        return postgres_ready(self.url)

    def describe(self) -> str:
        return self.url


@dataclass(frozen=True)
class AllOf:
    """Every check passes (ingest: gRPC and HTTP)."""

    checks: tuple[HealthCheck, ...]
    kind: ClassVar[str] = "all"

    def __call__(self) -> bool:
        return all(check() for check in self.checks)

    def describe(self) -> str:
        return " + ".join(check.describe() for check in self.checks)


_KINDS: dict[str, type[Any]] = {
    cls.kind: cls for cls in (GrpcHealth, HttpOk, CeleryWorkers, RedisPing, PostgresReady, AllOf)
}


def check_to_json(check: HealthCheck) -> dict[str, Any]:
    """A JSON-ready description of ``check``."""
    if isinstance(check, AllOf):
        return {"kind": AllOf.kind, "checks": [check_to_json(c) for c in check.checks]}
    data: dict[str, Any] = {f.name: getattr(check, f.name) for f in fields(check)}  # type: ignore[arg-type]
    return {"kind": check.kind, **data}


def check_from_json(data: dict[str, Any]) -> HealthCheck:
    """The check described by :func:`check_to_json`'s output."""
    args = {k: v for k, v in data.items() if k != "kind"}
    if data["kind"] == AllOf.kind:
        return AllOf(tuple(check_from_json(c) for c in args["checks"]))
    check: HealthCheck = _KINDS[data["kind"]](**args)
    return check
