"""The run report, in exactly the JSON shape ``ghz -O json`` writes.

The reference is ghz's ``runner/reporter.go`` (``Report``, ``Options``, ``LatencyDistribution``,
``Bucket``, ``ResultDetail``, ``Finalize``, ``latencies``, ``histogram``) and the status
spelling of ``runner/stats_handler.go`` (grpc-go's ``codes.Code.String()``). What follows from
it, and is kept here on purpose:

- durations (``total``, ``average``, ``fastest``, ``slowest``, latencies, option durations) are
  Go ``time.Duration`` values: integer nanoseconds;
- ``date`` is RFC 3339 to the second, ``details[].timestamp`` RFC 3339 with nanoseconds (Go's
  ``time.Time`` JSON), both in local time (``Z`` when the offset is zero);
- ``statusCodeDistribution`` is keyed by grpc-go's code names (``OK``, ``Unavailable``,
  ``InvalidArgument``, ``Canceled``...), ``errorDistribution`` by the Go error text
  ``rpc error: code = <Code> desc = <message>``;
- ``average`` and ``rps`` count every call; ``fastest``, ``slowest``, the latency distribution
  and the histogram only the successful ones (so histogram counts add up to the OK count), and
  with no successful call those two are ``null``;
- a percentile is the sorted OK latency at rank ``int(p/100 * n)``, one lower when that product
  is whole; the histogram has 11 marks from fastest to slowest in 10 equal steps (seconds);
- with ``-z`` ghz sets the request count to MaxInt32, so ``options.total`` shows 2147483647.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc

PERCENTILES = (10, 25, 50, 75, 90, 95, 99)
HISTOGRAM_BUCKETS = 10
MAX_INT32 = 2**31 - 1
# ghz keeps at most this many per-call details (runner/reporter.go, maxResult).
MAX_DETAILS = 1_000_000

# grpc-go's codes.Code.String(): the names ghz puts in statusCodeDistribution.
GO_CODE_NAMES: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}


class CallError(Exception):
    """A call that did not end OK, described as grpc-go would (``status.Error(...).Error()``)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        self.details = details
        super().__init__(go_error_text(code, details))

    @property
    def status(self) -> str:
        """The grpc-go name of the code (``Unavailable``)."""
        return GO_CODE_NAMES[self.code]


def go_error_text(code: grpc.StatusCode, details: str) -> str:
    """``rpc error: code = Unavailable desc = ...``, grpc-go's text of a status error."""
    return f"rpc error: code = {GO_CODE_NAMES[code]} desc = {details}"


def status_of(exception: BaseException | None) -> tuple[str, str]:
    """``(status, error text)`` of a finished call: ``("OK", "")`` on success.

    An exception that is not a gRPC status (a client-side bug) counts as ``Unknown``, which is
    what grpc-go's ``status.Convert`` makes of a plain error.
    """
    if exception is None:
        return "OK", ""
    if isinstance(exception, CallError):
        return exception.status, str(exception)
    if isinstance(exception, grpc.RpcError) and isinstance(exception, grpc.Call):
        code = exception.code()
        return GO_CODE_NAMES[code], go_error_text(code, exception.details() or "")
    return "Unknown", go_error_text(grpc.StatusCode.UNKNOWN, str(exception) or repr(exception))


@dataclass(frozen=True)
class CallResult:
    """One finished call: when it ended (Unix ns), how long it took (ns), and how it ended."""

    end_ns: int
    latency_ns: int
    status: str = "OK"
    error: str = ""


@dataclass
class RunOptions:
    """The run's settings, named and typed as ghz's ``Options`` (what ``options`` shows)."""

    call: str
    host: str
    insecure: bool = True
    total: int = 0
    concurrency: int = 0
    rps: int = 0
    connections: int = 1
    duration_ns: int = 0
    timeout_ns: int = 20 * 10**9
    dial_timeout_ns: int = 10 * 10**9
    data: Any = None
    metadata: Mapping[str, str] | None = None
    cpus: int = 1
    name: str = ""
    skip_first: int = 0

    def to_json(self) -> dict[str, Any]:
        """The ``options`` object, key for key as ghz marshals it (``omitempty`` honoured)."""
        out: dict[str, Any] = {}

        def put(key: str, value: Any, omitempty: bool) -> None:
            if omitempty and not value:
                return
            out[key] = value

        put("call", self.call, True)
        put("host", self.host, True)
        put("insecure", self.insecure, False)
        put("rps", self.rps, True)
        # Load and concurrency schedules: this tool runs the constant ones only.
        put("load-schedule", "const", False)
        for key in ("load-start", "load-end", "load-step"):
            put(key, 0, False)
        put("load-step-duration", 0, False)
        put("load-max-duration", 0, False)
        put("concurrency", self.concurrency, True)
        put("concurrency-schedule", "const", False)
        for key in ("concurrency-start", "concurrency-end", "concurrency-step"):
            put(key, 0, False)
        put("concurrency-step-duration", 0, False)
        put("concurrency-max-duration", 0, False)
        put("total", MAX_INT32 if self.duration_ns else self.total, True)
        put("connections", self.connections, True)
        put("duration", self.duration_ns, True)
        put("timeout", self.timeout_ns, True)
        put("dial-timeout", self.dial_timeout_ns, True)
        put("data", self.data, True)
        put("binary", False, False)
        put("metadata", dict(self.metadata) if self.metadata else None, True)
        put("CPUs", self.cpus, False)
        put("name", self.name, True)
        put("skipFirst", self.skip_first, True)
        return out


