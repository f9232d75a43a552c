"""``relayq-worker``: a Celery worker node with relayq's settings."""

from __future__ import annotations

import asyncio
import sys

from relayq_core.logging import configure_logging, get_logger


def main() -> None:
    """Starts ``celery worker`` for the catalogue's queues; refuses to start with tasks missing."""
    from worker_svc.app import app, catalog, missing_handlers, settings

    configure_logging("worker-svc", level=settings.log_level, json=settings.log_json)
    log = get_logger(__name__)
    missing = missing_handlers()
    catalog_path = settings.catalog_path
    if missing:
        log.error("worker_misconfigured", missing_tasks=missing, catalog=str(catalog_path))
        sys.exit(
            f"relayq-worker: no task for catalogue entries {missing} ({settings.catalog_path})"
        )
    from worker_svc.schema import migrate

    asyncio.run(migrate(settings.database_url))
    queues = settings.queues or ",".join(catalog.queues())
    argv = [
        "worker",
        f"--concurrency={settings.concurrency}",
        f"--queues={queues}",
        f"--loglevel={settings.log_level.upper()}",
        "--pool=prefork",
        "--without-gossip",
        "--without-mingle",
    ]
    if settings.task_events:
        argv.append("--task-events")
    if settings.node_name:
        argv.append(f"--hostname={settings.node_name}")
    app.worker_main(argv)
