"""``dlq-tool`` as an operator runs it: the installed console script in a subprocess, against a
real dlq-svc (in process, on a free port) with real PostgreSQL and a real Redis broker.

Dead letters are created the way workers create them, through ``ReportDeadLetter``. Each test
works on a task name of its own, so tests do not see each other's entries; the server runs on
a database of its own (``fresh_dlq``), so purge touches nothing outside this module.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dlq_svc.tool.target import default_actor
from relayq.v1 import dead_letter_pb2
from tests.conftest import broker_messages
from tests.integration.dlq_fixtures import Dlq, fresh_dlq, report_request, unique_task

__all__ = ["fresh_dlq"]  # the fixture, imported for pytest

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

DLQ_TOOL = Path(sys.executable).parent / "dlq-tool"
NO_TOKEN = ""


@dataclass
class Result:
    code: int
    out: str
    err: str
    seconds: float

    def json(self) -> Any:
        return json.loads(self.out)


async def cli(
    dlq: Dlq | None,
    *args: str,
    token: str | None = None,
    cwd: Path | None = None,
    stdin: int | None = subprocess.DEVNULL,
    env: dict[str, str] | None = None,
) -> Result:
    """Runs ``dlq-tool`` with ``RELAYQ_DLQ_GRPC``/``RELAYQ_DLQ_ADMIN_TOKEN`` pointing at ``dlq``
    (``token=NO_TOKEN`` leaves the token out). The event loop keeps serving meanwhile."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RELAYQ_")}
    if dlq is not None:
        environ["RELAYQ_DLQ_GRPC"] = dlq.address
        chosen = dlq.token if token is None else token
        if chosen:
            environ["RELAYQ_DLQ_ADMIN_TOKEN"] = chosen
    environ.update(env or {})
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        str(DLQ_TOOL),
        *args,
        stdin=stdin,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environ,
        cwd=cwd or Path("/"),
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode(), time.monotonic() - started)


def one_line_error(result: Result, code: str) -> str:
    """Asserts exit 1 with a single ``dlq-tool: CODE: message`` line; returns the message."""
    assert result.code == 1, result
    assert result.out == ""
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith(f"dlq-tool: {code}: "), result.err
    return lines[0].removeprefix(f"dlq-tool: {code}: ")


async def report(dlq: Dlq, **fields: Any) -> dead_letter_pb2.DeadLetter:
    reply = await dlq.stub.ReportDeadLetter(report_request(**fields))
    return reply.dead_letter


async def seed(dlq: Dlq, task: str, count: int, **fields: Any) -> list[str]:
    """``count`` entries of ``task``, the first newest (a minute apart); their ids."""
    now = datetime.now(UTC)
    ids = []
    for i in range(count):
        entry = await report(dlq, task=task, dead_lettered_at=now - timedelta(minutes=i), **fields)
        ids.append(entry.id)
    return ids


async def status_of(dlq: Dlq, ids: Sequence[str]) -> list[str]:
    out = []
    for entry_id in ids:
        reply = await dlq.stub.GetDeadLetter(dead_letter_pb2.GetDeadLetterRequest(id=entry_id))
        out.append(reply.dead_letter.status)
    return out


def published_job_ids(dlq: Dlq) -> list[str]:
    return [m["kwargs"]["job_id"] for m in broker_messages(dlq.broker_url, "default")]


# -- list ---------------------------------------------------------------------------------------


