"""OpenTelemetry set-up, once per process, and the instrumentation every hop needs.

Export is configured by the standard ``OTEL_*`` variables (read by the SDK itself: endpoint,
sampler, batch delays); with no OTLP endpoint set, spans are still made — trace ids reach the
logs, the job ledger and the DLQ — but not exported. One trace follows a job: the submit RPC
(gRPC server span) → the Celery publish (producer span; the context rides in the message
headers) → each attempt in a worker (consumer span; a retry is published from inside it, so the
next attempt continues the trace) → the worker's ReportDeadLetter call (gRPC client span) →
dlq-svc (gRPC server span).
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


def configure_tracing(
    service: str,
    *,
    export: bool,
    grpc_server: bool = False,
    grpc_client: bool = False,
    celery: bool = False,
) -> TracerProvider:
    """Installs a tracer provider for ``service`` and the instrumentations asked for.

    ``export`` comes from settings (:attr:`CommonSettings.otlp_endpoint` is set). Idempotent per
    process; call it after a fork (its batch exporter thread does not survive one).
    """
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if export:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
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
