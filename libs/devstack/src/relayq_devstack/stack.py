"""The local stack: Redis, PostgreSQL, migrations, then every service, each a child process.

``up`` records every process in ``stack.json`` as soon as it starts, so ``down`` and ``status``
work from any other process, even after an ``up`` that crashed half-way.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import structlog

from relayq_devstack.config import StackConfig
from relayq_devstack.control import StartFailed, start_components, stop_components
from relayq_devstack.envfile import write_env
from relayq_devstack.health import (
    HealthCheck,
    PostgresReady,
    RedisPing,
    check_to_json,
    postgres_ready,
    redis_ping,
)
from relayq_devstack.monitoring import monitoring_specs
from relayq_devstack.ports import free_port, pick_port, port_is_free
from relayq_devstack.postgres import PostgresServer, start_postgres
from relayq_devstack.process import ProcessFailed, ServiceProcess, Stoppable, stop_all
from relayq_devstack.redis import RedisServer, start_redis
from relayq_devstack.services import (
    PORTS_BY_GROUP,
    ServiceContext,
    ServiceFactory,
    ServiceSpec,
    migrate_argv,
    relayq_services,
    stack_env,
    worker_metrics_ports,
)
from relayq_devstack.state import Component, StackState, StatePaths
from relayq_devstack.status import ComponentStatus, StackStatus, status
from relayq_devstack.supervisor import start_supervisor, stop_supervisor

__all__ = [
    "ComponentStatus",
    "Stack",
    "StackError",
    "StackInfo",
    "StackStatus",
    "StartFailed",
    "down",
    "start_components",
    "status",
    "stop_components",
    "up",
]

log = structlog.get_logger(__name__)

ENV_HEADER = (
    "relayq local stack, written by `relayq-stack up`; it always tells where things listen.\n"
    "Load it into a shell with: set -a; . {path}; set +a"
)
_POLL = 0.25
# Times the services are restarted on new ports when another process took one of theirs
# between the check and the bind (two stacks starting at once race for the default ports).
PORT_RACE_RETRIES = 3
# dlq-svc's admin token lives in the state directory, so it stays the same across restarts.
DLQ_TOKEN_FILE = "dlq-admin-token"


class StackError(RuntimeError):
    """The stack could not be brought up (``failures`` holds each failed process and its log)."""

    def __init__(self, message: str, failures: Sequence[ProcessFailed] = ()) -> None:
        self.message = message
        self.failures = list(failures)
        super().__init__(message)

    def __str__(self) -> str:
        return "\n\n".join([self.message, *(str(f) for f in self.failures)])


@dataclass
class StackInfo:
    """What ``up`` returns: where everything is."""

    state_dir: Path
    env: dict[str, str]
    components: list[Component]
    notes: list[str] = field(default_factory=list)
    already_running: bool = False


def _port_names(config: StackConfig, groups: set[str]) -> dict[str, int]:
    """The wanted port of every service port of ``groups``, by name."""
    per_node = worker_metrics_ports(config.workers)
    wanted: dict[str, int] = {}
    for group in sorted(groups):
        for name in [*PORTS_BY_GROUP.get(group, ()), *(per_node if group == "worker" else ())]:
            wanted[name] = config.ports.get(name) or per_node[name]
    return wanted


def _resolve_ports(config: StackConfig, groups: set[str]) -> tuple[dict[str, int], list[str]]:
    """Every port, checked (and moved if a busy default) for the groups that will run."""
    ports: dict[str, int] = dict(config.ports)
    notes: list[str] = []
    for name, wanted in _port_names(config, groups).items():
        if name in config.explicit_ports:
            if not port_is_free(wanted):
                raise StackError(f"port {wanted} ({name}) was asked for but is busy")
            ports[name] = wanted
            continue
        ports[name], moved = pick_port(wanted)
        if moved:
            notes.append(f"port {wanted} ({name}) is busy: using {ports[name]} instead")
    return ports, notes


def _move_taken_ports(config: StackConfig, groups: set[str], ports: dict[str, int]) -> list[str]:
    """Moves the ports another process took after :func:`_resolve_ports` checked them (call it
    with the stack's own services stopped); a note for each. A port the user asked for cannot
    move: that is a :class:`StackError`."""
    notes: list[str] = []
    for name in _port_names(config, groups):
        port = ports[name]
        if port_is_free(port):
            continue
        if name in config.explicit_ports:
            raise StackError(
                f"port {port} ({name}) was taken by another process while the stack started"
            )
        ports[name] = free_port()
        notes.append(
            f"port {port} ({name}) was taken while the stack started: using {ports[name]} instead"
        )
    return notes


def dlq_admin_token(paths: StatePaths) -> str:
    """The stack's dlq-svc admin token: made once per state directory (a private file), then
    reused, so `up --restart` and `down`/`up` keep it. Delete the file to get a new one."""
    path = paths.root / DLQ_TOKEN_FILE
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        token = ""
    if not token:
        token = secrets.token_urlsafe(32)
        paths.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(token + "\n")
    return token


def _run_to_completion(proc: ServiceProcess, deadline: float) -> None:
    while proc.is_running():
        if time.monotonic() >= deadline:
            proc.stop(timeout=2)
            raise ProcessFailed(proc.name, "did not finish in time", proc.log_path)
        time.sleep(0.05)
    if proc.returncode != 0:
        raise ProcessFailed(proc.name, f"exited with code {proc.returncode}", proc.log_path)


class Stack:
    """A stack started and owned by this process (``relayq-stack up`` or a test fixture).

    The processes outlive this object (they run in their own sessions): call :meth:`down`, or
    use the object as a context manager, to stop them. ``services`` replaces the service list
    (tests use stand-ins); ``migrate=False`` skips ``relayq-migrate``.
    """

    def __init__(
        self,
        config: StackConfig,
        *,
        services: ServiceFactory = relayq_services,
        migrate: bool = True,
    ) -> None:
        self.config = config
        self.paths = StatePaths(config.state_dir)
        self.services = services
        self.migrate = migrate
        self.redis: RedisServer | None = None
        self.postgres: PostgresServer | None = None
        self.processes: list[ServiceProcess] = []
        self.state = StackState()

    def _record(self, component: Component) -> None:
        self.state.components.append(component)
        self.state.save(self.paths)

    def _record_process(
        self,
        proc: ServiceProcess,
        kind: str,
        endpoint: str,
        health: HealthCheck,
        port: int | None = None,
        group: str = "",
    ) -> None:
        self._record(
            Component(
                name=proc.name,
                kind=kind,
                endpoint=endpoint,
                pid=proc.pid,
                create_time=proc.ref.create_time,
                stop_signal=int(proc.stop_signal),
                port=port,
                argv=proc.argv,
                log_path=str(proc.log_path),
                health=check_to_json(health),
                group=group or proc.name,
                env=proc.env,
                inherit_env=proc.inherit_env,
                cwd=str(proc.cwd) if proc.cwd is not None else None,
                user=proc.user,
            )
        )

    def _start_redis(self) -> str:
        if self.config.redis_url:
            url = self.config.redis_url
            if not redis_ping(url):
                raise StackError(
                    f"RELAYQ_REDIS_URL={url} is set (an external Redis) but nothing answers "
                    "there; unset it to let relayq-stack start its own Redis"
                )
            self._record(Component("redis", "redis", url, health=check_to_json(RedisPing(url))))
            return url
        self.redis = start_redis(
            self.paths.redis, self.config.redis_port, log_path=self.paths.log("redis")
        )
        assert self.redis.process is not None
        self._record_process(
            self.redis.process, "redis", self.redis.url, RedisPing(self.redis.url), self.redis.port
        )
        return self.redis.url

    def _start_postgres(self) -> str:
        if self.config.database_url:
            url = self.config.database_url
            if not postgres_ready(url):
                raise StackError(
                    f"RELAYQ_DATABASE_URL={url} is set (an external PostgreSQL) but it does not "
                    "accept connections; unset it to let relayq-stack start its own PostgreSQL"
                )
            self._record(
                Component("postgres", "postgres", url, health=check_to_json(PostgresReady(url)))
            )
            return url
        self.postgres = start_postgres(
            self.paths.pgdata,
            self.config.postgres_port,
            log_path=self.paths.log("postgres"),
            fast=self.config.fast,
        )
        pg = self.postgres
        assert pg.process is not None
        self._record_process(pg.process, "postgres", pg.url, PostgresReady(pg.url), pg.port)
        return pg.url

    def up(self) -> StackInfo:
        """Starts everything and waits until healthy; on failure stops what it started.

        Refuses if a stack recorded in the same state directory still runs.
        """
        with self.paths.locked():
            existing = StackState.load(self.paths)
            if existing is not None and any(
                c.handle().is_running() for c in existing.components if c.managed
            ):
                raise StackError(f"a stack already runs in {self.paths.root}")
            return self._up_locked()

    def _up_locked(self) -> StackInfo:
        deadline = time.monotonic() + self.config.timeout
        self.paths.logs.mkdir(parents=True, exist_ok=True)
        self.state.save(self.paths)
        try:
            return self._up(deadline)
        except BaseException:
            # Ctrl-C included: never leave half a stack behind.
            self.down()
            raise

    def _up(self, deadline: float) -> StackInfo:
        groups = set(PORTS_BY_GROUP) - self.config.skip
        ports, notes = _resolve_ports(self.config, groups)
        self.state.notes = notes
        redis_url = self._start_redis()
        database_url = self._start_postgres()
        for attempt in range(PORT_RACE_RETRIES + 1):
            ctx = ServiceContext(
                bin_dir=self.config.bin_dir,
                redis_url=redis_url,
                database_url=database_url,
                ports=dict(ports),
                workers=self.config.workers,
                concurrency=self.config.concurrency,
                dlq_admin_token="" if "dlq" in self.config.skip else dlq_admin_token(self.paths),
                traces_dir=self.paths.traces,
            )
            specs = self._specs(ctx)
            if attempt == 0 and self.migrate:
                self._run_migrations(ctx, deadline)
            started = len(self.processes)
            for spec in specs:
                self._start_service(spec)
            try:
                self._wait_healthy(specs, deadline)
                break
            except StackError:
                if attempt == PORT_RACE_RETRIES:
                    raise
                # A service that lost its port to another process exits at its bind: stop
                # ours, and if one of their ports is busy now, someone else holds it.
                self._stop_since(started)
                moved = _move_taken_ports(self.config, groups, ports)
                if not moved:
                    raise
                log.warning("stack_ports_taken", notes=moved)
                self.state.notes += moved
        self.state.env = stack_env(ctx, {s.group for s in specs})
        header = ENV_HEADER.format(path=self.paths.stack_env)
        write_env(self.paths.stack_env, self.state.env, header=header)
        os.chmod(self.paths.stack_env, 0o600)  # it holds dlq-svc's admin token
        self.state.phase = "up"
        self.state.save(self.paths)
        log.info("stack_up", state_dir=str(self.paths.root), services=[s.name for s in specs])
        return StackInfo(
            self.paths.root, dict(self.state.env), self.state.components, self.state.notes
        )

    def _specs(self, ctx: ServiceContext) -> list[ServiceSpec]:
        """The services to start (Prometheus, Alertmanager and the alert sink included when
        installed), each installed."""
        specs = [s for s in self.services(ctx) if s.group not in self.config.skip]
        monitoring, notes = monitoring_specs(ctx, specs, self.config, self.paths)
        specs += monitoring
        self.state.notes += [n for n in notes if n not in self.state.notes]
        missing = sorted({s.argv[0] for s in specs if not Path(s.argv[0]).exists()})
        if self.migrate and not Path(migrate_argv(ctx)[0]).exists():
            missing.insert(0, migrate_argv(ctx)[0])
        if missing:
            raise StackError(
                "not installed: " + ", ".join(missing) + " (is the workspace synced: `uv sync`?)"
            )
        return specs

    def _run_migrations(self, ctx: ServiceContext, deadline: float) -> None:
        migrate = ServiceProcess(
            "migrate",
            migrate_argv(ctx),
            log_path=self.paths.log("migrate"),
            env=ctx.common_env(),
        )
        self.processes.append(migrate)  # so that Ctrl-C during migrations stops it too
        try:
            _run_to_completion(migrate, deadline)
        except ProcessFailed as exc:
            raise StackError("migrations failed", [exc]) from None

    def _stop_since(self, started: int) -> None:
        """Stops the services started from ``self.processes[started]`` on and forgets them."""
        stopping = self.processes[started:]
        stop_all(stopping, 10.0)
        del self.processes[started:]
        names = {p.name for p in stopping}
        self.state.components = [
            c for c in self.state.components if c.kind != "service" or c.name not in names
        ]
        self.state.save(self.paths)

    def _start_service(self, spec: ServiceSpec) -> None:
        for path, text in spec.files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        proc = ServiceProcess(
            spec.name,
            spec.argv,
            log_path=self.paths.log(spec.name),
            env=spec.env,
            stop_signal=spec.stop_signal,
        )
        self.processes.append(proc)
        self._record_process(proc, "service", spec.endpoint, spec.health, spec.port, spec.group)

    def _wait_healthy(self, specs: Sequence[ServiceSpec], deadline: float) -> None:
        procs = {p.name: p for p in self.processes}
        pending = {s.name: s.health for s in specs}
        with ThreadPoolExecutor(max_workers=max(1, min(16, len(pending)))) as pool:
            while pending:
                dead = [procs[n] for n in pending if not procs[n].is_running()]
                if dead:
                    raise StackError(
                        "a service exited while starting",
                        [
                            ProcessFailed(p.name, f"exited with code {p.returncode}", p.log_path)
                            for p in dead
                        ],
                    )
                checks: list[tuple[str, Callable[[], bool]]] = list(pending.items())
                results = pool.map(lambda item: item[1](), checks)
                for (name, _), ok in zip(checks, results, strict=True):
                    if ok:
                        log.info("service_healthy", name=name)
                        del pending[name]
                if not pending:
                    return
                if time.monotonic() >= deadline:
                    raise StackError(
                        f"not healthy after {self.config.timeout:.0f}s: {', '.join(pending)}",
                        [
                            ProcessFailed(n, "not healthy in time", procs[n].log_path)
                            for n in pending
                        ],
                    )
                time.sleep(_POLL)

    def down(self, timeout: float = 10.0) -> None:
        """Stops the services, then the servers; removes ``stack.json`` and ``stack.env``."""
        stop_all(self.processes, timeout)
        servers: list[Stoppable] = [
            s.process for s in (self.postgres, self.redis) if s is not None and s.process
        ]
        stop_all(servers, timeout)
        StackState.clear(self.paths)
        log.info("stack_down", state_dir=str(self.paths.root))

    def detach(self) -> None:
        """Leaves the processes to ``stack.json`` (``down``, the supervisor) once this object
        goes away."""
        servers = [s.process for s in (self.postgres, self.redis) if s is not None and s.process]
        for proc in [*self.processes, *servers]:
            proc.detach()

    def __enter__(self) -> Stack:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()


def _stop_recorded(paths: StatePaths, state: StackState, timeout: float) -> list[str]:
    # The supervisor first, or it would restart what is being stopped.
    supervised = stop_supervisor(state)
    managed = [c for c in state.components if c.managed]
    running = [c.name for c in managed if c.handle().is_running() or c.handle().group_alive()]
    running += ["supervisor"] if supervised else []
    stop_all([c.handle() for c in managed if c.kind == "service"], timeout)
    stop_all([c.handle() for c in managed if c.kind != "service"], timeout)
    StackState.clear(paths)
    return running


def up(
    config: StackConfig,
    *,
    restart: bool = False,
    services: ServiceFactory = relayq_services,
    migrate: bool = True,
) -> StackInfo:
    """Brings the stack up, unless it already runs (then says so; ``restart`` restarts it).

    Raises :class:`StackError` if a previous stack is half dead (run :func:`down` first).
    """
    paths = StatePaths(config.state_dir)
    with paths.locked():
        state = StackState.load(paths)
        if state is not None:
            managed = [c for c in state.components if c.managed]
            alive = [c for c in managed if c.handle().is_running()]
            if restart or not alive:
                _stop_recorded(paths, state, timeout=10.0)
            elif len(alive) == len(managed) and state.phase == "up":
                notes = list(state.notes)
                supervisor = state.supervisor()
                if config.supervise and (supervisor is None or not supervisor.is_running()):
                    # Nothing would restart what exits: the supervisor died, or never ran.
                    start_supervisor(paths, state, config.restart)
                    notes.append("the supervisor was not running: started it")
                return StackInfo(
                    paths.root, state.env, state.components, notes, already_running=True
                )
            else:
                dead = sorted({c.name for c in managed} - {c.name for c in alive})
                raise StackError(
                    f"a stack in {paths.root} is degraded (not running: {', '.join(dead)}); "
                    "run `relayq-stack start NAME`, `relayq-stack down` first, or "
                    "`relayq-stack up --restart`"
                )
        stack = Stack(config, services=services, migrate=migrate)
        info = stack._up_locked()
        if config.supervise:
            try:
                start_supervisor(paths, stack.state, config.restart)
            except BaseException:
                stack.down()
                raise
        stack.detach()
        return info


def down(state_dir: Path, timeout: float = 10.0) -> list[str]:
    """Stops every process recorded in ``state_dir`` (services first); returns the names of
    those that were running. Safe when nothing runs."""
    paths = StatePaths(state_dir)
    with paths.locked():
        state = StackState.load(paths)
        if state is None:
            StackState.clear(paths)
            return []
        return _stop_recorded(paths, state, timeout)