async def test_list_table_json_and_filters(fresh_dlq: Dlq) -> None:
    task = unique_task("list")
    now = datetime.now(UTC)
    ids = []
    for i in range(7):
        timeout = i % 2 == 0
        entry = await report(
            fresh_dlq,
            task=task,
            dead_lettered_at=now - timedelta(minutes=i),
            reason="permanent_error" if i in (1, 4) else "retries_exhausted",
            error_type="TimeoutError" if timeout else "ValueError",
            error_message="upstream took too long" if timeout else "bad input",
        )
        ids.append(entry.id)

    table = await cli(fresh_dlq, "list", "--task", task)
    assert table.code == 0 and table.err == ""
    lines = table.out.splitlines()
    assert lines[0].split() == ["ID", "TASK", "REASON", "STATUS", "AGE", "COUNT", "ERROR"]
    assert [line.split()[0] for line in lines[1:]] == ids  # newest first
    first = lines[1].split()
    assert first[1:4] == [task, "retries_exhausted", "active"] and first[5] == "1"
    assert first[4].endswith("s")  # dead-lettered seconds ago
    assert lines[1].endswith("TimeoutError: upstream took too long")
    assert lines[2].split()[2] == "permanent_error" and lines[2].endswith("ValueError: bad input")

    data = (await cli(fresh_dlq, "list", "--task", task, "--json")).json()
    assert [d["id"] for d in data] == ids
    assert data[0]["task"] == task and data[0]["status"] == "active"
    assert data[0]["payload"] == {"n": 1} and len(data[0]["attempts"]) == 6

    async def listed(*flags: str) -> list[str]:
        result = await cli(fresh_dlq, "list", "--task", task, "--json", *flags)
        assert result.code == 0, result
        return [d["id"] for d in result.json()]

    since = (now - timedelta(minutes=4, seconds=30)).isoformat()
    until = (now - timedelta(minutes=1, seconds=30)).isoformat()
    cases: list[tuple[tuple[str, ...], list[str]]] = [
        (("--reason", "permanent_error"), [ids[1], ids[4]]),
        (("--error", "TIMEOUT"), [ids[0], ids[2], ids[4], ids[6]]),  # case-insensitive
        (("--error", "bad inp"), [ids[1], ids[3], ids[5]]),
        (("--since", "150s"), ids[:3]),
        (("--until", "150s"), ids[3:]),
        (("--since", since, "--until", until), ids[2:5]),
        (("--status", "dropped"), []),
        (("--status", "all"), ids),
    ]
    found = await asyncio.gather(*(listed(*flags) for flags, _ in cases))
    assert found == [expected for _, expected in cases]

    empty = await cli(fresh_dlq, "list", "--task", task, "--status", "replayed")
    assert empty.code == 0 and empty.out.strip() == "No dead letters match."

    bad = await cli(fresh_dlq, "list", "--reason", "no_such_reason")
    assert "filter.reason" in one_line_error(bad, "INVALID_ARGUMENT")


async def test_list_limit_follows_page_tokens(fresh_dlq: Dlq) -> None:
    task = unique_task("pages")
    ids = await seed(fresh_dlq, task, 7)
    paged = await cli(
        fresh_dlq, "list", "--task", task, "--limit", "5", "--page-size", "2", "--json"
    )
    assert paged.code == 0 and [d["id"] for d in paged.json()] == ids[:5]
    every = await cli(
        fresh_dlq, "list", "--task", task, "--limit", "0", "--page-size", "3", "--json"
    )
    assert [d["id"] for d in every.json()] == ids
    table = await cli(fresh_dlq, "list", "--task", task, "--limit", "3", "--page-size", "2")
    assert len(table.out.splitlines()) == 4
    assert "showing 3; more match" in table.err
    exact = await cli(fresh_dlq, "list", "--task", task, "--limit", "7", "--page-size", "7")
    assert exact.err == ""


# -- show ---------------------------------------------------------------------------------------


