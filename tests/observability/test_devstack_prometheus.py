"""relayq_devstack.prometheus: the config it generates, the stack's Prometheus service, and the
test harness against a real server scraping a tiny exporter."""

from __future__ import annotations

import http.server
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml

from relayq_devstack import prometheus as prom
from relayq_devstack.config import DEFAULT_PORTS
from relayq_devstack.health import HttpOk
from relayq_devstack.prometheus import (
    PrometheusClient,
    ScrapeJob,
    render_config,
    scrape_jobs,
    start_prometheus,
)
from relayq_devstack.services import ServiceContext, relayq_services, stack_env
from tests.observability.prometheus_fixture import PROMETHEUS_DIR, RULE_FILES, require_tool


def _ctx(workers: int = 2) -> ServiceContext:
    return ServiceContext(
        bin_dir=Path("/venv/bin"),
        redis_url="redis://127.0.0.1:1000/0",
        database_url="postgresql://postgres@127.0.0.1:1001/relayq",
        ports={**DEFAULT_PORTS, "worker1_metrics": 9301, "worker2_metrics": 9302},
        workers=workers,
    )


def test_each_service_group_becomes_a_scrape_job() -> None:
    jobs = {job.name: job.targets for job in scrape_jobs(relayq_services(_ctx()))}
    assert jobs == {
        "relayq-ingest": ("127.0.0.1:8000",),
        "relayq-dlq": ("127.0.0.1:9101",),
        "relayq-worker": ("127.0.0.1:9301", "127.0.0.1:9302"),
        "relayq-metrics-gateway": ("127.0.0.1:9100",),
        "relayq-reconciler": ("127.0.0.1:9102",),
    }


def test_scrape_jobs_match_the_compose_config() -> None:
    """The local stack and compose name each service's job alike: the alert rules and the
    dashboard select on them."""
    compose = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text(encoding="utf-8"))
    compose_jobs = {job["job_name"] for job in compose["scrape_configs"]} - {
        "prometheus",
        "alertmanager",  # both scrape their own monitoring; see the test below
    }
    assert {job.name for job in scrape_jobs(relayq_services(_ctx()))} == compose_jobs


def test_prometheus_scrapes_the_stacks_alertmanager(tmp_path: Path) -> None:
    """AlertmanagerNotificationsFailing reads Alertmanager's own metrics, locally as in compose
    (whose prometheus.yml names the same job)."""
    compose = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text(encoding="utf-8"))
    assert {"job_name": "alertmanager", "static_configs": [{"targets": ["alertmanager:9093"]}]} in (
        compose["scrape_configs"]
    )
    spec = prom.prometheus_service(_ctx(), [], tmp_path, alertmanagers=["127.0.0.1:9093"])
    assert spec is not None
    config = yaml.safe_load(spec.files[tmp_path / "prometheus.yml"])
    jobs = {
        job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]
    }
    assert jobs["alertmanager"] == ["127.0.0.1:9093"]


def test_services_get_their_metrics_ports() -> None:
    specs = {s.name: s for s in relayq_services(_ctx())}
    assert specs["worker2"].env["RELAYQ_WORKER_METRICS_PORT"] == "9302"
    assert specs["dlq"].env["RELAYQ_DLQ_METRICS_PORT"] == "9101"
    # Workers and the gateway reach dlq-svc wherever its port went.
    assert specs["worker1"].env["RELAYQ_DLQ_GRPC"] == "127.0.0.1:50052"
    assert specs["metrics-gateway"].env["RELAYQ_DLQ_GRPC"] == "127.0.0.1:50052"
    without_ports = ServiceContext(Path("/b"), "redis://r", "postgresql://p", dict(DEFAULT_PORTS))
    worker1 = next(s for s in relayq_services(without_ports) if s.name == "worker1")
    assert worker1.env["RELAYQ_WORKER_METRICS_PORT"] == "9201", "default: 9200 + node index"


def test_stack_env_names_prometheus_only_when_it_runs() -> None:
    assert stack_env(_ctx(), {"prometheus"})["RELAYQ_PROMETHEUS_URL"] == "http://127.0.0.1:9090"
    assert "RELAYQ_PROMETHEUS_URL" not in stack_env(_ctx(), {"ingest"})


def test_the_stack_service(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(prom, "find_binary", lambda name="prometheus": Path("/usr/bin/prom"))
    specs = relayq_services(_ctx())
    spec = prom.prometheus_service(_ctx(), specs, tmp_path)
    assert spec is not None
    assert spec.group == "prometheus" and spec.port == 9090
    assert spec.health == HttpOk("http://127.0.0.1:9090/-/ready")
    assert spec.argv[0] == "/usr/bin/prom"
    assert f"--storage.tsdb.path={tmp_path / 'data'}" in spec.argv
    assert "--web.listen-address=127.0.0.1:9090" in spec.argv
    config = json.loads(spec.files[tmp_path / "prometheus.yml"])
    assert config["rule_files"] == [str(p) for p in RULE_FILES]
    assert config["global"]["scrape_interval"] == "5000ms"
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert jobs == {
        "prometheus",
        "relayq-ingest",
        "relayq-dlq",
        "relayq-worker",
        "relayq-metrics-gateway",
        "relayq-reconciler",
    }

    monkeypatch.setattr(prom, "find_binary", lambda name="prometheus": None)
    assert prom.prometheus_service(_ctx(), specs, tmp_path) is None, "no binary: no service"


def test_generated_config_passes_promtool(tmp_path: Path) -> None:
    path = tmp_path / "prometheus.yml"
    path.write_text(
        render_config(scrape_jobs(relayq_services(_ctx())), rules=RULE_FILES, interval=0.5)
    )
    result = subprocess.run(
        [str(require_tool("promtool")), "check", "config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(RULE_FILES)} rule files found" in result.stdout + result.stderr


# --- the harness against a real server -------------------------------------------------------


class _Exporter(http.server.BaseHTTPRequestHandler):
    body = b'# TYPE relayq_queue_depth gauge\nrelayq_queue_depth{queue="default"} 5\n'

    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/metrics" else 404)
        self.send_header("content-type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def exporter() -> Iterator[str]:
    """A /metrics endpoint with one gauge, on a free port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Exporter)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_harness_scrapes_queries_reloads_and_stops(tmp_path: Path, exporter: str) -> None:
    binary = require_tool("prometheus")
    server = start_prometheus(
        tmp_path, [ScrapeJob("relayq-metrics-gateway", (exporter,))], interval=0.5, binary=binary
    )
    try:
        client = server.client
        assert client.ready()
        depth = client.wait_for(
            lambda c: c.value('queue:relayq_queue_depth:max{queue="default"}'),
            timeout=15,
            what="the recorded queue depth",
        )
        assert depth == 5.0
        assert client.value("relayq_queue_depth") == 5.0
        # Nothing alerts on a queue of 5 that is consumed (but the Watchdog, which always fires).
        firing = [a["labels"]["alertname"] for a in client.firing()]
        assert [name for name in firing if name != "Watchdog"] == [], firing
        assert {t["labels"]["job"] for t in client.targets()} == {"relayq-metrics-gateway"}

        server.write_config([ScrapeJob("other", (exporter,))], interval=0.5)
        assert "job_name: other" in client.loaded_config()
    finally:
        server.stop()
    assert not server.process.is_running()
    assert not psutil.pid_exists(server.process.pid) or not server.process.group_alive()
    assert not PrometheusClient(server.url, timeout=0.5).ready()
