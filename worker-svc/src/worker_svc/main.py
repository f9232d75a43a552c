"""``relayq-worker``: a Celery worker node with relayq's settings."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
from pathlib import Path

from relayq_core.catalog import CatalogError
from relayq_core.logging import configure_logging, get_logger
from relayq_core.retry import PolicyError


def _metrics_dir(configured: Path | None) -> Path:
    """A fresh directory for this node's multiprocess metric files (stale files would add up)."""
    if configured is None:
        return Path(tempfile.mkdtemp(prefix="relayq-worker-metrics-"))
    shutil.rmtree(configured, ignore_errors=True)
    configured.mkdir(parents=True)
    return configured


def main() -> None:
    """Starts ``celery worker`` for the catalogue's queues; refuses to start misconfigured."""
    from worker_svc import config

    # prometheus_client decides at import time whether values live in shared files: the
    # directory must be in the environment before any relayq module imports it.
    metrics_dir = _metrics_dir(config.load().metrics_dir)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    try:
        from worker_svc.app import app, catalog, configuration_problems, settings
    except (CatalogError, PolicyError) as exc:
        sys.exit(f"relayq-worker: {exc}")

    configure_logging(
        "worker-svc",
        level=settings.log_level,
        json=settings.log_json,
        redact_fields=settings.redact_field_names,
    )
    log = get_logger(__name__)
    if settings.unsafe_skip_claim:
        log.error(
            "worker_unsafe_skip_claim",
            detail="RELAYQ_WORKER_UNSAFE_SKIP_CLAIM is set: deliveries skip the job's lock and "
            "claim, and duplicates apply effects twice. This exists for tests only.",
        )
    problems = configuration_problems()
    if problems:
        for problem in problems:
            log.error("worker_misconfigured", problem=problem)
        sys.exit("relayq-worker: " + "; ".join(problems))
    from worker_svc.schema import migrate

    asyncio.run(migrate(settings.database_url))
    from worker_svc.metrics import serve, use_directory

    use_directory(metrics_dir)
    if settings.metrics_port:
        try:
            serve(settings.metrics_port, settings.metrics_host)
        except OSError as exc:  # on by default: a second node on this host finds 9200 taken
            problem = (
                f"cannot serve /metrics on {settings.metrics_host}:{settings.metrics_port} "
                f"({exc.strerror}): give each node its own RELAYQ_WORKER_METRICS_PORT (0: none)"
            )
            log.error("worker_misconfigured", problem=problem)
            sys.exit("relayq-worker: " + problem)
    queues = settings.queues or ",".join(catalog.queues())
    if settings.stall_seconds:
        from worker_svc.watchdog import install

        install(settings, queues.split(","))
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
    # What app.worker_main() does, keeping the worker's exit status, which it drops: a
    # supervisor must see that a node stopped because of a failure (e.g. the watchdog's).
    from celery.bin.celery import celery as celery_cli

    celery_cli.params[0].default = app
    sys.exit(celery_cli.main(args=argv, standalone_mode=False) or 0)
