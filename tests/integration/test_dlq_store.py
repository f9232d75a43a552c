"""ReportDeadLetter, ListDeadLetters and GetDeadLetter over a real grpc.aio server and Postgres."""

from __future__ import annotations

import asyncio
import base64
import time
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import json_format

from relayq.v1 import dead_letter_pb2 as pb
from tests.integration.dlq_fixtures import Dlq, dlq, report_request, ts, unique_task

__all__ = ["dlq"]  # the imported fixture

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def rows(d: Dlq, table: str, job_id: str) -> int:
    # The test reads the store's tables directly to prove what was (not) written.
    return int(await d.pool.fetchval(f"SELECT count(*) FROM {table} WHERE job_id = $1", job_id))


async def test_a_repeated_report_makes_one_entry(dlq: Dlq) -> None:
    request = report_request()
    first = await dlq.stub.ReportDeadLetter(request)
    again = await asyncio.gather(*(dlq.stub.ReportDeadLetter(request) for _ in range(5)))
    assert not first.duplicate
    assert all(r.duplicate for r in again)
    assert all(r.dead_letter == first.dead_letter for r in again)
    for table in ("dlq_entries", "dlq_dead_letterings", "dlq_audit"):
        assert await rows(dlq, table, request.job_id) == 1, table
    assert first.dead_letter.status == "active" and first.dead_letter.dead_letter_count == 1


async def test_concurrent_first_reports_make_one_entry(dlq: Dlq) -> None:
    request = report_request()
    replies = await asyncio.gather(*(dlq.stub.ReportDeadLetter(request) for _ in range(8)))
    assert sorted(r.duplicate for r in replies) == [False] + [True] * 7
    assert await rows(dlq, "dlq_entries", request.job_id) == 1


async def test_the_stored_entry_has_every_field(dlq: Dlq) -> None:
    when = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    request = report_request(
        payload={"account": "acct-1", "amount_cents": 500, "tags": ["a", 2]},
        reason="permanent_error",
        error_type="JobError",
        error_message="demo.charge needs payload.account",
        final_attempt=3,
        dead_lettered_at=when,
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
    )
    await dlq.stub.ReportDeadLetter(request)
    entry = (await dlq.stub.GetDeadLetter(pb.GetDeadLetterRequest(id=request.job_id))).dead_letter
    assert entry.id == entry.job_id == request.job_id
    assert entry.idempotency_key == request.job_id, "the key defaults to the job id"
    assert (entry.task, entry.queue, entry.reason) == ("demo.echo", "default", "permanent_error")
    # Struct numbers are doubles on the wire; integral ones are stored as JSON integers.
    stored = await dlq.pool.fetchval(
        "SELECT payload FROM dlq_entries WHERE job_id = $1", request.job_id
    )
    assert stored == {"account": "acct-1", "amount_cents": 500, "tags": ["a", 2]}
    assert isinstance(stored["amount_cents"], int)
    assert json_format.MessageToDict(entry.payload)["account"] == "acct-1"
    assert entry.error_type == "JobError" and "payload.account" in entry.error_message
    assert entry.traceback.startswith("Traceback")
    assert [a.number for a in entry.attempts] == [1, 2, 3]
    assert entry.attempts[0].worker == "test-worker@host"
    assert entry.attempts[1].countdown_seconds == 4.0
    assert entry.trace_url == "http://localhost:16686/trace/4bf92f3577b34da6a3ce929d0e0e4736"
    assert entry.dead_lettered_at.ToDatetime(tzinfo=UTC) == when
    assert entry.first_failed_at.ToDatetime(tzinfo=UTC) == when - timedelta(seconds=3)
    (audit,) = entry.audit
    assert (audit.action, audit.actor, audit.reason) == (
        "dead_lettered",
        "test-worker@host",
        "permanent_error",
    )
    assert audit.result.startswith("new entry; attempt 3, JobError: ")

    listed = await dlq.stub.ListDeadLetters(
        pb.ListDeadLettersRequest(filter=pb.DeadLetterFilter(task="demo.echo"), page_size=1000)
    )
    (item,) = [e for e in listed.dead_letters if e.id == request.job_id]
    assert item.traceback == "" and not item.audit, "listings leave out traceback and audit"
    assert item.error_message == entry.error_message and len(item.attempts) == 3


async def test_no_trace_id_means_no_trace_url(dlq: Dlq) -> None:
    reply = await dlq.stub.ReportDeadLetter(report_request())
    assert reply.dead_letter.trace_id == "" and reply.dead_letter.trace_url == ""


