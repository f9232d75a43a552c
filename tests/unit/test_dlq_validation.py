"""dlq-svc's request validation, page tokens, LIKE escaping and conversions (pure)."""

from __future__ import annotations

import base64
import json
import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dlq_svc import convert, validation
from dlq_svc.model import Cursor, Filter, Reason, Status
from dlq_svc.store import merge_attempts
from relayq.v1 import dead_letter_pb2 as pb
from relayq.v1 import job_pb2
from relayq_core.errors import InvalidArgument
from relayq_core.jobs import AttemptRecord

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def refused(fn: object, *args: object, **kwargs: object) -> str:
    with pytest.raises(InvalidArgument) as err:
        fn(*args, **kwargs)  # type: ignore[operator]
    return err.value.message


@given(
    st.datetimes(timezones=st.just(UTC)),
    st.text(min_size=1, max_size=300).filter(lambda s: "\x00" not in s),
)
def test_page_tokens_round_trip(when: datetime, job_id: str) -> None:
    token = validation.encode_page_token(Cursor(when, job_id))
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert validation.decode_page_token(token) == Cursor(when, job_id)


def _b64(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode()


@pytest.mark.parametrize(
    "token",
    [
        "%%%",
        "not base64 at all",
        _b64("not json"),
        _b64("[]"),
        _b64("{}"),
        _b64(json.dumps({"t": "2026-01-01T00:00:00", "id": "x"})),  # naive time
        _b64(json.dumps({"t": "2026-01-01T00:00:00+00:00", "id": ""})),
        _b64(json.dumps({"t": "2026-01-01T00:00:00+00:00", "id": 7})),
        _b64(json.dumps({"t": 12, "id": "x"})),
        # Found by the fuzzer: a NUL id reached PostgreSQL, deep JSON hit the recursion limit.
        _b64(json.dumps({"t": "2026-01-01T00:00:00+00:00", "id": "x\x00"})),
        _b64("[" * 100_000 + "]" * 100_000),
    ],
)
def test_malformed_page_tokens_are_refused(token: str) -> None:
    assert refused(validation.decode_page_token, token).startswith("page_token is not valid")


def test_no_token_is_the_first_page() -> None:
    assert validation.decode_page_token("") is None


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("boom", "%boom%"),
        ("100%", "%100\\%%"),
        ("a_b", "%a\\_b%"),
        ("back\\slash", "%back\\\\slash%"),
        ("it's", "%it's%"),
    ],
)
def test_like_patterns_take_wildcards_literally(text: str, pattern: str) -> None:
    assert validation.like_pattern(text) == pattern


@pytest.mark.parametrize(("given_", "used"), [(0, 50), (1, 1), (1000, 1000)])
def test_page_size(given_: int, used: int) -> None:
    assert validation.page_size(given_) == used


@pytest.mark.parametrize("size", [-1, 1001, 2**31 - 1])
def test_page_size_out_of_range(size: int) -> None:
    assert f"page_size must be from 1 to 1000 (0 means 50), not {size}" == refused(
        validation.page_size, size
    )


def test_filters() -> None:
    f = validation.make_filter(
        task="demo.echo", reason="worker_lost", status="dropped", since=T0, error_contains="x"
    )
    assert f == Filter("demo.echo", Reason.WORKER_LOST, Status.DROPPED, T0, None, "x")
    assert validation.make_filter() == Filter()
    assert 'filter.reason "nope" is not one of "retries_exhausted", "permanent_error", ' in refused(
        validation.make_filter, reason="nope"
    )
    assert 'filter.status "x" is not one of "active", "replayed", "dropped"' == refused(
        validation.make_filter, status="x"
    )
    assert "must be before filter.until" in refused(validation.make_filter, since=T0, until=T0)
    assert "NUL" in refused(validation.make_filter, task="a\x00b")


def test_selection() -> None:
    active = Filter(task="t", status=Status.ACTIVE)
    assert validation.selection(["b", "a", "b"], None, max_ids=3, action="replay").ids == (
        "b",
        "a",
    )
    assert validation.selection([], Filter(task="t"), max_ids=3, action="drop").filter == active
    assert validation.selection([], active, max_ids=3, action="drop").filter == active
    assert "give either ids or filter to drop, not both" == refused(
        validation.selection, ["a"], Filter(), max_ids=3, action="drop"
    )
    assert refused(validation.selection, [], None, max_ids=3, action="replay").startswith(
        "give ids or a filter to replay"
    )
    assert refused(validation.selection, ["a"] * 4, None, max_ids=3, action="replay").startswith(
        "at most 3 ids per call, not 4"
    )
    assert "ids is required" == refused(
        validation.selection, ["a", ""], None, max_ids=3, action="replay"
    )
    assert "a replay filter selects active entries only" in refused(
        validation.selection, [], Filter(status=Status.REPLAYED), max_ids=3, action="replay"
    )


def test_small_fields() -> None:
    assert validation.drop_reason("  obsolete  ") == "obsolete"
    assert refused(validation.drop_reason, " ").startswith("reason is required")
    assert validation.rate_limit(0) is None and validation.rate_limit(2.5) == 2.5
    for bad in (-1.0, math.nan, math.inf):
        assert "rate_per_second must be 0 (no limit) or a positive number" in refused(
            validation.rate_limit, bad
        )
    assert validation.retention(0.5) == timedelta(hours=12)
    for bad in (0.0, -1.0, math.nan, 1e9):
        assert "older_than_days must be more than 0" in refused(validation.retention, bad)
    assert validation.actor(None) == validation.actor("  ") == "unknown"
    assert validation.actor("alice@laptop\n\x1b[31m") == "alice@laptop[31m"
    assert len(validation.actor("x" * 1000)) == validation.MAX_ACTOR_LENGTH


