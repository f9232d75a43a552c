"""The local stack heals like production: ``relayq-stack supervise`` restarts what exits, gives up
on a crash loop, leaves alone what ``relayq-stack stop`` stopped, and goes with ``down``.

Real processes: Redis, PostgreSQL, a real Celery worker node (running Celery's built-in
``celery.accumulate`` task, results in Redis) and the HTTP stand-in of test_devstack_stack.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pytest
from celery import Celery
from celery.result import AsyncResult

from relayq_devstack.config import RestartPolicy, StackConfig
from relayq_devstack.postgres import pg_binary
from relayq_devstack.services import ServiceContext, ServiceSpec
from relayq_devstack.stack import (
    StackStatus,
    down,
    start_components,
    status,
    stop_components,
    up,
)
from relayq_devstack.state import StackState, StatePaths
from tests.integration.test_devstack_stack import _STANDIN, BIN, alive, cli, standin_services

pytestmark = pytest.mark.integration

# Fast enough for a test, the same code as the defaults (1 s doubling to 30 s).
POLICY = RestartPolicy(
    backoff_initial=0.3, backoff_max=1.2, stable_after=60.0, limit=4, window=60.0, poll=0.1
)
# A real node with a result backend, so that a job's result proves the node consumes.
_WORKER = (
    'exec "$CELERY" --broker="$RELAYQ_REDIS_URL" --result-backend="$RELAYQ_REDIS_URL" worker '
    '-n "$RELAYQ_WORKER_NODE_NAME" --pool=solo --without-mingle --without-gossip --loglevel=info'
)
# The gateway stand-in, which exits 3 at once while the flag file exists (a crash loop), and
# otherwise leaves a helper in its process group (as a Celery pool or PostgreSQL backends do).
_CRASHING = (
    'if [ -e "$CRASH_FLAG" ]; then echo "crashing on purpose"; exit 3; fi; '
    'sleep 600 & exec "$PYTHON" -c "$STANDIN" --http RELAYQ_METRICS_PORT'
)
_ALL_BUT = frozenset({"ingest", "dlq", "worker", "metrics-gateway", "reconciler", "flower"})


def stack_config(tmp_path: Path, keep: str) -> StackConfig:
    """Redis, PostgreSQL and the ``keep`` group only, on free ports, supervised with POLICY."""
    from relayq_devstack.ports import free_port

    ports = {"metrics": free_port()}
    return StackConfig.from_env(
        {},
        cwd=tmp_path,
        state_dir=tmp_path / "state",
        ports=ports,
        fast=True,
        workers=1,
        timeout=60.0,
        skip=(_ALL_BUT | {"prometheus"}) - {keep},
        restart=POLICY,
    )


def services(flag: Path) -> Callable[[ServiceContext], list[ServiceSpec]]:
    def build(ctx: ServiceContext) -> list[ServiceSpec]:
        specs = []
        for spec in standin_services(ctx):
            if spec.group == "worker":
                spec = dataclasses.replace(spec, argv=("/bin/sh", "-c", _WORKER))
            if spec.group == "metrics-gateway":
                env = {**spec.env, "CRASH_FLAG": str(flag), "PYTHON": sys.executable}
                env["STANDIN"] = _STANDIN
                spec = dataclasses.replace(spec, argv=("/bin/sh", "-c", _CRASHING), env=env)
            specs.append(spec)
        return specs

    return build


def wait_for[T](what: str, probe: Callable[[], T | None], timeout: float = 30.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def line(report: StackStatus, name: str) -> Any:
    return next(c for c in report.components if c.name == name)


def supervisor_events(state_dir: Path, event: str, name: str) -> list[dict[str, Any]]:
    text = (state_dir / "logs" / "supervisor.log").read_text()
    records = [json.loads(x) for x in text.splitlines() if x.startswith("{")]
    return [r for r in records if r["event"] == event and r.get("name") == name]


def group_members(pgid: int) -> list[int]:
    found = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def ours(tmp_path: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["status"] != psutil.STATUS_ZOMBIE and str(tmp_path) in str(proc.info):
            found.append(proc)
    return found


def test_a_killed_worker_and_postgres_come_back_stop_holds_and_down_ends_it(
    tmp_path: Path,
) -> None:
    cfg = stack_config(tmp_path, keep="worker")
    state_dir = cfg.state_dir
    app: Celery | None = None
    try:
        info = up(cfg, services=services(tmp_path / "never"), migrate=False)
        report = status(state_dir)
        assert report.overall == "healthy" and report.supervisor_pid is not None
        supervisor_pid = report.supervisor_pid
        first = line(report, "worker1")
        assert (first.run_state, first.restarts, first.last_exit_code) == ("running", 0, None)

        app = Celery("supervise-test", broker=info.env["RELAYQ_REDIS_URL"])
        app.conf.result_backend = info.env["RELAYQ_REDIS_URL"]

        def job() -> AsyncResult:
            return app.send_task("celery.accumulate", args=(1, 2))

        # SIGKILL the node: a new process, counted once, and jobs run again.
        os.kill(first.pid, signal.SIGKILL)
        back = wait_for(
            "worker1 restarted and healthy",
            lambda: (c := line(status(state_dir), "worker1")).healthy and c.pid != first.pid and c,
        )
        assert (back.run_state, back.restarts) == ("running", 1)
        # up started the first run: no other process can read its exit code.
        assert back.last_exit_code is None
        assert job().get(timeout=20) == [1, 2]

        shown = json.loads(cli(state_dir, "status", "--json").stdout)
        assert shown["supervisor_pid"] == supervisor_pid
        worker = next(c for c in shown["components"] if c["name"] == "worker1")
        assert (worker["state"], worker["health"], worker["restarts"]) == ("running", "healthy", 1)
        assert worker["pid"] == back.pid and worker["last_exit_code"] is None
        assert worker["uptime_seconds"] is not None and worker["uptime_seconds"] < 60

        # A supervisor that died is started again by `up` on the running stack.
        os.kill(supervisor_pid, signal.SIGKILL)
        wait_for("the supervisor gone", lambda: status(state_dir).supervisor_pid is None)
        again = up(cfg, services=services(tmp_path / "never"), migrate=False)
        assert again.already_running
        assert "the supervisor was not running: started it" in again.notes
        new_supervisor = status(state_dir).supervisor_pid
        assert new_supervisor is not None and new_supervisor != supervisor_pid
        supervisor_pid = new_supervisor

        # PostgreSQL killed as a whole comes back on its port and its data directory.
        url = info.env["RELAYQ_DATABASE_URL"]

        def psql(sql: str) -> str:
            done = subprocess.run(
                [str(pg_binary("psql")), "-X", "-tA", "-d", url, "-c", sql],
                capture_output=True,
                text=True,
                check=True,
            )
            return done.stdout.strip()

        psql("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before the crash')")
        pg = line(status(state_dir), "postgres")
        os.killpg(pg.pid, signal.SIGKILL)
        pg_back = wait_for(
            "postgres restarted",
            lambda: (c := line(status(state_dir), "postgres")).healthy and c.pid != pg.pid and c,
        )
        assert pg_back.restarts == 1
        assert psql("SELECT v FROM kept") == "before the crash"

        # stop worker: held across many supervisor cycles, jobs wait; start brings it back.
        stopped_at = datetime.now().astimezone()
        assert stop_components(state_dir, ["worker"]) == ["worker1"]
        waiting = job()
        time.sleep(10 * POLICY.poll + POLICY.backoff_max)
        held = line(status(state_dir), "worker1")
        assert (held.run_state, held.restarts) == ("stopped", 1)
        assert back.pid is not None and not alive(back.pid)
        assert not waiting.ready()
        restarted = supervisor_events(state_dir, "component_restarted", "worker1")
        assert [r for r in restarted if datetime.fromisoformat(r["timestamp"]) > stopped_at] == []

        assert start_components(state_dir, ["worker"], timeout=30) == ["worker1"]
        started = line(status(state_dir), "worker1")
        assert (started.run_state, started.healthy, started.restarts) == ("running", True, 1)
        assert waiting.get(timeout=20) == [1, 2]

        # down stops the supervisor first: nothing restarts, nothing is left.
        last_pids = [c.pid for c in status(state_dir).components if c.pid is not None]
        stopped = cli(state_dir, "down")
        assert stopped.returncode == 0, stopped.stderr
        assert stopped.stdout.strip().endswith("worker1, supervisor")
        assert not alive(supervisor_pid)
        assert not [pid for pid in last_pids if alive(pid)]
        time.sleep(5 * POLICY.poll + POLICY.backoff_max)
        assert ours(tmp_path) == []
        assert StackState.load(StatePaths(state_dir)) is None
    finally:
        if app is not None:
            app.close()
        down(state_dir)
    assert ours(tmp_path) == []


def test_a_crash_loop_backs_off_then_gives_up_until_started(tmp_path: Path) -> None:
    cfg = stack_config(tmp_path, keep="metrics-gateway")
    state_dir = cfg.state_dir
    flag = tmp_path / "crash"
    try:
        up(cfg, services=services(flag), migrate=False)
        gateway = line(status(state_dir), "metrics-gateway")
        assert gateway.healthy and len(group_members(gateway.pid)) == 2

        flag.touch()
        os.kill(gateway.pid, signal.SIGKILL)
        gave_up = wait_for(
            "the gateway given up",
            lambda: (c := line(status(state_dir), "metrics-gateway")).gave_up and c,
        )
        assert (gave_up.run_state, gave_up.restarts, gave_up.last_exit_code) == ("gave-up", 4, 3)
        assert status(state_dir).overall == "degraded"

        # The backoff doubles up to its cap, and each restart waited at least that long.
        exits = supervisor_events(state_dir, "component_exited", "metrics-gateway")
        restarts = supervisor_events(state_dir, "component_restarted", "metrics-gateway")
        assert [e["restart_in"] for e in exits] == [0.3, 0.6, 1.2, 1.2]
        assert [e["exit_code"] for e in exits] == [None, 3, 3, 3]
        assert [r["restarts"] for r in restarts] == [1, 2, 3, 4]
        for exited, restarted in zip(exits, restarts, strict=True):
            waited = datetime.fromisoformat(restarted["timestamp"]) - datetime.fromisoformat(
                exited["timestamp"]
            )
            assert waited.total_seconds() >= exited["restart_in"] - 0.01
        [given_up] = supervisor_events(state_dir, "component_gave_up", "metrics-gateway")
        assert (given_up["level"], given_up["exit_code"], given_up["restarts"]) == ("error", 3, 4)
        assert "crashing on purpose" in (state_dir / "logs" / "metrics-gateway.log").read_text()
        # What the killed run left in its group went before the restart.
        assert group_members(gateway.pid) == []

        # Left alone after giving up, visible in status; `start` clears it once fixed.
        time.sleep(5 * POLICY.poll)
        assert len(supervisor_events(state_dir, "component_restarted", "metrics-gateway")) == 4
        shown = cli(state_dir, "status")
        assert shown.returncode == 1
        rows = [x.split() for x in shown.stdout.splitlines() if x.startswith("metrics-gateway ")]
        # STATE, HEALTH, RESTARTS, LAST EXIT, UPTIME
        assert [row[2:7] for row in rows] == [["gave-up", "-", "4", "3", "-"]]
        assert "supervisor: running" in shown.stdout
        # NAME is a component or a group; anything else is refused, naming what exists.
        with pytest.raises(ValueError, match=r"unknown component\(s\): nope \(known: "):
            stop_components(state_dir, ["nope"])
        flag.unlink()
        started = subprocess.run(
            [str(BIN / "relayq-stack"), "start", "metrics-gateway", "--state-dir", str(state_dir)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert started.returncode == 0, started.stdout + started.stderr
        fixed = line(status(state_dir), "metrics-gateway")
        assert (fixed.run_state, fixed.healthy, fixed.gave_up) == ("running", True, False)
        assert status(state_dir).overall == "healthy"
    finally:
        down(state_dir)
    assert ours(tmp_path) == []
