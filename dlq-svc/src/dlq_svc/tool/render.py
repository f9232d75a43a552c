"""What dlq-tool prints: aligned tables and labelled fields for people, one JSON document for
scripts. Pure functions from messages to text, so tests call them directly.

Times are shown in UTC (ISO-8601, ``Z``) with an age, the form that pastes into ``--since``.
Text that came from a job (errors, tracebacks, payload strings) has its control characters
escaped, so a hostile error message cannot drive the operator's terminal.
"""

from __future__ import annotations

import json
import shlex
import unicodedata
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from google.protobuf.message import Message

from relayq.v1 import dead_letter_pb2, job_pb2

ERROR_WIDTH = 60
MIN_ERROR_WIDTH = 20
NONE = "-"


def _escape(ch: str) -> str:
    return ch if unicodedata.category(ch) != "Cc" else f"\\x{ord(ch):02x}"


def safe(text: str, *, multiline: bool = False) -> str:
    """``text`` with control characters escaped (newlines kept when ``multiline``)."""
    if multiline:
        return "\n".join("".join(map(_escape, line)) for line in text.splitlines())
    return "".join(map(_escape, text))


def one_line(text: str, width: int | None = None) -> str:
    """``text`` on one line, whitespace collapsed, cut to ``width`` with an ellipsis."""
    flat = safe(" ".join(text.split()))
    if width is not None and len(flat) > width:
        return flat[: width - 1] + "…"
    return flat


def timestamp(message: Message, field: str) -> datetime | None:
    """A set ``Timestamp`` field as an aware UTC datetime; None when unset."""
    if not message.HasField(field):
        return None
    value: timestamp_pb2.Timestamp = getattr(message, field)
    return value.ToDatetime(tzinfo=UTC)


def format_time(when: datetime | None) -> str:
    """``2024-05-01T03:12:44Z`` (whole seconds), or ``-``."""
    if when is None:
        return NONE
    return when.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def format_span(seconds: float) -> str:
    """A span in the two largest units: ``45s``, ``12m05s``, ``3h12m``, ``2d04h``."""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_age(when: datetime | None, now: datetime) -> str:
    """How long ago ``when`` was (``3h12m``), or ``-``."""
    return NONE if when is None else format_span((now - when).total_seconds())


def format_duration(seconds: float) -> str:
    """An attempt's run time: ``850ms``, ``1.24s``, ``2m03s``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.2f}s"
    return format_span(seconds)


def error_text(error_type: str, error_message: str) -> str:
    """``Type: message``, or whichever of the two there is."""
    return ": ".join(part for part in (error_type, error_message) if part)


def plural(count: int) -> str:
    """``entry`` or ``entries``."""
    return "entry" if count == 1 else "entries"


def format_days(days: float) -> str:
    """``1 day``, ``30 days``, ``0.5 days``."""
    return f"{days:g} day" if days == 1 else f"{days:g} days"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns padded to their widest cell (the last column is not padded)."""
    grid = [list(headers), *([one_line(cell) for cell in row] for row in rows)]
    widths = [max(len(row[i]) for row in grid) for i in range(len(headers))]
    lines = []
    for row in grid:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths[:-1], strict=True)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


# -- tables ------------------------------------------------------------------------------------

ENTRY_COLUMNS = ("ID", "TASK", "REASON", "STATUS", "AGE", "COUNT", "ERROR")


def entry_row(
    entry: dead_letter_pb2.DeadLetter, now: datetime, error_width: int = ERROR_WIDTH
) -> list[str]:
    """One line of ``list``: id, task, reason, status, dead-lettered age, count, short error."""
    return [
        entry.id,
        entry.task,
        entry.reason,
        entry.status,
        format_age(timestamp(entry, "dead_lettered_at"), now),
        str(entry.dead_letter_count),
        one_line(error_text(entry.error_type, entry.error_message), error_width) or NONE,
    ]


