"""The example receivers (observability/alertmanager/examples/): each is a complete Alertmanager
0.25 config that ``amtool check-config`` accepts, routes pages, tickets and the Watchdog where
its comments say (``amtool config routes test``), and reads its secrets from files.

amtool comes from Debian's ``prometheus-alertmanager`` package; missing, these tests fail with the
command that installs it (never skip: a green run must not hide an unchecked config).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.observability.prometheus_fixture import REPO

EXAMPLES = REPO / "observability" / "alertmanager" / "examples"
NAMES = ("email", "slack", "pagerduty")
#: The receiver each example pages with, and the integration it uses for pages and tickets.
INTEGRATION = {"email": "email_configs", "slack": "slack_configs", "pagerduty": "pagerduty_configs"}
#: Fields that hold a secret: each must come from its *_file twin where 0.25 has one.
SECRET_FIELDS = {
    "auth_password",
    "smtp_auth_password",
    "api_url",
    "routing_key",
    "service_key",
    "slack_api_url",
}


def amtool() -> Path:
    """Debian's amtool; missing: the test fails with the install command."""
    found = shutil.which("amtool") or (
        "/usr/bin/amtool" if Path("/usr/bin/amtool").is_file() else None
    )
    if found is None:
        pytest.fail(
            "amtool is not installed: sudo apt-get install -y --no-install-recommends "
            "prometheus-alertmanager"
        )
    return Path(found)


def run_amtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(amtool()), *args], capture_output=True, text=True, timeout=60, check=False
    )


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((EXAMPLES / f"{name}.yml").read_text(encoding="utf-8"))
    return data


def routed_to(config: Path, *labels: str) -> str:
    result = run_amtool("config", "routes", "test", f"--config.file={config}", *labels)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


def test_the_examples_are_there() -> None:
    assert sorted(p.stem for p in EXAMPLES.glob("*.yml")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_amtool_accepts_the_example(name: str) -> None:
    result = run_amtool("check-config", str(EXAMPLES / f"{name}.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize("name", NAMES)
def test_pages_tickets_and_the_watchdog_go_where_they_should(name: str) -> None:
    config = EXAMPLES / f"{name}.yml"
    assert routed_to(config, "alertname=PostgresUnreachable", "severity=page") == "pages"
    assert routed_to(config, "alertname=DLQFlooding", "severity=ticket", "queue=q") == "tickets"
    # The dead-man's switch gets the Watchdog, whatever its severity, and nothing else.
    assert routed_to(config, "alertname=Watchdog", "severity=ticket") == "deadmansswitch"
    receivers = {r["name"]: r for r in load(name)["receivers"]}
    assert INTEGRATION[name] in receivers["pages"] and INTEGRATION[name] in receivers["tickets"]
    assert list(receivers["deadmansswitch"]) == ["name", "webhook_configs"]
    # One notification per alert and queue, as the routing tree of the stack groups them.
    assert load(name)["route"]["group_by"] == ["alertname", "queue"]


def _keys(node: Any) -> set[str]:
    if isinstance(node, dict):
        return set(node) | {k for value in node.values() for k in _keys(value)}
    if isinstance(node, list):
        return {k for item in node for k in _keys(item)}
    return set()


@pytest.mark.parametrize("name", NAMES)
def test_secrets_come_from_files(name: str) -> None:
    keys = _keys(load(name))
    assert not keys & SECRET_FIELDS, (
        f"{name}: a secret written in the config: {keys & SECRET_FIELDS}"
    )
    assert any(k.endswith("_file") for k in keys), name


def test_amtool_refuses_a_broken_config(tmp_path: Path) -> None:
    """The check can fail: a route to a receiver that does not exist is refused."""
    text = (EXAMPLES / "pagerduty.yml").read_text(encoding="utf-8")
    broken = tmp_path / "broken.yml"
    broken.write_text(text.replace("- receiver: pages", "- receiver: nobody", 1), encoding="utf-8")
    result = run_amtool("check-config", str(broken))
    assert result.returncode != 0, result.stdout
    assert "nobody" in result.stdout + result.stderr
