"""Prometheus for tests: find the tools, start a real server, scale the alert rules' windows.

The server itself is :mod:`relayq_devstack.prometheus` (the local stack runs the same code); this
module adds what only tests need:

- :func:`require_tool`: ``prometheus`` / ``promtool`` / ``alertmanager`` / ``amtool``, failing
  everywhere with the install command when missing (``make setup`` installs Debian's
  ``prometheus`` and ``prometheus-alertmanager`` packages);
- :func:`scaled_rules`: the committed rule files with every ``for:`` and every PromQL range,
  subquery and offset multiplied by a factor, so that an alert that needs 15 minutes in
  production fires in seconds against a Prometheus that scrapes and evaluates every second.

A time-scaled alert test, for example::

    rules = scaled_rules(RULE_FILES, tmp_path / "rules", factor=1 / 60, min_range=4.0,
                         substitute={"queue:relayq_queue_depth:max > 1000":
                                     "queue:relayq_queue_depth:max > 20"})
    server = start_prometheus(tmp_path / "prom", jobs, rules=rules, interval=1.0)
    server.client.wait_for(lambda c: c.firing("QueueDepthGrowing"), timeout=40)

Factor 1/60 turns minutes into seconds: ``for: 15m`` becomes 15 s, ``deriv(...[10m])`` a 10 s
window. Numbers inside expressions (thresholds such as ``> 1000`` jobs or ``> 600`` seconds of
age) are not durations and are left alone: ``substitute`` replaces exact text, and fails if that
text is not found, so a rule change cannot silently turn a test into a no-op.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from relayq_core.settings import repo_root
from relayq_devstack.rules import scale_duration, scale_expr
from relayq_devstack.tools import find_tool, missing_message

REPO = repo_root()
PROMETHEUS_DIR = REPO / "observability" / "prometheus"
RULES_DIR = PROMETHEUS_DIR / "rules"
RULE_FILES = sorted(RULES_DIR.glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))


def require_tool(name: str) -> Path:
    """The path of ``name`` (``prometheus``, ``promtool``, ``alertmanager`` or ``amtool``).
    Missing: the test fails, everywhere, with the command that installs it (a skipped test would
    let a green run hide it)."""
    found = find_tool(name)
    if found is not None:
        return found
    pytest.fail(missing_message(name))


def scaled_rules(
    files: Sequence[Path],
    dest: Path,
    *,
    factor: float,
    min_range: float = 0.0,
    substitute: Mapping[str, str] | None = None,
) -> list[Path]:
    """Copies of the rule ``files`` in ``dest`` with every duration times ``factor`` (the
    stack's own scaling, :mod:`relayq_devstack.rules`, plus what a single test needs).

    Scaled: each rule's ``for`` and ``keep_firing_for``, each group's ``interval``, and in every
    ``expr`` the range selectors, subqueries and offsets (ranges at least ``min_range``
    seconds; pick about four scrape intervals). ``substitute`` maps exact expression text to
    its replacement (for thresholds, which are not durations); each key must occur somewhere.
    """
    pending = dict(substitute or {})
    used: set[str] = set()
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for path in files:
        doc: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
        for group in doc.get("groups", []):
            if "interval" in group:
                group["interval"] = scale_duration(group["interval"], 1 / factor)
            for rule in group.get("rules", []):
                expr = str(rule["expr"])
                for old, new in pending.items():
                    if old in expr:
                        expr = expr.replace(old, new)
                        used.add(old)
                rule["expr"] = scale_expr(expr, 1 / factor, min_range)
                for key in ("for", "keep_firing_for"):
                    if key in rule:
                        rule[key] = scale_duration(str(rule[key]), 1 / factor)
        target = dest / path.name
        target.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        written.append(target)
    unused = sorted(set(pending) - used)
    if unused:
        raise ValueError(f"substitutions that matched no expression: {unused}")
    return written


def copy_rules_and_tests(dest: Path) -> tuple[Path, Path]:
    """The committed rules and their promtool tests, copied into ``dest`` with the same layout
    (tests refer to ``../rules/``); returns the two folders."""
    rules = dest / "rules"
    tests = dest / "tests"
    shutil.copytree(RULES_DIR, rules)
    shutil.copytree(PROMETHEUS_DIR / "tests", tests)
    return rules, tests


def load_yaml_rules(files: Sequence[Path] = RULE_FILES) -> list[dict[str, Any]]:
    """Every rule (recording and alerting) of the rule ``files``."""
    rules: list[dict[str, Any]] = []
    for path in files:
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            rules.extend(group["rules"])
    return rules
