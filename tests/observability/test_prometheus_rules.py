"""The Prometheus config and rules: ``promtool check`` and the ``promtool test rules`` unit tests
in observability/prometheus/tests/, plus the conventions every alert keeps (severity, runbook
section, annotations) and proof that the unit tests catch a broken rule.

promtool comes from Debian's ``prometheus`` package; in CI a missing promtool fails these tests.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from relayq_devstack.rules import parse_duration
from tests.observability.prometheus_fixture import (
    PROMETHEUS_DIR,
    REPO,
    RULE_FILES,
    RULE_TESTS,
    copy_rules_and_tests,
    require_tool,
    scaled_rules,
)

ALERTS_FILE = PROMETHEUS_DIR / "rules" / "alerts.yml"
RECORDING_FILE = PROMETHEUS_DIR / "rules" / "recording.yml"
RUNBOOK = REPO / "docs" / "runbook.md"
RUNBOOK_ANCHORS = {
    "QueueDepthGrowing": "queue-depth-growing",
    "OldestJobTooOld": "oldest-job-too-old",
    "HighErrorRate": "high-error-rate",
    "DLQFlooding": "dlq-flooding",
    "NoWorkerConsuming": "no-worker-consuming",
    "ServiceDown": "service-down",
    "ReconcilerRequeuing": "reconciler-requeuing",
    "ReconcilerFailing": "reconciler-failing",
    "ReconcilerStalled": "reconciler-failing",
    # The reconciler's broker-reset count: the incident section the runbook already had.
    "BrokerDataLost": "redis-lost-its-data",
    "PostgresUnreachable": "postgresql-unreachable",
    "RedisUnreachable": "redis-unreachable",
    "MetricsGatewaySourceFailing": "metrics-gateway-source-failing",
    "IngestRefusing": "ingest-refusing-submits",
    "IngestSlow": "ingest-slow",
    "DeadLettersUnhandled": "dead-letters-unhandled",
    "WorkersBelowExpected": "workers-below-expected",
    "JobsWaitingForRepair": "jobs-waiting-for-repair",
    "Watchdog": "watchdog",
    "PrometheusNotConnectedToAlertmanager": "alert-delivery-failing",
    "PrometheusErrorSendingAlerts": "alert-delivery-failing",
    "AlertmanagerNotificationsFailing": "alert-delivery-failing",
}
# Paged at 3am: jobs are not being done, or we would not know.
PAGES = {
    "OldestJobTooOld",
    "NoWorkerConsuming",
    "ServiceDown",
    "PostgresUnreachable",
    "RedisUnreachable",
    "IngestRefusing",
    "JobsWaitingForRepair",
}
#: Every runbook_url starts here (the local stack swaps this base for RELAYQ_RUNBOOK_BASE_URL).
RUNBOOK_BASE = "https://github.com/relayq/relayq/blob/main/docs/runbook.md"
#: Alerts without "for": the dead-man's switch must fire from the first evaluation.
ALWAYS_FIRING = {"Watchdog"}


def promtool(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """Runs promtool; the result carries its output for assertion messages."""
    return subprocess.run(
        [str(require_tool("promtool")), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def load_yaml(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return data


def rules_of(path: Path) -> Iterator[dict[str, Any]]:
    for group in load_yaml(path)["groups"]:
        yield from group["rules"]


def alert_rules() -> list[dict[str, Any]]:
    return [r for r in rules_of(ALERTS_FILE) if "alert" in r]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation but hyphens and
    underscores dropped, each space a hyphen."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def test_github_anchor_follows_githubs_rules() -> None:
    assert github_anchor("PostgreSQL unreachable") == "postgresql-unreachable"
    assert github_anchor("Redis restarts: reconnects, a crash we fixed") == (
        "redis-restarts-reconnects-a-crash-we-fixed"
    )
    assert github_anchor("DLQ flooding (`dlq-tool`)") == "dlq-flooding-dlq-tool"


# --- promtool --------------------------------------------------------------------------------


def test_rule_files_pass_promtool_check() -> None:
    assert RULE_FILES, "no rule files in observability/prometheus/rules/"
    result = promtool("check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_config_passes_promtool_check(tmp_path: Path) -> None:
    """The compose config, with its in-container rule path pointed at the repo's rules."""
    text = (PROMETHEUS_DIR / "prometheus.yml").read_text(encoding="utf-8")
    assert "/etc/prometheus/rules/*.yml" in text
    config = tmp_path / "prometheus.yml"
    config.write_text(text.replace("/etc/prometheus/rules", str(PROMETHEUS_DIR / "rules")))
    result = promtool("check", "config", str(config))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"{len(RULE_FILES)} rule files found" in output, output


