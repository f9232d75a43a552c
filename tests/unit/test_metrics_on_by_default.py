"""Every service serves /metrics without extra configuration, on the port Prometheus scrapes in
compose (observability/prometheus/prometheus.yml): nobody has to remember an env var for the
signals the alerts read."""

from __future__ import annotations

import os
from typing import Any

import pytest
import yaml

from dlq_svc.config import DlqSettings
from ingest_svc.config import IngestSettings
from metrics_gateway.config import GatewaySettings
from relayq_core.reconcile import ReconcilerSettings
from tests.conftest import REPO
from worker_svc.config import WorkerSettings


def scraped_ports() -> dict[str, int]:
    """Prometheus job name -> the port compose scrapes it on."""
    config: dict[str, Any] = yaml.safe_load(
        (REPO / "observability" / "prometheus" / "prometheus.yml").read_text(encoding="utf-8")
    )
    ports = {}
    for job in config["scrape_configs"]:
        if "static_configs" in job:
            ports[job["job_name"]] = int(job["static_configs"][0]["targets"][0].rsplit(":", 1)[1])
        else:
            ports[job["job_name"]] = int(job["dns_sd_configs"][0]["port"])
    return ports


@pytest.fixture
def bare_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No RELAYQ_* variable at all, as on a fresh machine."""
    for name in list(os.environ):
        if name.startswith("RELAYQ_"):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("bare_env")
def test_every_service_serves_metrics_on_its_scraped_port_by_default() -> None:
    defaults = {
        "relayq-ingest": IngestSettings().http_port,  # /metrics beside the HTTP API
        "relayq-worker": WorkerSettings().metrics_port,
        "relayq-dlq": DlqSettings().metrics_port,
        "relayq-metrics-gateway": GatewaySettings().port,
        "relayq-reconciler": ReconcilerSettings().port,
    }
    assert all(defaults.values()), f"0 means no /metrics: {defaults}"
    scraped = scraped_ports()
    assert defaults == {job: scraped[job] for job in defaults}


@pytest.mark.usefixtures("bare_env")
def test_zero_still_turns_metrics_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAYQ_WORKER_METRICS_PORT", "0")
    monkeypatch.setenv("RELAYQ_DLQ_METRICS_PORT", "0")
    monkeypatch.setenv("RELAYQ_RECONCILER_PORT", "0")
    assert WorkerSettings().metrics_port == DlqSettings().metrics_port == 0
    assert ReconcilerSettings().port == 0
