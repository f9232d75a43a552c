"""What makes a dlq-svc request acceptable. Every refusal is an
:class:`~relayq_core.errors.InvalidArgument` whose message names the field and the allowed values.

Pure functions: the servicer calls them on decoded values, unit tests call them directly.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from dlq_svc.model import Cursor, DeadLetterReport, Filter, Reason, Selection, Status
from relayq_core.errors import InvalidArgument
from relayq_core.jobs import AttemptRecord, JsonObject

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_ID_LENGTH = 255
MAX_TEXT_LENGTH = 1000
MAX_ERROR_MESSAGE_CHARS = 16 * 1024
MAX_TRACEBACK_CHARS = 64 * 1024
MAX_ACTOR_LENGTH = 200
MAX_RETENTION_DAYS = 36500.0


def _allowed(values: type[Reason] | type[Status]) -> str:
    return ", ".join(f'"{v.value}"' for v in values)


def _quoted(value: str, most: int = 100) -> str:
    """The client's value, quoted in a refusal: bounded."""
    return f'"{value}"' if len(value) <= most else f'"{value[:most]}…" ({len(value)} characters)'


def parse_reason(value: str, field: str = "reason") -> Reason:
    """A :class:`Reason` from its string, or a refusal naming the allowed values."""
    try:
        return Reason(value)
    except ValueError:
        raise InvalidArgument(
            f"{field} {_quoted(value)} is not one of {_allowed(Reason)}"
        ) from None


def parse_status(value: str, field: str = "status") -> Status:
    """A :class:`Status` from its string, or a refusal naming the allowed values."""
    try:
        return Status(value)
    except ValueError:
        raise InvalidArgument(
            f"{field} {_quoted(value)} is not one of {_allowed(Status)}"
        ) from None


def _text(field: str, value: str, max_length: int = MAX_TEXT_LENGTH) -> str:
    if len(value) > max_length:
        raise InvalidArgument(f"{field} is {len(value)} characters long; the limit is {max_length}")
    if "\x00" in value:
        raise InvalidArgument(f"{field} must not contain NUL characters")
    return value


def _identifier(field: str, value: str) -> str:
    if not value:
        raise InvalidArgument(f"{field} is required")
    _text(field, value, MAX_ID_LENGTH)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise InvalidArgument(f"{field} must not contain control characters")
    return value


def make_filter(
    *,
    task: str = "",
    reason: str = "",
    status: str = "",
    since: datetime | None = None,
    until: datetime | None = None,
    error_contains: str = "",
) -> Filter:
    """A :class:`Filter` from request values; empty strings mean "not filtered"."""
    if since is not None and until is not None and since >= until:
        raise InvalidArgument(
            f"filter.since ({since.isoformat()}) must be before filter.until ({until.isoformat()})"
        )
    return Filter(
        task=_text("filter.task", task) or None,
        reason=parse_reason(reason, "filter.reason") if reason else None,
        status=parse_status(status, "filter.status") if status else None,
        since=since,
        until=until,
        error_contains=_text("filter.error_contains", error_contains) or None,
    )


def like_pattern(text: str) -> str:
    """An ILIKE pattern matching ``text`` anywhere, with ``%``, ``_`` and ``\\`` taken literally.

    The pattern is a query parameter, never SQL text: this only stops the user's characters
    from acting as wildcards.
    """
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def page_size(value: int) -> int:
    """The page size to use: 1..1000 as given, 0 means 50."""
    if value == 0:
        return DEFAULT_PAGE_SIZE
    if not 0 < value <= MAX_PAGE_SIZE:
        raise InvalidArgument(
            f"page_size must be from 1 to {MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE}), "
            f"not {value}"
        )
    return value


def encode_page_token(cursor: Cursor) -> str:
    """An opaque token for the page after ``cursor``."""
    raw = json.dumps({"t": cursor.dead_lettered_at.isoformat(), "id": cursor.job_id})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_page_token(token: str) -> Cursor | None:
    """The cursor in a token from :func:`encode_page_token`; None for "" (the first page)."""
    if not token:
        return None
    bad = InvalidArgument(
        "page_token is not valid: pass next_page_token from the previous reply unchanged"
    )
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        when = datetime.fromisoformat(data["t"])
        job_id = data["id"]
    # RecursionError: deeply nested JSON.
    except (binascii.Error, ValueError, TypeError, KeyError, RecursionError):
        raise bad from None
    # A forged id goes into a query: it must be text PostgreSQL can compare (no NUL).
    if not isinstance(job_id, str) or not job_id or "\x00" in job_id or when.tzinfo is None:
        raise bad
    return Cursor(when, job_id)


def selection(ids: Sequence[str], filter: Filter | None, *, max_ids: int, action: str) -> Selection:
    """What a replay or drop works on: ids (deduplicated, in order) or a filter of active entries.

    ``action`` ("replay", "drop") only shapes the messages.
    """
    if ids and filter is not None:
        raise InvalidArgument(f"give either ids or filter to {action}, not both")
    if not ids and filter is None:
        raise InvalidArgument(
            f"give ids or a filter to {action} (an empty filter selects every active entry)"
        )
    if filter is not None:
        if filter.status not in (None, Status.ACTIVE):
            raise InvalidArgument(
                f"a {action} filter selects active entries only: leave filter.status empty or "
                f'set it to "active", not "{filter.status}"'
            )
        return Selection(filter=replace(filter, status=Status.ACTIVE))
    if len(ids) > max_ids:
        raise InvalidArgument(
            f"at most {max_ids} ids per call, not {len(ids)}: use a filter, or split the list"
        )
    for job_id in ids:
        _identifier("ids", job_id)
    return Selection(ids=tuple(dict.fromkeys(ids)))


