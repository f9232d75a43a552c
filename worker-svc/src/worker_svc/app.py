"""The Celery application: Redis broker, ``acks_late``, JSON only, no result backend.

Settings are read once per process (:func:`worker_svc.config.load`). The tasks
(:mod:`worker_svc.tasks`) do not import this module: they are Celery shared tasks, which the
app picks up when it imports them here, so the dependencies run one way only:
app -> tasks -> execute -> runner.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, signals

from relayq_core.broker import celery_config, transport_options
from relayq_core.gctune import freeze_startup_heap
from relayq_core.logging import configure_logging
from relayq_core.telemetry import configure_tracing, shutdown_tracing
from worker_svc import config, services

settings = config.load()
catalog = services.catalog()
policies = services.policies()


app = Celery("relayq-worker")
app.conf.update(celery_config(settings.redis_url, catalog.default_queue))
app.conf.worker_prefetch_multiplier = settings.prefetch_multiplier
# kombu's Redis transport with the fix that keeps a node alive across Redis restarts, and
# without ack emulation: the ledger and the reconciler redeliver what a dead node held
# (worker_svc/transport.py).
app.conf.broker_transport = "worker_svc.transport:Transport"
app.conf.broker_transport_options = {**transport_options(), "ack_emulation": False}
# A task Celery's hard time limit stopped (the last resort, below) is handed back, not
# acknowledged: its job's next delivery waits for the lease, then counts a worker loss.
app.conf.task_acks_on_timeout = False
# relayq counts a job's failures itself (the retry policy, in the ledger); Celery's own limit
# (3 by default, even when retry() is given max_retries=None) must never cut a job short.
# Celery's hard time limit is an opt-in last resort behind relayq's own (the runner's
# cancellation, then the supervisor, docs/retries.md), per task (hard_time_limit_seconds): the
# pool's parent kills a child that a C extension holds so tightly that neither could act. Off by
# default: every job then leaves a timer in its consumer for that long, cancelled but kept until
# it is due (about 0.5 KB each: ~95 MB per consumer at 500 jobs/s with a 380 s limit).
app.conf.task_annotations = {
    "*": {"max_retries": None},
    **{
        name: {"time_limit": policies.for_task(name).hard_time_limit_seconds}
        for name in catalog.tasks
        if policies.for_task(name).hard_time_limit_seconds
    },
}
# The tasks register themselves with the app as shared tasks; importing them completes the
# registry before the catalogue check at start-up.
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
        traces_dir=settings.traces_dir,
        traces_max_bytes=settings.traces_max_bytes,
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
    """Spans still in the child's export batch leave with it; its connections close."""
    services.shutdown()
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
    for name in sorted(catalog.tasks):
        policy = policies.for_task(name)
        floor = settings.lock_wait_seconds + policy.timeout_seconds + settings.kill_grace_seconds
        if policy.hard_time_limit_seconds and policy.hard_time_limit_seconds <= floor:
            problems.append(
                f"{settings.retry_policy_path}: {name}: hard_time_limit_seconds must exceed the "
                f"lock wait, timeout_seconds and the kill grace ({floor:g} s), or Celery would "
                "kill attempts relayq's own time limit is still handling"
            )
    unknown = sorted(set(policies.tasks) - set(catalog.tasks))
    if unknown:
        problems.append(
            f"{settings.retry_policy_path}: tasks: {unknown} are not in {settings.catalog_path}"
        )
    return problems
