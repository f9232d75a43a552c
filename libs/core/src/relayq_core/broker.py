"""The Celery settings that producers (ingest, dlq replays, the reconciler) and consumers
(workers) must share.

Kept as plain data so the core does not import Celery; each side builds its own app from it.
The connection settings are chosen for Redis restarts (docs/reliability.md): every client
gives up on a dead socket within seconds instead of waiting forever, reconnects without a
limit, and the workers' long-lived BRPOP and pub/sub connections are health-checked.
"""

from __future__ import annotations

from typing import Any

#: kombu's redelivery of unacknowledged messages, which only exists with its ack emulation:
#: relayq's workers run without it (worker_svc/transport.py), and the ledger's lease and the
#: reconciler bring back what a dead worker held. Kept at kombu's usual hour for any consumer
#: that turns the emulation back on.
VISIBILITY_TIMEOUT_SECONDS = 3600

#: Seconds between PINGs on idle broker connections (redis-py), and kombu's check of the
#: workers' BRPOP and pub/sub connections: a consumer on a half-open connection reconnects
#: within about ``1 + 2 * HEALTH_CHECK_INTERVAL_SECONDS`` (kombu >= 5.7 checks BRPOP too).
HEALTH_CHECK_INTERVAL_SECONDS = 10

#: A synchronous broker command (a publish, an ack) waits at most this long on a socket that
#: no longer answers; kombu's BRPOP itself blocks for 1 s, well inside it.
SOCKET_TIMEOUT_SECONDS = 10.0
SOCKET_CONNECT_TIMEOUT_SECONDS = 5.0


def transport_options() -> dict[str, Any]:
    """kombu's Redis transport options (shared by publishers and consumers)."""
    return {
        "visibility_timeout": VISIBILITY_TIMEOUT_SECONDS,
        "health_check_interval": HEALTH_CHECK_INTERVAL_SECONDS,
        "socket_timeout": SOCKET_TIMEOUT_SECONDS,
        "socket_connect_timeout": SOCKET_CONNECT_TIMEOUT_SECONDS,
        # TCP keepalive notices a peer that vanished without closing (host loss); it does not
        # keep proxies from reaping idle connections, which the health checks above do.
        "socket_keepalive": True,
        "retry_on_timeout": True,
    }


def celery_config(redis_url: str, default_queue: str) -> dict[str, Any]:
    """Celery settings for a relayq app talking to ``redis_url``."""
    return {
        "broker_url": redis_url,
        # Reconnect forever, at start-up and after a loss: a worker that gives up on the
        # broker is a worker that silently stops consuming until someone restarts it.
        "broker_connection_retry_on_startup": True,
        "broker_connection_retry": True,
        "broker_connection_max_retries": None,
        "broker_connection_timeout": SOCKET_CONNECT_TIMEOUT_SECONDS,
        "broker_transport_options": transport_options(),
        # Jobs running when the broker connection drops keep running and record their outcome
        # in the ledger; their acks are lost with the connection, so their messages come back
        # later as duplicates that the worker's claim turns into no-ops. Cancelling them
        # (Celery 6's default) would instead interrupt work that can still finish.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        # Outcomes live in the Postgres job ledger, not in a Celery result backend.
        "task_ignore_result": True,
        "result_backend": None,
        "task_default_queue": default_queue,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_hijack_root_logger": False,
        "enable_utc": True,
    }
