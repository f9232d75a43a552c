"""DropDeadLetters, PurgeDeadLetters, GetDeadLetterStats and the admin token, over real gRPC and
Postgres."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest

from relayq.v1 import dead_letter_pb2 as pb
from relayq_core.catalog import Catalog
from tests.integration.dlq_fixtures import (
    ADMIN_TOKEN,
    Dlq,
    dlq,
    dlq_server,
    empty_dlq,
    report_request,
    unique_task,
)

__all__ = ["dlq", "empty_dlq"]  # the imported fixtures

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def entry(d: Dlq, job_id: str) -> pb.DeadLetter:
    return (await d.stub.GetDeadLetter(pb.GetDeadLetterRequest(id=job_id))).dead_letter


async def report(d: Dlq, **fields: object) -> str:
    request = report_request(**fields)  # type: ignore[arg-type]
    await d.stub.ReportDeadLetter(request)
    return request.job_id


async def drop(d: Dlq, **fields: object) -> pb.DropDeadLettersResponse:
    return await d.stub.DropDeadLetters(
        pb.DropDeadLettersRequest(**fields),  # type: ignore[arg-type]
        metadata=d.admin("alice@laptop"),
    )


async def test_drop_keeps_the_entry_with_an_audit_record(dlq: Dlq) -> None:
    ids = [await report(dlq), await report(dlq)]
    reply = await drop(dlq, ids=ids, reason="bad payload; customer notified")
    assert (list(reply.ids), reply.count, reply.dry_run) == (ids, 2, False)
    for job_id in ids:
        stored = await entry(dlq, job_id)
        assert stored.status == "dropped"
        last = stored.audit[-1]
        assert (last.action, last.actor, last.reason, last.result) == (
            "dropped",
            "alice@laptop",
            "bad payload; customer notified",
            "dropped",
        )
        assert last.at.ToDatetime(tzinfo=UTC) > datetime.now(UTC) - timedelta(minutes=1)
        assert stored.error_message == "boom" and len(stored.attempts) == 6, "nothing deleted"
    again = await drop(dlq, ids=ids, reason="twice")
    assert again.count == 0, "a dropped entry is not dropped again"


async def test_a_drop_dry_run_changes_nothing(dlq: Dlq) -> None:
    job_id = await report(dlq)
    before = await entry(dlq, job_id)
    reply = await drop(dlq, ids=[job_id], reason="checking", dry_run=True)
    assert (list(reply.ids), reply.count, reply.dry_run) == ([job_id], 1, True)
    assert await entry(dlq, job_id) == before


async def test_drop_by_filter_takes_active_entries_only(dlq: Dlq) -> None:
    task = unique_task("drop")
    ids = [await report(dlq, task=task) for _ in range(3)]
    await dlq.replay(ids=[ids[0]])
    dry = await drop(dlq, filter=pb.DeadLetterFilter(task=task), reason="r", dry_run=True)
    assert list(dry.ids) == ids[1:]
    reply = await drop(dlq, filter=pb.DeadLetterFilter(task=task), reason="task retired")
    assert list(reply.ids) == ids[1:]
    assert [(await entry(dlq, i)).status for i in ids] == ["replayed", "dropped", "dropped"]


async def test_dropping_unknown_ids_is_not_found_and_drops_nothing(dlq: Dlq) -> None:
    known = await report(dlq)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await drop(dlq, ids=[known, "nope-1", "nope-2"], reason="cleanup")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == 'no dead letter with id "nope-1", "nope-2"; nothing was dropped'
    assert (await entry(dlq, known)).status == "active"


@pytest.mark.parametrize(
    ("fields", "code", "message"),
    [
        ({"ids": ["x"]}, "INVALID_ARGUMENT", "reason is required: say why"),
        ({"ids": ["x"], "reason": "   "}, "INVALID_ARGUMENT", "reason is required"),
        ({"reason": "r"}, "INVALID_ARGUMENT", "give ids or a filter to drop"),
        (
            {"ids": ["x"], "filter": pb.DeadLetterFilter(), "reason": "r"},
            "INVALID_ARGUMENT",
            "give either ids or filter to drop, not both",
        ),
        (
            {"ids": [f"id-{i}" for i in range(100_000)], "reason": "r"},
            "INVALID_ARGUMENT",
            "at most 10000 ids per call, not 100000",
        ),
        (
            {"filter": pb.DeadLetterFilter(status="replayed"), "reason": "r"},
            "INVALID_ARGUMENT",
            "a drop filter selects active entries only",
        ),
        (
            {"filter": pb.DeadLetterFilter(), "reason": "r"},
            None,
            "",
        ),
    ],
)
async def test_bad_drops(
    dlq: Dlq, fields: dict[str, object], code: str | None, message: str
) -> None:
    if code is None:  # an empty-but-set filter is valid (every active entry): dry run only
        reply = await drop(dlq, dry_run=True, **fields)
        assert reply.dry_run
        return
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await drop(dlq, **fields)
    assert err.value.code().name == code
    assert message in (err.value.details() or "")


async def test_purge_removes_only_entries_dropped_before_the_retention(empty_dlq: Dlq) -> None:
    d = empty_dlq
    long_ago = datetime.now(UTC) - timedelta(days=90)
    old_dropped = await report(d)
    new_dropped = await report(d)
    old_active = await report(d, dead_lettered_at=long_ago)
    old_replayed = await report(d, dead_lettered_at=long_ago)
    await d.replay(ids=[old_replayed])
    await drop(d, ids=[old_dropped, new_dropped], reason="obsolete")
    # Age one drop: the test writes the store's table to stand in for 40 days passing.
    await d.pool.execute(
        "UPDATE dlq_entries SET dropped_at = now() - interval '40 days' WHERE job_id = $1",
        old_dropped,
    )

    def purge(days: float, dry_run: bool = False) -> pb.PurgeDeadLettersRequest:
        return pb.PurgeDeadLettersRequest(older_than_days=days, dry_run=dry_run)

    dry = await d.stub.PurgeDeadLetters(purge(30, dry_run=True), metadata=d.admin())
    assert (dry.count, dry.dry_run) == (1, True)
    assert (await entry(d, old_dropped)).status == "dropped"

    done = await d.stub.PurgeDeadLetters(purge(30), metadata=d.admin())
    assert (done.count, done.dry_run) == (1, False)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await entry(d, old_dropped)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    for table in ("dlq_dead_letterings", "dlq_audit"):
        left = await d.pool.fetchval(f"SELECT count(*) FROM {table} WHERE job_id = $1", old_dropped)
        assert left == 0, f"{table} rows go with their entry"
    statuses = [(await entry(d, i)).status for i in (new_dropped, old_active, old_replayed)]
    assert statuses == ["dropped", "active", "replayed"]
    assert (await d.stub.PurgeDeadLetters(purge(30), metadata=d.admin())).count == 0
    # Fractions of a day work: the fresh drop is older than a millisecond.
    assert (await d.stub.PurgeDeadLetters(purge(1e-8), metadata=d.admin())).count == 1

    for days in (0, -1, float("nan"), 1e9):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await d.stub.PurgeDeadLetters(purge(days), metadata=d.admin())
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "older_than_days must be more than 0" in (err.value.details() or "")


async def test_stats_count_by_task_reason_and_status(empty_dlq: Dlq) -> None:
    d = empty_dlq
    empty = await d.stub.GetDeadLetterStats(pb.GetDeadLetterStatsRequest())
    assert empty.active == 0 and not empty.HasField("oldest_active_at")
    assert empty.oldest_active_id == ""
    assert [(c.key, c.count) for c in empty.by_status] == [
        ("active", 0),
        ("replayed", 0),
        ("dropped", 0),
    ]

    t0 = datetime(2026, 4, 1, tzinfo=UTC)
    echo = [
        await report(d, task="demo.echo", dead_lettered_at=t0 + timedelta(hours=h))
        for h in (1, 2, 3)
    ]
    charge = [
        await report(d, task="demo.charge", reason="permanent_error", dead_lettered_at=t0)
        for _ in range(2)
    ]
    await report(
        d, task="demo.slow", reason="worker_lost", dead_lettered_at=t0 + timedelta(hours=5)
    )
    await drop(d, ids=[echo[0]], reason="r")
    oldest_charge = min(charge)  # same time: the id breaks the tie
    await d.replay(ids=[max(charge)])

    stats = await d.stub.GetDeadLetterStats(pb.GetDeadLetterStatsRequest())

    assert stats.active == 4
    assert [(c.key, c.count) for c in stats.by_task] == [
        ("demo.echo", 2),
        ("demo.charge", 1),
        ("demo.slow", 1),
    ]
    assert [(c.key, c.count) for c in stats.by_reason] == [
        ("retries_exhausted", 2),
        ("permanent_error", 1),
        ("worker_lost", 1),
    ]
    assert [(c.key, c.count) for c in stats.by_status] == [
        ("active", 4),
        ("replayed", 1),
        ("dropped", 1),
    ]
    assert stats.oldest_active_at.ToDatetime(tzinfo=UTC) == t0
    assert stats.oldest_active_id == oldest_charge


MUTATING = [
    (
        "ReplayDeadLetters",
        pb.ReplayDeadLettersRequest(ids=["any"], dry_run=True),
    ),
    (
        "DropDeadLetters",
        pb.DropDeadLettersRequest(
            filter=pb.DeadLetterFilter(task="no.such_task"), reason="r", dry_run=True
        ),
    ),
    ("PurgeDeadLetters", pb.PurgeDeadLettersRequest(older_than_days=30, dry_run=True)),
]


async def call(d: Dlq, method: str, request: object, metadata: tuple[tuple[str, str], ...]) -> None:
    rpc = getattr(d.stub, method)
    if method == "ReplayDeadLetters":
        async for _ in rpc(request, metadata=metadata):
            pass
    else:
        await rpc(request, metadata=metadata)


@pytest.mark.parametrize(("method", "request_"), MUTATING)
@pytest.mark.parametrize(
    ("metadata", "code", "message"),
    [
        ((), "UNAUTHENTICATED", "this call needs `authorization: Bearer <token>` metadata"),
        (
            (("authorization", f"Basic {ADMIN_TOKEN}"),),
            "UNAUTHENTICATED",
            "must be `Bearer <token>`",
        ),
        (
            (("authorization", "Bearer not-the-token"),),
            "PERMISSION_DENIED",
            "The bearer token is not the dlq-svc admin token.",
        ),
        ((("authorization", f"Bearer {ADMIN_TOKEN}x"),), "PERMISSION_DENIED", ""),
    ],
)
async def test_mutating_calls_need_the_admin_token(
    dlq: Dlq,
    method: str,
    request_: object,
    metadata: tuple[tuple[str, str], ...],
    code: str,
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(dlq, method, request_, metadata)
    assert err.value.code().name == code
    assert message in (err.value.details() or "")
    logged = capsys.readouterr()
    assert "dlq_call_refused" in logged.out + logged.err, "the refusal is logged..."
    assert ADMIN_TOKEN not in logged.out + logged.err, "...without any token"
    assert "not-the-token" not in logged.out + logged.err


async def test_the_token_lets_calls_through_and_reads_stay_open(dlq: Dlq) -> None:
    job_id = await report(dlq)  # ReportDeadLetter: no token (workers call it)
    await dlq.stub.GetDeadLetter(pb.GetDeadLetterRequest(id=job_id))
    await dlq.stub.ListDeadLetters(pb.ListDeadLettersRequest(page_size=1))
    await dlq.stub.GetDeadLetterStats(pb.GetDeadLetterStatsRequest())
    for method, request in MUTATING:
        await call(dlq, method, request, (("authorization", f"Bearer {ADMIN_TOKEN}"),))
    # The scheme is case-insensitive, as HTTP's is.
    await call(dlq, *MUTATING[2], (("authorization", f"bearer {ADMIN_TOKEN}"),))


async def test_a_refused_drop_changes_nothing(dlq: Dlq) -> None:
    job_id = await report(dlq)
    with pytest.raises(grpc.aio.AioRpcError):
        await dlq.stub.DropDeadLetters(
            pb.DropDeadLettersRequest(ids=[job_id], reason="r"),
            metadata=(("authorization", "Bearer wrong"),),
        )
    assert (await entry(dlq, job_id)).status == "active"


async def test_without_a_configured_token_mutating_calls_are_open(
    database_url: str, quiet_broker_url: str, catalog: Catalog
) -> None:
    async with dlq_server(database_url, quiet_broker_url, catalog, admin_token="") as d:
        for method, request in MUTATING:
            await call(d, method, request, ())
        job_id = await report(d)
        await d.stub.DropDeadLetters(pb.DropDeadLettersRequest(ids=[job_id], reason="r"))
        assert (await entry(d, job_id)).audit[-1].actor == "unknown", "no x-relayq-actor"
