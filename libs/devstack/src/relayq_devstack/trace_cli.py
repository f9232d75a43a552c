"""``relayq-trace JOB_ID``: a job's whole trace as a waterfall, from the local span files.

One line per span, indented under its parent: its offset from the start of its trace, its
duration, a bar showing both, the service, the status, and the attributes that matter on call
(attempt, outcome, error type, dead-letter reason, replay). Span events (a failed attempt's
exception) follow their span. A replay's trace comes after the job's first one, with the trace
it links back to. ``--json`` prints the same as data (shape: docs/observability.md, "Tracing").

Exit status: 0 shown; 1 no span of that job; 2 no span files (or bad arguments).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from relayq_devstack.config import resolve_traces_dir
from relayq_devstack.traces import (
    JOB_ID,
    JOB_IDS,
    JobTrace,
    NoSpanFiles,
    Span,
    Trace,
    TraceError,
    job_trace,
)

EXIT_OK, EXIT_NOT_FOUND, EXIT_NO_FILES = 0, 1, 2
#: The JSON output's shape version; bumped only by a change that breaks its readers.
JSON_VERSION = 1
BAR_WIDTH = 32
#: Attributes shown on a span's line, in this order, with their short labels.
KEY_ATTRIBUTES = {
    "relayq.attempt": "attempt",
    "relayq.outcome": "outcome",
    "error.type": "error",
    "relayq.dlq_reason": "dlq_reason",
    "relayq.retry_in_seconds": "retry_in_s",
    "relayq.deferred": "deferred",
    "relayq.duplicate": "duplicate",
    "relayq.replay_of_trace_id": "replay_of",
    "relayq.replay_actor": "actor",
    "rpc.grpc.status_code": "grpc_code",
}


def _ms(ns: int) -> float:
    return round(ns / 1e6, 3)


def _when(ns: int) -> str:
    moment = datetime.fromtimestamp(ns / 1e9, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _duration(ns: int) -> str:
    if ns >= 1_000_000_000:
        return f"{ns / 1e9:.2f}s"
    return f"{ns / 1e6:.1f}ms"


def _bar(start: int, end: int, t0: int, total: int, width: int = BAR_WIDTH) -> str:
    """``start``..``end`` on a ``width``-cell scale of ``total`` ns from ``t0`` (at least one
    cell, so a short span still shows where it is)."""
    total = max(total, 1)
    first = min(width - 1, (start - t0) * width // total)
    last = max(first + 1, min(width, -(-(end - t0) * width // total)))
    return "." * first + "#" * (last - first) + "." * (width - last)


def key_attributes(span: Span, job_id: str) -> list[str]:
    """``label=value`` for the attributes worth a glance, plus the batch a span covers."""
    shown = [
        f"{label}={span.attributes[name]}"
        for name, label in KEY_ATTRIBUTES.items()
        if name in span.attributes
    ]
    batch = span.attributes.get(JOB_IDS)
    if isinstance(batch, list):
        shown.append(f"batch_of={len(batch)}")
    elif span.attributes.get(JOB_ID) not in (None, job_id):
        shown.append(f"job_id={span.attributes[JOB_ID]}")
    return shown


def _event_text(name: str, attributes: dict[str, Any]) -> str:
    if name == "exception":
        message = str(attributes.get("exception.message", "")).splitlines()
        return f"{attributes.get('exception.type', '?')}: {message[0] if message else ''}"
    return " ".join(f"{k}={v}" for k, v in attributes.items())


def attempts(result: JobTrace) -> list[dict[str, Any]]:
    """The job's attempts as its spans record them (``relayq.attempt`` with an outcome), in
    order: number, outcome, error type, dead-letter reason, and where the span is."""
    found = []
    for trace in result.traces:
        for node in trace.nodes:
            a = node.span.attributes
            if "relayq.attempt" in a and "relayq.outcome" in a and a.get(JOB_ID) == result.job_id:
                found.append(
                    {
                        "attempt": a["relayq.attempt"],
                        "outcome": a["relayq.outcome"],
                        "error_type": a.get("error.type"),
                        "dlq_reason": a.get("relayq.dlq_reason"),
                        "trace_id": node.span.trace_id,
                        "span_id": node.span.span_id,
                        "start_ns": node.span.start_ns,
                    }
                )
    found.sort(key=lambda f: f["start_ns"])
    for f in found:
        del f["start_ns"]
    return found


def render(result: JobTrace, width: int = BAR_WIDTH) -> str:
    """The waterfall as text."""
    spans = sum(len(t.nodes) for t in result.traces)
    lines = [f"job {result.job_id}: {len(result.traces)} trace(s), {spans} spans"]
    runs = attempts(result)
    if runs:
        lines.append(
            "attempts: "
            + ", ".join(
                f"#{r['attempt']} {r['outcome']}"
                + (f" ({r['dlq_reason']})" if r["dlq_reason"] else "")
                for r in runs
            )
        )
    for number, trace in enumerate(result.traces, start=1):
        lines.append("")
        lines.extend(_render_trace(number, trace, result.job_id, width))
    return "\n".join(lines) + "\n"


def _render_trace(number: int, trace: Trace, job_id: str, width: int) -> list[str]:
    t0, total = trace.start_ns, trace.end_ns - trace.start_ns
    head = f"trace {number} {trace.trace_id}  started {_when(t0)}  lasted {_duration(total)}"
    lines = [head]
    for target in trace.links_to:
        lines.append(f"  links to trace {target} (the run this one replays)")
    rows: list[tuple[str, str, str, str]] = []
    extra: dict[int, list[str]] = {}
    for node in trace.nodes:
        span = node.span
        name = "  " * node.depth + span.name + (" (parent not exported)" if node.orphan else "")
        timing = (
            f"+{_duration(span.start_ns - t0):>8} {_duration(span.duration_ns):>8} "
            f"|{_bar(span.start_ns, span.end_ns, t0, total, width)}|"
        )
        status = {"error": "ERROR", "ok": "OK"}.get(span.status, "-").ljust(5)
        rows.append(
            (timing, name, span.service, status + " " + " ".join(key_attributes(span, job_id)))
        )
        notes = [
            f"! {_duration(e.time_ns - t0):>8}  {e.name}: {_event_text(e.name, e.attributes)}"
            for e in span.events
        ]
        notes += [f"-> link to trace {link.trace_id}" for link in span.links]
        if notes:
            extra[len(rows) - 1] = notes
    name_width = max((len(r[1]) for r in rows), default=0)
    service_width = max((len(r[2]) for r in rows), default=0)
    for i, (timing, name, service, tail) in enumerate(rows):
        line = f"  {timing} {name.ljust(name_width)}  {service.ljust(service_width)}  {tail}"
        lines.append(line.rstrip())
        pad = " " * (len(timing) + 3)
        for note in extra.get(i, []):
            indent = " " * (len(name) - len(name.lstrip()) + 2)
            lines.append(f"  {pad}{indent}{note}")
    return lines


def as_json(result: JobTrace) -> dict[str, Any]:
    """The stable JSON shape (version :data:`JSON_VERSION`, docs/observability.md)."""
    traces = []
    for trace in result.traces:
        t0 = trace.start_ns
        traces.append(
            {
                "trace_id": trace.trace_id,
                "start": _when(t0),
                "duration_ms": _ms(trace.end_ns - t0),
                "links_to": list(trace.links_to),
                "spans": [
                    {
                        "span_id": n.span.span_id,
                        "parent_span_id": n.span.parent_span_id or None,
                        "depth": n.depth,
                        "name": n.span.name,
                        "service": n.span.service,
                        "kind": n.span.kind,
                        "start": _when(n.span.start_ns),
                        "offset_ms": _ms(n.span.start_ns - t0),
                        "duration_ms": _ms(n.span.duration_ns),
                        "status": n.span.status,
                        "status_message": n.span.status_message,
                        "attributes": n.span.attributes,
                        "events": [
                            {
                                "name": e.name,
                                "offset_ms": _ms(e.time_ns - t0),
                                "attributes": e.attributes,
                            }
                            for e in n.span.events
                        ],
                        "links": [
                            {"trace_id": link.trace_id, "span_id": link.span_id}
                            for link in n.span.links
                        ],
                    }
                    for n in trace.nodes
                ],
            }
        )
    return {
        "version": JSON_VERSION,
        "job_id": result.job_id,
        "attempts": attempts(result),
        "traces": traces,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relayq-trace",
        description="Print a job's trace (every hop, attempt, dead letter and replay) as a "
        "waterfall, from the span files the local stack's services write.",
    )
    parser.add_argument("job_id", help="the job's id (dlq-tool show prints this command)")
    parser.add_argument(
        "--dir",
        type=Path,
        help="span files' directory (default: $RELAYQ_TRACES_DIR, else <state dir>/traces, "
        "the local stack's)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON (a stable shape)")
    parser.add_argument(
        "--width", type=int, default=BAR_WIDTH, help=f"bar width (default {BAR_WIDTH})"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point."""
    args = _parser().parse_args(argv)
    directory = args.dir or resolve_traces_dir()
    try:
        result = job_trace(directory, args.job_id)
    except TraceError as exc:
        sys.stderr.write(f"relayq-trace: {exc}\n")
        return EXIT_NO_FILES if isinstance(exc, NoSpanFiles) else EXIT_NOT_FOUND
    if args.json:
        sys.stdout.write(json.dumps(as_json(result), indent=2) + "\n")
    else:
        sys.stdout.write(render(result, max(8, args.width)))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
