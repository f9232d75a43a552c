"""What makes a submission acceptable; shared by the gRPC and HTTP front doors.

Every refusal is an :class:`~relayq_core.errors.InvalidArgument` (or ResourceExhausted for
size) whose message says which field is wrong and why, so a client can fix the call.
"""

from __future__ import annotations

import math
import re
import uuid
from dataclasses import dataclass
from typing import Any

from relayq_core.catalog import Catalog
from relayq_core.errors import InvalidArgument
from relayq_core.jobs import JobSpec, canonical_json

# fullmatch, not match with "$": "$" also matches before a trailing newline.
JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class Limits:
    """Size limits on a submission."""

    max_payload_bytes: int = 256 * 1024
    max_payload_depth: int = 32


def _storable(value: str, what: str) -> None:
    """Refuses text PostgreSQL cannot store: NUL (in text or jsonb) and lone surrogates (not
    UTF-8; JSON's ``"\\ud800"`` escape makes one)."""
    if "\x00" in value:
        raise InvalidArgument(f"{what} must not contain NUL characters (\\u0000)")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgument(f"{what} must be valid Unicode (no lone surrogates)") from None


def _depth_and_normalise(value: Any, depth: int, limit: int) -> Any:
    """Checks nesting depth, refuses non-finite numbers and text PostgreSQL cannot store, and
    turns integral floats into ints.

    gRPC's Struct carries every number as a double; normalising makes ``{"n": 1}`` the same
    payload whether it came over gRPC or HTTP (same fingerprint, same handler input).
    """
    if depth > limit:
        raise InvalidArgument(f"payload is nested deeper than {limit} levels")
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidArgument("payload keys must be strings")
            _storable(k, "payload keys")
            out[k] = _depth_and_normalise(v, depth + 1, limit)
        return out
    if isinstance(value, list):
        return [_depth_and_normalise(v, depth + 1, limit) for v in value]
    if isinstance(value, str):
        _storable(value, "payload strings")
        return value
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgument("payload numbers must be finite (no NaN or Infinity)")
        if value.is_integer() and abs(value) <= 2**53:
            return int(value)
        return value
    raise InvalidArgument(f"payload holds a {type(value).__name__}, which is not JSON")


def _check_text(name: str, value: str, max_length: int) -> None:
    if len(value) > max_length:
        raise InvalidArgument(f"{name} is {len(value)} characters long; the limit is {max_length}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise InvalidArgument(f"{name} must not contain control characters")
    _storable(value, name)


def validate_submission(
    catalog: Catalog,
    limits: Limits,
    *,
    task: str,
    payload: Any,
    job_id: str = "",
    idempotency_key: str = "",
    queue: str = "",
    trace_id: str = "",
) -> JobSpec:
    """Checks one submission and fills in defaults; raises InvalidArgument naming the problem."""
    if not task:
        raise InvalidArgument('task is required, e.g. "demo.echo"')
    spec = catalog.tasks.get(task)
    if spec is None:
        _check_text("task", task, 200)
        known = ", ".join(sorted(catalog.tasks))
        raise InvalidArgument(f'task "{task}" is not a registered task; known tasks: {known}')
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise InvalidArgument(f"payload must be a JSON object, not {_json_kind(payload)}")
    payload = _depth_and_normalise(payload, 1, limits.max_payload_depth)
    size = len(canonical_json(payload).encode("utf-8", errors="surrogatepass"))
    if size > limits.max_payload_bytes:
        raise InvalidArgument(
            f"payload is {size} bytes as JSON; the limit is {limits.max_payload_bytes}"
        )
    if job_id:
        if not JOB_ID.fullmatch(job_id):
            raise InvalidArgument(
                "job_id must be 1-128 characters of letters, digits and . _ : - "
                "starting with a letter or digit"
            )
    else:
        job_id = str(uuid.uuid4())
    if idempotency_key:
        _check_text("idempotency_key", idempotency_key, MAX_KEY_LENGTH)
    else:
        idempotency_key = job_id
    if queue:
        if queue not in catalog.queues():
            _check_text("queue", queue, 200)
            raise InvalidArgument(
                f'queue "{queue[:100]}" is not served; known queues: {", ".join(catalog.queues())}'
            )
    else:
        queue = spec.queue
    return JobSpec(
        job_id=job_id,
        idempotency_key=idempotency_key,
        task=task,
        queue=queue,
        payload=payload,
        trace_id=trace_id,
    )


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__


def validate_job_id(job_id: str) -> str:
    """Checks a job id given to GetJob."""
    if not job_id:
        raise InvalidArgument("job_id is required")
    if not JOB_ID.fullmatch(job_id):
        raise InvalidArgument("job_id is not a valid job id")
    return job_id
