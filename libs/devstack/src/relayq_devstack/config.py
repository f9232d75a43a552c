"""What ``relayq-stack up`` starts and where: flags over environment over defaults.

The only module of this package that reads ``os.environ`` (through :meth:`StackConfig.from_env`).
"""

from __future__ import annotations

import os
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

DEFAULT_PORTS: dict[str, int] = {
    "ingest_grpc": 50051,
    "ingest_http": 8000,
    "dlq_grpc": 50052,
    "metrics": 9100,
    "flower": 5555,
    "dlq_metrics": 9101,
    "prometheus": 9090,
    "reconciler": 9102,
    "alertmanager": 9093,
    "alert_sink": 9095,
}


@dataclass(frozen=True)
class RestartPolicy:
    """How ``relayq-stack supervise`` restarts a component that exits, as systemd would.

    The k-th restart in a row waits ``min(backoff_max, backoff_initial * 2**k)`` seconds; a
    component that stays up ``stable_after`` seconds starts again from ``backoff_initial``.
    After ``limit`` restarts within ``window`` seconds it is given up (left stopped, logged).
    """

    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    stable_after: float = 60.0
    limit: int = 10
    window: float = 600.0
    poll: float = 0.5

    def delay(self, step: int) -> float:
        """Seconds to wait before the ``step``-th restart in a row (0-based)."""
        return float(min(self.backoff_max, self.backoff_initial * 2 ** min(step, 32)))


def find_repo_root(start: Path) -> Path | None:
    """The nearest directory at or above ``start`` whose ``pyproject.toml`` declares the uv
    workspace; None outside a checkout."""
    for directory in [start, *start.parents]:
        candidate = directory / "pyproject.toml"
        if candidate.is_file():
            try:
                data = tomllib.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, tomllib.TOMLDecodeError):
                continue
            if "workspace" in data.get("tool", {}).get("uv", {}):
                return directory
    return None


def default_state_dir(environ: Mapping[str, str], cwd: Path) -> Path:
    """``$RELAYQ_STATE_DIR``, else ``<repo root>/.relayq``, else ``./.relayq``."""
    if environ.get("RELAYQ_STATE_DIR"):
        return Path(environ["RELAYQ_STATE_DIR"]).resolve()
    return (find_repo_root(cwd.resolve()) or cwd.resolve()) / ".relayq"


def resolve_state_dir(explicit: Path | None = None) -> Path:
    """``explicit`` (a ``--state-dir`` flag) if given, else :func:`default_state_dir`."""
    if explicit is not None:
        return explicit.resolve()
    return default_state_dir(os.environ, Path.cwd())


def resolve_traces_dir() -> Path:
    """Where ``relayq-trace`` reads span files: ``$RELAYQ_TRACES_DIR`` (what the services write
    to), else the local stack's ``<state dir>/traces``."""
    if os.environ.get("RELAYQ_TRACES_DIR"):
        return Path(os.environ["RELAYQ_TRACES_DIR"])
    return resolve_state_dir() / "traces"


def _int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


def _float(environ: Mapping[str, str], name: str) -> float | None:
    raw = environ.get(name)
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None


@dataclass(frozen=True)
class StackConfig:
    """Everything ``up`` needs to know.

    ``redis_url`` / ``database_url`` set means "use that server, do not start one". ``ports``
    holds the wanted service ports; those named in ``explicit_ports`` were asked for by the user
    and must be free, the others are defaults that move to a free port when busy.
    """

    state_dir: Path
    redis_url: str | None = None
    database_url: str | None = None
    redis_port: int | None = None
    postgres_port: int | None = None
    ports: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    explicit_ports: frozenset[str] = frozenset()
    workers: int = 2
    concurrency: int = 2
    timeout: float = 90.0
    fast: bool = False
    skip: frozenset[str] = frozenset()
    bin_dir: Path = field(default_factory=lambda: Path(sys.executable).parent)
    # Alerting (docs/observability.md, "Alerting"). ``rule_time_scale`` > 1 divides every rule
    # window and ``for:``, and Alertmanager's group timers, by it (incident rehearsals);
    # ``scrape_interval`` (seconds) is Prometheus's scrape and evaluation interval, None: 5 s,
    # or 1 s when the rules are scaled; ``runbook_base`` replaces the rules' runbook link base.
    rule_time_scale: float = 1.0
    scrape_interval: float | None = None
    runbook_base: str | None = None

    @property
    def prometheus_interval(self) -> float:
        """Prometheus's scrape and evaluation interval, in seconds."""
        if self.scrape_interval is not None:
            return self.scrape_interval
        return 5.0 if self.rule_time_scale == 1 else 1.0

    # ``up`` starts a supervisor that restarts what exits; False leaves exits alone.
    supervise: bool = True
    restart: RestartPolicy = field(default_factory=RestartPolicy)

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        **overrides: Any,
    ) -> StackConfig:
        """Config from the environment; ``overrides`` (e.g. from flags) win, None ones ignored.

        A port override is given as ``ports={"flower": 5556}`` and becomes explicit.
        """
        env = os.environ if environ is None else environ
        given = {k: v for k, v in overrides.items() if v is not None}
        port_overrides: dict[str, int] = {
            k: v for k, v in dict(given.pop("ports", {})).items() if v is not None
        }
        unknown = set(port_overrides) - set(DEFAULT_PORTS)
        if unknown:
            raise ValueError(f"unknown ports: {sorted(unknown)}")
        base = cls(
            state_dir=default_state_dir(env, cwd or Path.cwd()),
            redis_url=env.get("RELAYQ_REDIS_URL") or None,
            database_url=env.get("RELAYQ_DATABASE_URL") or None,
            workers=_int(env, "RELAYQ_STACK_WORKERS", 2),
            concurrency=_int(env, "RELAYQ_STACK_WORKER_CONCURRENCY", 2),
            ports={**DEFAULT_PORTS, **port_overrides},
            explicit_ports=frozenset(port_overrides),
            rule_time_scale=_float(env, "RELAYQ_STACK_RULE_TIME_SCALE") or 1.0,
            scrape_interval=_float(env, "RELAYQ_STACK_SCRAPE_INTERVAL"),
            runbook_base=env.get("RELAYQ_RUNBOOK_BASE_URL") or None,
        )
        config = replace(base, **given)
        if config.workers < 1 or config.concurrency < 1:
            raise ValueError("workers and concurrency must be at least 1")
        if config.rule_time_scale < 1:
            raise ValueError("RELAYQ_STACK_RULE_TIME_SCALE must be at least 1 (1: real windows)")
        if config.scrape_interval is not None and config.scrape_interval <= 0:
            raise ValueError("RELAYQ_STACK_SCRAPE_INTERVAL must be a positive number of seconds")
        return config
