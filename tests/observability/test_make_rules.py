"""``make rules`` checks what it says it checks: the Prometheus config too, not only the rules."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.observability.prometheus_fixture import PROMETHEUS_DIR, REPO, require_tool


def make(*args: str) -> subprocess.CompletedProcess[str]:
    """Runs ``make ARGS`` in the repository with promtool on the PATH."""
    binary = shutil.which("make")
    if binary is None:
        pytest.fail("make is not installed: sudo apt-get install -y make")
    promtool = require_tool("promtool")
    env = {**os.environ, "PATH": f"{promtool.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    return subprocess.run(
        [binary, "--no-print-directory", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_make_rules_checks_the_config_first() -> None:
    dry = make("-n", "rules")
    assert dry.returncode == 0, dry.stderr
    commands = dry.stdout
    assert commands.index("promtool check config") < commands.index("promtool check rules")
    done = make("rules-config")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "is valid prometheus config file syntax" in done.stdout
    assert "2 rule files found" in done.stdout, "the repository's rules, not the container path"


def test_make_rules_fails_on_a_broken_config(tmp_path: Path) -> None:
    broken = tmp_path / "prometheus"
    shutil.copytree(PROMETHEUS_DIR, broken)
    config = broken / "prometheus.yml"
    config.write_text(config.read_text(encoding="utf-8") + "\nscrape_interval_typo: [\n")
    done = make("rules-config", f"PROMETHEUS_DIR={broken}")
    assert done.returncode != 0, done.stdout
    assert "FAILED" in done.stdout + done.stderr