async def test_a_report_after_a_replay_reactivates_the_same_entry_with_history(dlq: Dlq) -> None:
    first = report_request(final_attempt=6, error_type="TimeoutError", error_message="slow")
    await dlq.stub.ReportDeadLetter(first)
    (step,) = await dlq.replay(ids=[first.job_id], reason="downstream fixed")
    assert step.result == "replayed"

    again = report_request(
        first.job_id, final_attempt=12, error_type="ConnectionError", error_message="refused"
    )
    reply = await dlq.stub.ReportDeadLetter(again)
    assert not reply.duplicate
    entry = (await dlq.stub.GetDeadLetter(pb.GetDeadLetterRequest(id=first.job_id))).dead_letter
    assert entry.status == "active" and entry.dead_letter_count == 2
    assert (entry.error_type, entry.error_message) == ("ConnectionError", "refused")
    assert [a.number for a in entry.attempts] == list(range(1, 13)), "replaced by the full list"
    assert [(a.action, a.result.split("; ")[0]) for a in entry.audit] == [
        ("dead_lettered", "new entry"),
        ("replayed", "enqueued"),
        ("dead_lettered", "active again (was replayed)"),
    ]
    assert entry.audit[1].actor == "tester@test" and entry.audit[1].reason == "downstream fixed"
    assert await rows(dlq, "dlq_entries", first.job_id) == 1
    assert await rows(dlq, "dlq_dead_letterings", first.job_id) == 2
    history = await dlq.pool.fetch(
        "SELECT final_attempt, error_type FROM dlq_dead_letterings WHERE job_id = $1"
        " ORDER BY final_attempt",
        first.job_id,
    )
    assert [tuple(r) for r in history] == [(6, "TimeoutError"), (12, "ConnectionError")]
    # The same second report again is a duplicate of the second dead-lettering.
    assert (await dlq.stub.ReportDeadLetter(again)).duplicate


