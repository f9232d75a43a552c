"""A job's spans, read back from the span files the services write (OTLP JSON lines).

Each service process appends ``TracesData`` objects, one per line, to its own file under
``RELAYQ_TRACES_DIR`` (relayq_core/tracefile.py). :func:`job_trace` finds the spans that name
a job (``relayq.job_id``, or ``relayq.job_ids`` for a batch), takes every trace they belong to,
follows the span links of those spans to more traces (a replay's trace links back to the job's
first one), and returns the traces with their spans as trees.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

JOB_ID = "relayq.job_id"
JOB_IDS = "relayq.job_ids"
#: Span files: the current one of each process, and its rotated predecessor.
SUFFIXES = (".jsonl", ".jsonl.1")
_KINDS = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
_STATUS = {0: "unset", 1: "ok", 2: "error"}


class TraceError(Exception):
    """Why no trace can be shown (the message is the whole explanation)."""


class NoSpanFiles(TraceError):
    """The directory holds no span file."""


class JobNotFound(TraceError):
    """No span names the job."""


@dataclass(frozen=True)
class Event:
    """A span event (an ``exception`` recorded on a failed attempt, ...)."""

    name: str
    time_ns: int
    attributes: dict[str, Any]


@dataclass(frozen=True)
class Link:
    """A span link: this span follows from ``span_id`` in ``trace_id``."""

    trace_id: str
    span_id: str


@dataclass(frozen=True)
class Span:
    """One finished span, decoded from OTLP JSON."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    service: str
    kind: str
    start_ns: int
    end_ns: int
    status: str
    status_message: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    events: tuple[Event, ...] = ()
    links: tuple[Link, ...] = ()

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)

    def job_ids(self) -> set[str]:
        """The jobs this span names (none for most spans of a hop: they inherit the trace's)."""
        ids = set()
        if isinstance(self.attributes.get(JOB_ID), str):
            ids.add(self.attributes[JOB_ID])
        batch = self.attributes.get(JOB_IDS)
        if isinstance(batch, list):
            ids.update(str(i) for i in batch)
        return ids


@dataclass(frozen=True)
class Node:
    """A span in its trace's tree; ``depth`` 0 for a root (or a span whose parent was not
    exported: ``orphan``)."""

    span: Span
    depth: int
    orphan: bool = False


@dataclass(frozen=True)
class Trace:
    """One trace of the job: its spans depth-first, children by start time."""

    trace_id: str
    nodes: tuple[Node, ...]
    #: Traces this one's spans link to (a replay's: the job's original trace).
    links_to: tuple[str, ...] = ()

    @property
    def start_ns(self) -> int:
        return min(n.span.start_ns for n in self.nodes)

    @property
    def end_ns(self) -> int:
        return max(n.span.end_ns for n in self.nodes)


@dataclass(frozen=True)
class JobTrace:
    """Every trace of one job, oldest first."""

    job_id: str
    traces: tuple[Trace, ...]
    files: int


