"""Prometheus and Grafana in deploy/compose.yml, checked offline with the real Compose binary
(as tests/integration/test_compose.py does for the rest of the stack): what they mount, publish
and wait for, and that the services they scrape listen where prometheus.yml looks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.test_compose import COMPOSE_FILE, _compose_binary, load_model
from tests.observability.prometheus_fixture import PROMETHEUS_DIR, REPO

GRAFANA_DIR = REPO / "observability" / "grafana"


@pytest.fixture(scope="module")
def svcs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path_factory.mktemp("home")),
    }
    services: dict[str, dict[str, Any]] = load_model(_compose_binary(), COMPOSE_FILE, env)[
        "services"
    ]
    return services


def mounts(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Mounts by target path."""
    return {m["target"]: m for m in service.get("volumes", [])}


def test_prometheus_mounts_config_and_rules_read_only(svcs: dict[str, dict[str, Any]]) -> None:
    prometheus = svcs["prometheus"]
    found = mounts(prometheus)
    for target, source in (
        ("/etc/prometheus/prometheus.yml", PROMETHEUS_DIR / "prometheus.yml"),
        ("/etc/prometheus/rules", PROMETHEUS_DIR / "rules"),
    ):
        assert found[target]["type"] == "bind"
        assert Path(found[target]["source"]).resolve() == source.resolve()
        assert found[target].get("read_only") is True, target
    assert found["/prometheus"]["type"] == "volume", "TSDB on a named volume"
    command = " ".join(prometheus["command"])
    assert "--config.file=/etc/prometheus/prometheus.yml" in command
    assert "--enable-feature=exemplar-storage" in command
    assert {int(p["target"]) for p in prometheus["ports"]} == {9090}
    assert "/-/ready" in " ".join(prometheus["healthcheck"]["test"])


def test_grafana_is_provisioned_and_locked(svcs: dict[str, dict[str, Any]]) -> None:
    grafana = svcs["grafana"]
    found = mounts(grafana)
    assert Path(found["/etc/grafana/provisioning"]["source"]).resolve() == (
        GRAFANA_DIR / "provisioning"
    )
    assert Path(found["/etc/grafana/dashboards"]["source"]).resolve() == (
        GRAFANA_DIR / "dashboards"
    )
    assert all(
        found[t].get("read_only") for t in ("/etc/grafana/provisioning", "/etc/grafana/dashboards")
    )
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert env["GF_SECURITY_ADMIN_PASSWORD"], "admin password from the environment"
    assert {int(p["target"]) for p in grafana["ports"]} == {3000}
    assert grafana["depends_on"]["prometheus"]["condition"] == "service_healthy"
    assert "/api/health" in " ".join(grafana["healthcheck"]["test"])


def test_grafana_provisioning_points_at_the_mounts() -> None:
    datasources = yaml.safe_load(
        (GRAFANA_DIR / "provisioning/datasources/prometheus.yml").read_text()
    )
    (source,) = datasources["datasources"]
    assert source["uid"] == "prometheus" and source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((GRAFANA_DIR / "provisioning/dashboards/relayq.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["options"]["path"] == "/etc/grafana/dashboards"


def test_scraped_services_listen_where_prometheus_looks(svcs: dict[str, dict[str, Any]]) -> None:
    """prometheus.yml names ingest:8000, worker:9200 (DNS), dlq:9101, metrics-gateway:9100 and
    reconciler:9102: each service must serve its metrics there, on all interfaces of its
    container."""
    worker = svcs["worker"]["environment"]
    assert worker["RELAYQ_WORKER_METRICS_PORT"] == "9200"
    assert worker["RELAYQ_WORKER_METRICS_HOST"] == "0.0.0.0"
    dlq = svcs["dlq"]["environment"]
    assert dlq["RELAYQ_DLQ_METRICS_PORT"] == "9101"
    assert dlq["RELAYQ_DLQ_METRICS_HOST"] == "0.0.0.0"
    assert svcs["ingest"]["environment"]["RELAYQ_INGEST_HTTP_PORT"] == "8000"
    assert svcs["metrics-gateway"]["environment"]["RELAYQ_METRICS_PORT"] == "9100"
    reconciler = svcs["reconciler"]["environment"]
    assert reconciler["RELAYQ_RECONCILER_PORT"] == "9102"
    assert reconciler["RELAYQ_RECONCILER_HOST"] == "0.0.0.0"
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: job.get("static_configs", [{}])[0].get("targets")
        for job in config["scrape_configs"]
    }
    assert targets["relayq-ingest"] == ["ingest:8000"]
    assert targets["relayq-dlq"] == ["dlq:9101"]
    assert targets["relayq-metrics-gateway"] == ["metrics-gateway:9100"]
    assert targets["relayq-reconciler"] == ["reconciler:9102"]
    assert set(svcs) >= {"ingest", "worker", "dlq", "metrics-gateway", "reconciler"}