async def test_a_late_report_of_an_older_dead_lettering_keeps_the_newer_fields(dlq: Dlq) -> None:
    newer = report_request(final_attempt=12, error_message="newer")
    await dlq.stub.ReportDeadLetter(newer)
    older = report_request(newer.job_id, final_attempt=6, error_message="older")
    reply = await dlq.stub.ReportDeadLetter(older)
    assert not reply.duplicate
    assert reply.dead_letter.error_message == "newer"
    assert reply.dead_letter.dead_letter_count == 2
    assert await rows(dlq, "dlq_dead_letterings", newer.job_id) == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"job_id": ""}, "job_id is required"),
        ({"task": ""}, "task is required"),
        ({"queue": ""}, "queue is required"),
        ({"reason": "bored"}, 'reason "bored" is not one of "retries_exhausted"'),
        ({"final_attempt": 0}, "final_attempt must be 1 or more"),
    ],
)
async def test_bad_reports_are_invalid_argument(
    dlq: Dlq, change: dict[str, object], message: str
) -> None:
    request = report_request()
    for key, value in change.items():
        setattr(request, key, value)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await dlq.stub.ReportDeadLetter(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (err.value.details() or "")


async def test_get_unknown_is_not_found_and_empty_is_invalid(dlq: Dlq) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await dlq.stub.GetDeadLetter(pb.GetDeadLetterRequest(id="no-such-entry"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == 'no dead letter with id "no-such-entry"'
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await dlq.stub.GetDeadLetter(pb.GetDeadLetterRequest())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def ids_of(d: Dlq, flt: pb.DeadLetterFilter) -> list[str]:
    reply = await d.stub.ListDeadLetters(pb.ListDeadLettersRequest(filter=flt, page_size=1000))
    assert not reply.next_page_token
    return [e.id for e in reply.dead_letters]


async def test_list_filters_newest_first(dlq: Dlq) -> None:
    task = unique_task("filters")
    t0 = datetime(2026, 5, 1, tzinfo=UTC)
    cases = {
        "percent": ("retries_exhausted", "ValueError", "boom 100% _done_", 0),
        "quoted": ("permanent_error", "KeyError", "it's 'quoted'", 1),
        "lost": ("worker_lost", "WorkerLostError", "killed by signal 9", 2),
        "plain": ("retries_exhausted", "ValueError", "boom 1000 xdone", 3),
    }
    ids = {}
    for name, (reason, etype, message, minutes) in cases.items():
        request = report_request(
            task=task,
            reason=reason,
            error_type=etype,
            error_message=message,
            dead_lettered_at=t0 + timedelta(minutes=minutes),
        )
        await dlq.stub.ReportDeadLetter(request)
        ids[name] = request.job_id
    dropped = await dlq.stub.DropDeadLetters(
        pb.DropDeadLettersRequest(ids=[ids["lost"]], reason="known crash"), metadata=dlq.admin()
    )
    assert list(dropped.ids) == [ids["lost"]]

    def f(**fields: object) -> pb.DeadLetterFilter:
        return pb.DeadLetterFilter(task=task, **fields)  # type: ignore[arg-type]

    everything = [ids["plain"], ids["lost"], ids["quoted"], ids["percent"]]
    assert await ids_of(dlq, f()) == everything, "newest first"
    assert await ids_of(dlq, f(reason="retries_exhausted")) == [ids["plain"], ids["percent"]]
    assert await ids_of(dlq, f(status="dropped")) == [ids["lost"]]
    assert await ids_of(dlq, f(status="active", reason="worker_lost")) == []
    assert await ids_of(
        dlq, f(since=ts(t0 + timedelta(minutes=1)), until=ts(t0 + timedelta(minutes=3)))
    ) == [ids["lost"], ids["quoted"]], "since inclusive, until exclusive"
    assert await ids_of(dlq, f(since=ts(t0 + timedelta(minutes=3)))) == [ids["plain"]]
    # Error text: case-insensitive, over type and message; % and _ are plain characters.
    assert await ids_of(dlq, f(error_contains="100%")) == [ids["percent"]]
    assert await ids_of(dlq, f(error_contains="_done")) == [ids["percent"]]
    assert await ids_of(dlq, f(error_contains="%")) == [ids["percent"]]
    assert await ids_of(dlq, f(error_contains="VALUEERROR")) == [ids["plain"], ids["percent"]]
    assert await ids_of(dlq, f(error_contains="valueerror: boom 1")) == [
        ids["plain"],
        ids["percent"],
    ]
    assert await ids_of(dlq, f(error_contains="it's 'quoted'")) == [ids["quoted"]]
    assert await ids_of(dlq, f(error_contains="'; DROP TABLE dlq_entries; --")) == []
    assert await ids_of(dlq, f(error_contains="\\")) == []
    assert await ids_of(dlq, f()) == everything, "still all there"


async def test_pagination_over_1000_entries_yields_each_once_newest_first(dlq: Dlq) -> None:
    task = unique_task("pages")
    t0 = datetime(2026, 6, 1, tzinfo=UTC)
    # Ten entries share each timestamp: the job id breaks the ties, so pages never skip or
    # repeat an entry whose time equals the page boundary's.
    requests = [
        report_request(task=task, dead_lettered_at=t0 + timedelta(seconds=i // 10), final_attempt=1)
        for i in range(1000)
    ]
    gate = asyncio.Semaphore(16)

    async def send(r: pb.ReportDeadLetterRequest) -> None:
        async with gate:
            await dlq.stub.ReportDeadLetter(r)

    await asyncio.gather(*(send(r) for r in requests))
    # The reference order: one page of 1000, as the database orders ties (its collation).
    whole = await dlq.stub.ListDeadLetters(
        pb.ListDeadLettersRequest(filter=pb.DeadLetterFilter(task=task), page_size=1000)
    )
    expected = [e.id for e in whole.dead_letters]
    assert whole.next_page_token == "" and sorted(expected) == sorted(r.job_id for r in requests)
    times = [e.dead_lettered_at.ToDatetime() for e in whole.dead_letters]
    assert times == sorted(times, reverse=True), "newest first"
    seen: list[str] = []
    token = ""
    pages = 0
    started = time.perf_counter()
    while True:
        reply = await dlq.stub.ListDeadLetters(
            pb.ListDeadLettersRequest(
                filter=pb.DeadLetterFilter(task=task), page_size=37, page_token=token
            )
        )
        pages += 1
        seen.extend(e.id for e in reply.dead_letters)
        token = reply.next_page_token
        if not token:
            break
    elapsed = time.perf_counter() - started
    assert seen == expected, "every entry once, in the same order as one big page"
    assert pages == 28  # 27 full pages of 37, then one entry
    print(f"listed 1000 entries in {pages} pages of 37 in {elapsed:.3f}s")
    default = await dlq.stub.ListDeadLetters(
        pb.ListDeadLettersRequest(filter=pb.DeadLetterFilter(task=task))
    )
    assert len(default.dead_letters) == 50 and default.next_page_token


def _token(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (
            pb.ListDeadLettersRequest(filter=pb.DeadLetterFilter(reason="bored")),
            'filter.reason "bored" is not one of "retries_exhausted", "permanent_error", '
            '"worker_lost"',
        ),
        (
            pb.ListDeadLettersRequest(filter=pb.DeadLetterFilter(status="gone")),
            'filter.status "gone" is not one of "active", "replayed", "dropped"',
        ),
        (
            pb.ListDeadLettersRequest(
                filter=pb.DeadLetterFilter(
                    since=ts(datetime(2026, 1, 2, tzinfo=UTC)),
                    until=ts(datetime(2026, 1, 1, tzinfo=UTC)),
                )
            ),
            "filter.since (2026-01-02T00:00:00+00:00) must be before filter.until",
        ),
        (pb.ListDeadLettersRequest(page_size=-1), "page_size must be from 1 to 1000"),
        (pb.ListDeadLettersRequest(page_size=1001), "(0 means 50), not 1001"),
        (pb.ListDeadLettersRequest(page_token="not a token!"), "page_token is not valid"),
        (pb.ListDeadLettersRequest(page_token=_token(b"[1, 2]")), "page_token is not valid"),
        (
            pb.ListDeadLettersRequest(page_token=_token(b'{"t": "yesterday", "id": "x"}')),
            "page_token is not valid",
        ),
        (
            pb.ListDeadLettersRequest(filter=pb.DeadLetterFilter(error_contains="x" * 1001)),
            "filter.error_contains is 1001 characters long; the limit is 1000",
        ),
    ],
)
async def test_bad_list_requests_are_invalid_argument(
    dlq: Dlq, request_: pb.ListDeadLettersRequest, message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await dlq.stub.ListDeadLetters(request_)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (err.value.details() or "")
