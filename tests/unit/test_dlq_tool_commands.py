"""dlq-tool's commands against an in-memory fake of dlq-svc: confirmations, --yes, dry runs,
and that a confirmed bulk change acts on exactly what was counted."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from dlq_svc.tool.args import parse_args
from dlq_svc.tool.client import Page
from dlq_svc.tool.commands import COMMANDS, Terminal
from dlq_svc.tool.errors import UsageError
from relayq.v1 import dead_letter_pb2

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@dataclass
class FakeDlq:
    """Entries by id with a task and a status; records every request."""

    entries: dict[str, tuple[str, str]] = field(default_factory=dict)
    calls: list[object] = field(default_factory=list)

    def _select(self, ids: list[str], flt: dead_letter_pb2.DeadLetterFilter | None) -> list[str]:
        if ids:
            return ids
        return [
            i
            for i, (task, status) in self.entries.items()
            if status == "active" and (flt is None or not flt.task or flt.task == task)
        ]

    def list_entries(
        self, flt: dead_letter_pb2.DeadLetterFilter, *, limit: int, page_size: int | None
    ) -> Page:
        self.calls.append(("list", flt, limit, page_size))
        found = [
            dead_letter_pb2.DeadLetter(id=i, job_id=i, task=t, status=s)
            for i, (t, s) in self.entries.items()
            if not flt.status or flt.status == s
        ]
        return Page(found[:limit], more=len(found) > limit)

    def get(self, entry_id: str) -> dead_letter_pb2.DeadLetter:
        task, status = self.entries[entry_id]
        return dead_letter_pb2.DeadLetter(id=entry_id, job_id=entry_id, task=task, status=status)

    def stats(self) -> dead_letter_pb2.GetDeadLetterStatsResponse:
        return dead_letter_pb2.GetDeadLetterStatsResponse(active=len(self.entries))

    def replay(
        self, request: dead_letter_pb2.ReplayDeadLettersRequest
    ) -> Iterator[dead_letter_pb2.ReplayDeadLettersResponse]:
        self.calls.append(request)
        chosen = self._select(
            list(request.ids), request.filter if request.HasField("filter") else None
        )
        for n, entry_id in enumerate(chosen, 1):
            active = self.entries[entry_id][1] == "active"
            if request.dry_run:
                result = "would_replay" if active else "skipped: not active"
            elif active:
                self.entries[entry_id] = (self.entries[entry_id][0], "replayed")
                result = "replayed"
            else:
                result = "skipped: not active"
            yield dead_letter_pb2.ReplayDeadLettersResponse(
                id=entry_id, job_id=entry_id, result=result, done=n, total=len(chosen)
            )

    def drop(
        self, request: dead_letter_pb2.DropDeadLettersRequest
    ) -> dead_letter_pb2.DropDeadLettersResponse:
        self.calls.append(request)
        chosen = self._select(
            list(request.ids), request.filter if request.HasField("filter") else None
        )
        dropped = [i for i in chosen if self.entries[i][1] == "active"]
        if not request.dry_run:
            for i in dropped:
                self.entries[i] = (self.entries[i][0], "dropped")
        return dead_letter_pb2.DropDeadLettersResponse(
            ids=dropped, count=len(dropped), dry_run=request.dry_run
        )

    def purge(
        self, request: dead_letter_pb2.PurgeDeadLettersRequest
    ) -> dead_letter_pb2.PurgeDeadLettersResponse:
        self.calls.append(request)
        gone = [i for i, (_, s) in self.entries.items() if s == "dropped"]
        if not request.dry_run:
            for i in gone:
                del self.entries[i]
        return dead_letter_pb2.PurgeDeadLettersResponse(count=len(gone), dry_run=request.dry_run)


@dataclass
class Run:
    code: int
    out: str
    err: str


def run(fake: FakeDlq, argv: list[str], *, answer: str | None = None) -> Run:
    out, err = io.StringIO(), io.StringIO()
    term = Terminal(
        out=out,
        err=err,
        inp=io.StringIO(answer or ""),
        interactive=answer is not None,
        err_is_tty=False,
    )
    ns = parse_args(argv, NOW)
    code = COMMANDS[ns.command](ns, fake, term, NOW)
    return Run(code, out.getvalue(), err.getvalue())


def fake_with(**tasks: str) -> FakeDlq:
    return FakeDlq({i: (t, "active") for i, t in tasks.items()})


def test_bulk_replay_without_a_terminal_is_refused_before_any_call() -> None:
    fake = fake_with(a="t", b="t")
    with pytest.raises(UsageError, match="refusing to replay without confirmation") as refused:
        run(fake, ["replay", "--task", "t"])
    assert refused.value.exit_code == 2 and fake.calls == []
    with pytest.raises(UsageError):
        run(fake, ["replay", "a", "b"])
    for argv in (["drop", "--all", "--reason", "r"], ["purge", "--older-than-days", "1"]):
        with pytest.raises(UsageError, match="stdin is not a terminal"):
            run(fake, argv)
    assert fake.calls == []


def test_confirmed_replay_by_filter_acts_on_exactly_the_counted_entries() -> None:
    fake = fake_with(a="t", b="t", c="other")
    fake.entries["b"] = ("t", "dropped")
    result = run(fake, ["replay", "--task", "t", "--rate", "5", "--reason", "fixed"], answer="y\n")
    assert result.code == 0
    assert "Replay 1 entry? [y/N] " in result.err
    preview, real = fake.calls
    assert isinstance(preview, dead_letter_pb2.ReplayDeadLettersRequest) and preview.dry_run
    assert preview.filter.task == "t"
    assert isinstance(real, dead_letter_pb2.ReplayDeadLettersRequest) and not real.dry_run
    assert list(real.ids) == ["a"] and real.rate_per_second == 5 and real.reason == "fixed"
    assert fake.entries["a"] == ("t", "replayed") and fake.entries["c"] == ("other", "active")
    assert result.out.strip() == "Replayed a (job a)."
    assert "replay [" in result.err  # progress on stderr


def test_the_preview_lists_what_would_be_skipped() -> None:
    fake = fake_with(a="t", b="t", c="t")
    fake.entries["b"] = ("t", "dropped")
    result = run(fake, ["replay", "a", "b", "c"], answer="y\n")
    assert "1 of 3 would be skipped:\nID  RESULT\nb   skipped: not active\n" in result.err
    assert "Replay 2 entries? [y/N] " in result.err
    real = fake.calls[-1]
    assert isinstance(real, dead_letter_pb2.ReplayDeadLettersRequest)
    assert list(real.ids) == ["a", "b", "c"]  # ids as given: the server reports the skip again
    assert result.out == "Replayed 2 of 3.\nID  RESULT\nb   skipped: not active\n"


def test_declined_replay_changes_nothing_and_exits_2() -> None:
    fake = fake_with(a="t", b="t")
    result = run(fake, ["replay", "a", "b"], answer="n\n")
    assert result.code == 2 and "Replay 2 entries? [y/N] " in result.err
    assert "Nothing replayed." in result.err and result.out == ""
    assert all(status == "active" for _, status in fake.entries.values())
    eof = run(fake, ["replay", "a", "b"], answer="")  # Ctrl-D at the prompt
    assert eof.code == 2


def test_yes_sends_the_filter_without_a_preview() -> None:
    fake = fake_with(a="t", b="t")
    result = run(fake, ["replay", "--task", "t", "--yes", "--json"])
    assert result.code == 0 and len(fake.calls) == 1
    (request,) = fake.calls
    assert isinstance(request, dead_letter_pb2.ReplayDeadLettersRequest)
    assert request.filter.task == "t" and not request.ids and not request.dry_run
    assert json.loads(result.out) == [
        {"id": "a", "job_id": "a", "result": "replayed"},
        {"id": "b", "job_id": "b", "result": "replayed"},
    ]
    assert "2/2 100%" in result.err


def test_replay_all_sends_an_empty_filter() -> None:
    fake = fake_with(a="t")
    run(fake, ["replay", "--all", "-y"])
    (request,) = fake.calls
    assert isinstance(request, dead_letter_pb2.ReplayDeadLettersRequest)
    assert request.HasField("filter") and request.filter == dead_letter_pb2.DeadLetterFilter()


def test_one_id_needs_no_confirmation_and_no_progress() -> None:
    fake = fake_with(a="t")
    result = run(fake, ["replay", "a"])
    assert result.code == 0 and result.err == "" and len(fake.calls) == 1


def test_dry_run_needs_no_confirmation_and_changes_nothing() -> None:
    fake = fake_with(a="t", b="t")
    result = run(fake, ["replay", "--task", "t", "--dry-run"])
    assert result.code == 0 and "Would replay 2 of 2." in result.out
    assert all(status == "active" for _, status in fake.entries.values())
    drop = run(fake, ["drop", "--task", "t", "--dry-run", "--reason", "r", "--json"])
    assert json.loads(drop.out) == {"ids": ["a", "b"], "count": 2, "dry_run": True}
    assert all(status == "active" for _, status in fake.entries.values())


def test_nothing_to_replay_asks_nothing() -> None:
    fake = fake_with(a="t")
    result = run(fake, ["replay", "--task", "none"], answer="")
    assert result.code == 0 and "[y/N]" not in result.err
    assert result.out.strip() == "Nothing to replay."


def test_confirmed_drop_by_filter_drops_the_counted_ids() -> None:
    fake = fake_with(a="t", b="t", c="other")
    result = run(fake, ["drop", "--task", "t", "--reason", "bad data"], answer="yes\n")
    assert result.code == 0 and "Drop 2 entries? [y/N] " in result.err
    preview, real = fake.calls
    assert isinstance(preview, dead_letter_pb2.DropDeadLettersRequest) and preview.dry_run
    assert isinstance(real, dead_letter_pb2.DropDeadLettersRequest)
    assert list(real.ids) == ["a", "b"] and real.reason == "bad data" and not real.dry_run
    assert result.out.startswith("Dropped 2 entries.")


def test_drop_of_one_inactive_id_says_so() -> None:
    fake = fake_with(a="t")
    fake.entries["a"] = ("t", "replayed")
    result = run(fake, ["drop", "a", "--reason", "r"])
    assert result.out.strip() == "Dropped 0 entries. 1 not dropped (not active)."


def test_purge_confirmation_and_dry_run() -> None:
    fake = fake_with(a="t")
    fake.entries["a"] = ("t", "dropped")
    dry = run(fake, ["purge", "--older-than-days", "30", "--dry-run"])
    assert (
        dry.out.strip() == "Would purge 1 dropped entry older than 30 days." and "a" in fake.entries
    )
    declined = run(fake, ["purge", "--older-than-days", "30"], answer="\n")
    assert declined.code == 2 and "Purge 1 dropped entry older than 30 days?" in declined.err
    assert "a" in fake.entries
    done = run(fake, ["purge", "--older-than-days", "30", "--json"], answer="y\n")
    assert json.loads(done.out) == {"count": 1, "dry_run": False} and fake.entries == {}


def test_list_notes_more_on_stderr_and_json_is_a_list() -> None:
    fake = fake_with(a="t", b="t", c="t")
    table = run(fake, ["list", "--limit", "2"])
    assert len(table.out.splitlines()) == 3 and "more match" in table.err
    data = json.loads(run(fake, ["list", "--json", "--status", "all"]).out)
    assert [d["id"] for d in data] == ["a", "b", "c"]
    last = fake.calls[-1]
    assert isinstance(last, tuple) and last[0] == "list"
    assert last[1].status == "" and last[2:] == (50, None)


def test_show_and_stats_json() -> None:
    fake = fake_with(a="t")
    assert json.loads(run(fake, ["show", "a", "--json"]).out)["task"] == "t"
    assert json.loads(run(fake, ["stats", "--json"]).out)["active"] == 1