def entry_id(value: str) -> str:
    """The id of GetDeadLetter (a job id: the same rules as at report)."""
    return _identifier("id", value)


def drop_reason(reason: str) -> str:
    """The required reason of a drop, trimmed."""
    reason = _text("reason", reason.strip())
    if not reason:
        raise InvalidArgument("reason is required: say why these entries leave the active DLQ")
    return reason


def replay_note(note: str) -> str:
    """The optional note of a replay, trimmed."""
    return _text("reason", note.strip())


def rate_limit(rate_per_second: float) -> float | None:
    """Entries per second, or None for "no limit" (0)."""
    if not math.isfinite(rate_per_second) or rate_per_second < 0:
        raise InvalidArgument(
            f"rate_per_second must be 0 (no limit) or a positive number, not {rate_per_second}"
        )
    return rate_per_second or None


def retention(older_than_days: float) -> timedelta:
    """The purge's retention: a positive number of days (fractions allowed)."""
    if not math.isfinite(older_than_days) or not 0 < older_than_days <= MAX_RETENTION_DAYS:
        raise InvalidArgument(
            f"older_than_days must be more than 0 (and at most {MAX_RETENTION_DAYS:.0f}), "
            f"not {older_than_days}"
        )
    return timedelta(days=older_than_days)


def actor(value: str | None) -> str:
    """Who acted, from ``x-relayq-actor`` metadata: printable, bounded, "unknown" if absent."""
    cleaned = "".join(c for c in (value or "") if c.isprintable()).strip()
    return cleaned[:MAX_ACTOR_LENGTH] or "unknown"


def normalise_json(value: Any) -> Any:
    """Integral floats become ints (a Struct carries every number as a double).

    Ingest does the same, so a payload keeps the exact shape and fingerprint it was submitted
    with when a replay has to re-create the job in a purged ledger.
    """
    if isinstance(value, dict):
        return {k: normalise_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalise_json(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    return value


def _clip(text: str, max_length: int, *, keep_end: bool = False) -> str:
    """Descriptive text from a worker, made storable: no NULs (PostgreSQL refuses them), and
    bounded. A dead letter is never refused for its error text."""
    text = text.replace("\x00", "")
    if len(text) <= max_length:
        return text
    if keep_end:
        # The end of a Python traceback names the error; keep that part.
        return "…(truncated)\n" + text[-max_length:]
    return text[:max_length] + "…(truncated)"


def report(
    *,
    job_id: str,
    idempotency_key: str,
    task: str,
    queue: str,
    payload: JsonObject,
    reason: str,
    error_type: str,
    error_message: str,
    traceback: str,
    attempts: Sequence[AttemptRecord],
    trace_id: str,
    first_failed_at: datetime | None,
    dead_lettered_at: datetime | None,
    final_attempt: int,
    worker: str,
) -> DeadLetterReport:
    """A validated :class:`DeadLetterReport`; missing times and the key get their defaults.

    Strict on what identifies the job (ids, task, queue, reason, final attempt); lenient on the
    error text, which is clipped rather than refused so that no dead letter is lost to it.

    ``idempotency_key`` defaults to ``job_id`` (as at submit), ``dead_lettered_at`` to now,
    ``first_failed_at`` to the earliest attempt's start (else ``dead_lettered_at``).
    """
    _identifier("job_id", job_id)
    if final_attempt < 1:
        raise InvalidArgument(
            f"final_attempt must be 1 or more (the attempt that dead-lettered the job), "
            f"not {final_attempt}"
        )
    dead_at = dead_lettered_at or datetime.now(UTC)
    failed_at = first_failed_at or min((a.started_at for a in attempts), default=dead_at)
    return DeadLetterReport(
        job_id=job_id,
        idempotency_key=_identifier("idempotency_key", idempotency_key or job_id),
        task=_identifier("task", task),
        queue=_identifier("queue", queue),
        payload=normalise_json(payload),
        reason=parse_reason(reason),
        error_type=_clip(error_type, MAX_TEXT_LENGTH),
        error_message=_clip(error_message, MAX_ERROR_MESSAGE_CHARS),
        traceback=_clip(traceback, MAX_TRACEBACK_CHARS, keep_end=True),
        attempts=[
            replace(
                a,
                worker=_clip(a.worker, MAX_ACTOR_LENGTH),
                error_type=_clip(a.error_type, MAX_TEXT_LENGTH),
                error_message=_clip(a.error_message, MAX_TEXT_LENGTH),
            )
            for a in attempts
        ],
        trace_id=_clip(trace_id, 64),
        first_failed_at=failed_at,
        dead_lettered_at=dead_at,
        final_attempt=final_attempt,
        worker=_clip(worker, MAX_ACTOR_LENGTH),
    )