async def test_show_prints_every_field(fresh_dlq: Dlq) -> None:
    task = unique_task("show")
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    entry = await report(
        fresh_dlq,
        task=task,
        payload={"amount": 1200, "currency": "EUR", "lines": [{"sku": "a", "qty": 2}]},
        idempotency_key="order-77-charge",
        error_type="CardDeclined",
        error_message="insufficient funds",
        reason="permanent_error",
        final_attempt=3,
        trace_id=trace_id,
        worker="w7@node-3",
    )
    result = await cli(fresh_dlq, "show", entry.id)
    assert result.code == 0 and result.err == ""
    text = result.out
    for expected in (
        f"id                 {entry.id}",
        f"job_id             {entry.id}",
        "idempotency_key    order-77-charge",
        f"task               {task}",
        "queue              default",
        "status             active",
        "reason             permanent_error",
        "dead_letter_count  1",
        "error_type         CardDeclined",
        "error_message      insufficient funds",
        f"trace_id           {trace_id}",
        f"trace_url          http://localhost:16686/trace/{trace_id}",
        '    "amount": 1200,',
        '    "currency": "EUR",',
        '        "qty": 2,',
        "error:\n  CardDeclined: insufficient funds",
        "traceback:\n  Traceback (most recent call last):",
        "  CardDeclined: insufficient funds\n",
        "attempts (3):",
        "audit (1):",
    ):
        assert expected in text, expected
    for field in ("first_failed_at", "dead_lettered_at", "updated_at"):
        line = next(line for line in text.splitlines() if line.startswith(field))
        assert line.endswith(" ago)") and "Z (" in line
    attempts = text.split("attempts (3):\n")[1].split("\n\n")[0].splitlines()
    assert attempts[0].split() == [
        "#", "WORKER", "STARTED", "DURATION", "OUTCOME", "COUNTDOWN", "ERROR",
    ]  # fmt: skip
    first = attempts[1].split()
    assert first[:2] == ["1", "w7@node-3"] and first[2].endswith("Z")
    assert first[3:] == ["10ms", "failed", "2s", "CardDeclined:", "insufficient", "funds"]
    assert attempts[3].split()[5] == "-"  # the last attempt has no countdown
    audit = text.split("audit (1):\n")[1].splitlines()
    assert audit[1].split()[1:4] == ["dead_lettered", "w7@node-3", "permanent_error"]

    data = (await cli(fresh_dlq, "show", entry.id, "--json")).json()
    assert data["payload"] == {"amount": 1200, "currency": "EUR", "lines": [{"sku": "a", "qty": 2}]}
    assert data["trace_url"] == f"http://localhost:16686/trace/{trace_id}"
    assert [a["number"] for a in data["attempts"]] == [1, 2, 3]
    assert data["audit"][0]["action"] == "dead_lettered"
    assert data["traceback"].endswith("CardDeclined: insufficient funds")


async def test_show_unknown_id_is_one_line_not_found(fresh_dlq: Dlq) -> None:
    result = await cli(fresh_dlq, "show", "no-such-entry")
    assert "no-such-entry" in one_line_error(result, "NOT_FOUND")
    as_json = await cli(fresh_dlq, "show", "no-such-entry", "--json")
    one_line_error(as_json, "NOT_FOUND")


# -- replay -------------------------------------------------------------------------------------


async def test_replay_by_id_reuses_the_original_keys(fresh_dlq: Dlq) -> None:
    task = unique_task("replay")
    entry = await report(fresh_dlq, task="demo.echo", idempotency_key=f"{task}-key")
    result = await cli(fresh_dlq, "replay", entry.id, "--reason", "upstream fixed")
    assert result.code == 0, result
    assert result.out.strip() == f"Replayed {entry.id} (job {entry.id})."
    assert result.err == ""  # one entry: no prompt, no progress bar
    sent = [m for m in broker_messages(fresh_dlq.broker_url, "default")
            if m["kwargs"]["job_id"] == entry.id]  # fmt: skip
    assert len(sent) == 1
    assert sent[0]["kwargs"]["idempotency_key"] == f"{task}-key"
    assert sent[0]["headers"]["task"] == "demo.echo"

    shown = (await cli(fresh_dlq, "show", entry.id, "--json")).json()
    assert shown["status"] == "replayed"
    replayed = shown["audit"][-1]
    assert replayed["action"] == "replayed" and replayed["actor"] == default_actor()
    assert replayed["reason"] == "upstream fixed" and replayed["result"] == "enqueued"

    again = await cli(fresh_dlq, "replay", entry.id, "--json")
    assert again.code == 0
    assert again.json() == [
        {"id": entry.id, "job_id": entry.id, "result": "skipped: not active (replayed)"}
    ]
    assert published_job_ids(fresh_dlq).count(entry.id) == 1


