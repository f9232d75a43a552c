"""Retry policies as data: exponential backoff with bounded jitter, per task.

The file (``relayq_core/defaults/retry.toml`` unless ``RELAYQ_RETRY_POLICY`` names another) has a
``[default]`` table and ``[tasks."name"]`` overrides; an override inherits every key it does not
set. Retry ``n`` (1-based) waits

    min(base_delay_seconds * factor ** (n - 1), max_delay_seconds) * uniform(1 - jitter, 1 + jitter)

so the default (2 s, x2, 5 retries, ±20 %) waits about 2, 4, 8, 16, 32 s: recognisable, never in
lock-step with other jobs that failed at the same moment.
"""

from __future__ import annotations

import random
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any


class PolicyError(ValueError):
    """The retry policy file is not valid."""


@dataclass(frozen=True)
class RetryPolicy:
    """How one task is retried."""

    base_delay_seconds: float = 2.0
    factor: float = 2.0
    max_delay_seconds: float = 300.0
    max_retries: int = 5
    jitter: float = 0.2
    #: Deliveries whose worker died mid-run before the job is dead-lettered as a poison job.
    max_worker_losses: int = 2
    #: Attempts in a row cut short by the loss of the delivery's database connection that are
    #: not counted (an outage is not the job's fault); each one beyond counts as a worker loss
    #: (a handler that costs its own connection must not run forever).
    max_interruptions: int = 3
    #: An attempt still running after this long is cancelled and recorded ``timed_out`` (a
    #: retryable failure; the job is dead-lettered with reason ``timeout`` when the last one
    #: was); one that ignores the cancellation is stopped hard (docs/retries.md).
    timeout_seconds: float = 300.0
    #: Celery's hard time limit (0: none), an opt-in last resort for handlers that could hold
    #: the GIL so long that relayq's own stops cannot act (docs/retries.md).
    hard_time_limit_seconds: float = 0.0

    def nominal_delay(self, retry: int) -> float:
        """The un-jittered wait before retry ``retry`` (1-based)."""
        if retry < 1:
            raise ValueError("retries are numbered from 1")
        return min(self.base_delay_seconds * self.factor ** (retry - 1), self.max_delay_seconds)

    def bounds(self, retry: int) -> tuple[float, float]:
        """The smallest and largest countdown retry ``retry`` can get."""
        nominal = self.nominal_delay(retry)
        return nominal * (1 - self.jitter), nominal * (1 + self.jitter)

    def countdown(self, retry: int, rng: random.Random | None = None) -> float:
        """The jittered wait before retry ``retry``."""
        low, high = self.bounds(retry)
        return (rng or random).uniform(low, high)

    def longest_countdown(self) -> float:
        """The longest wait any retry can get (for the broker's visibility timeout)."""
        return self.max_delay_seconds * (1 + self.jitter)

    def retry_countdown(
        self, retry: int, retry_after: float | None = None, rng: random.Random | None = None
    ) -> float:
        """The wait before retry ``retry``: the jittered backoff, or longer when the failure
        asked for more (an HTTP ``Retry-After``), up to ``max_delay_seconds``."""
        countdown = self.countdown(retry, rng)
        if retry_after is not None and retry_after > 0:
            countdown = max(countdown, min(retry_after, self.max_delay_seconds))
        return countdown


@dataclass(frozen=True)
class RetryPolicies:
    """The default policy and per-task overrides."""

    default: RetryPolicy = field(default_factory=RetryPolicy)
    tasks: dict[str, RetryPolicy] = field(default_factory=dict)
    path: Path | None = None

    def for_task(self, task: str) -> RetryPolicy:
        """The policy of ``task`` (its override, or the default)."""
        return self.tasks.get(task, self.default)

    def longest_timeout(self) -> float:
        """The longest time limit of any policy."""
        return max(p.timeout_seconds for p in (self.default, *self.tasks.values()))

    def longest_countdown(self) -> float:
        """The longest wait of any policy."""
        return max(p.longest_countdown() for p in (self.default, *self.tasks.values()))


_TYPES = {f.name: (int if f.type in ("int", int) else float) for f in fields(RetryPolicy)}


def _policy(base: RetryPolicy, table: Any, path: Path, key: str) -> RetryPolicy:
    if not isinstance(table, dict):
        raise PolicyError(f"{path}: {key}: must be a table")
    unknown = sorted(set(table) - set(_TYPES))
    if unknown:
        raise PolicyError(f"{path}: {key}: unknown keys {unknown}; known: {sorted(_TYPES)}")
    values: dict[str, Any] = {}
    for name, value in table.items():
        want = _TYPES[name]
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if want is int and not isinstance(value, int):
            ok = False
        if not ok:
            raise PolicyError(f"{path}: {key}.{name}: must be a number, not {value!r}")
        values[name] = want(value)
    policy = replace(base, **values)
    problems = [
        (policy.base_delay_seconds > 0, "base_delay_seconds must be > 0"),
        (policy.factor >= 1, "factor must be >= 1"),
        (
            policy.max_delay_seconds >= policy.base_delay_seconds,
            "max_delay_seconds must be >= base_delay_seconds",
        ),
        (0 <= policy.max_retries <= 100, "max_retries must be 0..100"),
        (0 <= policy.jitter < 1, "jitter must be in [0, 1)"),
        (1 <= policy.max_worker_losses <= 100, "max_worker_losses must be 1..100"),
        (0 <= policy.max_interruptions <= 100, "max_interruptions must be 0..100"),
        (0 < policy.timeout_seconds <= 86400, "timeout_seconds must be in (0, 86400]"),
        (
            0 <= policy.hard_time_limit_seconds <= 172800,
            "hard_time_limit_seconds must be 0 (none) or up to 172800",
        ),
    ]
    for ok, problem in problems:
        if not ok:
            raise PolicyError(f"{path}: {key}: {problem}")
    return policy


def parse_policies(data: dict[str, Any], path: Path) -> RetryPolicies:
    """Builds policies from parsed TOML, naming file, key and problem on error."""
    unknown = sorted(set(data) - {"default", "tasks"})
    if unknown:
        raise PolicyError(f"{path}: unknown top-level keys {unknown}; known: default, tasks")
    default = _policy(RetryPolicy(), data.get("default", {}), path, "default")
    raw_tasks = data.get("tasks", {})
    if not isinstance(raw_tasks, dict):
        raise PolicyError(f'{path}: tasks: must be a table of [tasks."name"] tables')
    tasks = {
        name: _policy(default, table, path, f'tasks."{name}"') for name, table in raw_tasks.items()
    }
    return RetryPolicies(default=default, tasks=tasks, path=path)


def load_policies(path: Path) -> RetryPolicies:
    """Reads and validates the retry policy file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PolicyError(f"{path}: file not found (set RELAYQ_RETRY_POLICY)") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{path}: not valid TOML: {exc}") from None
    return parse_policies(data, path)
