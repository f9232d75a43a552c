"""The whole local stack, for real: Redis, PostgreSQL, migrations, Celery workers and Flower.

The relayq services are replaced by stand-ins that serve the same health endpoints from the same
environment variables, so this tests the stack's wiring, not the services.
"""

from __future__ import annotations

import dataclasses
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from relayq_devstack.config import StackConfig
from relayq_devstack.envfile import read_env
from relayq_devstack.prometheus import PrometheusClient
from relayq_devstack.services import ServiceContext, ServiceSpec, relayq_services
from relayq_devstack.stack import Stack, StackError, dlq_admin_token, down, status, up
from relayq_devstack.state import StackState, StatePaths
from tests.observability.prometheus_fixture import require_tool

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent

# Serves gRPC health on the port named by --grpc ENV and GET /healthz on --http ENV.
_STANDIN = """
import argparse, http.server, os, signal, threading
from concurrent import futures
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

args = argparse.ArgumentParser()
args.add_argument("--grpc")
args.add_argument("--http")
opts = args.parse_args()
stopping = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stopping.set())
if opts.grpc:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{os.environ[opts.grpc]}")
    server.start()
if opts.http:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ[opts.http])), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
print("stand-in ready", flush=True)
stopping.wait()
"""

_WORKER = (
    'exec "$CELERY" --broker="$RELAYQ_REDIS_URL" worker -n "$RELAYQ_WORKER_NODE_NAME" '
    "--pool=solo --without-mingle --without-gossip --loglevel=info"
)


def standin_services(ctx: ServiceContext) -> list[ServiceSpec]:
    """The real service list with each relayq program swapped for a stand-in."""
    python = [sys.executable, "-c", _STANDIN]
    argv = {
        "ingest": (
            *python,
            "--grpc",
            "RELAYQ_INGEST_GRPC_PORT",
            "--http",
            "RELAYQ_INGEST_HTTP_PORT",
        ),
        "dlq": (*python, "--grpc", "RELAYQ_DLQ_GRPC_PORT"),
        "worker": ("/bin/sh", "-c", _WORKER),
        "metrics-gateway": (*python, "--http", "RELAYQ_METRICS_PORT"),
        "reconciler": (*python, "--http", "RELAYQ_RECONCILER_PORT"),
    }
    specs = []
    for spec in relayq_services(ctx):
        if spec.group in argv:
            env = {**spec.env, "CELERY": str(BIN / "celery")}
            spec = dataclasses.replace(spec, argv=argv[spec.group], env=env)
        specs.append(spec)
    return specs


def config(tmp_path: Path, **overrides: object) -> StackConfig:
    """A stack in ``tmp_path`` on free ports only (no default port, no outside server)."""
    ports = {name: _free_port() for name in ("ingest_grpc", "ingest_http", "dlq_grpc")}
    ports |= {name: _free_port() for name in ("metrics", "flower")}
    return StackConfig.from_env(
        {}, cwd=tmp_path, state_dir=tmp_path / "state", ports=ports, fast=True, **overrides
    )


def _free_port() -> int:
    from relayq_devstack.ports import free_port

    return free_port()


def alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def cli(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "relayq-stack"), *args, "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_up_status_env_down(tmp_path: Path) -> None:
    require_tool("prometheus")
    require_tool("alertmanager")
    cfg = config(tmp_path, workers=2, timeout=60.0)
    paths = StatePaths(cfg.state_dir)
    stack = Stack(cfg, services=standin_services)
    try:
        info = stack.up()
        assert set(info.env) == {
            "RELAYQ_PROMETHEUS_URL",
            "RELAYQ_ALERTMANAGER_URL",
            "RELAYQ_ALERT_SINK_URL",
            "RELAYQ_TRACES_DIR",
            "RELAYQ_INGEST_GRPC",
            "RELAYQ_INGEST_HTTP",
            "RELAYQ_DLQ_GRPC",
            "RELAYQ_DLQ_ADMIN_TOKEN",
            "RELAYQ_REDIS_URL",
            "RELAYQ_DATABASE_URL",
            "RELAYQ_FLOWER_URL",
            "RELAYQ_METRICS_URL",
            "RELAYQ_RECONCILER_URL",
        }
        assert read_env(paths.stack_env) == info.env
        assert info.env["RELAYQ_DLQ_ADMIN_TOKEN"] == dlq_admin_token(paths), "the stack's token"
        assert info.env["RELAYQ_INGEST_GRPC"] == f"127.0.0.1:{cfg.ports['ingest_grpc']}"
        assert (paths.logs / "worker2.log").read_text().count("worker2@") >= 1
        assert (paths.logs / "migrate.log").exists()

        report = status(cfg.state_dir)
        assert report.overall == "healthy", report
        names = [c.name for c in report.components]
        assert names == [
            "redis",
            "postgres",
            "ingest",
            "dlq",
            "worker1",
            "worker2",
            "metrics-gateway",
            "reconciler",
            "flower",
            "alert-sink",
            "alertmanager",
            "prometheus",
        ]
        # It scrapes every service group that serves metrics (stand-ins answer 404: down).
        # Ready is not the same as having loaded the targets: on a busy machine the target
        # list is empty for a moment after Prometheus answers.
        expected = [
            "alertmanager",
            "prometheus",
            "relayq-dlq",
            "relayq-ingest",
            "relayq-metrics-gateway",
            "relayq-reconciler",
            "relayq-worker",
            "relayq-worker",
        ]
        prometheus = PrometheusClient(info.env["RELAYQ_PROMETHEUS_URL"])
        deadline = time.monotonic() + 15
        jobs = sorted(t["labels"]["job"] for t in prometheus.targets())
        while jobs != expected and time.monotonic() < deadline:
            time.sleep(0.2)
            jobs = sorted(t["labels"]["job"] for t in prometheus.targets())
        assert jobs == expected

        # From another process, as a developer would.
        shown = cli(cfg.state_dir, "status")
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert "stack: healthy" in shown.stdout
        assert f"alertmanager: {info.env['RELAYQ_ALERTMANAGER_URL']}" in shown.stdout
        # A number (an always-firing watchdog alert may have arrived already), not an error.
        assert re.search(r"^alerts received: \d+ firing", shown.stdout, re.M), shown.stdout
        rendered = cfg.state_dir / "alertmanager" / "alertmanager.yml"
        assert f"url: {info.env['RELAYQ_ALERT_SINK_URL']}/webhook" in rendered.read_text()
        assert (cfg.state_dir / "prometheus" / "rules" / "alerts.yml").is_file()
        printed = cli(cfg.state_dir, "env")
        assert printed.returncode == 0 and "RELAYQ_DLQ_GRPC=" in printed.stdout

        # up again: idempotent, starts nothing (this test's stack runs without a supervisor).
        again = up(dataclasses.replace(cfg, supervise=False), services=standin_services)
        assert again.already_running
        assert [c.pid for c in again.components] == [c.pid for c in info.components]

        # A dead worker makes the stack degraded, and up refuses to half-start.
        worker1 = next(p for p in stack.processes if p.name == "worker1")
        worker1.kill()
        degraded = status(cfg.state_dir)
        assert degraded.overall == "degraded"
        assert [c.name for c in degraded.components if c.state == "dead"] == ["worker1"]
        with pytest.raises(StackError, match="degraded"):
            up(cfg, services=standin_services)

        pids = [c.pid for c in info.components if c.pid is not None]
        stopped = cli(cfg.state_dir, "down")
        assert stopped.returncode == 0, stopped.stderr
        assert not [pid for pid in pids if alive(pid)]
        assert StackState.load(paths) is None and not paths.stack_env.exists()
        assert cli(cfg.state_dir, "status").returncode == 3
        assert down(cfg.state_dir) == []
    finally:
        stack.down()
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in str(p.info)]


