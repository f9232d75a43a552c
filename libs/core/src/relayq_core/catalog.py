"""The task catalogue: which task names exist and which queue each goes to.

It is data (``relayq_core/defaults/tasks.toml`` unless ``RELAYQ_CATALOG`` names another), read
once per process. Ingest validates submissions against it without importing worker code; workers
check they can run every task it lists.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TASK_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
QUEUE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


class CatalogError(ValueError):
    """The task catalogue file is not valid."""


@dataclass(frozen=True)
class TaskSpec:
    """One task the fleet runs."""

    name: str
    queue: str
    description: str = ""


@dataclass(frozen=True)
class Catalog:
    """Every task, by name, and the queue jobs go to when neither task nor client names one."""

    default_queue: str
    tasks: dict[str, TaskSpec] = field(default_factory=dict)

    def queues(self) -> list[str]:
        """Every queue some task goes to, the default first."""
        seen = [self.default_queue]
        for spec in self.tasks.values():
            if spec.queue not in seen:
                seen.append(spec.queue)
        return seen


def _fail(path: Path, key: str, problem: str) -> CatalogError:
    return CatalogError(f"{path}: {key}: {problem}")


def parse_catalog(data: dict[str, Any], path: Path) -> Catalog:
    """Builds a :class:`Catalog` from parsed TOML, naming file, key and problem on error."""
    default_queue = data.get("default_queue", "default")
    if not isinstance(default_queue, str) or not QUEUE_NAME.match(default_queue):
        raise _fail(path, "default_queue", f"not a valid queue name: {default_queue!r}")
    raw_tasks = data.get("tasks")
    if not isinstance(raw_tasks, dict) or not raw_tasks:
        raise _fail(path, "tasks", 'at least one [tasks."name"] table is required')
    tasks: dict[str, TaskSpec] = {}
    for name, body in raw_tasks.items():
        key = f'tasks."{name}"'
        if not TASK_NAME.match(name):
            raise _fail(path, key, "task names are dotted lower-case words, e.g. demo.echo")
        if not isinstance(body, dict):
            raise _fail(path, key, "must be a table")
        unknown = set(body) - {"queue", "description", "retry"}
        if unknown:
            raise _fail(path, key, f"unknown keys {sorted(unknown)}")
        queue = body.get("queue", default_queue)
        if not isinstance(queue, str) or not QUEUE_NAME.match(queue):
            raise _fail(path, f"{key}.queue", f"not a valid queue name: {queue!r}")
        description = body.get("description", "")
        if not isinstance(description, str):
            raise _fail(path, f"{key}.description", "must be a string")
        tasks[name] = TaskSpec(name=name, queue=queue, description=description)
    return Catalog(default_queue=default_queue, tasks=tasks)


def load_catalog(path: Path) -> Catalog:
    """Reads and validates the catalogue file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CatalogError(f"{path}: file not found (set RELAYQ_CATALOG)") from None
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{path}: not valid TOML: {exc}") from None
    return parse_catalog(data, path)
