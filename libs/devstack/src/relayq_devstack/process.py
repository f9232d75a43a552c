"""Child processes in their own process group, with logs in a file and health waits.

A process started here is the leader of a new session (``start_new_session=True``), so its pid is
also its process-group id: stopping it can reach every helper it forked (Celery pool children,
Postgres backends) even after the leader is gone, and it outlives the program that started it.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import psutil  # type: ignore[import-untyped,unused-ignore]
import structlog

log = structlog.get_logger(__name__)

TAIL_LINES = 30
# First line written to a log at each start, so a reader can find where the last run begins.
START_MARKER = "relayq-devstack starting:"


class ProcessFailed(RuntimeError):
    """A process exited, or did not become healthy in time."""

    def __init__(self, name: str, reason: str, log_path: Path | None) -> None:
        self.name = name
        self.reason = reason
        self.log_path = log_path
        self.log_tail = tail(log_path) if log_path is not None else ""
        where = f" (log: {log_path})" if log_path is not None else ""
        super().__init__(f"{name}: {reason}{where}\n--- last lines of the log ---\n{self.log_tail}")


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of a text file; empty if it does not exist."""
    try:
        with path.open(encoding="utf-8", errors="replace") as fh:
            return "".join(deque(fh, maxlen=lines)).rstrip("\n")
    except FileNotFoundError:
        return ""


@dataclass(frozen=True)
class ProcessRef:
    """A process identity that a different program can check later: pid plus start time.

    The start time guards against pid reuse: a recycled pid never belongs to us.
    """

    pid: int
    create_time: float

    @classmethod
    def of(cls, pid: int) -> ProcessRef:
        """The identity of the live process ``pid`` (start time 0 if it already vanished)."""
        try:
            return cls(pid, psutil.Process(pid).create_time())
        except psutil.Error:
            return cls(pid, 0.0)

    def _process(self) -> psutil.Process | None:
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > 0.01:
                return None
            return proc
        except psutil.Error:
            return None

    def is_running(self) -> bool:
        """True while the leader runs (a zombie waiting to be reaped counts as gone)."""
        proc = self._process()
        try:
            return proc is not None and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def group_members(self) -> list[int]:
        """Live (non-zombie) pids in the process group led by this process."""
        if not self.is_running() and psutil.pid_exists(self.pid) and self._process() is None:
            # The pid was recycled: a live process holds the number, so no group of ours can.
            return []
        members: list[int] = []
        for proc in psutil.process_iter():
            try:
                if os.getpgid(proc.pid) == self.pid and proc.status() != psutil.STATUS_ZOMBIE:
                    members.append(proc.pid)
            except (OSError, psutil.Error):
                continue
        return members

    def send(self, sig: int) -> None:
        """Signals the leader, if it is still ours."""
        if self.is_running():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def send_group(self, sig: int) -> None:
        """Signals every process of the group, if any is left."""
        if self.group_members():
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass


class Stoppable(Protocol):
    """What :func:`stop_all` needs from a process handle."""

    name: str

    def request_stop(self) -> None: ...
    def is_running(self) -> bool: ...
    def kill(self) -> None: ...
    def group_alive(self) -> bool: ...


