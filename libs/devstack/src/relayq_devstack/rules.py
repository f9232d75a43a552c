"""The alert rule files as the local stack's Prometheus loads them: rendered, not read in place.

:func:`render_rule_files` copies ``observability/prometheus/rules/*.yml`` into the state
directory with two changes, both optional:

- every ``runbook_url`` pointing at the committed default base (:data:`DEFAULT_RUNBOOK_BASE`)
  points at ``runbook_base`` instead (``RELAYQ_RUNBOOK_BASE_URL``: an internal wiki, a fork);
- with ``time_scale`` > 1, every duration that makes an alert wait is divided by it: ``for:``,
  ``keep_firing_for:``, a group's ``interval:``, and in PromQL the range selectors (``[5m]``),
  subquery ranges and steps (``[30m:1m]``) and ``offset``\\ s. At 60 a 10-minute ``for:`` is 10 s
  and ``rate(x[5m])`` is ``rate(x[5s])``: an incident rehearsal runs the same rules, with
  shorter windows. Thresholds (``> 600`` seconds of age) are numbers, not durations, and stay.

The files are rewritten as text, line by line, so comments and layout survive and the output is
the same YAML with other numbers. String literals inside PromQL (``"[0-9]m"`` in a regex
matcher) are left alone.
"""

from __future__ import annotations

import re
from pathlib import Path

from relayq_devstack.config import find_repo_root

__all__ = [
    "DEFAULT_RUNBOOK_BASE",
    "format_duration",
    "parse_duration",
    "render_rule_files",
    "scale_duration",
    "scale_expr",
    "scale_rules_text",
]

DEFAULT_RUNBOOK_BASE = "https://github.com/relayq/relayq/blob/main/docs/runbook.md"
# A scaled duration is never shorter than this (Prometheus needs a positive duration).
FLOOR_SECONDS = 1.0

_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_UNITS_MS["y"] = 365 * _UNITS_MS["d"]
_DURATION = r"(?:\d+(?:ms|[smhdwy]))+"
_DURATION_PART = re.compile(r"(\d+)(ms|[smhdwy])")
# A range selector or subquery: [5m], [1h30m], [30m:1m], [30m:].
_RANGE = re.compile(rf"\[\s*({_DURATION})\s*(?::\s*({_DURATION})?\s*)?\]")
_OFFSET = re.compile(rf"\b(offset\s+-?)({_DURATION})\b")
_STRING = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|`[^`]*`")
# `for: 10m`, `keep_firing_for: 5m`, `interval: 1m` (a group's), optionally quoted.
_DURATION_KEY = re.compile(
    rf"^(\s*(?:-\s+)?(?:for|keep_firing_for|interval):\s*)([\"']?)({_DURATION})\2(\s*(?:#.*)?)$"
)
_EXPR_KEY = re.compile(r"^(\s*(?:-\s+)?)expr:(.*)$")


def parse_duration(text: str) -> float:
    """A Prometheus duration (``1h30m``, ``500ms``) in seconds."""
    if not re.fullmatch(_DURATION, text):
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(n) * _UNITS_MS[unit] for n, unit in _DURATION_PART.findall(text)) / 1000


def format_duration(seconds: float) -> str:
    """``seconds`` as a Prometheus duration: whole seconds as ``90s``, else milliseconds."""
    ms = max(1, round(seconds * 1000))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def scale_duration(text: str, time_scale: float, floor: float = FLOOR_SECONDS) -> str:
    """``text`` divided by ``time_scale``, never below ``floor`` seconds; unchanged at 1."""
    if time_scale == 1:
        return text
    return format_duration(max(parse_duration(text) / time_scale, floor))


def scale_expr(expr: str, time_scale: float, min_range: float = FLOOR_SECONDS) -> str:
    """``expr`` with its ranges, subquery steps and offsets divided by ``time_scale``; ranges
    never below ``min_range`` seconds (about four scrape intervals, so a rate sees samples)."""
    if time_scale == 1:
        return expr

    def scale_range(match: re.Match[str]) -> str:
        window = scale_duration(match.group(1), time_scale, max(min_range, FLOOR_SECONDS))
        if ":" not in match.group(0):
            return f"[{window}]"
        step = match.group(2)
        return f"[{window}:{scale_duration(step, time_scale) if step else ''}]"

    def scale_code(code: str) -> str:
        code = _RANGE.sub(scale_range, code)
        return _OFFSET.sub(lambda m: m.group(1) + scale_duration(m.group(2), time_scale), code)

    out: list[str] = []
    last = 0
    for literal in _STRING.finditer(expr):
        out.append(scale_code(expr[last : literal.start()]))
        out.append(literal.group(0))
        last = literal.end()
    out.append(scale_code(expr[last:]))
    return "".join(out)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def scale_rules_text(text: str, time_scale: float) -> str:
    """A rule file's text with its durations divided by ``time_scale`` (see the module doc)."""
    if time_scale == 1:
        return text
    out: list[str] = []
    expr_indent: int | None = None  # inside a multi-line expr: the indent of its `expr:` key
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\n")
        if expr_indent is not None:
            if body.strip() and _indent(body) <= expr_indent:
                expr_indent = None
            else:
                out.append(scale_expr(body, time_scale) + line[len(body) :])
                continue
        expr = _EXPR_KEY.match(body)
        if expr:
            prefix, value = expr.groups()
            # The indent the value's continuation lines must exceed: the key's own column.
            expr_indent = len(prefix)
            out.append(f"{prefix}expr:{scale_expr(value, time_scale)}" + line[len(body) :])
            continue
        key = _DURATION_KEY.match(body)
        if key:
            head, quote, duration, tail = key.groups()
            scaled = scale_duration(duration, time_scale)
            out.append(f"{head}{quote}{scaled}{quote}{tail}" + line[len(body) :])
            continue
        out.append(line)
    return "".join(out)


def rule_sources(repo: Path | None = None) -> list[Path]:
    """The committed rule files of ``repo`` (default: this checkout); empty outside one."""
    root = repo or find_repo_root(Path(__file__).resolve().parent)
    if root is None:
        return []
    return sorted((root / "observability" / "prometheus" / "rules").glob("*.yml"))


def render_rule_files(
    dest: Path,
    *,
    runbook_base: str | None = None,
    time_scale: float = 1.0,
    repo: Path | None = None,
) -> list[Path]:
    """Writes the committed rule files into ``dest`` (same names), with runbook links on
    ``runbook_base`` and durations divided by ``time_scale``; returns the written paths.

    Files of an earlier render that no longer exist upstream are removed, so Prometheus never
    loads a stale rule."""
    if time_scale < 1:
        raise ValueError(f"time_scale must be at least 1 (it shortens windows), got {time_scale}")
    dest.mkdir(parents=True, exist_ok=True)
    sources = rule_sources(repo)
    written: list[Path] = []
    for source in sources:
        text = source.read_text(encoding="utf-8")
        if runbook_base:
            text = text.replace(DEFAULT_RUNBOOK_BASE, runbook_base.rstrip("/#"))
        target = dest / source.name
        target.write_text(scale_rules_text(text, time_scale), encoding="utf-8")
        written.append(target)
    for stale in set(dest.glob("*.yml")) - set(written):
        stale.unlink()
    return written