def test_normalise_json_turns_integral_floats_into_ints() -> None:
    out = validation.normalise_json({"a": 1.0, "b": [2.0, 2.5, {"c": -3.0}], "d": True, "e": None})
    assert out == {"a": 1, "b": [2, 2.5, {"c": -3}], "d": True, "e": None}
    assert isinstance(out["a"], int) and isinstance(out["b"][1], float)
    assert isinstance(validation.normalise_json(2.0**60), float), "beyond 2**53: left alone"


def _report(**overrides: object) -> object:
    fields: dict[str, object] = {
        "job_id": "j1",
        "idempotency_key": "",
        "task": "demo.echo",
        "queue": "default",
        "payload": {"n": 1.0},
        "reason": "retries_exhausted",
        "error_type": "ValueError",
        "error_message": "boom",
        "traceback": "tb",
        "attempts": [],
        "trace_id": "",
        "first_failed_at": None,
        "dead_lettered_at": None,
        "final_attempt": 1,
        "worker": "w",
    }
    fields.update(overrides)
    return validation.report(**fields)  # type: ignore[arg-type]


def test_report_defaults_and_clipping() -> None:
    attempts = [
        AttemptRecord(1, "w", T0, 0.1, "failed", "E", "m\x00"),
        AttemptRecord(2, "w", T0 + timedelta(seconds=5), 0.1, "failed"),
    ]
    r = _report(
        attempts=attempts,
        traceback="x" * (validation.MAX_TRACEBACK_CHARS + 10) + "ValueError: end",
        error_message="e\x00" * 20_000,
    )
    assert r.idempotency_key == "j1"  # type: ignore[attr-defined]
    assert r.payload == {"n": 1}  # type: ignore[attr-defined]
    assert r.first_failed_at == T0, "the earliest attempt"  # type: ignore[attr-defined]
    assert r.dead_lettered_at > T0  # type: ignore[attr-defined]
    assert r.traceback.endswith("ValueError: end")  # type: ignore[attr-defined]
    assert r.traceback.startswith("…(truncated)\n")  # type: ignore[attr-defined]
    assert "\x00" not in r.error_message  # type: ignore[attr-defined]
    assert r.error_message.endswith("…(truncated)")  # type: ignore[attr-defined]
    assert r.attempts[0].error_message == "m"  # type: ignore[attr-defined]
    no_attempts = _report(dead_lettered_at=T0)
    assert no_attempts.first_failed_at == T0  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"job_id": ""}, "job_id is required"),
        ({"job_id": "a\nb"}, "job_id must not contain control characters"),
        ({"job_id": "x" * 256}, "job_id is 256 characters long; the limit is 255"),
        ({"task": ""}, "task is required"),
        ({"queue": ""}, "queue is required"),
        ({"reason": "tired"}, 'reason "tired" is not one of'),
        ({"final_attempt": 0}, "final_attempt must be 1 or more"),
    ],
)
def test_bad_reports(overrides: dict[str, object], message: str) -> None:
    assert message in refused(_report, **overrides)


def test_merge_attempts_keeps_every_number_newest_wins() -> None:
    stored = [{"number": 1, "v": "old"}, {"number": 2, "v": "old"}]
    reported = [{"number": 2, "v": "new"}, {"number": 7, "v": "new"}]
    assert merge_attempts(stored, reported) == [
        {"number": 1, "v": "old"},
        {"number": 2, "v": "new"},
        {"number": 7, "v": "new"},
    ]


def test_trace_urls() -> None:
    template = "http://localhost:16686/trace/{trace_id}?uiFind={x}"
    assert (
        convert.render_trace_url(template, "abc") == "http://localhost:16686/trace/abc?uiFind={x}"
    )
    assert convert.render_trace_url("", "abc") == ""
    assert convert.render_trace_url(template, "") == ""


def test_report_from_proto_reads_every_field() -> None:
    request = pb.ReportDeadLetterRequest(
        job_id="j",
        task="demo.echo",
        queue="default",
        reason="worker_lost",
        final_attempt=2,
        attempts=[job_pb2.Attempt(number=1, worker="w", outcome="worker_lost")],
    )
    request.payload.update({"n": 3})
    request.dead_lettered_at.FromDatetime(T0)
    report = convert.report_from_proto(request)
    assert report.payload == {"n": 3} and isinstance(report.payload["n"], int)
    assert report.reason is Reason.WORKER_LOST and report.dead_lettered_at == T0
    assert report.attempts[0].started_at == T0, "no start time: the dead-lettering's"
    assert report.first_failed_at == T0
    assert report.idempotency_key == "j"


def test_refusals_quote_long_values_bounded() -> None:
    message = refused(validation.parse_reason, "x" * 100_000, "filter.reason")
    assert len(message) < 300 and "(100000 characters)" in message


@pytest.mark.parametrize(
    ("entry_id", "message"),
    [("", "id is required"), ("a\x00b", "NUL"), ("a\nb", "control"), ("x" * 256, "limit")],
)
def test_entry_ids_are_refused_before_the_store(entry_id: str, message: str) -> None:
    assert message in refused(validation.entry_id, entry_id)


@pytest.mark.parametrize(
    ("seconds", "nanos"), [(2**62, 0), (-(2**40), 0), (0, -1), (0, 1_000_000_000)]
)
def test_out_of_range_timestamps_are_refused_by_name(seconds: int, nanos: int) -> None:
    f = pb.DeadLetterFilter()
    f.since.seconds, f.since.nanos = seconds, nanos
    assert "filter.since is not a valid timestamp" in refused(convert.filter_from_proto, f)