def test_compose_config_scrapes_every_service() -> None:
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {
        "relayq-ingest",
        "relayq-worker",
        "relayq-dlq",
        "relayq-metrics-gateway",
        "relayq-reconciler",
    } <= set(jobs)
    assert jobs["relayq-ingest"]["static_configs"][0]["targets"] == ["ingest:8000"]
    assert jobs["relayq-dlq"]["static_configs"][0]["targets"] == ["dlq:9101"]
    assert jobs["relayq-metrics-gateway"]["static_configs"][0]["targets"] == [
        "metrics-gateway:9100"
    ]
    assert jobs["relayq-reconciler"]["static_configs"][0]["targets"] == ["reconciler:9102"]
    # Every replica of `--scale worker=N`, found through Docker's DNS.
    assert jobs["relayq-worker"]["dns_sd_configs"] == [
        {"names": ["worker"], "type": "A", "port": 9200, "refresh_interval": "15s"}
    ]


@pytest.mark.parametrize("test_file", RULE_TESTS, ids=lambda p: p.stem)
def test_promtool_unit_tests_pass(test_file: Path) -> None:
    result = promtool("test", "rules", str(test_file))
    assert result.returncode == 0, result.stdout + result.stderr


# --- every alert is tested, firing and quiet -------------------------------------------------


def _alert_cases() -> dict[str, dict[str, int]]:
    """For each alert name: how many unit-test checks expect it firing and how many quiet."""
    cases: dict[str, dict[str, int]] = {}
    for path in RULE_TESTS:
        for test in load_yaml(path).get("tests", []):
            for check in test.get("alert_rule_test", []):
                seen = cases.setdefault(check["alertname"], {"firing": 0, "quiet": 0})
                seen["firing" if check.get("exp_alerts") else "quiet"] += 1
    return cases


def test_every_alert_has_firing_and_quiet_unit_tests() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    assert set(RUNBOOK_ANCHORS) <= names
    cases = _alert_cases()
    for name in sorted(names):
        seen = cases.get(name, {"firing": 0, "quiet": 0})
        quiet_needed = name not in ALWAYS_FIRING  # the dead-man's switch is never quiet
        assert seen["firing"] and (seen["quiet"] or not quiet_needed), f"{name}: unit tests {seen}"
    assert set(cases) <= names, f"tests name unknown alerts: {set(cases) - names}"


def test_every_rule_file_has_unit_tests() -> None:
    tested = {
        (path.parent / rule_file).resolve()
        for path in RULE_TESTS
        for rule_file in load_yaml(path)["rule_files"]
    }
    assert {p.resolve() for p in RULE_FILES} <= tested


def test_recording_rule_tests_cover_the_dashboard_aggregates() -> None:
    tested = " ".join(
        check["expr"]
        for test in load_yaml(PROMETHEUS_DIR / "tests" / "recording_rules.yml")["tests"]
        for check in test.get("promql_expr_test", [])
    )
    for name in (
        "relayq:jobs_succeeded:rate5m",
        "task:relayq_job_error:ratio_rate5m",
        "relayq:job_error:ratio_rate5m",
        "task:relayq_job_retry:ratio_rate5m",
        "task_queue:relayq_job_duration_seconds:p95_rate5m",
        "relayq:job_duration_seconds:p95_rate5m",
        "queue:relayq_queue_depth:deriv10m",
        "task_reason:relayq_dlq_depth:max",
    ):
        assert name in tested, name


# --- conventions -----------------------------------------------------------------------------


def test_alerts_carry_severity_annotations_and_runbook() -> None:
    headings = [
        line.lstrip("#").strip()
        for line in RUNBOOK.read_text(encoding="utf-8").splitlines()
        if line.startswith("## ")
    ]
    anchors = {github_anchor(h) for h in headings}
    for rule in alert_rules():
        name = rule["alert"]
        labels = rule.get("labels", {})
        assert labels.get("severity") in {"page", "ticket"}, name
        assert (labels["severity"] == "page") == (name in PAGES) or name == "ServiceDown", name
        notes = rule.get("annotations", {})
        assert notes.get("summary") and notes.get("description"), name
        # A rule that fires only at 0 ("up == 0", "no cycle finished == 0") has no value to show.
        shows_value = "$value" in notes["summary"] + notes["description"]
        assert shows_value or " == 0" in str(rule["expr"]) or name in ALWAYS_FIRING, name
        url = notes.get("runbook_url", "")
        assert url.startswith(RUNBOOK_BASE + "#"), f"{name}: {url!r} is not absolute"
        anchor = url.removeprefix(RUNBOOK_BASE + "#")
        assert anchor == RUNBOOK_ANCHORS[name], name
        assert anchor in anchors, f"docs/runbook.md has no section for #{anchor}"
        if name in ALWAYS_FIRING:
            assert "for" not in rule and str(rule["expr"]) == "vector(1)", name
        else:
            assert parse_duration(str(rule["for"])) >= 120, f"{name}: a blip must not alert"