def go_rfc3339(moment: datetime) -> str:
    """Go's ``time.RFC3339`` layout: seconds, local offset, ``Z`` for UTC."""
    text = moment.replace(microsecond=0).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def go_rfc3339_nano(unix_ns: int) -> str:
    """Go's ``time.Time`` JSON (``RFC3339Nano``): nanoseconds with trailing zeros trimmed."""
    seconds, nanos = divmod(unix_ns, 1_000_000_000)
    base = go_rfc3339(datetime.fromtimestamp(seconds, UTC).astimezone())
    stamp, zone = (base[:-1], "Z") if base.endswith("Z") else (base[:-6], base[-6:])
    fraction = f"{nanos:09d}".rstrip("0")
    return f"{stamp}.{fraction}{zone}" if fraction else f"{stamp}{zone}"


def latency_distribution(ok_sorted_ns: Sequence[int]) -> list[dict[str, int]]:
    """ghz's ``latencies()``: the percentile ranks it uses, zeroed entries where latency is 0."""
    n = len(ok_sorted_ns)
    out = []
    for p in PERCENTILES:
        rank = p / 100 * n
        index = int(rank)
        if rank == index:
            index -= 1
        value = ok_sorted_ns[max(index, 0)]
        out.append(
            {"percentage": p, "latency": value} if value > 0 else {"percentage": 0, "latency": 0}
        )
    return out


def histogram(ok_sorted_ns: Sequence[int]) -> list[dict[str, Any]]:
    """ghz's ``histogram()``: 11 marks (seconds) from fastest to slowest, counts, frequencies."""
    seconds = [ns / 1e9 for ns in ok_sorted_ns]
    fastest, slowest = seconds[0], seconds[-1]
    step = (slowest - fastest) / HISTOGRAM_BUCKETS
    marks = [fastest + step * i for i in range(HISTOGRAM_BUCKETS)] + [slowest]
    counts = [0] * len(marks)
    bucket = 0
    i = 0
    while i < len(seconds):
        if seconds[i] <= marks[bucket]:
            counts[bucket] += 1
            i += 1
        elif bucket < len(marks) - 1:
            bucket += 1
        else:  # float rounding: the slowest compares above its own mark; it belongs there
            counts[bucket] += 1
            i += 1
    return [
        {"mark": mark, "count": count, "frequency": count / len(seconds)}
        for mark, count in zip(marks, counts, strict=True)
    ]


@dataclass
class ReportInput:
    """Everything :func:`build_report` needs besides the results."""

    options: RunOptions
    total_ns: int
    end_reason: str = "normal"
    date: datetime = field(default_factory=lambda: datetime.now(UTC).astimezone())
    name: str = ""
    tags: Mapping[str, str] | None = None


def build_report(results: Iterable[CallResult], meta: ReportInput) -> dict[str, Any]:
    """The report as a JSON-ready dict, in ghz's field order."""
    details = list(results)
    count = len(details)
    status_dist: dict[str, int] = {}
    error_dist: dict[str, int] = {}
    total_latency = 0
    ok: list[int] = []
    for result in details:
        status_dist[result.status] = status_dist.get(result.status, 0) + 1
        total_latency += result.latency_ns
        if result.error:
            error_dist[result.error] = error_dist.get(result.error, 0) + 1
        else:
            ok.append(result.latency_ns)
    ok.sort()
    report: dict[str, Any] = {"date": go_rfc3339(meta.date)}
    if meta.name:
        report["name"] = meta.name
    if meta.end_reason:
        report["endReason"] = meta.end_reason
    report["options"] = meta.options.to_json()
    report |= {
        "count": count,
        "total": meta.total_ns,
        "average": int(total_latency / count) if count else 0,
        "fastest": ok[0] if ok else 0,
        "slowest": ok[-1] if ok else 0,
        "rps": count / (meta.total_ns / 1e9) if count and meta.total_ns else 0.0,
        "errorDistribution": error_dist,
        "statusCodeDistribution": status_dist,
        "latencyDistribution": latency_distribution(ok) if ok else None,
        "histogram": histogram(ok) if ok else None,
        "details": [
            {
                "timestamp": go_rfc3339_nano(r.end_ns),
                "latency": r.latency_ns,
                "error": r.error,
                "status": r.status,
            }
            for r in details[:MAX_DETAILS]
        ]
        if count
        else None,
    }
    if meta.tags:
        report["tags"] = dict(meta.tags)
    return report


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.2f} ms"


def summary(report: Mapping[str, Any]) -> str:
    """ghz's text summary of a report (the default ``-O summary`` output)."""
    lines = [
        "",
        "Summary:",
        f"  Count:\t{report['count']}",
        f"  Total:\t{_ms(report['total'])}",
        f"  Slowest:\t{_ms(report['slowest'])}",
        f"  Fastest:\t{_ms(report['fastest'])}",
        f"  Average:\t{_ms(report['average'])}",
        f"  Requests/sec:\t{report['rps']:.2f}",
    ]
    if report.get("histogram"):
        lines += ["", "Response time histogram:"]
        top = max(b["count"] for b in report["histogram"]) or 1
        for bucket in report["histogram"]:
            bar = "∎" * math.ceil(40 * bucket["count"] / top) if bucket["count"] else ""
            lines.append(f"  {bucket['mark'] * 1000:.3f} [{bucket['count']}]\t|{bar}")
    if report.get("latencyDistribution"):
        lines += ["", "Latency distribution:"]
        for entry in report["latencyDistribution"]:
            if entry["percentage"]:
                lines.append(f"  {entry['percentage']} % in {_ms(entry['latency'])} ")
    lines += ["", "Status code distribution:"]
    for status, n in sorted(report["statusCodeDistribution"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  [{status}]\t{n} responses")
    if report["errorDistribution"]:
        lines += ["", "Error distribution:"]
        for error, n in sorted(report["errorDistribution"].items(), key=lambda kv: -kv[1]):
            lines.append(f"  [{n}]\t{error}")
    return "\n".join(lines) + "\n"
