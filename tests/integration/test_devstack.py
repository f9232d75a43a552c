"""relayq_devstack's servers and processes, for real: no mocks, free ports, tmp dirs."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import asyncpg
import psutil
import pytest

from relayq_devstack.ports import free_port, port_is_free
from relayq_devstack.postgres import start_postgres
from relayq_devstack.process import ProcessFailed, ServiceProcess
from relayq_devstack.redis import start_redis

pytestmark = pytest.mark.integration


def processes_mentioning(text: str) -> list[psutil.Process]:
    """Live processes whose command line contains ``text`` (our tmp dir)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and text in " ".join(
                proc.info["cmdline"] or []
            ):
                found.append(proc)
        except psutil.Error:
            continue
    return found


async def test_postgres_restart_kill_and_stop(tmp_path: Path) -> None:
    server = start_postgres(tmp_path / "pg", fast=True)
    try:
        conn = await asyncpg.connect(server.url)
        try:
            assert await conn.fetchval("SELECT current_database()") == "relayq"
            assert await conn.fetchval("SELECT current_setting('max_connections')") == "200"
            await conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before')")
        finally:
            await conn.close()

        port, first_pid = server.port, server.pid
        server.restart()
        assert (server.port, server.is_running()) == (port, True)
        assert server.pid != first_pid
        assert server.psql("SELECT v FROM kept") == "before"

        server.psql("INSERT INTO kept VALUES ('committed before the crash')")
        server.kill()
        assert not server.is_running()
        assert not processes_mentioning(str(tmp_path))

        server.restart()  # crash recovery from the WAL
        assert server.psql("SELECT count(*) FROM kept") == "2"
    finally:
        server.stop()
    assert not server.is_running()
    assert not processes_mentioning(str(tmp_path))
    assert port_is_free(port)


def test_postgres_default_keeps_durability(tmp_path: Path) -> None:
    with start_postgres(tmp_path / "pg") as server:
        assert server.psql("SHOW fsync") == "on"
        assert server.psql("SHOW synchronous_commit") == "on"
    assert not processes_mentioning(str(tmp_path))


def test_redis_persistence_survives_restart(tmp_path: Path) -> None:
    server = start_redis(tmp_path / "redis", persistence=True)
    try:
        client = server.client()
        client.set("job", "kept")
        client.close()
        port = server.port

        server.restart()
        assert server.port == port
        client = server.client()
        assert client.get("job") == b"kept"
        client.close()

        server.kill()
        assert not server.is_running()
        assert not processes_mentioning(str(tmp_path))

        server.restart(persistence=False)
        assert server.is_running()
        server.flushall()
        client = server.client()
        assert client.dbsize() == 0
        client.close()
    finally:
        server.stop()
    assert not processes_mentioning(str(tmp_path))


def test_redis_without_persistence_forgets(tmp_path: Path) -> None:
    with start_redis(tmp_path / "redis", persistence=False) as server:
        client = server.client()
        client.set("job", "gone")
        client.close()
        server.restart()
        client = server.client()
        assert client.get("job") is None
        client.close()
    assert not list((tmp_path / "redis").glob("*.aof"))


def test_postgres_refuses_a_busy_explicit_port(tmp_path: Path) -> None:
    with start_redis(tmp_path / "redis", persistence=False) as redis:
        with pytest.raises(ProcessFailed, match="Address already in use"):
            start_postgres(tmp_path / "pg", redis.port, fast=True, timeout=10)
    assert not processes_mentioning(str(tmp_path))


# A leader that forks a child ignoring SIGTERM: stop() must still leave nothing behind.
_FORKING = """
import signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)",
    sys.argv[1]])
print("child", child.pid, flush=True)
time.sleep(600)
"""


def test_service_process_stop_reaches_the_whole_group(tmp_path: Path) -> None:
    proc = ServiceProcess(
        "forker",
        [sys.executable, "-c", _FORKING, str(tmp_path)],
        log_path=tmp_path / "forker.log",
    )
    try:
        proc.wait_healthy(lambda: "child " in proc.log_tail(1), timeout=10)
        child_pid = int(proc.log_tail(1).split()[-1])
        assert set(proc.ref.group_members()) == {proc.pid, child_pid}
    finally:
        proc.stop(timeout=1)
    assert proc.returncode == -signal.SIGTERM
    assert not proc.group_alive()
    assert not processes_mentioning(str(tmp_path))


def test_service_process_env_and_failure_report(tmp_path: Path) -> None:
    script = "import os, sys; print('value is', os.environ['RELAYQ_X']); sys.exit(3)"
    proc = ServiceProcess(
        "failing",
        [sys.executable, "-c", script],
        log_path=tmp_path / "failing.log",
        env={"RELAYQ_X": "42"},
    )
    with pytest.raises(ProcessFailed) as failure:
        proc.wait_healthy(lambda: False, timeout=10)
    assert "exited with code 3" in str(failure.value)
    assert "value is 42" in failure.value.log_tail
    assert proc.returncode == 3


def test_service_process_timeout_and_kill(tmp_path: Path) -> None:
    proc = ServiceProcess(
        "sleeper",
        [sys.executable, "-c", "print('never healthy', flush=True); import time; time.sleep(60)"],
        log_path=tmp_path / "sleeper.log",
    )
    with pytest.raises(ProcessFailed, match="not healthy after"):
        proc.wait_healthy(lambda: False, timeout=0.5)
    proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not proc.group_alive()


def test_free_ports_are_distinct_and_free() -> None:
    ports = {free_port() for _ in range(50)}
    assert len(ports) == 50
    assert all(port_is_free(p) for p in ports)
