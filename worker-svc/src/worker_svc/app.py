"""The Celery application: Redis broker, ``acks_late``, JSON only, no result backend.

Settings are read once here, when the worker process imports the app.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, signals

from relayq_core.broker import VISIBILITY_TIMEOUT_SECONDS, celery_config, transport_options
from relayq_core.catalog import load_catalog
from relayq_core.gctune import freeze_startup_heap
from relayq_core.logging import configure_logging
from relayq_core.retry import load_policies
from relayq_core.telemetry import configure_tracing, shutdown_tracing
from worker_svc.config import WorkerSettings

settings = WorkerSettings()
catalog = load_catalog(settings.catalog_path)
policies = load_policies(settings.retry_policy_path)

app = Celery("relayq-worker")
app.conf.update(celery_config(settings.redis_url, catalog.default_queue))
app.conf.worker_prefetch_multiplier = settings.prefetch_multiplier
# kombu's Redis transport with the fix that keeps a node alive across Redis restarts, and
# without ack emulation: the ledger and the reconciler redeliver what a dead node held
# (worker_svc/transport.py).
app.conf.broker_transport = "worker_svc.transport:Transport"
app.conf.broker_transport_options = {**transport_options(), "ack_emulation": False}
# relayq counts a job's failures itself (the retry policy, in the message); Celery's own limit
# (3 by default, even when retry() is given max_retries=None) must never cut a job short.
app.conf.task_annotations = {"*": {"max_retries": None}}
app.autodiscover_tasks(["worker_svc"], related_name="tasks", force=True)
# Import the tasks now, so the registry is complete before the catalogue check at start-up.
import worker_svc.tasks  # noqa: E402,F401


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    """Celery calls this instead of configuring its own logging (main process)."""
    configure_logging(
        "worker-svc",
        level=settings.log_level,
        json=settings.log_json,
        redact_fields=settings.redact_field_names,
    )


@signals.worker_process_init.connect
def _init_child(**_: Any) -> None:
    """Each prefork child sets up its own logging and tracing after the fork."""
    configure_logging(
        "worker-svc",
        level=settings.log_level,
        json=settings.log_json,
        redact_fields=settings.redact_field_names,
    )
    configure_tracing(
        "worker-svc",
        export=settings.otlp_endpoint is not None,
        grpc_client=True,
        celery=True,
    )
    freeze_startup_heap()  # keep full collections out of jobs' latency (relayq_core/gctune.py)


@signals.worker_ready.connect
def _node_ready(**_: Any) -> None:
    """The node's main process (the consumer) has started: the same for it."""
    freeze_startup_heap()


@signals.worker_process_shutdown.connect
def _flush_child(**_: Any) -> None:
    """Spans still in the child's export batch leave with it."""
    shutdown_tracing()


def missing_handlers() -> list[str]:
    """Catalogue tasks this worker has no task for (it must not start with any)."""
    return sorted(name for name in catalog.tasks if name not in app.tasks)


def configuration_problems() -> list[str]:
    """Everything that must stop the worker at start-up, each naming where it is."""
    problems = []
    missing = missing_handlers()
    if missing:
        problems.append(f"{settings.catalog_path}: no task in this worker for {missing}")
    unknown = sorted(set(policies.tasks) - set(catalog.tasks))
    if unknown:
        problems.append(
            f"{settings.retry_policy_path}: tasks: {unknown} are not in {settings.catalog_path}"
        )
    longest = policies.longest_countdown()
    if longest >= VISIBILITY_TIMEOUT_SECONDS / 2:
        problems.append(
            f"{settings.retry_policy_path}: a retry may wait {longest:.0f} s, too close to the "
            f"broker's visibility timeout ({VISIBILITY_TIMEOUT_SECONDS} s): waiting messages "
            "would be redelivered"
        )
    return problems
