"""The committed Grafana dashboard, read the way Grafana reads it: panels (rows included, nested
or not), their PromQL, and that PromQL with the dashboard's variables filled in."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relayq_core.settings import repo_root

DASHBOARD = repo_root() / "observability" / "grafana" / "dashboards" / "relayq.json"

# What the dashboard's variables stand for when a test runs its queries: every task and queue
# ("All"), and Grafana's interval variables as they come out for a 1 s scrape interval.
TEST_VARIABLES: dict[str, str] = {
    "task": ".*",
    "queue": ".*",
    "__rate_interval": "15s",
    "__interval": "1s",
    "__range": "5m",
}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


@dataclass(frozen=True)
class PanelQuery:
    """One target of one panel."""

    panel_id: int
    panel: str
    ref_id: str
    expr: str

    @property
    def id(self) -> str:
        """A readable, unique test id: panel id, title and refId."""
        return f"{self.panel_id} {self.panel} [{self.ref_id}]"


def load(path: Path = DASHBOARD) -> dict[str, Any]:
    """The dashboard JSON."""
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, depth first: rows, and the panels a collapsed row keeps inside it."""

    def walk(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from walk(panel.get("panels", []))

    yield from walk(dashboard.get("panels", []))


def queries(dashboard: Mapping[str, Any]) -> list[PanelQuery]:
    """Every PromQL target (``targets[].expr``) of every panel."""
    return [
        PanelQuery(panel["id"], panel["title"], target.get("refId", "?"), target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def substitute(expr: str, variables: Mapping[str, str] = TEST_VARIABLES) -> str:
    """``expr`` with ``$name`` / ``${name}`` / ``${name:format}`` replaced; an unknown variable
    raises KeyError (a typo in a panel would otherwise reach Prometheus as ``$tsak``)."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return variables[name]

    return _VARIABLE.sub(one, expr)
