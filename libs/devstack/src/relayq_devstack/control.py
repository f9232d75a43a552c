"""``relayq-stack stop NAME...`` and ``start NAME...``: take components down on purpose.

A component stopped here is *held*: the supervisor leaves it stopped across every cycle until
``start`` brings it back (which also clears a supervisor's give-up). NAME is a component
(``worker1``, ``redis``) or a group (``worker``: every worker node). Operators and incident
rehearsals use these; tests call the functions directly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import structlog

from relayq_devstack.process import ProcessFailed, stop_all
from relayq_devstack.state import Component, StackState, StatePaths
from relayq_devstack.supervisor import spawn

log = structlog.get_logger(__name__)

_POLL = 0.25


class StartFailed(RuntimeError):
    """Components were started but did not become healthy in time (``failures``: their
    logs)."""

    def __init__(self, message: str, failures: Sequence[ProcessFailed] = ()) -> None:
        self.failures = list(failures)
        super().__init__("\n\n".join([message, *(str(f) for f in self.failures)]))


def _load(paths: StatePaths) -> StackState:
    state = StackState.load(paths)
    if state is None:
        raise ValueError(f"no stack in {paths.root} (relayq-stack up)")
    return state


def _ours(components: Iterable[Component]) -> list[Component]:
    found = list(components)
    external = [c.name for c in found if not c.managed]
    if external:
        raise ValueError(f"external, not started by the stack: {', '.join(external)}")
    return found


def stop_components(state_dir: Path, names: Iterable[str], timeout: float = 10.0) -> list[str]:
    """Stops the named components (services first, then Redis/PostgreSQL) and holds them
    stopped: the supervisor leaves them alone until :func:`start_components`. Returns the names
    of those that were running. SIGKILL after ``timeout`` seconds."""
    paths = StatePaths(state_dir)
    with paths.locked():
        state = _load(paths)
        components = _ours(state.find(names))
        for component in components:
            component.held = True
            component.exited = False
            component.restart_at = None
        state.save(paths)
    # Outside the lock: a worker's warm shutdown may take a while, the supervisor goes on.
    running = [c.name for c in components if c.handle().is_running()]
    stop_all([c.handle() for c in components if c.kind == "service"], timeout)
    stop_all([c.handle() for c in components if c.kind != "service"], timeout)
    log.info("components_stopped", names=[c.name for c in components], running=running)
    return running


def start_components(state_dir: Path, names: Iterable[str], timeout: float = 60.0) -> list[str]:
    """Starts the named components that are not running (held, given up, or waiting for a
    restart) with their recorded command, clears their hold and give-up, and waits until every
    one of them passes its health check. Returns the names it started.

    Raises :class:`StartFailed` (with the end of each log) if one is not healthy in time."""
    paths = StatePaths(state_dir)
    started: list[str] = []
    with paths.locked():
        state = _load(paths)
        components = _ours(state.find(names))
        for component in components:
            component.held = component.gave_up = component.exited = False
            component.restart_at = None
            component.backoff_step = 0
            component.restart_times = []
            if component.handle().is_running():
                continue
            spawn(component).detach()
            started.append(component.name)
        state.save(paths)
    log.info("components_started", names=started)
    _wait_healthy(components, timeout)
    return started


def _wait_healthy(components: Sequence[Component], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending: dict[str, Callable[[], bool]] = {}
    for component in components:
        check = component.health_check()
        if check is not None:
            pending[component.name] = check
    logs = {c.name: Path(c.log_path) if c.log_path else None for c in components}
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(pending)))) as pool:
        while pending:
            checks = list(pending.items())
            for (name, _), ok in zip(checks, pool.map(lambda i: i[1](), checks), strict=True):
                if ok:
                    del pending[name]
            if not pending:
                return
            if time.monotonic() >= deadline:
                raise StartFailed(
                    f"not healthy after {timeout:.0f}s: {', '.join(pending)}",
                    [ProcessFailed(n, "not healthy in time", logs[n]) for n in pending],
                )
            time.sleep(_POLL)
