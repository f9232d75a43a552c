"""The local stack under test, with the handles the fault injector needs.

Started with the ``relayq_devstack`` library in its own state directory, on free ports only,
with the fast retry policy and short reconciler deadlines. The ``Stack`` object runs no
supervisor (``relayq-stack up`` does), so this harness does: a thread replaces every worker node
that exits (SIGKILLed by the injector, or stopped by its own watchdog), as compose's
``restart: unless-stopped`` or Kubernetes would. Each node incarnation keeps its metric files
in its own directory, so the counts of a node killed as a whole can still be read afterwards.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psutil
import structlog

from relayq_core.jobs import JobSpec
from relayq_core.publish import Publisher
from relayq_core.settings import repo_root
from relayq_devstack.config import DEFAULT_PORTS, StackConfig
from relayq_devstack.health import grpc_healthy, http_ok
from relayq_devstack.ports import free_port
from relayq_devstack.postgres import PostgresServer
from relayq_devstack.process import ServiceProcess
from relayq_devstack.redis import RedisServer
from relayq_devstack.services import ServiceContext, ServiceSpec, relayq_services
from relayq_devstack.stack import Stack
from tests.chaos.sizes import ChaosSize

log = structlog.get_logger("chaos")

REPO = repo_root()
RETRY_POLICY = REPO / "tests" / "data" / "retry-fast.toml"

#: Settings for a run measured in seconds, not hours.
WORKER_ENV = {
    "RELAYQ_WORKER_DLQ_RETRY_MAX_SECONDS": "3",
    "RELAYQ_WORKER_DEFER_SECONDS": "1",
    "RELAYQ_WORKER_STALL_SECONDS": "20",
    "RELAYQ_WORKER_WATCHDOG_INTERVAL_SECONDS": "2",
    "RELAYQ_WORKER_LEASE_SECONDS": "4",
    "RELAYQ_WORKER_KILL_GRACE_SECONDS": "1",
    "RELAYQ_WORKER_HTTP_TIMEOUT_SECONDS": "1",
}
RECONCILER_ENV = {
    "RELAYQ_RECONCILER_INTERVAL_SECONDS": "1",
    "RELAYQ_RECONCILER_SCAN_INTERVAL_SECONDS": "5",
    "RELAYQ_RECONCILER_DEADLINE_SECONDS": "5",
    "RELAYQ_RECONCILER_DEAD_LETTER_GRACE_SECONDS": "15",
    "RELAYQ_RECONCILER_UNPUBLISHED_AFTER_SECONDS": "20",
}
#: The outbox gives a job up no later than the reconciler takes it over (see ingest's outbox.py).
INGEST_ENV = {"RELAYQ_INGEST_OUTBOX_MAX_AGE_SECONDS": "20"}


class ChaosStack:
    """A running stack and what the injector does to it."""

    def __init__(
        self, root: Path, size: ChaosSize, worker_env: dict[str, str] | None = None
    ) -> None:
        self.root = root
        self.size = size
        #: Settings every worker node gets on top of WORKER_ENV (a deliberately broken build).
        self.worker_env = worker_env or {}
        self.specs: dict[str, ServiceSpec] = {}
        self.procs: dict[str, ServiceProcess] = {}
        self.generation: Counter[str] = Counter()
        #: Metric directories of every worker node incarnation, by node name.
        self.metric_dirs: dict[str, list[Path]] = {}
        self.faults: Counter[str] = Counter()
        self.node_exits: Counter[str] = Counter()
        #: Jobs whose message the DUPLICATES fault published a second time.
        self.duplicates = 0
        self._lock = threading.Lock()
        self._supervising = threading.Event()
        self._supervisor: threading.Thread | None = None
        ports = {name: free_port() for name in DEFAULT_PORTS}
        ports |= {f"worker{i}_metrics": free_port() for i in range(1, size.workers + 1)}
        self.config = StackConfig(
            state_dir=root / "state",
            ports=ports,
            explicit_ports=frozenset(ports),
            workers=size.workers,
            concurrency=size.concurrency,
            timeout=180.0,
            fast=True,
            skip=frozenset({"flower", "prometheus"}),
        )
        self.stack = Stack(self.config, services=self._services)

    # --- start and stop -----------------------------------------------------------------

    def _services(self, ctx: ServiceContext) -> list[ServiceSpec]:
        specs = []
        for spec in relayq_services(ctx):
            env = {**spec.env, "RELAYQ_RETRY_POLICY": str(RETRY_POLICY)}
            if spec.group == "worker":
                env |= (
                    WORKER_ENV
                    | self.worker_env
                    | {"RELAYQ_WORKER_METRICS_DIR": str(self._metric_dir(spec.name))}
                )
            if spec.group == "reconciler":
                env |= RECONCILER_ENV
            if spec.group == "ingest":
                env |= INGEST_ENV
            specs.append(dataclasses.replace(spec, env=env))
        self.specs = {s.name: s for s in specs}
        return specs

    def _metric_dir(self, name: str) -> Path:
        path = self.root / "metrics" / f"{name}.{self.generation[name]}"
        self.metric_dirs.setdefault(name, []).append(path)
        return path

    def up(self) -> None:
        """Starts everything, waits until healthy, and starts supervising the workers."""
        self.stack.up()
        self.procs = {p.name: p for p in self.stack.processes if p.name in self.specs}
        self._supervising.set()
        self._supervisor = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        self._supervisor.start()

    def down(self) -> None:
        """Stops supervising, then everything (gracefully, then SIGKILL)."""
        self._supervising.clear()
        if self._supervisor is not None:
            self._supervisor.join(timeout=5)
        self.stack.down(timeout=20)

    @property
    def redis(self) -> RedisServer:
        assert self.stack.redis is not None
        return self.stack.redis

    @property
    def postgres(self) -> PostgresServer:
        assert self.stack.postgres is not None
        return self.stack.postgres

    def port(self, name: str) -> int:
        return self.config.ports[name]

    @property
    def workers(self) -> list[str]:
        return [n for n, s in self.specs.items() if s.group == "worker"]

    # --- processes ----------------------------------------------------------------------

    def start(self, name: str) -> ServiceProcess:
        """A new incarnation of service ``name`` (same ports and settings)."""
        spec = self.specs[name]
        env = dict(spec.env)
        if spec.group == "worker":
            self.generation[name] += 1
            env["RELAYQ_WORKER_METRICS_DIR"] = str(self._metric_dir(name))
        proc = ServiceProcess(
            name,
            spec.argv,
            log_path=self.stack.paths.log(name),
            env=env,
            stop_signal=spec.stop_signal,
        )
        with self._lock:
            self.procs[name] = proc
            self.stack.processes.append(proc)  # so that down() stops it
        return proc

    def wait_healthy(self, name: str, timeout: float = 60) -> None:
        self.procs[name].wait_healthy(self.specs[name].health, timeout, interval=0.2)

    def _supervise(self) -> None:
        while self._supervising.is_set():
            for name in self.workers:
                with self._lock:
                    proc = self.procs[name]
                if proc.is_running():
                    continue
                code = proc.returncode
                self.node_exits[f"exit {code}"] += 1
                log.warning("chaos_node_exited", node=name, code=code)
                if self._supervising.is_set():
                    self.start(name)
            time.sleep(0.25)

    # --- faults -------------------------------------------------------------------------

    def kill_pool_process(self, rng: random.Random) -> bool:
        """SIGKILLs one pool process of a random worker node (the node forks a new one)."""
        name = rng.choice(self.workers)
        try:
            children = psutil.Process(self.procs[name].pid).children()
        except psutil.Error:
            return False
        if not children:
            return False
        victim = rng.choice(children)
        try:
            victim.send_signal(signal.SIGKILL)
        except psutil.Error:
            return False
        self.faults["pool_process_sigkill"] += 1
        log.info("chaos_pool_process_killed", node=name, pid=victim.pid)
        return True

    def kill_node(self, rng: random.Random) -> None:
        """SIGKILLs a whole worker node, main process and pool; the supervisor replaces it."""
        name = rng.choice(self.workers)
        with self._lock:
            proc = self.procs[name]
        if proc.is_running():
            proc.kill()
            self.faults["node_sigkill"] += 1
            log.info("chaos_node_killed", node=name)

    def redis_restart(self) -> None:
        self.redis.restart(persistence=True)
        self.faults["redis_restart"] += 1

    def redis_flushall(self) -> None:
        self.redis.flushall()
        self.faults["redis_flushall"] += 1

    def redis_data_loss(self) -> None:
        self.redis.restart(persistence=False)
        self.faults["redis_data_loss"] += 1

    def postgres_restart(self) -> None:
        self.postgres.restart()
        self.faults["postgres_restart"] += 1

    def dlq_down(self, seconds: float, sleep: Callable[[float], object]) -> None:
        self.procs["dlq"].kill()
        self.faults["dlq_down"] += 1
        sleep(seconds)
        self.start("dlq")
        self.wait_healthy("dlq")

    def duplicate_messages(self, specs: list[JobSpec]) -> None:
        """Publishes a second message for each of these accepted jobs, as an at-least-once
        broker (a restore, a redelivery, the reconciler erring towards publishing) may."""

        async def publish() -> None:
            publisher = Publisher(self.redis.url)
            try:
                await publisher.publish(specs)
            finally:
                await publisher.close()

        asyncio.run(publish())
        self.faults["duplicate_messages"] += 1
        self.duplicates += len(specs)
        log.info("chaos_duplicates_published", jobs=len(specs))

    def ingest_kill(self) -> None:
        """SIGKILLs ingest-svc (bring it back with :meth:`start` and :meth:`wait_healthy`)."""
        self.procs["ingest"].kill()
        self.faults["ingest_kill"] += 1

    # --- addresses ----------------------------------------------------------------------

    @property
    def ingest_address(self) -> str:
        return f"127.0.0.1:{self.port('ingest_grpc')}"

    @property
    def dlq_address(self) -> str:
        return f"127.0.0.1:{self.port('dlq_grpc')}"

    @property
    def database_url(self) -> str:
        return self.postgres.url

    def worker_metrics_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port(f'{name}_metrics')}/metrics"

    def healthy(self, name: str) -> bool:
        spec = self.specs[name]
        return bool(spec.health())

    def gateway_metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.port('metrics')}/metrics"

    def reconciler_metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.port('reconciler')}/metrics"

    def dlq_healthy(self) -> bool:
        return grpc_healthy(self.dlq_address)

    def gateway_healthy(self) -> bool:
        return http_ok(f"http://127.0.0.1:{self.port('metrics')}/healthz")
