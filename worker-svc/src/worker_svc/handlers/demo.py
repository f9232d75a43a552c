"""The demo tasks' handlers."""

from __future__ import annotations

import os
import signal
from typing import Any

from relayq_core.errors import JobError
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
        raise JobError.permanent("demo.slow needs payload.ms, an integer from 0 to 60000")
    await (await ctx.db()).execute("SELECT pg_sleep($1)", ms / 1000)
    return {"slept_ms": ms}


async def charge(ctx: JobContext, payload: JsonObject) -> Any:
    """``demo.charge``: records one charge, exactly once per idempotency key.

    The row is written through ``ctx.db()``, inside the transaction that also records the job's
    success: both commit or neither does, so no delivery, retry or replay can charge twice.
    ``hold_ms`` (optional) keeps the transaction open that long, so tests can overlap deliveries.
    """
    account = payload.get("account")
    amount = payload.get("amount_cents")
    hold_ms = payload.get("hold_ms", 0)
    if not isinstance(account, str) or not 0 < len(account) <= 64:
        raise JobError.permanent("demo.charge needs payload.account, a string of 1-64 characters")
    if not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount <= 10**9:
        raise JobError.permanent("demo.charge needs payload.amount_cents, an integer 1..1e9")
    if not isinstance(hold_ms, int) or not 0 <= hold_ms <= 10_000:
        raise JobError.permanent("demo.charge payload.hold_ms must be an integer 0..10000")
    # The key is the charge's primary key: a charge already recorded under it (its job's ledger
    # row was purged and the job replayed) is this charge, not a second one.
    db = await ctx.db()
    inserted = await db.fetchval(
        "INSERT INTO demo_charges (idempotency_key, job_id, account, amount_cents)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT (idempotency_key) DO NOTHING RETURNING true",
        ctx.idempotency_key,
        ctx.job_id,
        account,
        amount,
    )
    if hold_ms:
        await db.execute("SELECT pg_sleep($1)", hold_ms / 1000)
    if not inserted:
        return {"charged": amount, "account": account, "already_charged": True}
    return {"charged": amount, "account": account}


async def flaky(ctx: JobContext, payload: JsonObject) -> Any:
    """``demo.flaky``: fails its first ``payload.fail_times`` attempts, then succeeds."""
    fail_times = payload.get("fail_times", 1)
    if not isinstance(fail_times, int) or isinstance(fail_times, bool) or fail_times < 0:
        raise JobError.permanent("demo.flaky needs payload.fail_times, an integer >= 0")
    if ctx.attempt <= fail_times:
        raise JobError(f"demo.flaky: planned failure {ctx.attempt} of {fail_times}")
    return {"succeeded_on_attempt": ctx.attempt}


async def fail(ctx: JobContext, payload: JsonObject) -> Any:
    """``demo.fail``: always fails; ``payload.permanent`` says whether a retry could help."""
    message = str(payload.get("message") or "demo.fail failed as asked")
    raise JobError(message, retryable=not bool(payload.get("permanent", False)))


async def crash(ctx: JobContext, payload: JsonObject) -> Any:
    """``demo.crash``: kills its own worker process mid-run (a poison job)."""
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable: the process is gone")
