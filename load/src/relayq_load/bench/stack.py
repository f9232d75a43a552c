"""The stack under test: ``relayq-stack up`` in the bench's own state directory, and what runs in
it (which process is which, for CPU and memory sampling and for py-spy).

The bench starts the stack exactly as ``make up`` does (durable PostgreSQL: no ``--fast``),
with one addition: PostgreSQL preloads ``pg_stat_statements`` so that the bench can count
statements (round trips) per job. That takes a restart after the first start, because the
stack's ``postgres`` command line is not the bench's to change: ``ALTER SYSTEM`` writes the
setting into the data directory, and the second ``up`` reads it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import psutil  # type: ignore[import-untyped,unused-ignore]

from relayq_devstack.config import DEFAULT_PORTS
from relayq_devstack.envfile import parse_env
from relayq_devstack.ports import free_port
from relayq_load.config import clean_child_env

BIN = Path(sys.executable).parent


class BenchError(RuntimeError):
    """The bench could not do what it needed (the message says what, and where the logs are)."""


@dataclass(frozen=True)
class Layout:
    """Worker nodes and pool processes per node: ``2x2`` is 2 nodes of 2 processes."""

    workers: int
    concurrency: int

    @classmethod
    def parse(cls, text: str) -> Layout:
        """``"2x2"`` -> Layout(2, 2)."""
        nodes, _, procs = text.lower().partition("x")
        try:
            layout = cls(int(nodes), int(procs))
        except ValueError:
            raise ValueError(f"a layout is NODESxPROCESSES, e.g. 2x2, not {text!r}") from None
        if layout.workers < 1 or layout.concurrency < 1:
            raise ValueError(f"a layout needs at least 1x1, not {text!r}")
        return layout

    def __str__(self) -> str:
        return f"{self.workers}x{self.concurrency}"

    @property
    def processes(self) -> int:
        """Pool processes in all."""
        return self.workers * self.concurrency


@dataclass
class Processes:
    """The stack's processes by role (pids), found from ``stack.json`` and the process tree."""

    groups: dict[str, list[int]] = field(default_factory=dict)

    def pids(self, *roles: str) -> list[int]:
        """Pids of the given roles (all roles when none given)."""
        wanted = roles or tuple(self.groups)
        return [pid for role in wanted for pid in self.groups.get(role, [])]


def _run(argv: list[str], what: str, timeout: float) -> str:
    done = subprocess.run(
        argv,
        env=clean_child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"{what} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


class BenchStack:
    """One local stack, started and stopped by the bench."""

    def __init__(self, state_dir: Path, layout: Layout) -> None:
        self.state_dir = state_dir
        self.layout = layout
        self.env: dict[str, str] = {}

    def _stack(self, *args: str, timeout: float = 300) -> str:
        return _run(
            [str(BIN / "relayq-stack"), *args, "--state-dir", str(self.state_dir)],
            f"relayq-stack {args[0]}",
            timeout,
        )

    def up(self) -> None:
        """A fresh stack (new data) with pg_stat_statements loaded; fills :attr:`env`."""
        self.down()
        shutil.rmtree(self.state_dir, ignore_errors=True)
        argv = ["up", "--workers", str(self.layout.workers)]
        argv += ["--concurrency", str(self.layout.concurrency), "--timeout", "180"]
        # Ports of its own, away from the defaults that every `make up` on this machine races
        # for: a default taken between the stack's check and its bind would leave the bench
        # talking to somebody else's stack.
        argv += ["--redis-port", str(free_port()), "--postgres-port", str(free_port())]
        for name in DEFAULT_PORTS:
            argv += ["--" + name.replace("_", "-") + "-port", str(free_port())]
        self._stack(*argv)
        self._read_env()
        self.psql("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
        # Top-level statements only: what clients send, one round trip each.
        self.psql("ALTER SYSTEM SET pg_stat_statements.track = 'top'")
        self._stack("down")
        self._stack(*argv)
        self._read_env()
        self.psql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    def down(self) -> None:
        """Stops whatever runs in the bench's state directory."""
        if self.state_dir.exists():
            self._stack("down", timeout=120)

    def _read_env(self) -> None:
        self.env = parse_env((self.state_dir / "stack.env").read_text(encoding="utf-8"))

    @property
    def ingest(self) -> str:
        """ingest's gRPC address."""
        return self.env["RELAYQ_INGEST_GRPC"]

    @property
    def redis_url(self) -> str:
        """The broker (database 0 of the stack's Redis)."""
        return self.env["RELAYQ_REDIS_URL"]

    @property
    def database_url(self) -> str:
        """The ledger's database."""
        return self.env["RELAYQ_DATABASE_URL"]

    def redis_url_db(self, db: int) -> str:
        """Another database on the stack's Redis (the baseline uses its own)."""
        return self.redis_url.rsplit("/", 1)[0] + f"/{db}"

    def psql(self, sql: str) -> str:
        from relayq_devstack.postgres import pg_binary

        url = self.database_url
        return _run(
            [str(pg_binary("psql")), "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", url, "-c", sql],
            "psql",
            60,
        )

    def processes(self) -> Processes:
        """Every process of the stack by role; worker pool children under ``<node>-pool``."""
        state = json.loads((self.state_dir / "stack.json").read_text(encoding="utf-8"))
        groups: dict[str, list[int]] = {}
        for component in state["components"]:
            pid = component.get("pid")
            if not pid:
                continue
            name = str(component["name"])
            try:
                children = [c.pid for c in psutil.Process(pid).children(recursive=True)]
            except psutil.Error:
                continue
            if name.startswith("worker"):
                groups[name] = [pid]
                groups[f"{name}-pool"] = children
            else:
                # postgres: the postmaster and its backends; others: any helper processes
                groups[name] = [pid, *children]
        return Processes(groups)
