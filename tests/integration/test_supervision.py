"""The supervisor's lease clock, the dead-letter hand-off, and a network partition (no FIN)
between a worker and PostgreSQL: hazards a hostile review of the delivery protocol found (each
failed on commit 9ba6617, before its fix). In process, against the real ledger; each test states
the promise.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from relayq_core.db.ledger import JobLedger, connect
from relayq_core.deadletter import DeadLetterReport
from relayq_core.errors import JobError
from relayq_core.retry import RetryPolicy
from tests.integration.delivery_support import Kills, new_job
from worker_svc.context import JobContext, JsonObject
from worker_svc.handoff import hand_off
from worker_svc.runner import DeadLetter, Deferred, Done, handle
from worker_svc.runtime import DeliveryLimits, Runtime

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

LEDGER = JobLedger()
POLICY = RetryPolicy(base_delay_seconds=0.05, max_delay_seconds=0.2, max_retries=2, jitter=0.0)


# --- 5. The supervisor counts the lease from before the lock wait ----------------------------


async def test_a_claim_that_waited_for_the_lock_is_not_killed_at_once(
    database_url: str, observer: asyncpg.Connection
) -> None:
    """``Watch.lease_sent`` is taken before ``lock_and_claim`` is sent, and that call may wait
    ``lock_timeout`` for the advisory lock and again for the row. The database's lease starts
    when the row is claimed, but the supervisor's ``kill_at`` (lease_sent + 5/6 lease) may
    already be past when the handler starts, and ``_act`` checks the kill before the renewal:
    a healthy, freshly leased attempt kills its own process (then counted as a worker loss).
    Nothing validates lease_seconds against lock_wait_seconds: the test stack itself runs
    lease 3 s with the default 10 s lock wait; production defaults (15 s / 10 s) hit it when
    the advisory wait and the row wait add up to more than 12.5 s."""
    kills = Kills(slow=0.05)
    runtime = Runtime(
        database_url, DeliveryLimits(lock_wait_seconds=10, lease_seconds=3), kill=kills
    )
    delivery = await new_job(observer)
    blocker = await connect(database_url)

    async def quick(ctx: JobContext, payload: JsonObject) -> Any:
        await asyncio.sleep(0.5)
        return {"ok": True}

    try:
        # Someone holds the job's lock for a moment (a replay publishing, a delivery finishing).
        await blocker.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", delivery.job_id)
        release = asyncio.get_running_loop().call_later(
            2.7,
            lambda: asyncio.ensure_future(
                blocker.execute(
                    "SELECT pg_advisory_unlock(hashtextextended($1, 0))", delivery.job_id
                )
            ),
        )
        decision, _ = await handle(runtime, LEDGER, delivery, quick, POLICY)
        release.cancel()
    finally:
        await runtime.close()
        await blocker.close()
    assert isinstance(decision, Done)
    assert kills.count == 0, "the supervisor killed a healthy attempt it had just leased"


# --- 6. A stale hand-off marks a newer dead letter as stored -------------------------------


class GatedDlq:
    """A dlq-svc stand-in whose answer waits for ``gate`` (a slow RPC)."""

    def __init__(self, stored: list[int], gate: asyncio.Event | None = None) -> None:
        self.stored = stored
        self.gate = gate
        self.called = asyncio.Event()

    async def report(self, report: DeadLetterReport) -> bool:
        self.called.set()
        duplicate = report.final_attempt in self.stored
        if not duplicate:
            self.stored.append(report.final_attempt)
        if self.gate is not None:
            await self.gate.wait()
        return duplicate


async def test_a_stale_hand_off_cannot_bury_a_newer_dead_letter(
    database_url: str, observer: asyncpg.Connection
) -> None:
    """``mark_dead_lettered`` clears *whatever* dead letter is staged, not the one the caller
    reported, and the hand-off runs outside the job's lock. Two deliveries hand off the same
    staged dead letter (a duplicate message); one's RPC is slow. Meanwhile the other finishes,
    an operator replays the job, and the replayed run dead-letters again (a new staged dead
    letter, final_attempt 2). The slow hand-off then returns and marks the job dead-lettered,
    clearing dead letter 2, which dlq-svc never received: the job is ``dead_lettered`` with no
    active DLQ entry (not visible, not replayable)."""
    runtime = Runtime(database_url, DeliveryLimits(lock_wait_seconds=0.5), kill=Kills(slow=0.05))

    async def permanent(ctx: JobContext, payload: JsonObject) -> Any:
        raise JobError.permanent("bad input")

    delivery = await new_job(observer)
    stored: list[int] = []
    gate = asyncio.Event()
    slow = GatedDlq(stored, gate)
    conn_a = await connect(database_url)
    conn_b = await connect(database_url)
    try:
        decision, _ = await handle(runtime, LEDGER, delivery, permanent, POLICY)
        assert isinstance(decision, DeadLetter)
        stale = asyncio.create_task(hand_off(conn_a, LEDGER, slow, delivery.job_id))  # type: ignore[arg-type]
        await asyncio.wait_for(slow.called.wait(), 5)
        await hand_off(conn_b, LEDGER, GatedDlq(stored), delivery.job_id)  # type: ignore[arg-type]
        # dlq-svc replays the entry (its ledger step), and the replayed run fails again.
        assert await LEDGER.reopen_for_replay(observer, [delivery.job_id])
        decision, _ = await handle(runtime, LEDGER, delivery, permanent, POLICY)
        assert isinstance(decision, DeadLetter)
        gate.set()
        await stale
        # The replayed run's delivery now hands its dead letter off.
        await hand_off(conn_b, LEDGER, GatedDlq(stored), delivery.job_id)  # type: ignore[arg-type]
        state = await observer.fetchval(
            "SELECT state FROM relayq_jobs WHERE job_id = $1", delivery.job_id
        )
    finally:
        await runtime.close()
        await conn_a.close()
        await conn_b.close()
    assert state == "dead_lettered"
    assert stored == [1, 2], f"dlq-svc received dead letters {stored}; attempt 2's was buried"


# --- 7. A partition (no FIN): the dead worker's lock outlives it ---------------------------


class Blackhole:
    """A TCP proxy to PostgreSQL that can go silent both ways without closing anything (a
    network partition, a dropped NAT/conntrack entry, a host lost without RST)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.silent = False
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._upstream: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                if self.silent:
                    continue  # dropped on the floor; nobody is told
                writer.write(data)
                await writer.drain()
        if not self.silent:
            writer.close()  # an orderly close is forwarded only while connected

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers.append(writer)  # the worker's side only: the server's side stays open
        self._upstream.append(up_writer)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def close(self) -> None:
        for w in self._writers:
            w.close()
        if self.server is not None:
            self.server.close()

    async def heal(self) -> None:
        """Closes the server's side too (after the test)."""
        for w in self._upstream:
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()
        for w in self._writers:
            with contextlib.suppress(Exception):
                await w.wait_closed()