def test_the_alerts_others_refer_to_exist() -> None:
    """The incident rehearsals and Alertmanager's inhibition rules name these."""
    names = {rule["alert"] for rule in alert_rules()}
    assert {
        "PostgresUnreachable",
        "RedisUnreachable",
        "IngestRefusing",
        "IngestSlow",
        "MetricsGatewaySourceFailing",
        "DeadLettersUnhandled",
        "WorkersBelowExpected",
        "Watchdog",
        "NoWorkerConsuming",
        "DLQFlooding",
        "BrokerDataLost",
        "ServiceDown",
    } <= names


def test_rehearsed_sections_give_first_commands_to_run() -> None:
    """Each incident the rehearsals inject has, in its alert's section, a console block directly
    under "**First commands (local stack)**", one `$ ` command a line, and compose's too."""
    text = RUNBOOK.read_text(encoding="utf-8")
    sections = {s.splitlines()[0]: s for s in text.split("\n## ")[1:]}
    for heading in (
        "No worker consuming",
        "Workers below expected",
        "DLQ flooding",
        "Redis unreachable",
        "PostgreSQL unreachable",
        "Redis lost its data",
        "Ingest refusing submits",
    ):
        section = sections[heading]
        found = re.search(
            r"^\*\*First commands \(local stack\)\*\*\n\n```console\n(.*?)^```",
            section,
            re.MULTILINE | re.DOTALL,
        )
        assert found, heading
        lines = found.group(1).splitlines()
        assert lines and all(line.startswith("$ ") for line in lines), heading
        # No pipeline that cannot fail: nothing ends in a command that succeeds on no input.
        for line in lines:
            last = line.rsplit("|", 1)[-1].strip()
            assert not last.startswith(("tail", "head", "cat", "sort", "true")), line
            assert "|| true" not in line, line
        assert "**First commands (compose)**\n\n```console\n$ " in section, heading


def test_service_down_pages_for_ingest_and_gateway_only() -> None:
    """Every scraped relayq service is in one ServiceDown rule: ingest and the gateway page,
    the others make tickets."""
    severities = {
        rule["labels"]["severity"]: rule["expr"]
        for rule in alert_rules()
        if rule["alert"] == "ServiceDown"
    }
    assert set(severities) == {"page", "ticket"}
    assert "relayq-ingest" in severities["page"] and "relayq-metrics-gateway" in severities["page"]
    assert "relayq-worker" in severities["ticket"] and "relayq-dlq" in severities["ticket"]
    assert "relayq-reconciler" in severities["ticket"]
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    # Prometheus and Alertmanager are watched by the alerting pipeline's own alerts (Watchdog).
    scraped = {job["job_name"] for job in config["scrape_configs"]} - {
        "prometheus",
        "alertmanager",
    }
    watched = set(re.findall(r"relayq-[a-z-]+", " ".join(severities.values())))
    assert scraped == watched, f"scraped but not watched: {scraped - watched}"


def test_recording_rules_follow_naming_and_exist_where_used() -> None:
    # level:metric:operations; the level "relayq" is the whole fleet (no labels left).
    pattern = r"(?:[a-z_]+:relayq_|relayq:)[a-z_0-9]+:[a-z0-9_]+"
    recorded = {r["record"] for r in rules_of(RECORDING_FILE)}
    for name in recorded:
        assert re.fullmatch(pattern, name), name
    used = set()
    for rule in [*rules_of(RECORDING_FILE), *alert_rules()]:
        used |= set(re.findall(pattern, str(rule["expr"])))
    assert used <= recorded, f"used but never recorded: {used - recorded}"


def test_no_rule_groups_by_job_id() -> None:
    for path in RULE_FILES:
        assert "job_id" not in path.read_text(encoding="utf-8"), path


# --- the unit tests can fail -----------------------------------------------------------------


