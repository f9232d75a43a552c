"""dlq-tool's command line: times, numbers, selections, and every way to get exit code 2."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from dlq_svc.tool.args import Filters, filters_from, parse_args, parse_when

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("45s", NOW - timedelta(seconds=45)),
        ("30m", NOW - timedelta(minutes=30)),
        ("2h", NOW - timedelta(hours=2)),
        ("3d", NOW - timedelta(days=3)),
        ("1w", NOW - timedelta(weeks=1)),
        ("1h30m", NOW - timedelta(minutes=90)),
        ("1.5h", NOW - timedelta(minutes=90)),
        ("2H", NOW - timedelta(hours=2)),
        ("2024-04-30T03:00:00Z", datetime(2024, 4, 30, 3, tzinfo=UTC)),
        ("2024-04-30T05:00:00+02:00", datetime(2024, 4, 30, 3, tzinfo=UTC)),
        ("2024-04-30T03:00", datetime(2024, 4, 30, 3, tzinfo=UTC)),  # no zone: UTC
        ("2024-04-30", datetime(2024, 4, 30, tzinfo=UTC)),
    ],
)
def test_parse_when(text: str, expected: datetime) -> None:
    assert parse_when(text, NOW) == expected


@pytest.mark.parametrize("text", ["", "2", "h", "2x", "-2h", "yesterday", "2024-13-01", "2h ago"])
def test_parse_when_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="neither an ISO-8601 time"):
        parse_when(text, NOW)


def test_parse_when_keeps_the_offset_of_iso_input() -> None:
    when = parse_when("2024-04-30T05:00:00+02:00", NOW)
    assert when.utcoffset() == timezone(timedelta(hours=2)).utcoffset(None)


def test_list_defaults() -> None:
    ns = parse_args(["list"], NOW)
    assert ns.command == "list" and ns.limit == 50 and ns.page_size is None
    assert ns.json is False and ns.address is None and ns.timeout == 30.0
    assert filters_from(ns) == Filters(status="active")


def test_list_filters_become_the_proto_filter() -> None:
    ns = parse_args(
        [
            "list",
            "--task=demo.charge",
            "--reason=permanent_error",
            "--status=dropped",
            "--since=2h",
            "--until=2024-05-01T11:30:00Z",
            "--error",
            "Timeout",
            "--limit=7",
            "--page-size=3",
        ],
        NOW,
    )
    assert ns.limit == 7 and ns.page_size == 3
    flt = filters_from(ns).to_proto()
    assert flt.task == "demo.charge" and flt.reason == "permanent_error"
    assert flt.status == "dropped" and flt.error_contains == "Timeout"
    assert flt.since.ToDatetime(tzinfo=UTC) == NOW - timedelta(hours=2)
    assert flt.until.ToDatetime(tzinfo=UTC) == datetime(2024, 5, 1, 11, 30, tzinfo=UTC)


def test_status_all_means_no_status_filter() -> None:
    flt = filters_from(parse_args(["list", "--status", "all"], NOW)).to_proto()
    assert flt.status == "" and not flt.HasField("since")


@pytest.mark.parametrize(
    "argv",
    [
        ["--json", "--address", "h:1", "--timeout", "5", "stats"],
        ["stats", "--json", "--address", "h:1", "--timeout", "5"],
    ],
)
def test_common_options_go_before_or_after_the_command(argv: list[str]) -> None:
    ns = parse_args(argv, NOW)
    assert ns.json is True and ns.address == "h:1" and ns.timeout == 5.0


def test_replay_by_ids_with_rate_and_note() -> None:
    ns = parse_args(["replay", "a", "b", "--rate", "2.5", "--reason", "fixed upstream"], NOW)
    assert ns.ids == ["a", "b"] and ns.rate == 2.5 and ns.note == "fixed upstream"
    assert ns.dry_run is False and ns.yes is False


def test_replay_by_filter_uses_failure_reason() -> None:
    ns = parse_args(["replay", "--task", "demo.charge", "--failure-reason", "worker_lost"], NOW)
    flt = filters_from(ns).to_proto()
    assert ns.ids == [] and flt.task == "demo.charge" and flt.reason == "worker_lost"
    assert flt.status == ""  # a filter only ever selects active entries on replay/drop


def test_drop_reason_is_the_note() -> None:
    ns = parse_args(["drop", "x", "--reason", "bad payload", "--dry-run", "-y"], NOW)
    assert ns.note == "bad payload" and ns.dry_run and ns.yes


def test_purge() -> None:
    ns = parse_args(["purge", "--older-than-days", "30", "--dry-run"], NOW)
    assert ns.older_than_days == 30.0 and ns.dry_run


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["frobnicate"], "invalid choice"),
        (["list", "--since", "soon"], "argument --since: 'soon' is neither"),
        (["list", "--until", "3q"], "argument --until"),
        (["list", "--since", "1h", "--until", "2h"], "--since must be before --until"),
        (["list", "--status", "gone"], "argument --status: invalid choice"),
        (["list", "--limit", "-1"], "argument --limit: -1 is out of range"),
        (["list", "--limit", "ten"], "argument --limit: 'ten' is not a number"),
        (["list", "--page-size", "0"], "between 1 and 1000"),
        (["list", "--page-size", "1001"], "between 1 and 1000"),
        (["list", "--task", " "], "argument --task: must not be empty"),
        (["show"], "the following arguments are required: ID"),
        (["show", ""], "argument ID: must not be empty"),
        (["replay"], "give entry ids, filters, or --all"),
        (["replay", "a", "--task", "t"], "give entry ids or filters, not both"),
        (["replay", "a", "--all"], "give entry ids or filters, not both"),
        (["replay", "--all", "--task", "t"], "--all selects every active entry"),
        (["replay", "a", "--rate", "0"], "argument --rate: 0 is out of range"),
        (["replay", "a", "--rate", "nan"], "argument --rate"),
        (["replay", "a", "--rate", "inf"], "argument --rate"),
        (["replay", "a", "--reason", ""], "argument --reason: must not be empty"),
        (["replay", "--status", "active", "--all"], "unrecognized arguments: --status"),
        (["drop", "a"], "the following arguments are required: --reason"),
        (["drop", "a", "--reason", "  "], "argument --reason: must not be empty"),
        (["drop", "--reason", "r"], "give entry ids, filters, or --all"),
        (["purge"], "the following arguments are required: --older-than-days"),
        (["purge", "--older-than-days", "0"], "argument --older-than-days: 0 is out of range"),
        (["purge", "--older-than-days", "-3"], "argument --older-than-days"),
        (["stats", "--timeout", "0"], "argument --timeout"),
    ],
)
def test_bad_usage_exits_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(argv, NOW)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.startswith("usage: dlq-tool")