async def test_a_worker_partitioned_from_postgres_stops_and_its_job_is_taken_over(
    database_url: str, observer: asyncpg.Connection
) -> None:
    """The worker's host is cut off from PostgreSQL mid-handler (no FIN reaches the server).
    The supervisor's renewals fail and it kills the process before the lease runs out. The
    server still believes the dead delivery's session alive, holding the job's lock, until its
    TCP keepalive or ``tcp_user_timeout`` gives up on it: the worker sets both on every
    connection (``RELAYQ_WORKER_DEAD_PEER_SECONDS``; PostgreSQL's defaults wait over two hours).
    Until then other deliveries defer, never run the job; once the session is dropped (here by
    ``pg_terminate_backend``, as the keepalive would: this loopback proxy answers the probes
    itself), the job is taken over, counted as one worker loss (the cut-off worker could not
    say it stopped)."""
    parts = urlsplit(database_url)
    proxy = Blackhole(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    via_proxy = urlunsplit(
        parts._replace(
            netloc=f"{parts.username}@127.0.0.1:{proxy.port}"
            if parts.username
            else f"127.0.0.1:{proxy.port}"
        )
    )
    kills = Kills(slow=0.05)
    limits = DeliveryLimits(lock_wait_seconds=0.5, lease_seconds=3, dead_peer_seconds=10)
    partitioned = Runtime(via_proxy, limits, kill=kills)
    other = Runtime(database_url, limits, kill=Kills(slow=0.05))
    delivery = await new_job(observer)
    settings: dict[str, str] = {}

    async def downstream_call(ctx: JobContext, payload: JsonObject) -> Any:
        db = ctx._conn  # noqa: SLF001
        for name in ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_user_timeout"):
            settings[name] = await db.fetchval(f"SHOW {name}")
        proxy.silent = True  # the partition starts while the handler waits on its downstream
        for _ in range(60):
            if kills.count:
                break
            await asyncio.sleep(0.1)
        # The supervisor "killed" this process: the worker's sockets close, but the FIN is
        # lost in the partition (the proxy forwards nothing any more).
        db.terminate()
        raise RuntimeError("the process is gone")

    with contextlib.suppress(BaseException):
        await asyncio.wait_for(handle(partitioned, LEDGER, delivery, downstream_call, POLICY), 10)
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(partitioned.close(), 8)
    await proxy.close()  # the worker's side is gone; the server's sockets stay open (no FIN)
    await asyncio.sleep(3.5)  # the lease has run out by now
    outcomes = []
    try:
        for _ in range(2):
            try:
                decision, _ = await handle(other, LEDGER, delivery, _echo, POLICY)
                outcomes.append(type(decision).__name__)
                break
            except Deferred as exc:
                outcomes.append(f"deferred: {exc}")
                await asyncio.sleep(0.5)
        # What PostgreSQL's keepalive does after dead_peer_seconds: it drops the dead worker's
        # session, and with it the lock.
        await observer.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
            " AND granted AND ((classid::bigint << 32) | objid::bigint)"
            " = hashtextextended($1, 0)",
            delivery.job_id,
        )
        await asyncio.sleep(0.2)
        after, _ = await handle(other, LEDGER, delivery, _echo, POLICY)
        losses = await observer.fetchval(
            "SELECT worker_losses FROM relayq_jobs WHERE job_id = $1", delivery.job_id
        )
        recorded = [
            r["outcome"]
            for r in await observer.fetch(
                "SELECT outcome FROM relayq_job_attempts WHERE job_id = $1 ORDER BY number",
                delivery.job_id,
            )
        ]
    finally:
        await other.close()
        await proxy.heal()
    detail = (kills.count, outcomes, type(after).__name__, losses, recorded, settings)
    assert kills.count >= 1, detail  # the supervisor stopped the cut-off handler
    assert settings == {
        "tcp_keepalives_idle": "4",
        "tcp_keepalives_interval": "2",
        "tcp_user_timeout": "10000",
    }, detail
    # While the dead session holds the lock nobody runs the job; then it is taken over.
    assert all(o.startswith("deferred") for o in outcomes), detail
    assert isinstance(after, Done) and losses == 1, detail
    assert recorded == ["worker_lost", "succeeded"], detail


async def _echo(ctx: JobContext, payload: JsonObject) -> Any:
    return {"ran": ctx.attempt}