async def test_replay_by_filter_with_yes_and_progress(fresh_dlq: Dlq) -> None:
    task = unique_task("bulk")
    ids = await seed(fresh_dlq, task, 3)
    other = await seed(fresh_dlq, unique_task("bystander"), 1)
    result = await cli(fresh_dlq, "replay", "--task", task, "--yes", "--json")
    assert result.code == 0, result
    assert sorted(r["id"] for r in result.json()) == sorted(ids)
    assert {r["result"] for r in result.json()} == {"replayed"}
    progress = result.err.splitlines()
    assert progress[-1].startswith("replay [" + "#" * 30 + "] 3/3 100%")
    assert await status_of(fresh_dlq, ids) == ["replayed"] * 3
    assert await status_of(fresh_dlq, other) == ["active"]
    assert set(ids) <= set(published_job_ids(fresh_dlq))


async def test_dry_run_publishes_nothing(fresh_dlq: Dlq) -> None:
    task = unique_task("dry")
    ids = await seed(fresh_dlq, task, 2)
    before = len(broker_messages(fresh_dlq.broker_url, "default"))
    table = await cli(fresh_dlq, "replay", "--task", task, "--dry-run")
    assert table.code == 0, table
    assert table.out.splitlines()[-1] == "Would replay 2 of 2."
    data = (await cli(fresh_dlq, "replay", *ids, "--dry-run", "--json")).json()
    assert data == [{"id": i, "job_id": i, "result": "would_replay"} for i in ids]
    drop = await cli(fresh_dlq, "drop", *ids, "--dry-run", "--reason", "r", "--json")
    assert drop.json() == {"ids": ids, "count": 2, "dry_run": True}
    assert len(broker_messages(fresh_dlq.broker_url, "default")) == before
    assert await status_of(fresh_dlq, ids) == ["active", "active"]


async def test_replay_rate_is_observed(fresh_dlq: Dlq) -> None:
    task = unique_task("rate")
    ids = await seed(fresh_dlq, task, 6)
    result = await cli(fresh_dlq, "replay", "--task", task, "--rate", "10", "--yes", "--json")
    assert result.code == 0 and len(result.json()) == 6
    times = []
    for entry_id in ids:
        reply = await fresh_dlq.stub.GetDeadLetter(
            dead_letter_pb2.GetDeadLetterRequest(id=entry_id)
        )
        audit = reply.dead_letter.audit[-1]
        assert audit.action == "replayed"
        times.append(audit.at.ToDatetime(tzinfo=UTC))
    spread = (max(times) - min(times)).total_seconds()
    assert spread >= 0.45, f"6 entries at 10/s took {spread:.3f}s"


# Runs argv[1:] with SIGINT at its default, as from a terminal: a run started in the background
# by a non-interactive shell (nohup, `&`) inherits SIGINT ignored, and Python then installs no
# Ctrl-C handler. An exec'd launcher, not preexec_fn: that runs Python in a fork() of this
# process, whose gRPC threads' fork handlers then break the child (epoll_wait on a closed fd).
_WITH_DEFAULT_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


async def test_interrupted_replay_leaves_each_entry_active_or_replayed(fresh_dlq: Dlq) -> None:
    task = unique_task("sigint")
    ids = await seed(fresh_dlq, task, 10)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RELAYQ_")}
    environ.update(RELAYQ_DLQ_GRPC=fresh_dlq.address, RELAYQ_DLQ_ADMIN_TOKEN=fresh_dlq.token)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _WITH_DEFAULT_SIGINT,
        str(DLQ_TOOL),
        # Slow enough that the interrupt lands mid-run even when this test process is starved of
        # CPU for a while (a loaded CI machine): 8 entries still to go take 4 s.
        *("replay", "--task", task, "--rate", "2", "--yes"),
        stdin=subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environ,
    )
    assert proc.stderr is not None
    seen = b""
    while b"2/10" not in seen:  # the progress line of the second entry
        line = await asyncio.wait_for(proc.stderr.readline(), timeout=15)
        assert line, seen
        seen += line
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=15)
    assert proc.returncode == 130, (out, seen + err)
    assert err.decode().splitlines()[-1] == "dlq-tool: interrupted"
    assert "Stopped after" in err.decode() and "Traceback" not in err.decode()
    statuses = await status_of(fresh_dlq, ids)
    assert set(statuses) == {"active", "replayed"}, statuses
    assert 2 <= statuses.count("replayed") < 10
    again = await cli(fresh_dlq, "replay", "--task", task, "--yes", "--json")
    assert len(again.json()) == statuses.count("active")  # the rest, and only the rest
    assert await status_of(fresh_dlq, ids) == ["replayed"] * 10


