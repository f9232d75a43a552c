"""structlog configured once per process: JSON lines, context bound through contextvars.

Every line written while a job is handled carries ``job_id`` and ``idempotency_key`` because the
code that handles a job binds them with :func:`job_context` before doing anything else.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import structlog
from opentelemetry import trace

from relayq_core.redaction import Redactor, field_names

_QUIET_LOGGERS = ("celery.worker.strategy", "celery.app.trace", "uvicorn.access")


def _add_trace_id(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Adds the current span's trace id, so a log line leads to its trace."""
    if "trace_id" not in event:
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            event["trace_id"] = format(ctx.trace_id, "032x")
    return event


def configure_logging(
    service: str, *, level: str = "info", json: bool = True, redact_fields: Iterable[str] = ()
) -> None:
    """Sets up structlog (and routes stdlib logging through it) for this process.

    Every line, relayq's and the libraries', passes a :class:`~relayq_core.redaction.Redactor`
    last: credentials (and ``redact_fields``, payload field names) never reach the output.
    """
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_trace_id,
    ]
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    redactor = Redactor(field_names(redact_fields))
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            redactor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # One write() per line: processes sharing a log file (a worker and its pool) never
        # interleave halves of lines.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries (celery, asyncpg, uvicorn) log through stdlib: render their lines the same way.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redactor,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # Celery's per-task lines ("received", "succeeded in ...: <result>") know the task id but not
    # the idempotency key, and would print results; relayq logs each job's events itself.
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
    structlog.contextvars.bind_contextvars(service=service)


def get_logger(name: str | None = None) -> Any:
    """A structlog logger; cheap, safe to call at import time (configures nothing)."""
    return structlog.get_logger(name)


@contextmanager
def job_context(job_id: str, idempotency_key: str, **fields: Any) -> Iterator[None]:
    """Binds the job's identity to every log line written inside the block."""
    tokens = structlog.contextvars.bind_contextvars(
        job_id=job_id, idempotency_key=idempotency_key, **fields
    )
    try:
        yield
    finally:
        structlog.contextvars.reset_contextvars(**tokens)
