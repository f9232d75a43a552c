"""The README's promise, end to end: `relayq-stack up`, the demo, `relayq-stack down`.

Runs the real CLI in its own state directory on whatever ports are free, submits jobs with the
demo script, and checks that `down` leaves no process of the stack running.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from relayq_core.settings import repo_root
from relayq_devstack.envfile import read_env

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
REPO = repo_root()


def run(*argv: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )


def stack_processes(state_dir: Path) -> list[psutil.Process]:
    """Live processes whose command line or environment points at this stack's state dir."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if str(state_dir) in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_up_demo_status_down(tmp_path: Path) -> None:
    state = tmp_path / "stack"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAYQ_", "OTEL_"))}
    env["RELAYQ_STATE_DIR"] = str(state)
    stack = str(BIN / "relayq-stack")
    pids: list[int] = []
    try:
        up = run(stack, "up", "--fast", env=env)
        assert up.returncode == 0, up.stdout + up.stderr
        stack_env = (state / "stack.env").read_text()
        for name in (
            "RELAYQ_INGEST_GRPC",
            "RELAYQ_INGEST_HTTP",
            "RELAYQ_DLQ_GRPC",
            "RELAYQ_REDIS_URL",
            "RELAYQ_DATABASE_URL",
            "RELAYQ_FLOWER_URL",
            "RELAYQ_METRICS_URL",
            "RELAYQ_RECONCILER_URL",
            "RELAYQ_PROMETHEUS_URL",
            "RELAYQ_ALERTMANAGER_URL",
            "RELAYQ_ALERT_SINK_URL",
            "RELAYQ_TRACES_DIR",
        ):
            assert f"{name}=" in stack_env
        pids = [c["pid"] for c in json.loads((state / "stack.json").read_text())["components"]]
        status = run(stack, "status", env=env)
        assert status.returncode == 0, status.stdout + status.stderr
        demo = run(
            str(BIN / "python"),
            "scripts/demo.py",
            "--jobs",
            "300",
            "--env-file",
            str(state / "stack.env"),
            env=env,
        )
        assert demo.returncode == 0, demo.stdout + demo.stderr
        # The storyboard: a worker process killed mid-run, nothing lost, a DLQ entry shown and
        # replayed with dlq-tool.
        assert "with relayq-load" in demo.stdout and "calls/s, p50" in demo.stdout
        assert "mid-run: killed the pool processes of" in demo.stdout
        assert "lost jobs             0" in demo.stdout
        assert "dead-lettered         1" in demo.stdout
        assert "$ dlq-tool show" in demo.stdout and "card declined" in demo.stdout
        assert "$ dlq-tool replay" in demo.stdout
        # ... and its trace, from the span files every service of the stack writes
        assert "trace_command      relayq-trace " in demo.stdout
        trace = demo.stdout.split("$ relayq-trace ", 1)[1].split("\n$ ", 1)[0]
        assert "/relayq.v1.IngestService/SubmitJob" in trace, trace
        assert "attempt=1 outcome=dead_lettered error=JobError dlq_reason=permanent_error" in trace
        assert "dlq-svc" in trace and "exception: JobError: card declined" in trace
        writers = {p.name.rsplit("-", 1)[0] for p in (state / "traces").glob("*.jsonl")}
        assert {"ingest-svc", "worker-svc", "dlq-svc"} <= writers
        assert "throughput" in demo.stdout
        # Where to look next: the monitoring URLs and the command that lists the alerts.
        urls = read_env(state / "stack.env")
        assert f"Prometheus (metrics, alert rules)  {urls['RELAYQ_PROMETHEUS_URL']}" in demo.stdout
        assert (
            f"Alertmanager (routing, silences)   {urls['RELAYQ_ALERTMANAGER_URL']}" in demo.stdout
        )
        assert "relayq-alerts" in demo.stdout
        alerts = run(str(BIN / "relayq-alerts"), "--state-dir", str(state), "--json", env=env)
        assert alerts.returncode == 0, alerts.stderr
        assert isinstance(json.loads(alerts.stdout), list)
    finally:
        down = run(stack, "down", env=env)
    assert down.returncode == 0, down.stdout + down.stderr
    # Every component led its own process group: nothing of any group (pool children, Postgres
    # backends) may be left.
    left = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.pid) in pids and proc.info["status"] != psutil.STATUS_ZOMBIE:
                left.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    assert left == []
    assert stack_processes(state) == []
    assert run(stack, "status", env=env).returncode == 3
