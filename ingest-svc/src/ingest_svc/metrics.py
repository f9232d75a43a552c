"""ingest-svc metrics, served on the HTTP port at ``/metrics`` (OpenMetrics, with the submit
histogram's exemplars, when the scraper asks for it, as Prometheus does).

Every submit call, through either door, is timed in ``relayq_ingest_submit_seconds{transport}``
(its exemplar carries the call's ``trace_id``: from a slow bucket on the dashboard to the trace),
and a refused one is counted in ``relayq_ingest_refusals_total{transport, code}`` with the gRPC
status name (``UNAVAILABLE``) or the HTTP status (``503``). IngestRefusing reads the server-side
codes; the client-side ones (bad input, unknown key) are there to tell them apart.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relayq_core.catalog import Catalog
from relayq_core.grpc_server import Continuation, Handler, rebuild_handler, wraps_behaviour
from relayq_core.telemetry import current_trace_id

JOBS_SUBMITTED = Counter(
    "relayq_jobs_submitted_total",
    "Submissions by outcome: accepted, duplicate, rejected (gRPC and HTTP)",
    ["task", "queue", "outcome"],
)
OUTBOX_JOBS = Gauge(
    "relayq_ingest_outbox_jobs",
    "Jobs accepted (in the ledger) whose message this ingest has not yet handed to the broker",
)
PUBLISHED = Counter(
    "relayq_ingest_published_total",
    "Jobs whose message this ingest's outbox handed to the broker",
)
PUBLISH_FAILURES = Counter(
    "relayq_ingest_publish_failures_total",
    "Pushes of a batch of messages to the broker that failed or timed out (then retried)",
)
PUBLISH_SECONDS = Histogram(
    "relayq_ingest_publish_seconds",
    "Time one pipelined push of a batch of messages to the broker took, failed ones included",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
OUTBOX_DROPPED = Counter(
    "relayq_ingest_outbox_dropped_total",
    "Jobs the outbox stopped trying to publish, left to the reconciler's never-published rule, "
    "by reason: max_age, backlog_full, shutdown",
    ["reason"],
)


REFUSALS = Counter(
    "relayq_ingest_refusals_total",
    "Submit calls ingest refused, by transport (grpc, http) and code: the gRPC status name "
    "(grpc) or the HTTP status (http); per-item errors of a batch are not calls and not counted",
    ["transport", "code"],
)
SUBMIT_SECONDS = Histogram(
    "relayq_ingest_submit_seconds",
    "Time ingest took to answer one submit call (SubmitJob, SubmitJobs, POST /v1/jobs), "
    "refusals included; exemplars carry the call's trace_id",
    ["transport"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

#: Server-side refusals (IngestRefusing's codes), by door.
SERVER_SIDE_CODES = {
    "grpc": ("UNAVAILABLE", "INTERNAL", "UNKNOWN", "DEADLINE_EXCEEDED", "DATA_LOSS"),
    "http": ("500", "502", "503", "504"),
}
# Their series exist at 0 from start-up: a series born at 1 shows no increase to rate() and
# increase(), so the first refusals after a restart would go unseen.
for _transport, _codes in SERVER_SIDE_CODES.items():
    SUBMIT_SECONDS.labels(transport=_transport)
    for _code in _codes:
        REFUSALS.labels(transport=_transport, code=_code)

#: The gRPC methods that submit jobs (the calls IngestRefusing and IngestSlow are about).
SUBMIT_METHODS = frozenset(
    {"/relayq.v1.IngestService/SubmitJob", "/relayq.v1.IngestService/SubmitJobs"}
)


def observe_submit(transport: str, seconds: float) -> None:
    """Times one submit call; inside a traced call the exemplar names its trace."""
    trace_id = current_trace_id()
    SUBMIT_SECONDS.labels(transport=transport).observe(
        seconds, exemplar={"trace_id": trace_id} if trace_id else None
    )


class SubmitMetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Times every submit RPC and counts the refused ones by their status code (an exception
    that is no abort ends the call as ``UNKNOWN``, as grpcio answers it)."""

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if method not in SUBMIT_METHODS or not wraps_behaviour(handler):
            return handler
        assert handler is not None
        inner: Any = handler.unary_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            try:
                return await inner(request, context)
            except BaseException:
                code = context.code() or grpc.StatusCode.UNKNOWN
                REFUSALS.labels(transport="grpc", code=code.name).inc()
                raise
            finally:
                observe_submit("grpc", time.perf_counter() - started)

        return rebuild_handler(handler, unary=unary)


class SubmitMetricsMiddleware:
    """The same for ``POST /v1/jobs``: every answer of 400 and above is a refusal, by status (an
    exception nobody handled is the 500 Starlette answers)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (
            scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/v1/jobs"
        ):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            if status >= 400:
                REFUSALS.labels(transport="http", code=str(status)).inc()
            observe_submit("http", time.perf_counter() - started)


def task_label(catalog: Catalog, task: str) -> str:
    """The task as a label: only catalogue names, so clients cannot grow the label set."""
    return task if task in catalog.tasks else "unknown"


def queue_label(catalog: Catalog, queue: str) -> str:
    """The queue as a label, bounded the same way."""
    return queue if queue in catalog.queues() else "unknown"


def count_rejected(catalog: Catalog, task: str, queue: str) -> None:
    """Counts a submission refused before it reached the ledger (bad input)."""
    JOBS_SUBMITTED.labels(
        task=task_label(catalog, task),
        queue=queue_label(catalog, queue or "unknown"),
        outcome="rejected",
    ).inc()