# -- confirmation -------------------------------------------------------------------------------


async def test_bulk_changes_without_a_terminal_or_yes_are_refused(fresh_dlq: Dlq) -> None:
    task = unique_task("confirm")
    ids = await seed(fresh_dlq, task, 2)
    results = await asyncio.gather(
        cli(fresh_dlq, "replay", "--task", task),
        cli(fresh_dlq, "replay", *ids),
        cli(fresh_dlq, "drop", "--task", task, "--reason", "nope"),
        cli(fresh_dlq, "purge", "--older-than-days", "30"),
    )
    for result in results:
        assert result.code == 2 and result.out == "", result
        lines = result.err.splitlines()
        assert len(lines) == 1 and "without confirmation: stdin is not a terminal" in lines[0]
        assert "--yes" in lines[0]
    assert await status_of(fresh_dlq, ids) == ["active", "active"]


async def test_confirmation_on_a_terminal(fresh_dlq: Dlq) -> None:
    task = unique_task("tty")
    ids = await seed(fresh_dlq, task, 2)

    async def answered(answer: bytes, *args: str) -> Result:
        controller, terminal = os.openpty()
        try:
            os.write(controller, answer)
            return await cli(fresh_dlq, *args, stdin=terminal)
        finally:
            os.close(terminal)
            os.close(controller)

    declined = await answered(b"n\n", "replay", "--task", task)
    assert declined.code == 2 and "Replay 2 entries? [y/N] " in declined.err
    assert "Nothing replayed." in declined.err
    assert await status_of(fresh_dlq, ids) == ["active", "active"]

    accepted = await answered(b"y\n", "replay", "--task", task)
    assert accepted.code == 0, accepted
    assert "Replay 2 entries? [y/N] " in accepted.err
    assert accepted.out.strip() == "Replayed 2 of 2."
    assert await status_of(fresh_dlq, ids) == ["replayed", "replayed"]


# -- drop, stats, purge -------------------------------------------------------------------------


async def test_drop_with_reason_leaves_an_audit_record(fresh_dlq: Dlq) -> None:
    task = unique_task("drop")
    ids = await seed(fresh_dlq, task, 3)
    result = await cli(fresh_dlq, "drop", ids[0], "--reason", "card number is invalid")
    assert result.code == 0, result
    assert result.out.splitlines()[0] == "Dropped 1 entry."
    shown = await cli(fresh_dlq, "show", ids[0])
    assert "status             dropped" in shown.out
    audit = shown.out.split("audit (2):\n")[1].splitlines()
    assert audit[2].split()[1:3] == ["dropped", default_actor()]
    assert "card number is invalid" in audit[2]

    bulk = await cli(fresh_dlq, "drop", "--task", task, "--reason", "cleanup", "--yes", "--json")
    assert bulk.code == 0, bulk
    assert sorted(bulk.json()["ids"]) == sorted(ids[1:])  # the server's order: oldest first
    assert bulk.json()["count"] == 2 and bulk.json()["dry_run"] is False
    assert await status_of(fresh_dlq, ids) == ["dropped"] * 3

    missing = await cli(fresh_dlq, "drop", ids[0])
    assert missing.code == 2 and "the following arguments are required: --reason" in missing.err
    unknown = await cli(fresh_dlq, "drop", "no-such-entry", "--reason", "r")
    assert "nothing was dropped" in one_line_error(unknown, "NOT_FOUND")


async def test_stats(fresh_dlq: Dlq) -> None:
    task = unique_task("stats")
    await seed(fresh_dlq, task, 2)
    await seed(fresh_dlq, task, 1, reason="worker_lost")
    data = (await cli(fresh_dlq, "stats", "--json")).json()
    by_task = {c["key"]: c["count"] for c in data["by_task"]}
    assert by_task[task] == 3
    assert data["active"] == sum(by_task.values())
    assert data["active"] == sum(c["count"] for c in data["by_reason"])
    assert {c["key"] for c in data["by_reason"]} >= {"retries_exhausted", "worker_lost"}
    assert data["oldest_active_id"] and data["oldest_active_at"].endswith("Z")
    listed = (await cli(fresh_dlq, "list", "--limit", "0", "--json")).json()
    assert data["active"] == len(listed)

    table = await cli(fresh_dlq, "stats")
    assert table.code == 0
    assert table.out.startswith(f"active  {data['active']}\noldest  {data['oldest_active_id']}")
    section = table.out.split("active by task:\n")[1].split("\n\n")[0]
    assert any(line.split() == [task, "3"] for line in section.splitlines())


