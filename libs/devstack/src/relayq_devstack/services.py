"""The relayq services of the local stack, as data: one list, built in one place.

Each :class:`ServiceSpec` says how to start a process and how to tell it is healthy. The stack
starts them in list order and waits for all of them together.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from relayq_devstack.health import AllOf, CeleryWorkers, GrpcHealth, HealthCheck, HttpOk

HOST = "127.0.0.1"
# Worker node i serves its metrics on this + i by default (moved when busy, like every port).
WORKER_METRICS_BASE_PORT = 9200


@dataclass(frozen=True)
class ServiceContext:
    """What the service list is built from: servers, resolved ports, and the venv's scripts."""

    bin_dir: Path
    redis_url: str
    database_url: str
    ports: Mapping[str, int]
    workers: int = 2
    concurrency: int = 2
    # dlq-svc's admin token (Replay/Drop/Purge); "" runs dlq-svc without one.
    dlq_admin_token: str = ""
    traces_dir: Path | None = None  # every process writes its spans there (relayq-trace)

    def script(self, name: str) -> str:
        """Path of a console script installed next to the running Python."""
        return str(self.bin_dir / name)

    def common_env(self) -> dict[str, str]:
        """Variables every relayq process gets."""
        return {
            "RELAYQ_DATABASE_URL": self.database_url,
            "RELAYQ_REDIS_URL": self.redis_url,
            "RELAYQ_LOG_JSON": "true",
            # Workers report dead letters there and the gateway reads DLQ depth from it; the
            # port moves off its default when busy, so it is always passed (as in compose).
            "RELAYQ_DLQ_GRPC": f"{HOST}:{self.ports['dlq_grpc']}",
            # Logs go to files: without this, Python buffers them and a crash loses the end.
            "PYTHONUNBUFFERED": "1",
        } | ({"RELAYQ_TRACES_DIR": str(self.traces_dir)} if self.traces_dir else {})


@dataclass(frozen=True)
class ServiceSpec:
    """One process of the stack. ``group`` is what ``--skip`` names (all workers are "worker")."""

    name: str
    group: str
    argv: tuple[str, ...]
    health: HealthCheck
    endpoint: str
    env: Mapping[str, str] = field(default_factory=dict)
    port: int | None = None
    stop_signal: int = signal.SIGTERM
    # ``host:port`` serving Prometheus metrics at /metrics (the stack's Prometheus scrapes it).
    metrics: str | None = None
    # Files the process needs, written (path -> text) just before it starts.
    files: Mapping[Path, str] = field(default_factory=dict)


ServiceFactory = Callable[[ServiceContext], list[ServiceSpec]]

# Which ports each group needs; only the ports of groups that run are resolved.
PORTS_BY_GROUP: dict[str, tuple[str, ...]] = {
    "ingest": ("ingest_grpc", "ingest_http"),
    "dlq": ("dlq_grpc", "dlq_metrics"),
    "worker": (),  # plus one metrics port per node: worker_metrics_ports()
    "metrics-gateway": ("metrics",),
    "reconciler": ("reconciler",),
    "flower": ("flower",),
    "prometheus": ("prometheus",),
    "alertmanager": ("alertmanager",),
    "alert-sink": ("alert_sink",),
}


def worker_metrics_ports(workers: int) -> dict[str, int]:
    """The preferred metrics port of each worker node, by port name (``worker1_metrics``...)."""
    return {f"worker{i}_metrics": WORKER_METRICS_BASE_PORT + i for i in range(1, workers + 1)}


