"""OpenTelemetry set-up, once per process, and the instrumentation every hop needs.

Export is configured by the standard ``OTEL_*`` variables (read by the SDK itself: endpoint,
sampler, batch delays); with no OTLP endpoint set, spans are still made — trace ids reach the
logs, the job ledger and the DLQ — but not exported. One trace follows a job: the submit RPC
(gRPC server span) → the Celery publish (producer span; the context rides in the message
headers) → each attempt in a worker (consumer span; a retry is published from inside it, so the
next attempt continues the trace) → the worker's ReportDeadLetter call (gRPC client span) →
dlq-svc (gRPC server span).

With ``RELAYQ_TRACES_DIR`` set (the local stack sets it), finished spans are also written there
as OTLP JSON lines, one file per process (:mod:`relayq_core.tracefile`), which ``relayq-trace``
reads; both exports may be on at once. The spans that concern a job carry its id
(:data:`JOB_ID`, or :data:`JOB_IDS` for a batch): see docs/observability.md, "Tracing".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.util.types import AttributeValue

from relayq_core.settings import DEFAULT_TRACES_MAX_BYTES

#: How often finished spans are written to the span files (milliseconds).
FILE_EXPORT_DELAY_MS = 1000
#: The attribute naming the one job a span concerns.
JOB_ID = "relayq.job_id"
#: The attribute listing the jobs a span concerns when there are several (a batch).
JOB_IDS = "relayq.job_ids"


def configure_tracing(
    service: str,
    *,
    export: bool,
    traces_dir: Path | None = None,
    traces_max_bytes: int = DEFAULT_TRACES_MAX_BYTES,
    grpc_server: bool = False,
    grpc_client: bool = False,
    celery: bool = False,
) -> TracerProvider:
    """Installs a tracer provider for ``service`` and the instrumentations asked for.

    ``export`` comes from settings (:attr:`CommonSettings.otlp_endpoint` is set); ``traces_dir``
    and ``traces_max_bytes`` too (:attr:`CommonSettings.traces_dir`). Idempotent per process;
    call it after a fork (its batch exporter thread does not survive one).
    """
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if export:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if traces_dir is not None:
        from relayq_core.tracefile import ProcessSpanFile

        # A local write is cheap, and the person running relayq-trace wants what just happened:
        # batches leave every second (the OTLP exporter keeps the SDK's 5 s default).
        provider.add_span_processor(
            BatchSpanProcessor(
                ProcessSpanFile(traces_dir, service, traces_max_bytes),
                schedule_delay_millis=FILE_EXPORT_DELAY_MS,
            )
        )
    trace.set_tracer_provider(provider)
    if grpc_server:
        from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorServer

        GrpcAioInstrumentorServer().instrument()  # type: ignore[no-untyped-call]
    if grpc_client:
        from opentelemetry.instrumentation.grpc import (
            GrpcAioInstrumentorClient,
            GrpcInstrumentorClient,
        )

        GrpcInstrumentorClient().instrument()  # type: ignore[no-untyped-call]
        GrpcAioInstrumentorClient().instrument()  # type: ignore[no-untyped-call]
    if celery:
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        CeleryInstrumentor().instrument()  # type: ignore[no-untyped-call]
    return provider


def shutdown_tracing() -> None:
    """Flushes spans still waiting for export (a process about to exit)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()


def current_trace_id() -> str:
    """The current span's trace id as 32 hex digits, or "" outside a span."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


def job_attributes(job_ids: Sequence[str]) -> dict[str, AttributeValue]:
    """The attributes that tie a span to its jobs: :data:`JOB_ID` for one, :data:`JOB_IDS`
    (every id) for several; none for none."""
    if len(job_ids) == 1:
        return {JOB_ID: job_ids[0]}
    if job_ids:
        return {JOB_IDS: list(job_ids)}
    return {}


def tag_current_span(attributes: Mapping[str, AttributeValue]) -> None:
    """Adds ``attributes`` to the current span (nothing outside a recording span)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(attributes)
