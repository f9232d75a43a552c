"""The reconciler's ``/healthz`` and ``/metrics``, served from a thread.

``/healthz`` answers 200 while the reconcile loop keeps cycling (a cycle attempted within three
intervals plus a margin), whether or not the last one succeeded: a reconciler waiting for
Postgres or Redis to come back is alive and doing its job; one whose loop hangs is not. The body
says when the last cycle succeeded.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest


class Health:
    """What the loop reports: when it last cycled, and when a cycle last succeeded."""

    def __init__(self) -> None:
        self.last_tick: float | None = None
        self.last_success: float | None = None

    def ticked(self) -> None:
        """A cycle ended (successfully or not)."""
        self.last_tick = time.monotonic()

    def succeeded(self) -> None:
        """A cycle reached Postgres and Redis and did what it had to."""
        self.last_success = time.monotonic()

    def healthy(self, interval: float) -> bool:
        """True while the loop cycles."""
        return self.last_tick is not None and time.monotonic() - self.last_tick < 3 * interval + 30


HEALTH = Health()


def serve_http(host: str, port: int, interval: float) -> ThreadingHTTPServer:
    """Starts the server on a daemon thread; ``shutdown()`` the returned server to stop it."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            if self.path.split("?")[0] == "/metrics":
                self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
            elif self.path.split("?")[0] == "/healthz":
                ok = HEALTH.healthy(interval)
                since = (
                    None
                    if HEALTH.last_success is None
                    else round(time.monotonic() - HEALTH.last_success, 1)
                )
                body = {"status": "ok" if ok else "stalled", "last_success_seconds_ago": since}
                self._send(200 if ok else 503, json.dumps(body).encode(), "application/json")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # no access log (scrapes every few seconds)

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="reconciler-http", daemon=True).start()
    return server
