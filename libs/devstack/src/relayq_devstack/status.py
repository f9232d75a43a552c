"""``relayq-stack status``: is each recorded process alive, and does it pass its check?"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from relayq_devstack.state import Component, StackState, StatePaths


@dataclass(frozen=True)
class ComponentStatus:
    """One line of ``relayq-stack status``."""

    name: str
    kind: str
    pid: int | None
    endpoint: str
    running: bool
    healthy: bool
    group: str = ""
    held: bool = False
    gave_up: bool = False
    supervised: bool = False  # a supervisor runs and will restart it if it exits
    restarts: int = 0
    last_exit_code: int | None = None
    uptime: float | None = None  # seconds since this run started, while it runs
    restart_at: float | None = None  # wall-clock time of the restart a supervisor has planned

    @property
    def state(self) -> str:
        """healthy, unhealthy (running but failing its check) or dead."""
        if self.healthy:
            return "healthy"
        return "unhealthy" if self.running else "dead"

    @property
    def run_state(self) -> str:
        """running, restarting (exited; the supervisor brings it back), stopped (on purpose:
        ``relayq-stack stop``), gave-up (restarted too often) or dead (exited, unsupervised)."""
        if self.running:
            return "running"
        if self.held:
            return "stopped"
        if self.gave_up:
            return "gave-up"
        return "restarting" if self.supervised else "dead"

    def to_json(self) -> dict[str, Any]:
        """The ``relayq-stack status --json`` form of this line."""
        return {
            "name": self.name,
            "group": self.group,
            "kind": self.kind,
            "pid": self.pid,
            "endpoint": self.endpoint,
            "state": self.run_state,
            "health": self.state if self.running else None,
            "restarts": self.restarts,
            "last_exit_code": self.last_exit_code,
            "uptime_seconds": round(self.uptime, 1) if self.uptime is not None else None,
            "restart_at": self.restart_at,
        }


@dataclass(frozen=True)
class StackStatus:
    """The whole stack: ``overall`` is healthy, degraded or stopped."""

    state_dir: Path
    phase: str | None
    components: list[ComponentStatus]
    supervisor_pid: int | None = None  # set while the supervisor runs

    @property
    def overall(self) -> str:
        managed = [c for c in self.components if c.pid is not None]
        if self.phase is None or not any(c.running for c in managed):
            return "stopped"
        if self.phase == "up" and all(c.healthy for c in self.components):
            return "healthy"
        return "degraded"


def _component_status(component: Component, supervised: bool) -> ComponentStatus:
    running = component.handle().is_running() if component.managed else True
    check = component.health_check()
    healthy = running and (check() if check is not None else True)
    if not component.managed:
        running = healthy
    uptime = time.time() - component.create_time if component.managed and running else None
    return ComponentStatus(
        component.name,
        component.kind,
        component.pid,
        component.endpoint,
        running,
        healthy,
        group=component.group_name,
        held=component.held,
        gave_up=component.gave_up,
        supervised=supervised and component.managed,
        restarts=component.restarts,
        last_exit_code=component.last_exit_code,
        uptime=uptime,
        restart_at=None if running else component.restart_at,
    )


def status(state_dir: Path) -> StackStatus:
    """Checks every recorded component (pid alive, health check passing)."""
    paths = StatePaths(state_dir)
    state = StackState.load(paths)
    if state is None:
        return StackStatus(paths.root, None, [])
    supervisor = state.supervisor()
    supervised = supervisor is not None and supervisor.is_running()
    check = partial(_component_status, supervised=supervised)
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(state.components)))) as pool:
        components = list(pool.map(check, state.components))
    pid = state.supervisor_pid if supervised else None
    return StackStatus(paths.root, state.phase, components, pid)
