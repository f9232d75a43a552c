"""scripts/install-tools.sh (run by `make setup`): a no-op when the tools are there, and without
root or sudo it stops with the one command that installs them."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from relayq_devstack.tools import INSTALL_COMMAND, find_tool
from tests.observability.prometheus_fixture import REPO, require_tool

SCRIPT = REPO / "scripts" / "install-tools.sh"
TOOLS = ("prometheus", "promtool", "alertmanager", "amtool")


def _run(env: dict[str, str], user: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/bash", str(SCRIPT)],
        env=env,
        user=user,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_every_tool_is_installed() -> None:
    """`make test` runs after `make setup`: each tool is there (or this fails with the command)."""
    for name in TOOLS:
        assert require_tool(name).is_file()


def test_present_tools_make_it_a_fast_no_op() -> None:
    for name in TOOLS:
        require_tool(name)
    started = time.monotonic()
    result = _run({"PATH": os.environ["PATH"]})
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""
    assert time.monotonic() - started < 2.0


def test_without_root_or_sudo_it_prints_the_one_command(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {"PATH": "/usr/bin:/bin", "RELAYQ_TOOLS_PATH": str(empty), "HOME": str(tmp_path)}
    if os.getuid() == 0:
        user: str | None = "nobody"  # root: run as a user without sudo rights
    else:
        user = None
        probe = subprocess.run(["sudo", "-n", "true"], capture_output=True, check=False)
        if shutil.which("sudo") and probe.returncode == 0:
            pytest.fail("passwordless sudo here: the script would install; run this as root")
    result = _run(env, user)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "prometheus promtool prometheus-alertmanager amtool" in result.stderr
    assert f"  {INSTALL_COMMAND}\n" in result.stderr


def test_alertmanager_is_found_by_its_debian_name() -> None:
    found = find_tool("alertmanager")
    assert found is not None and found.name in {"prometheus-alertmanager", "alertmanager"}
