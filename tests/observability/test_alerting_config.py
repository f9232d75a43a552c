"""The alerting configuration as Alertmanager and Prometheus load it: the committed routing tree
(observability/alertmanager/alertmanager.yml), the copy the local stack renders, and the rule
files rendered at a time scale, all checked by the real amtool / promtool."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from relayq_devstack.alertmanager import (
    COMPOSE_SINK_URL,
    alertmanager_service,
    committed_config,
    render_alertmanager_config,
)
from relayq_devstack.config import DEFAULT_PORTS, StackConfig
from relayq_devstack.monitoring import monitoring_specs
from relayq_devstack.rules import DEFAULT_RUNBOOK_BASE, render_rule_files
from relayq_devstack.services import ServiceContext, relayq_services, stack_env
from relayq_devstack.state import StatePaths
from tests.observability.prometheus_fixture import RULE_FILES, require_tool

CONFIG = committed_config()
SINK = "http://127.0.0.1:19095/webhook"


def _tool(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    return _tool(str(require_tool("amtool")), *args)


def route(config: Path, *labels: str) -> str:
    """The receiver(s) the routing tree picks for an alert with ``labels`` (``k=v``)."""
    result = amtool("config", "routes", "test", f"--config.file={config}", *labels)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_committed_config_passes_amtool() -> None:
    result = amtool("check-config", str(CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_rendered_config_passes_amtool(tmp_path: Path) -> None:
    rendered = tmp_path / "alertmanager.yml"
    text = render_alertmanager_config(CONFIG.read_text(), sink_url=SINK, time_scale=60)
    rendered.write_text(text)
    result = amtool("check-config", str(rendered))
    assert result.returncode == 0, result.stdout + result.stderr
    assert text.count(f"url: {SINK}") == 3 and f"url: {COMPOSE_SINK_URL}" not in text
    assert "group_wait: 1s" in text and "group_interval: 5s" in text
    assert "repeat_interval: 240s" in text, "4h / 60"


def test_a_broken_config_fails_amtool(tmp_path: Path) -> None:
    """The check above can fail: a route to a receiver that does not exist is refused."""
    broken = tmp_path / "alertmanager.yml"
    broken.write_text(CONFIG.read_text().replace("receiver: page", "receiver: pager", 1))
    assert amtool("check-config", str(broken)).returncode != 0


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (("alertname=OldestJobTooOld", "severity=page", "queue=default"), "page"),
        (("alertname=QueueDepthGrowing", "severity=ticket", "queue=default"), "ticket"),
        (("alertname=Something", "severity=info"), "ticket"),
        (("alertname=Watchdog", "severity=none"), "watchdog"),
    ],
)
def test_routing_by_severity(labels: tuple[str, ...], receiver: str) -> None:
    assert route(CONFIG, *labels) == receiver


def test_rules_rendered_at_a_time_scale_pass_promtool(tmp_path: Path) -> None:
    written = render_rule_files(
        tmp_path, runbook_base="https://runbooks.example/relayq", time_scale=60
    )
    assert [p.name for p in written] == [p.name for p in RULE_FILES]
    result = _tool(str(require_tool("promtool")), "check", "rules", *map(str, written))
    assert result.returncode == 0, result.stdout + result.stderr
    text = "".join(p.read_text() for p in written)
    assert "[5m]" not in text and "[5s]" in text
    assert "for: 10m" not in text
    assert DEFAULT_RUNBOOK_BASE not in text


def _ctx() -> ServiceContext:
    return ServiceContext(
        bin_dir=Path("/venv/bin"),
        redis_url="redis://127.0.0.1:1000/0",
        database_url="postgresql://postgres@127.0.0.1:1001/relayq",
        ports=dict(DEFAULT_PORTS),
    )


def test_the_stack_runs_sink_alertmanager_and_prometheus_wired_together(tmp_path: Path) -> None:
    config = StackConfig(state_dir=tmp_path, rule_time_scale=60, runbook_base="https://rb.example")
    specs, notes = monitoring_specs(_ctx(), relayq_services(_ctx()), config, StatePaths(tmp_path))
    assert notes == []
    by_name = {s.name: s for s in specs}
    assert list(by_name) == ["alert-sink", "alertmanager", "prometheus"]

    manager = by_name["alertmanager"]
    assert "--cluster.listen-address=" in manager.argv, "no gossip"
    assert f"--storage.path={tmp_path / 'alertmanager' / 'data'}" in manager.argv
    assert "--web.listen-address=127.0.0.1:9093" in manager.argv
    (config_text,) = manager.files.values()
    assert "http://127.0.0.1:9095/webhook" in config_text

    sink = by_name["alert-sink"]
    assert sink.argv[-2:] == ("--file", str(tmp_path / "alerts" / "alerts.jsonl"))

    prom = json.loads(next(iter(by_name["prometheus"].files.values())))
    targets = prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert targets == ["127.0.0.1:9093"]
    assert prom["global"]["evaluation_interval"] == "1000ms", "scaled rules: 1 s by default"
    rules_dir = tmp_path / "prometheus" / "rules"
    assert prom["rule_files"] == [str(rules_dir / p.name) for p in RULE_FILES]
    committed = "".join(p.read_text() for p in RULE_FILES)
    rendered = "".join((rules_dir / p.name).read_text() for p in RULE_FILES)
    assert DEFAULT_RUNBOOK_BASE not in rendered, "runbook links follow the configured base"
    assert rendered.count("https://rb.example#") == committed.count(DEFAULT_RUNBOOK_BASE + "#")

    env = stack_env(_ctx(), {s.group for s in specs})
    assert env["RELAYQ_ALERTMANAGER_URL"] == "http://127.0.0.1:9093"
    assert env["RELAYQ_ALERT_SINK_URL"] == "http://127.0.0.1:9095"


def test_skipping_prometheus_skips_the_alerting_path(tmp_path: Path) -> None:
    config = StackConfig(state_dir=tmp_path, skip=frozenset({"prometheus"}))
    assert monitoring_specs(_ctx(), [], config, StatePaths(tmp_path)) == ([], [])
    config = StackConfig(state_dir=tmp_path, skip=frozenset({"alertmanager"}))
    specs, _ = monitoring_specs(_ctx(), [], config, StatePaths(tmp_path))
    assert [s.name for s in specs] == ["prometheus"]
    assert "alerting" not in json.loads(next(iter(specs[0].files.values())))


def test_the_default_interval_stays_five_seconds(tmp_path: Path) -> None:
    assert StackConfig(state_dir=tmp_path).prometheus_interval == 5.0
    env = {"RELAYQ_STACK_RULE_TIME_SCALE": "30", "RELAYQ_STACK_SCRAPE_INTERVAL": "2"}
    config = StackConfig.from_env(env, cwd=tmp_path)
    assert config.rule_time_scale == 30 and config.prometheus_interval == 2.0
    with pytest.raises(ValueError, match="RULE_TIME_SCALE"):
        StackConfig.from_env({"RELAYQ_STACK_RULE_TIME_SCALE": "0.5"}, cwd=tmp_path)
    assert alertmanager_service(_ctx(), tmp_path) is not None