MUTATIONS = {
    # id: (text in alerts.yml, replacement, the unit test file that must notice)
    "threshold": (
        "queue:relayq_queue_oldest_job_age_seconds:max > 600",
        "queue:relayq_queue_oldest_job_age_seconds:max > 6000",
        "oldest_job_too_old",
    ),
    "for": ("for: 15m", "for: 1m", "queue_depth_growing"),
    "unless": ("unless on (queue)", "and on (queue)", "no_worker_consuming"),
    "severity": ("labels:\n          severity: page", "labels: {}", "oldest_job_too_old"),
    "traffic-guard": ("> 0.1\n", "> 0\n", "high_error_rate"),
    "per-minute": ("rate10m * 60 > 10", "rate10m > 10", "dlq_flooding"),
    "gateway-down": ("relayq-ingest|relayq-metrics-gateway", "relayq-ingest", "service_down"),
    "reconciler-down": (
        "relayq-dlq|relayq-worker|relayq-reconciler",
        "relayq-dlq|relayq-worker",
        "service_down",
    ),
    "requeue-sustained": ("for: 30m", "for: 5m", "reconciler_requeuing"),
    "requeue-sweep-excluded": ('{reason!="broker_data_lost"}', "", "reconciler_requeuing"),
    "broker-reset": (
        "broker_resets_total[15m])) > 0",
        "broker_resets_total[15m])) > 1",
        "broker_data_lost",
    ),
    "failing-share": ("          > 0.5", "          > 0", "reconciler_failing"),
    "stall-sweep": (
        "unless sum(rate(relayq_reconciler_requeued_total[5m])) > 0",
        "",
        "reconciler_stalled",
    ),
    "postgres-any-gateway": (
        'max by (source) (relayq_gateway_source_up{source="postgres"})',
        'min by (source) (relayq_gateway_source_up{source="postgres"})',
        "postgres_unreachable",
    ),
    "redis-source": (
        'source_up{source="redis"}) == 0',
        'source_up{source="dlq"}) == 0',
        "redis_unreachable",
    ),
    "source-failing-unless": (
        "          unless on (source)\n",
        "          and on (source)\n",
        "metrics_gateway_source_failing",
    ),
    "source-failing-postgres-down": (
        "          unless on ()\n"
        '            (max(relayq_gateway_source_up{source="postgres"}) == 0)\n',
        "",
        "metrics_gateway_source_failing",
    ),
    "refusals-server-side": (
        'code=~"UNAVAILABLE|INTERNAL|UNKNOWN|DEADLINE_EXCEEDED|DATA_LOSS|5[0-9][0-9]"',
        'code=~".+"',
        "ingest_refusing",
    ),
    "refusals-share": ("          > 0.05\n", "          > 0.005\n", "ingest_refusing"),
    "slow-traffic-guard": (
        "(rate(relayq_ingest_submit_seconds_count[5m])) > 0.05",
        "(rate(relayq_ingest_submit_seconds_count[5m])) > 0",
        "ingest_slow",
    ),
    "slow-threshold": ("p99_rate5m > 0.5", "p99_rate5m > 1", "ingest_slow"),
    "dead-letter-day": ("age_seconds) > 86400", "age_seconds) > 864000", "dead_letters_unhandled"),
    "workers-expected": (
        "scalar(max(relayq_workers_expected)) - relayq:workers_up:sum > 0",
        "scalar(max(relayq_workers_expected)) - relayq:workers_up:sum > 1",
        "workers_below_expected",
    ),
    "repair-wait": ("overdue_seconds) > 600", "overdue_seconds) > 6000", "jobs_waiting_for_repair"),
    "watchdog": ("expr: vector(1)", "expr: vector(1) == 0", "alerting_pipeline"),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_unit_tests_catch_a_broken_alert(tmp_path: Path, mutation: str) -> None:
    old, new, test_name = MUTATIONS[mutation]
    rules, tests = copy_rules_and_tests(tmp_path)
    alerts = rules / "alerts.yml"
    text = alerts.read_text(encoding="utf-8")
    assert old in text
    alerts.write_text(text.replace(old, new, 1), encoding="utf-8")
    assert promtool("check", "rules", str(alerts)).returncode == 0, "still a valid rule file"
    result = promtool("test", "rules", str(tests / f"{test_name}.yml"))
    assert result.returncode != 0, f"{test_name}.yml did not notice {old!r} -> {new!r}"


# --- the time-scaling helper -----------------------------------------------------------------


def test_scaled_rules_are_valid_and_scaled(tmp_path: Path) -> None:
    out = scaled_rules(
        RULE_FILES,
        tmp_path,
        factor=1 / 60,
        min_range=4,
        substitute={"queue:relayq_queue_depth:max > 1000": "queue:relayq_queue_depth:max > 20"},
    )
    result = promtool("check", "rules", *map(str, out))
    assert result.returncode == 0, result.stdout + result.stderr
    growing = next(
        r for r in rules_of(tmp_path / "alerts.yml") if r.get("alert") == "QueueDepthGrowing"
    )
    assert growing["for"] == "15s"
    assert "queue:relayq_queue_depth:max > 20" in growing["expr"]
    deriv = next(
        r
        for r in rules_of(tmp_path / "recording.yml")
        if r.get("record") == "queue:relayq_queue_depth:deriv10m"
    )
    assert deriv["expr"] == "deriv(queue:relayq_queue_depth:max[10s])"
    with pytest.raises(ValueError, match="matched no expression"):
        scaled_rules(RULE_FILES, tmp_path / "again", factor=1, substitute={"> 999999": "> 1"})
