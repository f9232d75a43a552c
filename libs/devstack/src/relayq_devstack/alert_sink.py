"""The alert sink: a webhook receiver for Alertmanager that keeps every notification.

Alertmanager POSTs its webhook JSON (``receiver``, ``status``, ``alerts`` with ``labels``,
``annotations``, ``startsAt``...) to ``/webhook``; the sink appends each notification, stamped
with ``receivedAt``, as one line of a JSONL file, and serves them back on ``GET /alerts`` (oldest
first; ``relayq-alerts`` prints them). ``GET /-/healthy`` answers 200.

The local stack runs it as the component ``alert-sink`` (``relayq-alert-sink``); compose runs
this very file with a stock Python image, so it imports the standard library only (a test
checks). It is a developer's window on what would have paged, not a delivery guarantee: it keeps
what it was sent, nothing more.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

DEFAULT_PORT = 9095
MAX_BODY = 4 * 1024 * 1024  # Alertmanager batches by group: a few KB each in practice


def read_notifications(path: Path) -> list[dict[str, Any]]:
    """Every notification in the JSONL file, oldest first (a torn last line is left out)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    out: list[dict[str, Any]] = []
    for line in lines:
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict):
            out.append(item)
    return out


def alert_key(alert: dict[str, Any]) -> str:
    """One alert's identity across notifications: its fingerprint, else its sorted labels."""
    fingerprint = alert.get("fingerprint")
    if fingerprint:
        return str(fingerprint)
    return json.dumps(alert.get("labels", {}), sort_keys=True)


def flatten(notifications: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per alert per notification, oldest first: ``status``, ``alertname``,
    ``severity``, the other ``labels``, ``summary``, ``runbook_url``, ``startsAt``, ``endsAt``,
    ``receiver``, ``receivedAt`` and ``key`` (the alert's identity)."""
    records: list[dict[str, Any]] = []
    for note in notifications:
        for alert in note.get("alerts", []):
            labels = dict(alert.get("labels", {}))
            annotations = alert.get("annotations", {})
            records.append(
                {
                    "status": alert.get("status", note.get("status", "")),
                    "alertname": labels.pop("alertname", ""),
                    "severity": labels.pop("severity", ""),
                    "labels": labels,
                    "summary": annotations.get("summary", ""),
                    "runbook_url": annotations.get("runbook_url", ""),
                    "startsAt": alert.get("startsAt", ""),
                    "endsAt": alert.get("endsAt", ""),
                    "receiver": note.get("receiver", ""),
                    "receivedAt": note.get("receivedAt", ""),
                    "key": alert_key(alert),
                }
            )
    return records


def firing_now(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The alerts whose latest notification says firing (``records`` oldest first)."""
    latest: dict[str, dict[str, Any]] = {}
    for record in records:
        latest[record["key"]] = record
    return [r for r in latest.values() if r["status"] == "firing"]


class AlertSink(ThreadingHTTPServer):
    """The HTTP server; notifications go to ``path`` (one JSON object per line)."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], path: Path) -> None:
        self.store = path
        self.lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        """The base URL it listens on."""
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def record(self, payload: dict[str, Any]) -> None:
        """Appends one notification, stamped with when it arrived."""
        stamped = {"receivedAt": datetime.now(UTC).isoformat(timespec="milliseconds"), **payload}
        line = json.dumps(stamped, separators=(",", ":")) + "\n"
        with self.lock, self.store.open("a", encoding="utf-8") as fh:
            fh.write(line)


class _Handler(BaseHTTPRequestHandler):
    server: AlertSink
    protocol_version = "HTTP/1.1"

    def _reply(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        route = self.path.split("?", 1)[0]
        if route in ("/-/healthy", "/-/ready"):
            self._reply(HTTPStatus.OK, {"status": "ok"})
        elif route == "/alerts":
            with self.server.lock:
                notes = read_notifications(self.server.store)
            self._reply(HTTPStatus.OK, notes)
        else:
            self._reply(HTTPStatus.NOT_FOUND, {"error": f"no route {route}"})

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if self.path.split("?", 1)[0] != "/webhook":
            self._reply(HTTPStatus.NOT_FOUND, {"error": "POST to /webhook"})
            return
        if length <= 0 or length > MAX_BODY:
            self._reply(HTTPStatus.BAD_REQUEST, {"error": "a JSON body is required"})
            return
        try:
            payload = json.loads(self.rfile.read(length))
        except ValueError:
            payload = None
        if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
            self._reply(HTTPStatus.BAD_REQUEST, {"error": "not Alertmanager's webhook JSON"})
            return
        self.server.record(payload)
        self._reply(HTTPStatus.OK, {"stored": len(payload["alerts"])})

    def log_message(self, format: str, *args: object) -> None:
        # One JSON line per request on stderr (the stack's log file), like our other services.
        event = {"event": "http_request", "line": format % args, "ts": time.time()}
        sys.stderr.write(json.dumps(event) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``relayq-alert-sink`` (and of ``python alert_sink.py`` in compose)."""
    parser = argparse.ArgumentParser(
        prog="relayq-alert-sink", description="Keeps Alertmanager's webhook notifications."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--file", type=Path, required=True, help="the JSONL file to append to")
    args = parser.parse_args(argv)
    server = AlertSink((args.host, args.port), args.file)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    sys.stderr.write(json.dumps({"event": "alert_sink_started", "url": server.url}) + "\n")
    sys.stderr.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
