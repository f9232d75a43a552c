"""The alert sink (a real process on a free port) and `relayq-alerts` reading it."""

from __future__ import annotations

import ast
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relayq_devstack import alert_sink
from relayq_devstack.alertmanager import ManagedServer, start_alert_sink
from relayq_devstack.alerts import main as alerts_main
from relayq_devstack.envfile import write_env

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def notification(receiver: str, status: str, *alerts: dict[str, Any]) -> dict[str, Any]:
    """Alertmanager's webhook JSON (version 4), as 0.25 sends it."""
    return {
        "version": "4",
        "groupKey": '{}:{alertname="X"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": list(alerts),
    }


def alert(name: str, status: str, fingerprint: str, **labels: str) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": name, "stack": "relayq-local", **labels},
        "annotations": {
            "summary": f"{name} summary",
            "runbook_url": f"https://github.com/relayq/relayq/blob/main/docs/runbook.md#{name}",
        },
        "startsAt": "2026-12-03T10:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus/graph",
        "fingerprint": fingerprint,
    }


def post(url: str, body: bytes) -> int:
    request = urllib.request.Request(
        f"{url}/webhook", data=body, headers={"content-type": "application/json"}
    )
    try:
        with _NO_PROXY.open(request, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[ManagedServer]:
    server = start_alert_sink(tmp_path / "sink")
    yield server
    server.stop()


def test_notifications_are_kept_and_listed_newest_first(
    sink: ManagedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = alert("OldestJobTooOld", "firing", "f1", severity="page", queue="default")
    ticket = alert("QueueDepthGrowing", "firing", "f2", severity="ticket", queue="emails")
    assert post(sink.url, json.dumps(notification("page", "firing", page)).encode()) == 200
    assert post(sink.url, json.dumps(notification("ticket", "firing", ticket)).encode()) == 200
    resolved = {**page, "status": "resolved"}
    assert post(sink.url, json.dumps(notification("page", "resolved", resolved)).encode()) == 200

    stored = (tmp_path / "sink" / "alerts.jsonl").read_text().splitlines()
    assert len(stored) == 3, "one JSON line per notification"
    assert json.loads(stored[0])["receiver"] == "page"

    assert alerts_main(["--url", sink.url]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if not line.startswith("    ")]
    assert "RESOLVED" in lines[0] and "OldestJobTooOld" in lines[0], "newest first"
    assert "FIRING" in lines[1] and "QueueDepthGrowing" in lines[1]
    assert "receiver=ticket" in lines[1] and "severity=ticket" in lines[1]
    assert "queue=emails" in lines[1] and "stack=" not in lines[1]
    assert "QueueDepthGrowing summary" in out
    assert "runbook: https://github.com/relayq/relayq/blob/main/docs/runbook.md#Queue" in out
    assert "started 2026-12-03T10:00:00Z" in out

    assert alerts_main(["--url", sink.url, "--firing", "--json"]) == 0
    firing = json.loads(capsys.readouterr().out)
    assert [(r["alertname"], r["receiver"]) for r in firing] == [("QueueDepthGrowing", "ticket")]
    assert firing[0]["labels"] == {"queue": "emails", "stack": "relayq-local"}

    assert alerts_main(["--url", sink.url, "--since", "1h", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3


def test_the_sink_refuses_what_is_not_a_notification(sink: ManagedServer) -> None:
    assert post(sink.url, b"not json") == 400
    assert post(sink.url, b'{"alerts": "nope"}') == 400
    with _NO_PROXY.open(f"{sink.url}/alerts", timeout=5) as resp:
        assert json.load(resp) == []


def test_relayq_alerts_finds_the_sink_in_stack_env(
    sink: ManagedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    write_env(state / "stack.env", {"RELAYQ_ALERT_SINK_URL": sink.url})
    assert alerts_main(["--state-dir", str(state)]) == 0
    assert capsys.readouterr().out == "No alerts received.\n"
    assert alerts_main(["--state-dir", str(tmp_path / "none")]) == 3
    assert "relayq-stack up" in capsys.readouterr().err
    sink.stop()
    assert alerts_main(["--url", sink.url]) == 1
    assert "did not answer" in capsys.readouterr().err


def test_the_sink_imports_the_standard_library_only() -> None:
    """compose runs alert_sink.py as a file with a stock python image (no relayq packages)."""
    tree = ast.parse(Path(alert_sink.__file__).read_text())
    imported = {
        (node.module or "").split(".")[0] if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert imported - {"__future__"} <= set(sys.stdlib_module_names), imported
