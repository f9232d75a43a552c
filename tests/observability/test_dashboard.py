"""The committed Grafana dashboard: its shape, and every panel's PromQL parses in a real
Prometheus that has the recording rules loaded (a parse error is an HTTP 400 there)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from relayq_devstack.prometheus import PrometheusClient, PrometheusError, PrometheusServer
from tests.observability import dashboard
from tests.observability.prometheus_fixture import PROMETHEUS_DIR, load_yaml_rules

BOARD = dashboard.load()
QUERIES = dashboard.queries(BOARD)
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}

# What the on-call engineer must find (issue 6): a panel title pattern for each.
REQUIRED_PANELS = {
    "throughput": r"^Throughput",
    "error rate": r"^Error rate",
    "retry rate": r"^Retry rate",
    "DLQ depth": r"^DLQ depth",
    "P95 duration": r"^P95",
    "queue depth": r"^Queue depth$",
    "oldest job age": r"^Oldest waiting job$",
    "workers up": r"^Workers up$",
    "submit outcomes": r"^Submissions by outcome$",
}


def test_dashboard_identity() -> None:
    assert BOARD["uid"] == "relayq-overview"
    assert 36 <= BOARD["schemaVersion"] <= 41
    assert BOARD["id"] is None, "an exported id would clash on import"
    assert BOARD["title"] == "relayq overview"


def test_required_panels_exist() -> None:
    titles = [p["title"] for p in dashboard.panels(BOARD) if p["type"] != "row"]
    for what, pattern in REQUIRED_PANELS.items():
        assert any(re.search(pattern, t) for t in titles), f"no {what} panel in {titles}"


def test_panels_are_well_formed() -> None:
    ids = []
    for panel in dashboard.panels(BOARD):
        ids.append(panel["id"])
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel.get("description"), f"{panel['title']}: say what it shows"
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target.get("expr"), panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_collapsed_rows_are_searched_too() -> None:
    """A collapsed row keeps its panels inside it; they must be checked like the others."""
    nested = [p for row in BOARD["panels"] if row["type"] == "row" for p in row["panels"]]
    assert nested, "the dashboard has a collapsed row (Services)"
    assert {q.panel for q in QUERIES} >= {p["title"] for p in nested}


def test_datasource_variable_defaults_to_the_provisioned_uid() -> None:
    variables = {v["name"]: v for v in BOARD["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["current"]["value"] == "prometheus"
    provisioned = (PROMETHEUS_DIR.parent / "grafana" / "provisioning" / "datasources").glob("*")
    assert any("uid: prometheus" in path.read_text() for path in provisioned)
    for name in ("task", "queue"):
        assert variables[name]["allValue"] == ".*" and variables[name]["includeAll"]


def test_queries_use_only_known_variables() -> None:
    for query in QUERIES:
        dashboard.substitute(query.expr)  # KeyError on an unknown variable


def test_queries_use_only_recorded_rule_names() -> None:
    """A misspelt recording rule is not a parse error, just an empty panel: catch it here."""
    recorded = {rule["record"] for rule in load_yaml_rules() if "record" in rule}
    for query in QUERIES:
        for name in re.findall(r"[a-z_]+:[a-z_0-9]+:[a-z0-9_]+", query.expr):
            assert name in recorded, f"{query.id}: {name} is not a recording rule"


def test_no_query_groups_by_job_id() -> None:
    assert not [q.id for q in QUERIES if "job_id" in q.expr]


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: q.id)
def test_query_parses_in_prometheus(
    rules_prometheus: PrometheusServer, query: dashboard.PanelQuery
) -> None:
    expr = dashboard.substitute(query.expr)
    try:
        rules_prometheus.client.query(expr)
    except PrometheusError as exc:
        pytest.fail(f"{query.id}: {expr}\n{exc.error_type}: {exc}")


def test_a_broken_query_is_refused(rules_prometheus: PrometheusServer) -> None:
    """The check above can fail: Prometheus answers a parse error with 400 bad_data."""
    with pytest.raises(PrometheusError) as refused:
        rules_prometheus.client.query("sum by (task (relayq_job_runs_total)")
    assert refused.value.status == 400 and refused.value.error_type == "bad_data"


def test_the_rules_are_loaded_and_healthy(rules_prometheus: PrometheusServer) -> None:
    """Every committed rule loads and evaluates without error (an empty result is fine)."""

    def evaluated(client: PrometheusClient) -> list[dict[str, Any]]:
        rules = [rule for group in client.rule_groups() for rule in group["rules"]]
        return rules if all(rule["health"] != "unknown" for rule in rules) else []

    rules = rules_prometheus.client.wait_for(evaluated, timeout=15, what="every rule evaluated")
    assert len(rules) == len(load_yaml_rules())
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
