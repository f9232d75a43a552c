"""From a rule to a notification: the real Prometheus (the committed rule files, rendered at time
scale 60 as the local stack renders them for rehearsals), the real Alertmanager with the
committed routing tree, and the real alert sink, each a process on a free port.

A fake exporter stands in for the services: the test sets the oldest job's age, the queue depth,
and whether ingest's /metrics answers; the rules do the rest. Proven: a page alert arrives
through the ``page`` receiver and a ticket through ``ticket``; an alert that ends arrives again
as resolved; and while ingest is down (ServiceDown, a page) the symptom NoWorkerConsuming is held
back by the inhibition, and is delivered once ServiceDown resolves.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from relayq_devstack.alertmanager import (
    AlertmanagerClient,
    ManagedServer,
    start_alert_sink,
    start_alertmanager,
)
from relayq_devstack.alerts import fetch_records
from relayq_devstack.prometheus import PrometheusServer, ScrapeJob, start_prometheus
from relayq_devstack.rules import render_rule_files
from tests.observability.prometheus_fixture import require_tool

pytestmark = pytest.mark.integration
SCALE = 60  # minutes become seconds: ServiceDown's `for: 2m` is 2 s


@dataclass
class Fleet:
    """What the fake exporter reports; the test changes it while Prometheus scrapes."""

    oldest_age: float = 0.0
    depth: float = 0.0
    ingest_up: bool = True


class _Exporter(http.server.BaseHTTPRequestHandler):
    fleet: Fleet

    def do_GET(self) -> None:
        if self.path == "/ingest" and not self.fleet.ingest_up:
            self.send_response(503)
            self.end_headers()
            return
        body = (
            "# TYPE relayq_queue_depth gauge\n"
            f'relayq_queue_depth{{queue="default"}} {self.fleet.depth}\n'
            "# TYPE relayq_queue_oldest_job_age_seconds gauge\n"
            f'relayq_queue_oldest_job_age_seconds{{queue="default"}} {self.fleet.oldest_age}\n'
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain; version=0.0.4")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class AlertPath:
    fleet: Fleet
    prometheus: PrometheusServer
    alertmanager: ManagedServer
    sink: ManagedServer

    def delivered(self, name: str, status: str | None = None) -> list[dict[str, Any]]:
        """What the sink received of alert ``name`` (optionally with that status)."""
        return [
            r
            for r in fetch_records(self.sink.url)
            if r["alertname"] == name and (status is None or r["status"] == status)
        ]


def wait_for[T](probe: Callable[[], T], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s (last: {got!r})")
        time.sleep(0.25)


@pytest.fixture
def path(tmp_path: Path) -> Iterator[AlertPath]:
    require_tool("prometheus")
    require_tool("alertmanager")
    fleet = Fleet()
    handler = type("Exporter", (_Exporter,), {"fleet": fleet})
    exporter = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=exporter.serve_forever, daemon=True).start()
    address = f"127.0.0.1:{exporter.server_address[1]}"
    started: list[Any] = []
    try:
        sink = start_alert_sink(tmp_path / "sink")
        started.append(sink)
        manager = start_alertmanager(
            tmp_path / "alertmanager", sink_url=f"{sink.url}/webhook", time_scale=SCALE
        )
        started.append(manager)
        rules = render_rule_files(tmp_path / "rules", time_scale=SCALE)
        prometheus = start_prometheus(
            tmp_path / "prometheus",
            [
                ScrapeJob("relayq-metrics-gateway", (address,)),
                ScrapeJob("relayq-ingest", (address,), metrics_path="/ingest"),
                # Nothing listens there: a worker that is down (ServiceDown, a ticket).
                ScrapeJob("relayq-worker", ("127.0.0.1:9",)),
            ],
            rules=rules,
            interval=1.0,
            alertmanagers=[f"127.0.0.1:{manager.port}"],
        )
        started.append(prometheus)
        yield AlertPath(fleet, prometheus, manager, sink)
    finally:
        for server in reversed(started):
            server.stop()
        exporter.shutdown()
        exporter.server_close()


def test_alerts_reach_the_sink_by_severity_resolve_and_are_inhibited(path: AlertPath) -> None:
    started = time.monotonic()
    # A page: the oldest job has waited 15 minutes (OldestJobTooOld, `for: 5m` -> 5 s).
    path.fleet.oldest_age = 900
    (page,) = wait_for(
        lambda: path.delivered("OldestJobTooOld", "firing"), 30, "OldestJobTooOld delivered"
    )
    assert page["receiver"] == "page" and page["severity"] == "page"
    assert page["labels"]["queue"] == "default"
    assert page["summary"].startswith("Oldest job in default has waited")
    # A ticket: the worker target has been down all along (ServiceDown, `for: 5m` -> 5 s).
    tickets = wait_for(lambda: path.delivered("ServiceDown", "firing"), 15, "a ticket")
    assert {(t["receiver"], t["severity"], t["labels"]["job"]) for t in tickets} == {
        ("ticket", "ticket", "relayq-worker")
    }

    # The condition ends: the same alert arrives as resolved, to the same receiver.
    path.fleet.oldest_age = 0
    (resolved,) = wait_for(
        lambda: path.delivered("OldestJobTooOld", "resolved"), 30, "OldestJobTooOld resolved"
    )
    assert resolved["receiver"] == "page"

    # Ingest goes down (ServiceDown, a page) and then nobody consumes a queue of 5.
    path.fleet.ingest_up = False
    wait_for(
        lambda: [
            r
            for r in path.delivered("ServiceDown", "firing")
            if r["labels"]["job"] == "relayq-ingest"
        ],
        20,
        "ServiceDown(ingest) delivered",
    )
    path.fleet.depth = 5
    client = AlertmanagerClient(path.alertmanager.url)

    def inhibited() -> list[dict[str, Any]]:
        return [
            a
            for a in client.alerts()
            if a["labels"]["alertname"] == "NoWorkerConsuming" and a["status"]["inhibitedBy"]
        ]

    (held,) = wait_for(inhibited, 30, "NoWorkerConsuming at Alertmanager, inhibited")
    assert held["status"]["state"] == "suppressed"
    assert held["labels"]["severity"] == "page"
    time.sleep(6)  # more than one group_interval (5m / 60): it would have been sent by now
    assert path.delivered("NoWorkerConsuming") == [], "a symptom was delivered while inhibited"

    # Ingest is back: ServiceDown resolves, the inhibition lifts, the symptom is delivered.
    path.fleet.ingest_up = True
    (symptom, *_) = wait_for(
        lambda: path.delivered("NoWorkerConsuming", "firing"), 30, "NoWorkerConsuming delivered"
    )
    assert symptom["receiver"] == "page"
    assert time.monotonic() - started < 90
