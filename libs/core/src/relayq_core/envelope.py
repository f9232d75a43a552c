"""Celery task messages, built as kombu's Redis transport stores them, without Celery's producer.

Celery's ``send_task`` costs a few hundred microseconds of CPU a message on this kind of machine
(docs/benchmarks.md: signals, ``saferepr`` of the arguments, a kombu ``Producer`` and a Redis
client object per call), which made publishing the most expensive part of a submit. A relayq job
message has one fixed shape (protocol 2, JSON, no ETA, priority 0, keyword arguments only), so
ingest, replays and the reconciler encode it here and push a batch of them with one Redis
pipeline. A worker cannot tell the difference: ``tests/unit/test_envelope.py`` compares every
field with what ``send_task`` writes to a real Redis.

Two deliberate differences from Celery's defaults:

- ``kwargsrepr`` (what Flower and Celery's own logs display) names the job but leaves the
  payload out: payloads may hold personal data, and the ledger (``GetJob``, ``dlq-tool show``)
  shows them redacted.
- The trace context travels in the headers as the OpenTelemetry Celery instrumentation puts it
  there (``traceparent``), so the worker's spans continue the submit's trace.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from collections.abc import Mapping
from typing import Any

#: Celery's callbacks/errbacks/chain/chord slot of a protocol 2 body: a job has none.
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_dumps = json.JSONEncoder(ensure_ascii=True, separators=(", ", ": ")).encode


def origin() -> str:
    """Who published the message (Celery's ``gen<pid>@<host>``)."""
    return f"gen{os.getpid()}@{socket.gethostname()}"


def kwargs_repr(kwargs: Mapping[str, Any]) -> str:
    """The ``kwargsrepr`` header: the job's identity, never its payload."""
    shown = {k: v for k, v in kwargs.items() if k != "payload"}
    return repr({**shown, "payload": "…"}) if "payload" in kwargs else repr(shown)


def encode(
    task: str,
    task_id: str,
    queue: str,
    kwargs: Mapping[str, Any],
    *,
    reply_to: str,
    origin: str,
    trace_headers: Mapping[str, str] | None = None,
) -> bytes:
    """One message for ``task`` on ``queue``, ready to ``LPUSH`` onto the list named ``queue``.

    ``reply_to`` is the publisher's own id (Celery's ``app.thread_oid``; one per publisher), and
    ``trace_headers`` the W3C trace context to continue (``traceparent``, ``tracestate``).
    """
    body = _dumps([[], kwargs, _EMBED]).encode()
    headers: dict[str, Any] = {
        "lang": "py",
        "task": task,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": "()",
        "kwargsrepr": kwargs_repr(kwargs),
        "origin": origin,
        "ignore_result": None,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    if trace_headers:
        headers.update(trace_headers)
    message = {
        "body": base64.b64encode(body).decode("ascii"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "correlation_id": task_id,
            "reply_to": reply_to,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return _dumps(message).encode()


def decode(raw: bytes | str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A stored message's headers and keyword arguments (tests, tools)."""
    message = json.loads(raw)
    _, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    return message["headers"], kwargs