def span_files(directory: Path) -> list[Path]:
    """The span files under ``directory``, oldest first (a rotated file before its successor)."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.is_file() and p.name.endswith(SUFFIXES)]
    return sorted(found, key=lambda p: (p.stat().st_mtime, p.name))


def _value(raw: dict[str, Any]) -> Any:
    """An OTLP ``AnyValue`` as a Python value."""
    if "stringValue" in raw:
        return raw["stringValue"]
    if "intValue" in raw:
        return int(raw["intValue"])
    if "doubleValue" in raw:
        return float(raw["doubleValue"])
    if "boolValue" in raw:
        return bool(raw["boolValue"])
    if "arrayValue" in raw:
        return [_value(v) for v in raw["arrayValue"].get("values", [])]
    if "kvlistValue" in raw:
        return _attributes(raw["kvlistValue"].get("values", []))
    if "bytesValue" in raw:
        return raw["bytesValue"]
    return None


def _attributes(raw: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {a["key"]: _value(a.get("value", {})) for a in raw}


def decode_line(line: str) -> Iterator[Span]:
    """The spans of one line (one OTLP JSON ``TracesData``)."""
    data = json.loads(line)
    for resource_spans in data.get("resourceSpans", []):
        resource = _attributes(resource_spans.get("resource", {}).get("attributes", []))
        service = str(resource.get("service.name", "?"))
        for scope in resource_spans.get("scopeSpans", []):
            for raw in scope.get("spans", []):
                status = raw.get("status", {})
                yield Span(
                    trace_id=raw["traceId"],
                    span_id=raw["spanId"],
                    parent_span_id=raw.get("parentSpanId", ""),
                    name=raw.get("name", ""),
                    service=service,
                    kind=_KINDS.get(int(raw.get("kind", 0)), "unspecified"),
                    start_ns=int(raw.get("startTimeUnixNano", 0)),
                    end_ns=int(raw.get("endTimeUnixNano", 0)),
                    status=_STATUS.get(int(status.get("code", 0)), "unset"),
                    status_message=status.get("message", ""),
                    attributes=_attributes(raw.get("attributes", [])),
                    events=tuple(
                        Event(
                            e.get("name", ""),
                            int(e.get("timeUnixNano", 0)),
                            _attributes(e.get("attributes", [])),
                        )
                        for e in raw.get("events", [])
                    ),
                    links=tuple(
                        Link(link["traceId"], link.get("spanId", ""))
                        for link in raw.get("links", [])
                    ),
                )


def _spans(files: Iterable[Path], needles: set[str]) -> Iterator[Span]:
    """The spans of every line that mentions one of ``needles`` (a cheap filter before the
    JSON parse). A torn last line (a process killed mid-write) is skipped."""
    for path in files:
        try:
            handle = path.open(encoding="utf-8")
        except FileNotFoundError:  # rotated or pruned since it was listed
            continue
        with handle:
            for line in handle:
                if not any(n in line for n in needles):
                    continue
                try:
                    yield from decode_line(line)
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue


def _tree(spans: list[Span]) -> tuple[Node, ...]:
    """Depth-first order, children by start time; spans whose parent is absent are roots."""
    by_id = {s.span_id: s for s in spans}
    children: dict[str, list[Span]] = {}
    roots: list[Span] = []
    for span in spans:
        if span.parent_span_id and span.parent_span_id in by_id:
            children.setdefault(span.parent_span_id, []).append(span)
        else:
            roots.append(span)
    nodes: list[Node] = []

    def visit(span: Span, depth: int) -> None:
        nodes.append(Node(span, depth, orphan=depth == 0 and bool(span.parent_span_id)))
        for child in sorted(children.get(span.span_id, []), key=lambda s: s.start_ns):
            visit(child, depth + 1)

    for root in sorted(roots, key=lambda s: s.start_ns):
        visit(root, 0)
    return tuple(nodes)


def _without_other_jobs(spans: list[Span], job_id: str) -> list[Span]:
    """Drops the spans of a batch trace that name other jobs, and everything under them."""
    by_id = {s.span_id: s for s in spans}

    def foreign(span: Span, seen: int = 0) -> bool:
        while seen < 64:
            ids = span.job_ids()
            if ids:
                return job_id not in ids
            parent = by_id.get(span.parent_span_id)
            if parent is None:
                return False
            span, seen = parent, seen + 1
        return False

    return [s for s in spans if not foreign(s)]


def job_trace(directory: Path, job_id: str) -> JobTrace:
    """Every trace of ``job_id`` found in ``directory``'s span files. Raises
    :class:`NoSpanFiles` (no span files) or :class:`JobNotFound` (no span of the job)."""
    files = span_files(directory)
    if not files:
        raise NoSpanFiles(
            f"no span files in {directory} (is the stack up? services write spans there when "
            "RELAYQ_TRACES_DIR is set; --dir points elsewhere)"
        )
    own = [s for s in _spans(files, {job_id}) if job_id in s.job_ids()]
    if not own:
        raise JobNotFound(f"no span of job {job_id} in the {len(files)} span files in {directory}")
    trace_ids = {s.trace_id for s in own}
    todo = {link.trace_id for s in own for link in s.links} - trace_ids
    spans: dict[str, Span] = {}
    while True:
        trace_ids |= todo
        for span in _spans(files, trace_ids):
            if span.trace_id in trace_ids:
                spans[span.span_id] = span
        # a linked trace may link further (a job replayed twice links to its previous run)
        todo = {
            link.trace_id
            for s in spans.values()
            if job_id in s.job_ids()
            for link in s.links
            if link.trace_id not in trace_ids
        }
        if not todo:
            break
    by_trace: dict[str, list[Span]] = {}
    for span in spans.values():
        by_trace.setdefault(span.trace_id, []).append(span)
    traces = []
    for trace_id, members in by_trace.items():
        kept = _without_other_jobs(members, job_id)
        if not kept:
            continue
        links = sorted(
            {link.trace_id for s in kept for link in s.links if link.trace_id != trace_id}
        )
        traces.append(Trace(trace_id, _tree(kept), tuple(links)))
    traces.sort(key=lambda t: t.start_ns)
    return JobTrace(job_id, tuple(traces), len(files))
