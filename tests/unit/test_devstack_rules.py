"""relayq_devstack.rules: rule files rendered for the local stack (runbook base, time scale)."""

from __future__ import annotations

from pathlib import Path

import pytest

from relayq_devstack.rules import (
    DEFAULT_RUNBOOK_BASE,
    format_duration,
    parse_duration,
    render_rule_files,
    scale_expr,
    scale_rules_text,
)

RULES = """\
groups:
  - name: g
    interval: 1m
    rules:
      - alert: A  # a comment with [5m]: comments are left alone
        expr: >-
          rate(x_total{path=~"/a/[0-9]m"}[5m]) > 0
          and max_over_time(y[1h30m:1m]) offset 1h > 3
        for: 10m
        keep_firing_for: "2m"
        labels:
          severity: page
        annotations:
          summary: "over the last [5m]"
          runbook_url: BASE#a-section
      - expr: sum(rate(z[30s]))
        record: job:z:rate30s
""".replace("BASE", DEFAULT_RUNBOOK_BASE)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5m", 300), ("1h30m", 5400), ("500ms", 0.5), ("1d", 86400), ("2w", 1209600)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_parse_duration_refuses_what_is_not_one() -> None:
    with pytest.raises(ValueError):
        parse_duration("5 minutes")


def test_format_duration_prefers_whole_seconds() -> None:
    assert format_duration(5) == "5s"
    assert format_duration(90) == "90s"
    assert format_duration(42.857) == "42857ms"


def test_scale_expr_divides_ranges_subqueries_and_offsets() -> None:
    assert scale_expr("rate(x[5m])", 60) == "rate(x[5s])"
    assert scale_expr("max_over_time(y[1h30m:1m])", 60) == "max_over_time(y[90s:1s])"
    assert scale_expr("max_over_time(y[30m:])", 60) == "max_over_time(y[30s:])"
    assert scale_expr("x offset 1h", 60) == "x offset 60s"
    assert scale_expr("rate(x[30s])", 60) == "rate(x[1s])", "floored at 1 s"
    assert scale_expr('x{a=~"[5m]"}[5m]', 60) == 'x{a=~"[5m]"}[5s]', "strings untouched"
    assert scale_expr("x > 600", 60) == "x > 600", "thresholds are not durations"
    assert scale_expr("rate(x[5m])", 1) == "rate(x[5m])"


def test_scale_rules_text_touches_durations_only() -> None:
    scaled = scale_rules_text(RULES, 60)
    assert "interval: 1s" in scaled
    assert "for: 10s" in scaled
    assert 'keep_firing_for: "2s"' in scaled
    assert 'rate(x_total{path=~"/a/[0-9]m"}[5s]) > 0' in scaled
    assert "and max_over_time(y[90s:1s]) offset 60s > 3" in scaled
    assert "expr: sum(rate(z[1s]))" in scaled
    assert 'summary: "over the last [5m]"' in scaled, "annotations are text, not PromQL"
    assert "record: job:z:rate30s" in scaled
    assert "# a comment with [5m]" in scaled
    assert len(scaled.splitlines()) == len(RULES.splitlines())


def test_render_rule_files_replaces_the_runbook_base(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "observability/prometheus/rules").mkdir(parents=True)
    (repo / "observability/prometheus/rules/a.yml").write_text(RULES)
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "gone.yml").write_text("groups: []\n")
    written = render_rule_files(
        dest, runbook_base="https://wiki.example/relayq/runbook/", time_scale=60, repo=repo
    )
    assert written == [dest / "a.yml"]
    text = written[0].read_text()
    assert "runbook_url: https://wiki.example/relayq/runbook#a-section" in text
    assert DEFAULT_RUNBOOK_BASE not in text
    assert "for: 10s" in text
    assert not (dest / "gone.yml").exists(), "a stale rule file would still be loaded"

    plain = render_rule_files(tmp_path / "plain", repo=repo)
    assert plain[0].read_text() == RULES, "no base, no scale: a verbatim copy"
    with pytest.raises(ValueError):
        render_rule_files(tmp_path / "x", time_scale=0.5, repo=repo)


def test_scale_expr_keeps_ranges_above_a_minimum() -> None:
    """A test scraping every second wants its rates over a few samples."""
    assert scale_expr("rate(x[1m])", 60, min_range=4) == "rate(x[4s])"
    assert scale_expr("rate(x[10m])", 60, min_range=4) == "rate(x[10s])"
    assert scale_expr("x offset 1m", 60, min_range=4) == "x offset 1s", "offsets are not ranges"
