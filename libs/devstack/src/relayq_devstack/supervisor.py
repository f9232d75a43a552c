"""``relayq-stack supervise``: restarts a component of the local stack that exits.

What systemd's ``Restart=always`` or a Kubernetes pod's ``restartPolicy`` does in production:
``up`` starts this process detached (recorded in ``stack.json``), ``down`` stops it first. Every
``poll`` seconds it checks each component the stack started, and one whose process has exited is
started again with the same command, environment, directory and log file, after a backoff that
doubles from ``backoff_initial`` to ``backoff_max`` (reset once it stays up ``stable_after``
seconds). After ``limit`` restarts within ``window`` seconds it is given up: left stopped, marked
``gave_up`` (``relayq-stack status`` shows ``gave-up``) until ``relayq-stack start``. A component
stopped on purpose (``relayq-stack stop``, ``held``) is left alone.

Only an exit triggers a restart, never a failing health check: a slow start is not fought.

The exit code is known for the processes this supervisor started (every restart): it is their
parent. The first run of each component was started by ``up`` (and ``start`` runs its own), and
once that program has gone no other process can read the exit code; it is recorded as unknown.

Every change to ``stack.json`` happens under the state directory's lock, as ``up``, ``down``,
``stop`` and ``start`` do; the lock is taken without blocking so that SIGTERM stops the
supervisor at once even while another command holds it.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog

from relayq_devstack.config import RestartPolicy
from relayq_devstack.postgres import prepare_data_dir, remove_stale_pidfile
from relayq_devstack.process import DetachedProcess, ServiceProcess, stop_all
from relayq_devstack.state import Component, StackState, StatePaths

log = structlog.get_logger(__name__)

SUPERVISOR_LOG = "supervisor"


def spawn(component: Component) -> ServiceProcess:
    """Starts ``component``'s recorded command again and records the new pid in it.

    What is left of its last run's process group (a Celery pool child, a PostgreSQL backend
    still holding shared memory) is killed first, as systemd's ``KillMode=control-group`` does.
    """
    if not component.argv or component.log_path is None:
        raise ValueError(f"{component.name}: no command recorded, cannot start it")
    if component.pid is not None:
        previous = component.handle()
        if previous.group_alive():
            stop_all([previous], timeout=1.0)
    if component.kind == "postgres" and component.cwd is not None:
        # A killed postmaster leaves postmaster.pid; a recycled pid would make PostgreSQL refuse.
        remove_stale_pidfile(Path(component.cwd))
        # Its user must still reach the data directory (a tool may have reset an ancestor's
        # mode meanwhile: pytest makes its tmp root 0700 at each session's start).
        prepare_data_dir(Path(component.cwd), component.user)
    proc = ServiceProcess(
        component.name,
        component.argv,
        log_path=Path(component.log_path),
        env=component.env,
        cwd=Path(component.cwd) if component.cwd is not None else None,
        stop_signal=component.stop_signal,
        user=component.user,
        inherit_env=component.inherit_env,
    )
    component.pid = proc.pid
    component.create_time = proc.ref.create_time
    component.exited = False
    component.restart_at = None
    return proc


def supervisor_argv(state_dir: Path, policy: RestartPolicy) -> list[str]:
    """The command ``up`` runs to supervise the stack in ``state_dir``."""
    return [
        sys.executable,
        "-m",
        "relayq_devstack.cli",
        "supervise",
        "--state-dir",
        str(state_dir),
        "--backoff-initial",
        str(policy.backoff_initial),
        "--backoff-max",
        str(policy.backoff_max),
        "--stable-after",
        str(policy.stable_after),
        "--restart-limit",
        str(policy.limit),
        "--restart-window",
        str(policy.window),
        "--poll",
        str(policy.poll),
    ]


def start_supervisor(paths: StatePaths, state: StackState, policy: RestartPolicy) -> None:
    """Starts the supervisor detached and records it in ``state`` (saved; hold the lock)."""
    proc = ServiceProcess(
        SUPERVISOR_LOG,
        supervisor_argv(paths.root, policy),
        log_path=paths.log(SUPERVISOR_LOG),
        env={"PYTHONUNBUFFERED": "1"},
    )
    proc.detach()
    state.supervisor_pid = proc.pid
    state.supervisor_create_time = proc.ref.create_time
    state.save(paths)
    log.info("supervisor_started", pid=proc.pid)


def stop_supervisor(state: StackState, timeout: float = 5.0) -> bool:
    """Stops the recorded supervisor (SIGTERM, SIGKILL after ``timeout``); True if it ran.

    Safe while holding the lock: the supervisor never waits for it."""
    ref = state.supervisor()
    if ref is None:
        return False
    running = ref.is_running()
    stop_all([DetachedProcess(SUPERVISOR_LOG, ref)], timeout)
    return running


class Supervisor:
    """The loop of ``relayq-stack supervise`` (see the module docstring)."""

    def __init__(self, state_dir: Path, policy: RestartPolicy) -> None:
        self.paths = StatePaths(state_dir)
        self.policy = policy
        self.stopping = threading.Event()
        # The processes we started, by pid: we are their parent, so we can read exit codes.
        self.children: dict[int, ServiceProcess] = {}

    @contextmanager
    def _locked(self) -> Iterator[bool]:
        """Yields True holding the stack's lock, or False if asked to stop while waiting."""
        with self.paths.lock.open("a") as fh:
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if self.stopping.wait(0.05):
                        yield False
                        return
            try:
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def run(self) -> int:
        """Supervises until SIGTERM/SIGINT, or until the stack is gone or has another
        supervisor; returns the exit status."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        log.info(
            "supervisor_running",
            pid=os.getpid(),
            state_dir=str(self.paths.root),
            backoff_initial=self.policy.backoff_initial,
            backoff_max=self.policy.backoff_max,
            restart_limit=self.policy.limit,
            restart_window=self.policy.window,
        )
        while not self.stopping.is_set():
            if not self.paths.stack_json.exists():
                log.info("supervisor_stack_gone")
                break
            try:
                if not self.cycle():
                    break
            except Exception as exc:  # noqa: BLE001 - one bad cycle must not end supervision
                log.exception("supervisor_cycle_failed", error=str(exc))
            self.stopping.wait(self.policy.poll)
        log.info("supervisor_stopped", pid=os.getpid())
        return 0

    def cycle(self) -> bool:
        """One check of every component; False once there is nothing left to supervise."""
        with self._locked() as locked:
            if not locked or self.stopping.is_set():
                return False
            state = StackState.load(self.paths)
            if state is None:
                log.info("supervisor_stack_gone")
                return False
            if state.supervisor_pid != os.getpid():
                log.info("supervisor_replaced", recorded=state.supervisor_pid)
                return False
            changed = False
            watched = [c for c in state.components if c.managed and not c.held and not c.gave_up]
            for component in watched:
                changed |= self._check(component)
            if changed:
                state.save(self.paths)
        self._reap({c.pid for c in watched if c.pid is not None})
        return True

    def _exit_code(self, component: Component) -> int | None:
        child = self.children.pop(component.pid or -1, None)
        if child is None or child.ref.create_time != component.create_time:
            return None
        # The leader is gone (or a zombie): polling reaps it and reads its status.
        deadline = time.monotonic() + 1.0
        while child.returncode is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return child.returncode

    def _reap(self, watched: set[int]) -> None:
        """Collects our children that exited while not watched (held by ``stop``, given up):
        no zombies left. A watched one is reaped when its exit is noticed, to read its code."""
        for pid, child in list(self.children.items()):
            if pid not in watched and child.returncode is not None:
                del self.children[pid]

    def _check(self, component: Component) -> bool:
        """Restarts ``component`` if its process exited and its backoff has passed; returns
        True if the component's record changed."""
        now = time.time()
        if component.handle().is_running():
            stable = now - component.create_time >= self.policy.stable_after
            if stable and component.backoff_step:
                component.backoff_step = 0
                return True
            return False
        if not component.exited:
            component.exited = True
            component.last_exit_code = self._exit_code(component)
            recent = [t for t in component.restart_times if t > now - self.policy.window]
            component.restart_times = recent
            if len(recent) >= self.policy.limit:
                component.gave_up = True
                component.restart_at = None
                log.error(
                    "component_gave_up",
                    name=component.name,
                    exit_code=component.last_exit_code,
                    restarts=component.restarts,
                    window=self.policy.window,
                    log_path=component.log_path,
                )
                return True
            delay = self.policy.delay(component.backoff_step)
            component.restart_at = now + delay
            log.warning(
                "component_exited",
                name=component.name,
                pid=component.pid,
                exit_code=component.last_exit_code,
                restart_in=delay,
                restarts=component.restarts,
            )
            return True
        if component.restart_at is not None and now < component.restart_at:
            return False
        old_pid = component.pid
        try:
            child = spawn(component)
        except (OSError, ValueError, RuntimeError) as exc:
            # Counted like an exit at once: backoff, then give up.
            log.error("component_restart_failed", name=component.name, error=str(exc))
            component.exited = False
            component.restart_times.append(now)
            component.restarts += 1
            component.backoff_step += 1
            return True
        self.children[child.pid] = child
        component.restarts += 1
        component.backoff_step += 1
        component.restart_times.append(now)
        log.info(
            "component_restarted",
            name=component.name,
            pid=child.pid,
            old_pid=old_pid,
            restarts=component.restarts,
        )
        return True
