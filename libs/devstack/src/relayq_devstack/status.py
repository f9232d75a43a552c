"""``relayq-stack status``: is each recorded process alive, and does it pass its check?"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

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

    @property
    def state(self) -> str:
        """healthy, unhealthy (running but failing its check) or dead."""
        if self.healthy:
            return "healthy"
        return "unhealthy" if self.running else "dead"


@dataclass(frozen=True)
class StackStatus:
    """The whole stack: ``overall`` is healthy, degraded or stopped."""

    state_dir: Path
    phase: str | None
    components: list[ComponentStatus]

    @property
    def overall(self) -> str:
        managed = [c for c in self.components if c.pid is not None]
        if self.phase is None or not any(c.running for c in managed):
            return "stopped"
        if self.phase == "up" and all(c.healthy for c in self.components):
            return "healthy"
        return "degraded"


def _component_status(component: Component) -> ComponentStatus:
    running = component.handle().is_running() if component.managed else True
    check = component.health_check()
    healthy = running and (check() if check is not None else True)
    if not component.managed:
        running = healthy
    return ComponentStatus(
        component.name, component.kind, component.pid, component.endpoint, running, healthy
    )


def status(state_dir: Path) -> StackStatus:
    """Checks every recorded component (pid alive, health check passing)."""
    paths = StatePaths(state_dir)
    state = StackState.load(paths)
    if state is None:
        return StackStatus(paths.root, None, [])
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(state.components)))) as pool:
        components = list(pool.map(_component_status, state.components))
    return StackStatus(paths.root, state.phase, components)
