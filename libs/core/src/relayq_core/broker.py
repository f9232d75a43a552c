"""The Celery settings that producers (ingest, dlq replays) and consumers (workers) must share.

Kept as plain data so the core does not import Celery; each side builds its own app from it.
"""

from __future__ import annotations

from typing import Any

#: How long Redis keeps an unacknowledged message before handing it to another worker.
#: It must exceed the longest retry countdown plus the longest run (docs/retries.md).
VISIBILITY_TIMEOUT_SECONDS = 3600


def celery_config(redis_url: str, default_queue: str) -> dict[str, Any]:
    """Celery settings for a relayq app talking to ``redis_url``."""
    return {
        "broker_url": redis_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT_SECONDS},
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