def entries_table(
    entries: Sequence[dead_letter_pb2.DeadLetter], now: datetime, *, width: int | None = None
) -> str:
    """The ``list`` output. On a terminal ``width`` is its width: the error column takes what
    the others leave (at least :data:`MIN_ERROR_WIDTH`); otherwise it is cut at
    :data:`ERROR_WIDTH`."""
    if not entries:
        return "No dead letters match."
    error_width = ERROR_WIDTH
    if width is not None:
        rows = [entry_row(e, now) for e in entries]
        used = sum(
            max(len(row[i]) for row in [list(ENTRY_COLUMNS), *rows]) + 2
            for i in range(len(ENTRY_COLUMNS) - 1)
        )
        error_width = max(MIN_ERROR_WIDTH, width - used)
    return table(ENTRY_COLUMNS, (entry_row(e, now, error_width) for e in entries))


def _block(title: str, body: str) -> str:
    lines = body.splitlines() or [NONE]
    return "\n".join([f"{title}:", *(f"  {line}" for line in lines)])


def payload_json(payload: struct_pb2.Struct) -> str:
    """The payload as indented JSON."""
    data = _tidy(json_format.MessageToDict(payload))
    return json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True)


def attempts_table(attempts: Sequence[job_pb2.Attempt]) -> str:
    """Every attempt: number, worker, start, duration, outcome, countdown, error."""
    if not attempts:
        return "(none recorded)"
    rows = [
        [
            str(a.number),
            a.worker or NONE,
            format_time(timestamp(a, "started_at")),
            format_duration(a.duration_seconds),
            a.outcome or NONE,
            f"{a.countdown_seconds:g}s" if a.countdown_seconds else NONE,
            error_text(a.error_type, a.error_message) or NONE,
        ]
        for a in attempts
    ]
    headers = ("#", "WORKER", "STARTED", "DURATION", "OUTCOME", "COUNTDOWN", "ERROR")
    return table(headers, rows)


def audit_table(audit: Sequence[dead_letter_pb2.AuditRecord]) -> str:
    """The audit trail, oldest first as the server keeps it."""
    if not audit:
        return "(empty)"
    rows = [
        [
            format_time(timestamp(r, "at")),
            r.action,
            r.actor or NONE,
            r.reason or NONE,
            r.result or NONE,
        ]
        for r in audit
    ]
    return table(("AT", "ACTION", "ACTOR", "REASON", "RESULT"), rows)


def entry_detail(entry: dead_letter_pb2.DeadLetter, now: datetime) -> str:
    """The ``show`` output: every field of one entry."""

    def when(field: str) -> str:
        at = timestamp(entry, field)
        return NONE if at is None else f"{format_time(at)} ({format_age(at, now)} ago)"

    fields = [
        ("id", entry.id),
        ("job_id", entry.job_id),
        ("idempotency_key", entry.idempotency_key),
        ("task", entry.task),
        ("queue", entry.queue),
        ("status", entry.status),
        ("reason", entry.reason),
        ("dead_letter_count", str(entry.dead_letter_count)),
        ("first_failed_at", when("first_failed_at")),
        ("dead_lettered_at", when("dead_lettered_at")),
        ("updated_at", when("updated_at")),
        ("error_type", entry.error_type),
        ("error_message", entry.error_message),
        ("trace_id", entry.trace_id),
        ("trace_url", entry.trace_url),
        # the job's whole trace (every attempt, this dead letter, replays) from the span files
        ("trace_command", f"relayq-trace {shlex.quote(entry.job_id)}"),
    ]
    width = max(len(name) for name, _ in fields)
    head = "\n".join(f"{name.ljust(width)}  {one_line(value) or NONE}" for name, value in fields)
    sections = [
        head,
        _block("payload", payload_json(entry.payload)),
        _block("error", safe(error_text(entry.error_type, entry.error_message), multiline=True)),
        _block("traceback", safe(entry.traceback.rstrip(), multiline=True)),
        _block(f"attempts ({len(entry.attempts)})", attempts_table(entry.attempts)),
        _block(f"audit ({len(entry.audit)})", audit_table(entry.audit)),
    ]
    return "\n\n".join(sections)


