"""The state directory and ``stack.json``: what runs, so another process can stop or check it."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from relayq_devstack.health import HealthCheck, check_from_json
from relayq_devstack.process import DetachedProcess, ProcessRef


@dataclass(frozen=True)
class StatePaths:
    """Where a stack keeps its files."""

    root: Path

    @property
    def stack_json(self) -> Path:
        return self.root / "stack.json"

    @property
    def stack_env(self) -> Path:
        return self.root / "stack.env"

    @property
    def lock(self) -> Path:
        return self.root / "stack.lock"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pgdata(self) -> Path:
        return self.root / "pgdata"

    @property
    def redis(self) -> Path:
        return self.root / "redis"

    @property
    def traces(self) -> Path:
        """Span files (OTLP JSON lines) the services write and ``relayq-trace`` reads."""
        return self.root / "traces"

    def log(self, name: str) -> Path:
        """The log file of one component."""
        return self.logs / f"{name}.log"

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Holds the stack's lock: one ``up`` or ``down`` at a time per state directory."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self.lock.open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


@dataclass
class Component:
    """One thing the stack runs (or uses: ``pid`` None means external, never stopped by us)."""

    name: str
    kind: str  # "redis", "postgres" or "service"
    endpoint: str
    pid: int | None = None
    create_time: float = 0.0
    stop_signal: int = signal.SIGTERM
    port: int | None = None
    argv: list[str] = field(default_factory=list)
    log_path: str | None = None
    health: dict[str, Any] | None = None
    # What ``--skip``, ``stop`` and ``start`` name: "worker" for every worker node.
    group: str = ""
    # How to start it again (``relayq-stack supervise``, ``start``): with ``argv`` and
    # ``log_path`` above, the same command, environment and directory as the first time.
    env: dict[str, str] = field(default_factory=dict)
    inherit_env: bool = True
    cwd: str | None = None
    user: str | None = None
    # Supervision, written by the supervisor and by ``stop``/``start`` (under the lock).
    held: bool = False  # stopped on purpose: ``relayq-stack stop``; the supervisor leaves it
    gave_up: bool = False  # restarted too often: left stopped until ``start``
    restarts: int = 0
    last_exit_code: int | None = None  # None: still running, or not known (see supervisor.py)
    exited: bool = False  # its last exit was noticed: a restart is due at ``restart_at``
    restart_at: float | None = None  # wall-clock time of the next restart
    backoff_step: int = 0  # restarts in a row without staying up ``stable_after`` seconds
    restart_times: list[float] = field(default_factory=list)  # within the give-up window

    @property
    def group_name(self) -> str:
        """The group (``worker`` for ``worker1``...); the name itself for older state files."""
        return self.group or self.name

    @property
    def managed(self) -> bool:
        """True if the stack started it (and so stops it)."""
        return self.pid is not None

    def handle(self) -> DetachedProcess:
        """A handle to stop or check the process from any program."""
        if self.pid is None:
            raise ValueError(f"{self.name} is external: not ours to control")
        return DetachedProcess(self.name, ProcessRef(self.pid, self.create_time), self.stop_signal)

    def health_check(self) -> HealthCheck | None:
        """The component's health check, rebuilt from its stored description."""
        return check_from_json(self.health) if self.health else None


@dataclass
class StackState:
    """Contents of ``stack.json``. ``phase`` is "starting" until every component is healthy."""

    phase: str = "starting"
    started_at: float = field(default_factory=time.time)
    components: list[Component] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # The ``relayq-stack supervise`` process (None: nothing restarts what exits).
    supervisor_pid: int | None = None
    supervisor_create_time: float = 0.0

    def supervisor(self) -> ProcessRef | None:
        """The recorded supervisor process, if any (check ``is_running()``)."""
        if self.supervisor_pid is None:
            return None
        return ProcessRef(self.supervisor_pid, self.supervisor_create_time)

    def find(self, names: Iterable[str]) -> list[Component]:
        """The components named (by name or group), in stack order; ValueError for unknown
        names."""
        wanted = set(names)
        known = {c.name for c in self.components} | {c.group_name for c in self.components}
        unknown = sorted(wanted - known)
        if unknown:
            raise ValueError(
                f"unknown component(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        return [c for c in self.components if c.name in wanted or c.group_name in wanted]

    def save(self, paths: StatePaths) -> None:
        """Writes ``stack.json`` atomically."""
        paths.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=paths.root, prefix=".stack.json.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(asdict(self), fh, indent=2)
                fh.write("\n")
            # Private: components' environments (dlq-svc's admin token) are in it.
            os.chmod(tmp, 0o600)
            os.replace(tmp, paths.stack_json)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, paths: StatePaths) -> StackState | None:
        """The saved state, or None if there is none."""
        try:
            data = json.loads(paths.stack_json.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        components = [Component(**c) for c in data.pop("components", [])]
        return cls(components=components, **data)

    @staticmethod
    def clear(paths: StatePaths) -> None:
        """Removes ``stack.json`` and ``stack.env``."""
        paths.stack_json.unlink(missing_ok=True)
        paths.stack_env.unlink(missing_ok=True)
