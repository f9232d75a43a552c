"""dlq-svc metrics, served on ``RELAYQ_DLQ_METRICS_PORT``. DLQ depth itself is a gauge of the
metrics gateway (``relayq_dlq_depth``), computed from GetDeadLetterStats at scrape time."""

from __future__ import annotations

from prometheus_client import Counter, start_http_server

REPORTS = Counter(
    "relayq_dlq_reports_total",
    "Dead letters reported by workers and stored (duplicates of a stored report excluded)",
    ["task", "reason"],
)
REPLAYS = Counter(
    "relayq_dlq_replays_total",
    "Entries handled by replays: replayed, or skipped (with why, coarsely)",
    ["task", "outcome"],
)
DROPS = Counter("relayq_dlq_drops_total", "Entries dropped from the active DLQ", ["task"])


def replay_outcome(result: str) -> str:
    """A low-cardinality label for a replay result ("skipped: not active" -> "skipped")."""
    return result.split(":", 1)[0].strip().replace(" ", "_") or "unknown"


def serve(port: int, host: str) -> None:
    """Serves the default registry on ``host:port`` from a background thread."""
    start_http_server(port, addr=host)