def relayq_services(ctx: ServiceContext) -> list[ServiceSpec]:
    """ingest, dlq, the workers, metrics-gateway, the reconciler and Flower, in start order."""
    env = ctx.common_env()
    p = ctx.ports
    grpc_ingest = f"{HOST}:{p['ingest_grpc']}"
    http_ingest = f"http://{HOST}:{p['ingest_http']}"
    grpc_dlq = f"{HOST}:{p['dlq_grpc']}"
    dlq_token = {"RELAYQ_DLQ_ADMIN_TOKEN": ctx.dlq_admin_token} if ctx.dlq_admin_token else {}
    metrics = f"http://{HOST}:{p['metrics']}"
    flower = f"http://{HOST}:{p['flower']}"
    reconciler = f"http://{HOST}:{p['reconciler']}"
    specs = [
        ServiceSpec(
            name="ingest",
            group="ingest",
            argv=(ctx.script("relayq-ingest"),),
            env={
                **env,
                "RELAYQ_INGEST_HOST": HOST,
                "RELAYQ_INGEST_GRPC_PORT": str(p["ingest_grpc"]),
                "RELAYQ_INGEST_HTTP_PORT": str(p["ingest_http"]),
            },
            health=AllOf((GrpcHealth(grpc_ingest), HttpOk(f"{http_ingest}/healthz"))),
            endpoint=f"{grpc_ingest} {http_ingest}",
            port=p["ingest_grpc"],
            metrics=f"{HOST}:{p['ingest_http']}",
        ),
        ServiceSpec(
            name="dlq",
            group="dlq",
            argv=(ctx.script("relayq-dlq"),),
            env={
                **env,
                "RELAYQ_DLQ_HOST": HOST,
                "RELAYQ_DLQ_GRPC_PORT": str(p["dlq_grpc"]),
                "RELAYQ_DLQ_METRICS_PORT": str(p["dlq_metrics"]),
                **dlq_token,
            },
            health=GrpcHealth(grpc_dlq),
            endpoint=grpc_dlq,
            port=p["dlq_grpc"],
            metrics=f"{HOST}:{p['dlq_metrics']}",
        ),
    ]
    for i in range(1, ctx.workers + 1):
        metrics_port = p.get(f"worker{i}_metrics", WORKER_METRICS_BASE_PORT + i)
        specs.append(
            ServiceSpec(
                name=f"worker{i}",
                group="worker",
                argv=(ctx.script("relayq-worker"),),
                env={
                    **env,
                    "RELAYQ_WORKER_CONCURRENCY": str(ctx.concurrency),
                    # Distinct node names: Celery warns about, and mis-routes replies to, twins.
                    "RELAYQ_WORKER_NODE_NAME": f"worker{i}@%h",
                    "RELAYQ_WORKER_METRICS_PORT": str(metrics_port),
                },
                health=CeleryWorkers(ctx.redis_url, 1, name_prefix=f"worker{i}@"),
                endpoint=f"worker{i}@ (concurrency {ctx.concurrency})",
                metrics=f"{HOST}:{metrics_port}",
            )
        )
    specs += [
        ServiceSpec(
            name="metrics-gateway",
            group="metrics-gateway",
            argv=(ctx.script("relayq-metrics-gateway"),),
            env={
                **env,
                "RELAYQ_METRICS_HOST": HOST,
                "RELAYQ_METRICS_PORT": str(p["metrics"]),
                # WorkersBelowExpected: the stack runs this many nodes.
                "RELAYQ_EXPECTED_WORKERS": str(ctx.workers),
            },
            health=HttpOk(f"{metrics}/healthz"),
            endpoint=metrics,
            port=p["metrics"],
            metrics=f"{HOST}:{p['metrics']}",
        ),
        ServiceSpec(
            # Re-enqueues jobs the broker lost (relayq_core/reconcile.py); /healthz and /metrics.
            name="reconciler",
            group="reconciler",
            argv=(ctx.script("relayq-reconciler"),),
            env={
                **env,
                "RELAYQ_RECONCILER_HOST": HOST,
                "RELAYQ_RECONCILER_PORT": str(p["reconciler"]),
            },
            health=HttpOk(f"{reconciler}/healthz"),
            endpoint=reconciler,
            port=p["reconciler"],
            metrics=f"{HOST}:{p['reconciler']}",
        ),
        ServiceSpec(
            name="flower",
            group="flower",
            argv=(
                ctx.script("celery"),
                f"--broker={ctx.redis_url}",
                "flower",
                f"--port={p['flower']}",
                f"--address={HOST}",
                # Per-task events cost the workers' consumer ~40 % of its CPU (docs/
                # architecture.md); relayq's ledger and metrics carry per-job visibility instead.
                "--enable_events=False",
            ),
            env={"PYTHONUNBUFFERED": "1"},
            health=HttpOk(f"{flower}/healthcheck"),
            endpoint=flower,
            port=p["flower"],
        ),
    ]
    return specs


def migrate_argv(ctx: ServiceContext) -> list[str]:
    """The job ledger's migrations (dlq-svc applies its own when it starts)."""
    return [ctx.script("relayq-migrate")]


def stack_env(ctx: ServiceContext, groups: set[str]) -> dict[str, str]:
    """The contents of ``stack.env``: how clients reach what runs (skipped groups left out)."""
    p = ctx.ports
    env: dict[str, str] = {}
    if "ingest" in groups:
        env["RELAYQ_INGEST_GRPC"] = f"{HOST}:{p['ingest_grpc']}"
        env["RELAYQ_INGEST_HTTP"] = f"http://{HOST}:{p['ingest_http']}"
    if "dlq" in groups:
        env["RELAYQ_DLQ_GRPC"] = f"{HOST}:{p['dlq_grpc']}"
        if ctx.dlq_admin_token:
            # dlq-tool reads it from the environment: `set -a; . .relayq/stack.env; set +a`.
            env["RELAYQ_DLQ_ADMIN_TOKEN"] = ctx.dlq_admin_token
    env["RELAYQ_REDIS_URL"] = ctx.redis_url
    env["RELAYQ_DATABASE_URL"] = ctx.database_url
    if ctx.traces_dir:  # where relayq-trace reads the services' span files
        env["RELAYQ_TRACES_DIR"] = str(ctx.traces_dir)
    if "flower" in groups:
        env["RELAYQ_FLOWER_URL"] = f"http://{HOST}:{p['flower']}"
    if "metrics-gateway" in groups:
        env["RELAYQ_METRICS_URL"] = f"http://{HOST}:{p['metrics']}"
    if "reconciler" in groups:
        env["RELAYQ_RECONCILER_URL"] = f"http://{HOST}:{p['reconciler']}"
    if "prometheus" in groups:
        env["RELAYQ_PROMETHEUS_URL"] = f"http://{HOST}:{p['prometheus']}"
    if "alertmanager" in groups:
        env["RELAYQ_ALERTMANAGER_URL"] = f"http://{HOST}:{p['alertmanager']}"
    if "alert-sink" in groups:
        # `relayq-alerts` reads the notifications Alertmanager sent from there.
        env["RELAYQ_ALERT_SINK_URL"] = f"http://{HOST}:{p['alert_sink']}"
    return env
