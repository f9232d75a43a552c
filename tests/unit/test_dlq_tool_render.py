"""dlq-tool's output: tables, the full ``show`` view, stats, JSON, and the progress bar."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

from google.protobuf import timestamp_pb2

from dlq_svc.tool import render
from dlq_svc.tool.progress import Progress
from relayq.v1 import dead_letter_pb2, job_pb2

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def ts(when: datetime) -> timestamp_pb2.Timestamp:
    value = timestamp_pb2.Timestamp()
    value.FromDatetime(when)
    return value


def entry(**overrides: object) -> dead_letter_pb2.DeadLetter:
    message = dead_letter_pb2.DeadLetter(
        id="job-1",
        job_id="job-1",
        idempotency_key="key-1",
        task="demo.charge",
        queue="default",
        reason="retries_exhausted",
        error_type="TimeoutError",
        error_message="upstream took too long",
        traceback=(
            'Traceback (most recent call last):\n  File "x.py", line 1\nTimeoutError: upstream'
        ),
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        trace_url="http://traces/4bf92f3577b34da6a3ce929d0e0e4736",
        first_failed_at=ts(NOW - timedelta(hours=3, minutes=12)),
        dead_lettered_at=ts(NOW - timedelta(hours=2)),
        updated_at=ts(NOW - timedelta(minutes=5)),
        status="active",
        dead_letter_count=2,
        attempts=[
            job_pb2.Attempt(
                number=1,
                worker="w1@host",
                started_at=ts(NOW - timedelta(hours=3, minutes=12)),
                duration_seconds=0.25,
                outcome="failed",
                error_type="TimeoutError",
                error_message="first",
                countdown_seconds=2.0,
            ),
            job_pb2.Attempt(number=2, worker="w2@host", duration_seconds=1.5, outcome="failed"),
        ],
        audit=[
            dead_letter_pb2.AuditRecord(
                action="dead_lettered",
                at=ts(NOW - timedelta(hours=2)),
                actor="w2@host",
                reason="retries_exhausted",
            ),
            dead_letter_pb2.AuditRecord(
                action="dropped", at=ts(NOW), actor="alice@laptop", reason="bad card", result="ok"
            ),
        ],
    )
    message.payload.update({"amount": 1200, "currency": "EUR", "ratio": 0.5, "tags": [1, 2]})
    for name, value in overrides.items():
        setattr(message, name, value)
    return message


def test_format_helpers() -> None:
    assert render.format_span(45) == "45s"
    assert render.format_span(725) == "12m05s"
    assert render.format_span(3 * 3600 + 12 * 60) == "3h12m"
    assert render.format_span(2 * 86400 + 4 * 3600) == "2d04h"
    assert render.format_span(-5) == "0s"  # clock skew
    assert render.format_duration(0.25) == "250ms"
    assert render.format_duration(1.244) == "1.24s"
    assert render.format_duration(123) == "2m03s"
    assert render.format_time(NOW) == "2024-05-01T12:00:00Z"
    assert render.format_time(None) == "-"
    assert render.error_text("E", "") == "E" and render.error_text("E", "m") == "E: m"


def test_entries_table() -> None:
    long_error = entry(error_message="x" * 200, id="job-2", status="dropped")
    text = render.entries_table([entry(), long_error], NOW)
    lines = text.splitlines()
    assert lines[0].split() == ["ID", "TASK", "REASON", "STATUS", "AGE", "COUNT", "ERROR"]
    assert lines[1].split()[:6] == [
        "job-1",
        "demo.charge",
        "retries_exhausted",
        "active",
        "2h00m",
        "2",
    ]
    assert lines[1].endswith("TimeoutError: upstream took too long")
    assert lines[2].split()[3] == "dropped"
    error_cell = lines[2][lines[0].index("ERROR") :]
    assert len(error_cell) == render.ERROR_WIDTH and error_cell.endswith("…")
    # columns line up
    assert lines[1].index("demo.charge") == lines[0].index("TASK")


def test_entries_table_fits_a_terminal() -> None:
    wide = entry(error_message="x" * 200)
    for width in (100, 140):
        line = render.entries_table([wide], NOW, width=width).splitlines()[1]
        assert len(line) == width and line.endswith("…")
    narrow = render.entries_table([wide], NOW, width=40).splitlines()[1]
    error_cell = narrow[narrow.index("TimeoutError") :]
    assert len(error_cell) == render.MIN_ERROR_WIDTH


def test_entries_table_empty() -> None:
    assert render.entries_table([], NOW) == "No dead letters match."


def test_entry_detail_gives_the_trace_command_quoted_for_the_shell() -> None:
    text = render.entry_detail(entry(id="job 2; rm", job_id="job 2; rm"), NOW)
    assert "trace_command      relayq-trace 'job 2; rm'" in text


def test_entry_detail_shows_every_field() -> None:
    text = render.entry_detail(entry(), NOW)
    for expected in (
        "id                 job-1",
        "idempotency_key    key-1",
        "queue              default",
        "dead_letter_count  2",
        "first_failed_at    2024-05-01T08:48:00Z (3h12m ago)",
        "dead_lettered_at   2024-05-01T10:00:00Z (2h00m ago)",
        "updated_at         2024-05-01T11:55:00Z (5m00s ago)",
        "trace_id           4bf92f3577b34da6a3ce929d0e0e4736",
        "trace_url          http://traces/4bf92f3577b34da6a3ce929d0e0e4736",
        "trace_command      relayq-trace job-1",
        'payload:\n  {\n    "amount": 1200,',
        '    "ratio": 0.5,',
        "error:\n  TimeoutError: upstream took too long",
        'traceback:\n  Traceback (most recent call last):\n    File "x.py", line 1\n',
        "attempts (2):",
        "audit (2):",
    ):
        assert expected in text, expected
    attempts = text.split("attempts (2):\n")[1].split("\n\n")[0].splitlines()
    assert attempts[0].split() == [
        "#", "WORKER", "STARTED", "DURATION", "OUTCOME", "COUNTDOWN", "ERROR",
    ]  # fmt: skip
    assert attempts[1].split() == [
        "1", "w1@host", "2024-05-01T08:48:00Z", "250ms", "failed", "2s", "TimeoutError:", "first",
    ]  # fmt: skip
    assert attempts[2].split() == ["2", "w2@host", "-", "1.50s", "failed", "-", "-"]
    audit = text.split("audit (2):\n")[1].splitlines()
    assert audit[1].split() == [
        "2024-05-01T10:00:00Z", "dead_lettered", "w2@host", "retries_exhausted", "-",
    ]  # fmt: skip
    assert audit[2].split() == [
        "2024-05-01T12:00:00Z",
        "dropped",
        "alice@laptop",
        "bad",
        "card",
        "ok",
    ]


def test_entry_detail_of_a_sparse_entry() -> None:
    sparse = dead_letter_pb2.DeadLetter(id="j", job_id="j", status="active")
    text = render.entry_detail(sparse, NOW)
    assert "trace_url          -" in text and "first_failed_at    -" in text
    assert "payload:\n  {}" in text
    assert "attempts (0):\n  (none recorded)" in text and "audit (0):\n  (empty)" in text


def test_control_characters_from_a_job_are_escaped() -> None:
    hostile = entry(error_message="boom\x1b[2J\x07", traceback="line1\n\x1b]0;pwned\x07line2")
    table = render.entries_table([hostile], NOW)
    detail = render.entry_detail(hostile, NOW)
    for text in (table, detail):
        assert "\x1b" not in text and "\x07" not in text
    assert "boom\\x1b[2J\\x07" in table
    assert "traceback:\n  line1\n  \\x1b]0;pwned\\x07line2" in detail


def test_entry_json_has_every_field_with_proto_names() -> None:
    data = json.loads(render.dumps(render.message_dict(entry())))
    assert set(data) == {f.name for f in dead_letter_pb2.DeadLetter.DESCRIPTOR.fields}
    assert data["payload"] == {"amount": 1200, "currency": "EUR", "ratio": 0.5, "tags": [1, 2]}
    assert data["dead_lettered_at"] == "2024-05-01T10:00:00Z"
    assert data["dead_letter_count"] == 2
    assert data["attempts"][0]["countdown_seconds"] == 2.0
    assert data["audit"][1]["actor"] == "alice@laptop"


def test_stats_text_and_json() -> None:
    stats = dead_letter_pb2.GetDeadLetterStatsResponse(
        active=3,
        by_task=[dead_letter_pb2.Count(key="demo.charge", count=3)],
        by_reason=[dead_letter_pb2.Count(key="permanent_error", count=3)],
        by_status=[
            dead_letter_pb2.Count(key="active", count=3),
            dead_letter_pb2.Count(key="dropped", count=1),
        ],
        oldest_active_at=ts(NOW - timedelta(days=1)),
        oldest_active_id="job-9",
    )
    text = render.stats_text(stats, NOW)
    assert text.startswith(
        "active  3\noldest  job-9  dead-lettered 2024-04-30T12:00:00Z  (1d00h ago)"
    )
    assert "active by task:\n  KEY          COUNT\n  demo.charge  3" in text
    assert "all by status:\n  KEY      COUNT\n  active   3\n  dropped  1" in text
    data = render.message_dict(stats)
    assert data["active"] == 3 and data["by_status"][1] == {"key": "dropped", "count": 1}
    empty = render.stats_text(dead_letter_pb2.GetDeadLetterStatsResponse(), NOW)
    assert empty.startswith("active  0\n\n") and "active by task:\n  (none)" in empty


def test_replay_text() -> None:
    r = dead_letter_pb2.ReplayDeadLettersResponse
    one = [r(id="a", job_id="a", result="replayed", done=1, total=1)]
    assert render.replay_text(one, dry_run=False) == "Replayed a (job a)."
    mixed = [*one, r(id="b", job_id="b", result="skipped: not active", done=2, total=2)]
    assert render.replay_text(mixed, dry_run=False) == (
        "Replayed 1 of 2.\nID  RESULT\nb   skipped: not active"
    )
    preview = [
        r(id="a", job_id="a", result="would_replay"),
        r(id="b", job_id="b", result="skipped: x"),
    ]
    text = render.replay_text(preview, dry_run=True)
    assert text.endswith("Would replay 1 of 2.") and "a   a       would_replay" in text
    assert render.replay_text([], dry_run=True) == "Nothing to replay."
    assert render.replay_result_dict(one[0]) == {"id": "a", "job_id": "a", "result": "replayed"}


def test_drop_and_purge_text() -> None:
    drop = dead_letter_pb2.DropDeadLettersResponse(ids=["a"], count=1)
    assert render.drop_text(drop, asked=2) == "Dropped 1 entry. 1 not dropped (not active).\n  a"
    dry = dead_letter_pb2.DropDeadLettersResponse(ids=["a", "b"], count=2, dry_run=True)
    assert render.drop_text(dry, asked=None) == "Would drop 2 entries.\n  a\n  b"
    purge = dead_letter_pb2.PurgeDeadLettersResponse(count=4)
    assert render.purge_text(purge, 30) == "Purged 4 dropped entries older than 30 days."
    assert render.purge_text(purge, 1).endswith("older than 1 day.")
    assert render.format_days(0.5) == "0.5 days"
    assert render.message_dict(purge) == {"count": 4, "dry_run": False}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_on_a_pipe_writes_a_line_per_tenth() -> None:
    out, clock = io.StringIO(), Clock()
    progress = Progress(out, label="replay", interactive=False, clock=clock)
    for done in range(1, 21):
        clock.now += 0.5
        progress.update(done, 20)
    progress.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 11  # 1/20, then every tenth up to 20/20
    assert lines[0] == "replay [##" + "-" * 28 + "] 1/20   5%  2.0/s  eta 9s"
    assert lines[-1] == "replay [" + "#" * 30 + "] 20/20 100%  2.0/s"
    assert "eta 5s" in lines[5]  # 10 done at 2/s, 10 to go


def test_progress_on_a_terminal_redraws_in_place() -> None:
    out, clock = io.StringIO(), Clock()
    progress = Progress(out, label="replay", interactive=True, clock=clock)
    progress.update(1, 4)
    progress.update(2, 4)  # within the redraw interval: skipped
    clock.now += 1
    progress.update(3, 4)
    progress.update(4, 4)  # the last one always shows
    progress.close()
    text = out.getvalue()
    assert text.count("\r") == 3 and "\n" not in text[:-1] and text.endswith("\n")
    assert "4/4 100%" in text.rsplit("\r", 1)[1]
