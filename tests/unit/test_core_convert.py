"""The shared ``to_proto`` conversions in relayq_core.convert, and the services that use them
(pure: no servers)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from google.protobuf import timestamp_pb2

from dlq_svc import convert as dlq_convert
from ingest_svc.convert import job_to_proto
from relayq.v1 import job_pb2
from relayq_core.convert import attempt_to_proto, dead_letter_report_to_proto, timestamp_to_proto
from relayq_core.deadletter import DeadLetterReport, Reason, StagedDeadLetter
from relayq_core.jobs import AttemptRecord, JobRecord, JobState

T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)

FULL = AttemptRecord(
    number=3,
    worker="celery@host-1",
    started_at=T0,
    duration_seconds=1.25,
    outcome="failed",
    error_type="TimeoutError",
    error_message="upstream took too long",
    countdown_seconds=8.5,
)
BARE = AttemptRecord(number=1, worker="", started_at=T0, duration_seconds=0.0, outcome="")


def ts(seconds: int, nanos: int = 0) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def test_timestamp_to_proto_keeps_the_instant_to_the_microsecond() -> None:
    assert timestamp_to_proto(T0) == ts(1767323045, 678901000)


def test_timestamp_to_proto_converts_an_aware_time_and_takes_a_naive_one_as_utc() -> None:
    plus_two = T0.astimezone(timezone(timedelta(hours=2)))
    assert timestamp_to_proto(plus_two) == timestamp_to_proto(T0)
    assert timestamp_to_proto(T0.replace(tzinfo=None)) == timestamp_to_proto(T0)


def test_timestamp_to_proto_leaves_none_unset() -> None:
    assert timestamp_to_proto(None) is None
    assert not job_pb2.Job(finished_at=timestamp_to_proto(None)).HasField("finished_at")


def test_attempt_to_proto_copies_every_field() -> None:
    msg = attempt_to_proto(FULL)
    assert msg == job_pb2.Attempt(
        number=3,
        worker="celery@host-1",
        started_at=ts(1767323045, 678901000),
        duration_seconds=1.25,
        outcome="failed",
        error_type="TimeoutError",
        error_message="upstream took too long",
        countdown_seconds=8.5,
    )
    # A field added to the message but not to the conversion shows up here.
    assert {f.name for f, _ in msg.ListFields()} == {
        f.name for f in job_pb2.Attempt.DESCRIPTOR.fields
    }


def test_attempt_to_proto_leaves_empty_fields_at_their_defaults() -> None:
    msg = attempt_to_proto(BARE)
    assert [f.name for f, _ in msg.ListFields()] == ["number", "started_at"]
    assert msg.started_at == ts(1767323045, 678901000)
    assert (msg.worker, msg.outcome, msg.error_type, msg.error_message) == ("", "", "", "")
    assert (msg.duration_seconds, msg.countdown_seconds) == (0.0, 0.0)


def test_attempt_to_proto_encodes_the_same_bytes_as_the_message_spelt_out() -> None:
    spelt_out = job_pb2.Attempt(
        number=FULL.number,
        worker=FULL.worker,
        started_at=ts(1767323045, 678901000),
        duration_seconds=FULL.duration_seconds,
        outcome=FULL.outcome,
        error_type=FULL.error_type,
        error_message=FULL.error_message,
        countdown_seconds=FULL.countdown_seconds,
    )
    assert attempt_to_proto(FULL).SerializeToString(deterministic=True) == (
        spelt_out.SerializeToString(deterministic=True)
    )


def test_attempt_round_trips_through_dlq_svc() -> None:
    for attempt in (FULL, BARE):
        back = dlq_convert.attempt_from_proto(attempt_to_proto(attempt), T0 - timedelta(days=1))
        assert back == attempt


def job(attempts: list[AttemptRecord]) -> JobRecord:
    return JobRecord(
        job_id="j-1",
        idempotency_key="k-1",
        task="demo.echo",
        queue="default",
        payload={"n": 1},
        state=JobState.DEAD_LETTERED,
        attempt_count=len(attempts),
        result=None,
        last_error="TimeoutError",
        trace_id="",
        created_at=T0,
        updated_at=T0,
        attempts=attempts,
    )


def test_ingest_and_worker_send_every_attempt_in_order() -> None:
    attempts = [BARE, FULL, AttemptRecord(2, "w", T0 + timedelta(seconds=1), 0.5, "duplicate")]
    expected = [attempt_to_proto(a) for a in attempts]
    assert list(job_to_proto(job(attempts)).attempts) == expected
    staged = {
        "reason": "retries_exhausted",
        "error_type": "TimeoutError",
        "error_message": "upstream took too long",
        "traceback": "",
        "dead_lettered_at": T0.isoformat(),
        "final_attempt": 3,
        "worker": "celery@host-1",
    }
    report = dead_letter_report_to_proto(
        DeadLetterReport.of(job(attempts), StagedDeadLetter.from_json(staged))
    )
    assert list(report.attempts) == expected
    assert report.dead_lettered_at == timestamp_to_proto(T0)
    assert report.reason == "retries_exhausted" and report.final_attempt == 3


def test_a_staged_dead_letter_reads_back_what_it_wrote() -> None:
    staged = StagedDeadLetter(Reason.TIMEOUT, "JobTimeout", "too long", "tb", 2, "w-1")
    data = staged.to_json() | {"dead_lettered_at": T0.isoformat()}
    assert StagedDeadLetter.from_json(data) == StagedDeadLetter(
        Reason.TIMEOUT, "JobTimeout", "too long", "tb", 2, "w-1", T0
    )


def test_the_worker_and_dlq_svc_share_one_report_and_one_reason_enum() -> None:
    from dlq_svc import model

    assert model.Reason is Reason and model.DeadLetterReport is DeadLetterReport
    assert {r.value for r in Reason} == {
        "retries_exhausted",
        "permanent_error",
        "worker_lost",
        "timeout",
    }
