"""OpenTelemetry set-up, once per process.

Export is configured by the standard ``OTEL_*`` variables (read by the SDK itself): with
``OTEL_EXPORTER_OTLP_ENDPOINT`` set, spans go to that OTLP/gRPC receiver in batches; without it,
spans are still created (trace ids reach logs and the job ledger) but not exported.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


def configure_tracing(service: str, *, export: bool) -> TracerProvider:
    """Installs a tracer provider for ``service`` and returns it (idempotent per process).

    ``export`` comes from settings (:attr:`CommonSettings.otlp_endpoint` is set); the exporter
    itself reads the standard ``OTEL_EXPORTER_OTLP_*`` variables.
    """
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if export:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


def current_trace_id() -> str:
    """The current span's trace id as 32 hex digits, or "" outside a span."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""
