"""The demo tasks' handlers."""

from __future__ import annotations

import asyncio
import email.utils
import os
import signal
import threading
import time
from typing import Any

import httpx

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


def _int(
    payload: JsonObject, name: str, low: int, high: int, task: str, default: Any = None
) -> int:
    value = payload.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise JobError.permanent(f"{task} needs payload.{name}, an integer {low}..{high}")
    return value


def _account(payload: JsonObject, name: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        raise JobError.permanent(f"demo.transfer needs payload.{name}, a string of 1-64 characters")
    return value


async def transfer(ctx: JobContext, payload: JsonObject) -> Any:
    """``demo.transfer``: moves ``amount_cents`` from one account to another, with a journal row.

    Not idempotent by itself: both balances change and the journal (``demo_transfers``, no
    unique constraint on the key) grows by one row on every run. Everything goes through
    ``ctx.db()``, the transaction that also records the job's success, so exactly once is the
    delivery protocol's doing alone, and a double application would show as a wrong balance and
    two journal rows. Accounts are made at 0 on first use. ``hold_ms`` (optional) keeps the
    transaction open that long, so tests can kill a worker between the effect and the commit.
    """
    source, target = _account(payload, "from"), _account(payload, "to")
    if source == target:
        raise JobError.permanent("demo.transfer needs two different accounts")
    amount = _int(payload, "amount_cents", 1, 10**9, "demo.transfer")
    hold_ms = _int(payload, "hold_ms", 0, 10_000, "demo.transfer", default=0)
    db = await ctx.db()
    accounts = sorted((source, target))
    await db.execute(
        "INSERT INTO demo_accounts (account) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
        accounts,
    )
    # Both rows locked in one order, so transfers in opposite directions never deadlock.
    await db.execute(
        "SELECT 1 FROM demo_accounts WHERE account = ANY($1::text[]) ORDER BY account FOR UPDATE",
        accounts,
    )
    await db.execute(
        "UPDATE demo_accounts SET balance_cents = balance_cents"
        " + CASE WHEN account = $2 THEN $3::bigint ELSE -$3::bigint END"
        " WHERE account = ANY(ARRAY[$1, $2])",
        source,
        target,
        amount,
    )
    await db.execute(
        "INSERT INTO demo_transfers (job_id, idempotency_key, from_account, to_account,"
        " amount_cents) VALUES ($1, $2, $3, $4, $5)",
        ctx.job_id,
        ctx.idempotency_key,
        source,
        target,
        amount,
    )
    if hold_ms:
        await db.execute("SELECT pg_sleep($1)", hold_ms / 1000)
    return {"from": source, "to": target, "amount_cents": amount}


class WebhookRejected(JobError):
    """The webhook's receiver answered with a status that is not a success."""


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """An HTTP ``Retry-After`` (seconds, or an HTTP date) as seconds from now; None if absent or
    unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


async def webhook(ctx: JobContext, payload: JsonObject) -> Any:
    """``demo.webhook``: POSTs ``payload.body`` (any JSON; ``{}`` when absent) to
    ``payload.url``, with the job's key in an ``Idempotency-Key`` header.

    A real outbound effect: it is applied at least once, and each retry carries the same key,
    so a receiver that honours the header applies it once (docs/idempotency.md). A 2xx answer
    succeeds. Timeouts, refused or dropped connections (the HTTP client's errors, raised as
    they are), 408, 429 (its ``Retry-After`` honoured within the policy's longest delay) and
    5xx are retried; any other answer (4xx, a redirect) fails permanently.
    """
    url = payload.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")) or len(url) > 2048:
        raise JobError.permanent("demo.webhook needs payload.url, an http(s) URL")
    try:
        target = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise JobError.permanent(f"demo.webhook: payload.url is not a valid URL ({exc})") from None
    body = payload.get("body", {})
    response = await ctx.http().post(
        target, json=body, headers={"Idempotency-Key": ctx.idempotency_key}
    )
    status = response.status_code
    if 200 <= status < 300:
        return {"status": status}
    excerpt = response.text[:200]
    message = f"POST {url} answered {status} {response.reason_phrase}: {excerpt}".rstrip(": ")
    retryable = status in (408, 429) or status >= 500
    raise WebhookRejected(
        message,
        retryable=retryable,
        retry_after=retry_after_seconds(response.headers.get("retry-after")) if retryable else None,
    )


async def hang(ctx: JobContext, payload: JsonObject) -> Any:
    """``demo.hang``: never returns, as a handler stuck on a call that never answers.

    ``mode``: ``async`` (waits forever, but lets itself be cancelled: its time limit ends it),
    ``blocking`` (blocks the event loop, as synchronous I/O in a handler does: only killing its
    process ends it) or ``stubborn`` (swallows every cancellation: the same).
    """
    mode = payload.get("mode", "async")
    if mode == "async":
        await asyncio.Event().wait()
    elif mode == "blocking":
        threading.Event().wait()
    elif mode == "stubborn":
        while True:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                continue
    raise JobError.permanent("demo.hang needs payload.mode: async, blocking or stubborn")


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