def _wait(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def stop_all(procs: Sequence[Stoppable], timeout: float = 10.0) -> list[str]:
    """Asks every process to stop, waits up to ``timeout``, then SIGKILLs what is left.

    Returns the names of the processes that had to be killed. Raises if a process group still
    has members after being killed (it would mean something escaped our control).
    """
    for proc in procs:
        proc.request_stop()
    _wait(lambda: not any(p.is_running() for p in procs), timeout)
    # A leader that exited may have left children (e.g. a Celery pool): they get killed too.
    killed = [p.name for p in procs if p.is_running() or p.group_alive()]
    for proc in procs:
        proc.kill()
    if not _wait(lambda: not any(p.is_running() or p.group_alive() for p in procs), 5.0):
        left = [p.name for p in procs if p.is_running() or p.group_alive()]
        raise RuntimeError(f"processes still running after SIGKILL: {', '.join(left)}")
    if killed:
        log.warning("processes_killed", names=killed, timeout=timeout)
    return killed


def run_as(user: str | None) -> tuple[int | None, int | None, list[int] | None]:
    """``(user, group, extra_groups)`` for ``subprocess`` to run as ``user`` (None: ourselves).

    Group and supplementary groups are switched too: keeping root's group would make a
    directory's group bits (often 0 for root-owned dirs) apply instead of its "other" bits.
    """
    if user is None:
        return None, None, None
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid, []


# Children handed over with ServiceProcess.detach(): kept so that they are reaped (polled) and
# not reported as a leak when their handle goes away.
_DETACHED: list[subprocess.Popen[bytes]] = []


class ServiceProcess:
    """A command running in its own session, with stdout and stderr appended to a log file.

    Starts at construction. ``env`` is added to our own environment, or, with
    ``inherit_env=False``, is the whole environment.

    ``stop_signal`` is sent to the leader only: Celery and Postgres shut their children down
    gracefully themselves, whereas a signal sent to the whole group would kill Celery's pool
    children mid-task (they reset SIGTERM to its default). The group gets SIGKILL after the
    timeout.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stop_signal: int = signal.SIGTERM,
        user: str | None = None,
        inherit_env: bool = True,
    ) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = log_path
        self.stop_signal = stop_signal
        # Kept so that a supervisor can start the same command again (stack.json records them).
        self.env = dict(env or {})
        self.cwd = cwd
        self.user = user
        self.inherit_env = inherit_env
        log_path.parent.mkdir(parents=True, exist_ok=True)
        full_env = {**(os.environ if inherit_env else {}), **(env or {})}
        uid, gid, groups = run_as(user)
        with log_path.open("ab") as out:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            out.write(f"--- {stamp} {START_MARKER} {' '.join(self.argv)}\n".encode())
            out.flush()
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
                close_fds=True,
                user=uid,
                group=gid,
                extra_groups=groups,
            )
        self.ref = ProcessRef.of(self._popen.pid)
        log.debug("process_started", name=name, pid=self.pid, argv=self.argv)

    @property
    def pid(self) -> int:
        """The leader's pid, which is also the process-group id."""
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit code once the process has exited (negative: killed by that signal)."""
        return self._popen.poll()

    def is_running(self) -> bool:
        """True until the leader exits (polling also reaps it)."""
        return self._popen.poll() is None

    def group_alive(self) -> bool:
        """True while any process of the group is left, leader or not."""
        return self.is_running() or bool(self.ref.group_members())

    def request_stop(self) -> None:
        """Sends the stop signal to the leader, or SIGTERM to orphans if the leader is gone."""
        if self.is_running():
            self._popen.send_signal(self.stop_signal)
        else:
            self.ref.send_group(signal.SIGTERM)

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop; SIGKILL to the whole group after ``timeout`` seconds."""
        stop_all([self], timeout)

    def kill(self) -> None:
        """SIGKILL to the whole group, at once (crash simulation); reaps the leader."""
        if self.is_running():
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        else:
            self.ref.send_group(signal.SIGKILL)
        try:
            self._popen.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not ignorable
            log.error("process_unkillable", name=self.name, pid=self.pid)

    def detach(self) -> None:
        """Gives the process up to whoever manages it by pid (``stack.json``): it keeps running
        after this handle is gone; this program still reaps it once it exits."""
        _DETACHED[:] = [p for p in _DETACHED if p.poll() is None]
        _DETACHED.append(self._popen)

    def log_tail(self, lines: int = TAIL_LINES) -> str:
        """The last lines of this process's log."""
        return tail(self.log_path, lines)

    def wait_healthy(
        self, check: Callable[[], bool], timeout: float, *, interval: float = 0.1
    ) -> None:
        """Returns once ``check()`` is true; raises :class:`ProcessFailed` if it exits first or
        the timeout passes, with the end of its log in the message."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.is_running():
                raise ProcessFailed(
                    self.name, f"exited with code {self.returncode} before healthy", self.log_path
                )
            if check():
                return
            if time.monotonic() >= deadline:
                raise ProcessFailed(self.name, f"not healthy after {timeout:.0f}s", self.log_path)
            time.sleep(interval)

    def __repr__(self) -> str:
        return f"ServiceProcess({self.name!r}, pid={self.pid}, running={self.is_running()})"


class DetachedProcess:
    """A process started by another program (found in ``stack.json``), controlled by pid."""

    def __init__(self, name: str, ref: ProcessRef, stop_signal: int = signal.SIGTERM) -> None:
        self.name = name
        self.ref = ref
        self.stop_signal = stop_signal

    def is_running(self) -> bool:
        """True while the leader is alive and still the process we started."""
        return self.ref.is_running()

    def group_alive(self) -> bool:
        """True while any process of the group is left."""
        return bool(self.ref.group_members())

    def request_stop(self) -> None:
        """Stop signal to the leader, or SIGTERM to orphans if the leader is gone."""
        if self.ref.is_running():
            self.ref.send(self.stop_signal)
        else:
            self.ref.send_group(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to the whole group."""
        self.ref.send_group(signal.SIGKILL)
