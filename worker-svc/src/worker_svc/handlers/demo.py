"""The demo tasks' handlers."""

from __future__ import annotations

from typing import Any

from relayq_core.errors import InvalidArgument
from worker_svc.context import JobContext, JsonObject


async def echo(ctx: JobContext, payload: JsonObject) -> Any:
    """``demo.echo``: returns its payload."""
    return payload


async def slow(ctx: JobContext, payload: JsonObject) -> Any:
    """``demo.slow``: takes ``payload.ms`` milliseconds, like a slow downstream call.

    The wait is a real round trip to a slow server (Postgres ``pg_sleep``), standing in for an
    HTTP or SMTP call; workers never pause themselves.
    """
    ms = payload.get("ms", 0)
    if not isinstance(ms, int) or isinstance(ms, bool) or not 0 <= ms <= 60_000:
        raise InvalidArgument("demo.slow needs payload.ms, an integer from 0 to 60000")
    await ctx.conn.execute("SELECT pg_sleep($1)", ms / 1000)
    return {"slept_ms": ms}