def stats_text(stats: dead_letter_pb2.GetDeadLetterStatsResponse, now: datetime) -> str:
    """The ``stats`` output."""
    oldest = timestamp(stats, "oldest_active_at")
    lines = [f"active  {stats.active}"]
    if oldest is not None:
        lines.append(
            f"oldest  {stats.oldest_active_id}  dead-lettered {format_time(oldest)}"
            f"  ({format_age(oldest, now)} ago)"
        )
    sections = ["\n".join(lines)]
    for title, counts in (
        ("active by task", stats.by_task),
        ("active by reason", stats.by_reason),
        ("all by status", stats.by_status),
    ):
        body = table(("KEY", "COUNT"), ([c.key, str(c.count)] for c in counts)) if counts else ""
        sections.append(_block(title, body or "(none)"))
    return "\n\n".join(sections)


def replay_text(
    results: Sequence[dead_letter_pb2.ReplayDeadLettersResponse], *, dry_run: bool
) -> str:
    """The ``replay`` output: what would happen (dry run), or a summary and every skip."""
    if dry_run:
        if not results:
            return "Nothing to replay."
        would = sum(r.result == "would_replay" for r in results)
        rows = ([r.id, r.job_id, r.result] for r in results)
        return (
            table(("ID", "JOB_ID", "RESULT"), rows) + f"\n\nWould replay {would} of {len(results)}."
        )
    replayed = [r for r in results if r.result == "replayed"]
    others = [r for r in results if r.result != "replayed"]
    if not results:
        return "Nothing to replay."
    if len(results) == 1 and replayed:
        return f"Replayed {replayed[0].id} (job {replayed[0].job_id})."
    text = f"Replayed {len(replayed)} of {len(results)}."
    if others:
        text += "\n" + table(("ID", "RESULT"), ([r.id, r.result] for r in others))
    return text


def drop_text(reply: dead_letter_pb2.DropDeadLettersResponse, *, asked: int | None) -> str:
    """The ``drop`` output; ``asked`` is how many ids were given (None for a filter)."""
    verb = "Would drop" if reply.dry_run else "Dropped"
    text = f"{verb} {reply.count} {plural(reply.count)}."
    if asked is not None and reply.count < asked:
        text += f" {asked - reply.count} not dropped (not active)."
    if reply.ids and (reply.dry_run or len(reply.ids) <= 50):
        text += "\n" + "\n".join(f"  {one_line(i)}" for i in reply.ids)
    return text


def purge_text(reply: dead_letter_pb2.PurgeDeadLettersResponse, days: float) -> str:
    """The ``purge`` output."""
    verb = "Would purge" if reply.dry_run else "Purged"
    return f"{verb} {reply.count} dropped {plural(reply.count)} older than {format_days(days)}."


# -- JSON --------------------------------------------------------------------------------------


def _tidy(value: Any) -> Any:
    # A Struct keeps every number as a double; show 3 rather than 3.0 where that is exact.
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _tidy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_tidy(v) for v in value]
    return value


def message_dict(message: Message) -> dict[str, Any]:
    """A message as JSON-ready data: proto field names, every field, int64 as numbers."""
    data = json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        unquote_int64_if_possible=True,
    )
    if isinstance(message, dead_letter_pb2.DeadLetter) and "payload" in data:
        data["payload"] = _tidy(data["payload"])
    return data


def replay_result_dict(result: dead_letter_pb2.ReplayDeadLettersResponse) -> dict[str, Any]:
    """One entry's replay outcome for ``--json`` (progress counters left out)."""
    return {"id": result.id, "job_id": result.job_id, "result": result.result}


def dumps(document: Any) -> str:
    """One JSON document, indented, UTF-8 kept."""
    return json.dumps(document, indent=2, ensure_ascii=False)
