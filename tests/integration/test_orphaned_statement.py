"""A handler cut off by its time limit mid-statement must not leave that statement running on
the server, holding the job's lock (found by the second hostile review; failed before the fix:
the runner now ends the old session with ``pg_terminate_backend`` from the fresh connection, and
every worker session sets ``client_connection_check_interval``).

What happened before:

``_Attempt.end_transaction(cut=True)`` replaces the delivery's connection with
``Connection.terminate()``: the socket is closed and asyncpg's pending cancel request (the task
it starts when a running query's waiter is cancelled) is cancelled with the connection's other
tasks (``Connection._clean_tasks``). PostgreSQL does not notice a closed client socket while a
statement executes (no ``client_connection_check_interval``), so the backend goes on running
the handler's statement, and keeps the job's session advisory lock and the transaction's row
locks, until the statement ends by itself. The attempt is recorded ``timed_out`` and its retry
is due, but every delivery of the job waits ``lock_wait_seconds`` for the orphan's lock and is
deferred: the time limit did not stop the work, and the job cannot be retried for as long as
the statement runs (a report query that outlived ``timeout_seconds``: minutes).
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from relayq_core.db.ledger import JobLedger
from tests.integration.delivery_support import SHORT_LIMITS, Kills, new_job, quick_policy
from worker_svc.context import JobContext, JsonObject
from worker_svc.runner import Deferred, Retry, handle
from worker_svc.runtime import Runtime

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

LEDGER = JobLedger()


async def test_a_time_limit_stops_the_handlers_statement_and_frees_the_job(
    database_url: str, observer: asyncpg.Connection
) -> None:
    limits = SHORT_LIMITS
    runtime = Runtime(database_url, limits, kill=Kills())
    other = Runtime(database_url, limits, kill=Kills())
    policy = quick_policy(0.3)
    pids: list[int] = []

    async def long_query(ctx: JobContext, payload: JsonObject) -> Any:
        db = await ctx.db()
        pids.append(db.get_server_pid())
        if ctx.attempt == 1:
            await db.execute("SELECT pg_sleep(20)")  # a statement that outlives the time limit
        return {"ok": True}

    delivery = await new_job(observer)
    try:
        decision, _ = await handle(runtime, LEDGER, delivery, long_query, policy)
        assert isinstance(decision, Retry), decision
        await asyncio.sleep(1.0)  # the retry is due; give the server time to notice anything
        orphan = await observer.fetchrow(
            "SELECT state, query, now() - query_start AS running_for FROM pg_stat_activity"
            " WHERE pid = $1",
            pids[0],
        )
        try:
            second = await handle(other, LEDGER, delivery, long_query, policy)
            outcome = repr(second[0])
        except Deferred as exc:
            outcome = f"deferred: {exc}"
    finally:
        await runtime.close()
        await other.close()
        if pids:
            await observer.execute("SELECT pg_terminate_backend($1)", pids[0])
    detail = (dict(orphan) if orphan else None, outcome)
    # The promise: the attempt the time limit stopped is over, in the database too ...
    assert orphan is None, detail
    # ... and the retry runs when due.
    assert outcome.startswith("Done"), detail