def test_a_failing_service_stops_everything(tmp_path: Path) -> None:
    def broken(ctx: ServiceContext) -> list[ServiceSpec]:
        specs = [s for s in standin_services(ctx) if s.group in ("ingest", "dlq")]
        crash = [sys.executable, "-c", "print('cannot bind, giving up'); raise SystemExit(2)"]
        return [specs[0], dataclasses.replace(specs[1], argv=tuple(crash))]

    cfg = config(tmp_path, timeout=30.0)
    with pytest.raises(StackError) as failure:
        up(cfg, services=broken, migrate=False)
    assert [f.name for f in failure.value.failures] == ["dlq"]
    assert "cannot bind, giving up" in str(failure.value)
    assert StackState.load(StatePaths(cfg.state_dir)) is None
    assert down(cfg.state_dir) == []
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in str(p.info)]


def _racing(held: list[socket.socket]) -> Callable[[ServiceContext], list[ServiceSpec]]:
    """Ingest and the metrics gateway, where another process takes the gateway's port after the
    stack checked it and before the gateway binds it (two stacks starting at once)."""

    def services(ctx: ServiceContext) -> list[ServiceSpec]:
        if not held:
            sock = socket.socket()
            sock.bind(("127.0.0.1", ctx.ports["metrics"]))
            sock.listen()
            held.append(sock)
        return [s for s in standin_services(ctx) if s.group in ("ingest", "metrics-gateway")]

    return services


_ONLY_INGEST_AND_GATEWAY = frozenset({"dlq", "worker", "flower", "reconciler", "prometheus"})


def test_a_port_taken_after_the_check_moves_to_a_free_one(tmp_path: Path) -> None:
    held: list[socket.socket] = []
    cfg = config(tmp_path, timeout=60.0, skip=_ONLY_INGEST_AND_GATEWAY)
    cfg = dataclasses.replace(cfg, explicit_ports=cfg.explicit_ports - {"metrics"})
    try:
        with Stack(cfg, services=_racing(held), migrate=False) as stack:
            info = stack.up()
            taken = held[0].getsockname()[1]
            url = info.env["RELAYQ_METRICS_URL"]
            assert url != f"http://127.0.0.1:{taken}"
            assert [n for n in info.notes if "taken while the stack started" in n] == [
                f"port {taken} (metrics) was taken while the stack started: "
                f"using {url.rsplit(':', 1)[1]} instead"
            ]
            # One ingest and one gateway run, the ones recorded; the first attempt's are gone.
            report = status(cfg.state_dir)
            assert sorted(c.name for c in report.components if c.kind == "service") == [
                "ingest",
                "metrics-gateway",
            ]
            assert report.overall == "healthy"
    finally:
        for sock in held:
            sock.close()
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in str(p.info)]


def test_a_port_asked_for_and_taken_meanwhile_is_a_clear_error(tmp_path: Path) -> None:
    held: list[socket.socket] = []
    cfg = config(tmp_path, timeout=60.0, skip=_ONLY_INGEST_AND_GATEWAY)
    try:
        with (
            Stack(cfg, services=_racing(held), migrate=False) as stack,
            pytest.raises(StackError, match=r"\(metrics\) was taken by another process"),
        ):
            stack.up()
    finally:
        for sock in held:
            sock.close()
    assert StackState.load(StatePaths(cfg.state_dir)) is None
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in str(p.info)]