async def test_purge_deletes_only_old_drops(fresh_dlq: Dlq) -> None:
    task = unique_task("purge")
    ids = await seed(fresh_dlq, task, 3)
    dropped = await cli(fresh_dlq, "drop", ids[0], ids[1], "--reason", "junk", "--yes")
    assert dropped.code == 0, dropped
    kept = await cli(fresh_dlq, "purge", "--older-than-days", "1", "--yes", "--json")
    assert kept.json() == {"count": 0, "dry_run": False}
    await asyncio.sleep(1.0)  # 0.00001 days is 0.864 s
    dry = await cli(fresh_dlq, "purge", "--older-than-days", "0.00001", "--dry-run", "--json")
    assert dry.json()["dry_run"] is True and dry.json()["count"] >= 2
    assert await status_of(fresh_dlq, ids[:2]) == ["dropped", "dropped"]
    purged = await cli(fresh_dlq, "purge", "--older-than-days", "0.00001", "--yes")
    assert purged.code == 0 and purged.out.startswith("Purged ")
    for gone in await asyncio.gather(*(cli(fresh_dlq, "show", i) for i in ids[:2])):
        one_line_error(gone, "NOT_FOUND")
    assert await status_of(fresh_dlq, ids[2:]) == ["active"]
    bad = await cli(fresh_dlq, "purge", "--older-than-days", "0")
    assert bad.code == 2


# -- where and who ------------------------------------------------------------------------------


async def test_auth_refusals(fresh_dlq: Dlq, tmp_path: Path) -> None:
    entry = await report(fresh_dlq, task=unique_task("auth"))
    anonymous = await cli(fresh_dlq, "replay", entry.id, token=NO_TOKEN, cwd=tmp_path)
    assert "authorization" in one_line_error(anonymous, "UNAUTHENTICATED")
    wrong = await cli(fresh_dlq, "drop", entry.id, "--reason", "r", token="wrong", cwd=tmp_path)
    one_line_error(wrong, "PERMISSION_DENIED")
    assert "wrong" not in wrong.err  # the token is never printed
    reads = await cli(fresh_dlq, "show", entry.id, token=NO_TOKEN, cwd=tmp_path)
    assert reads.code == 0  # reading needs no token
    assert await status_of(fresh_dlq, [entry.id]) == ["active"]


async def test_local_stack_env_is_found_from_a_subfolder(fresh_dlq: Dlq, tmp_path: Path) -> None:
    entry = await report(fresh_dlq, task=unique_task("stackenv"))
    state = tmp_path / ".relayq"
    state.mkdir()
    (state / "stack.env").write_text(
        f"RELAYQ_DLQ_GRPC={fresh_dlq.address}\nRELAYQ_DLQ_ADMIN_TOKEN={fresh_dlq.token}\n"
    )
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    result = await cli(None, "drop", entry.id, "--reason", "via stack.env", cwd=deep)
    assert result.code == 0, result
    assert await status_of(fresh_dlq, [entry.id]) == ["dropped"]


async def test_server_down_is_one_line_unavailable(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = await cli(None, "--address", f"127.0.0.1:{port}", "stats", cwd=tmp_path)
    message = one_line_error(result, "UNAVAILABLE")
    assert message.startswith(f"cannot reach dlq-svc at 127.0.0.1:{port} (--address)")
    assert "Traceback" not in result.err
    replay = await cli(
        None, "replay", "x", env={"RELAYQ_DLQ_GRPC": f"127.0.0.1:{port}"}, cwd=tmp_path
    )
    assert "($RELAYQ_DLQ_GRPC)" in one_line_error(replay, "UNAVAILABLE")
