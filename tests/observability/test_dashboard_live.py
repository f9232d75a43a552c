"""Every dashboard panel returns data from a real Prometheus that scraped a live stack.

The stack is the local one (``relayq_devstack.stack.Stack``: real ingest, dlq-svc, a Celery
worker, metrics-gateway, Redis and PostgreSQL) with the test retry policy; a Prometheus from
:func:`relayq_devstack.prometheus.start_prometheus` scrapes it every second with the committed
rules. The test submits jobs that succeed, retry, dead-letter, are duplicates or are rejected,
replays and drops a dead letter, then checks through the Prometheus HTTP API:

- every panel query returns at least one sample;
- throughput and the error rate are above zero, and there is a P95 duration;
- the DLQ depth equals the number of active entries dlq-svc reports.

Which assertions depend on which service's metrics: each query is traced (through the recording
rules) to the raw metric names it reads. A check whose metrics no service's source defines yet
is marked ``xfail(strict=True)`` naming them; it becomes a plain test as soon as the service
code names the metric, and a strict xfail that passes fails, so the marks cannot go stale.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from relayq.v1 import dead_letter_pb2, dead_letter_pb2_grpc
from relayq_devstack.config import DEFAULT_PORTS, StackConfig
from relayq_devstack.ports import free_port
from relayq_devstack.prometheus import (
    PrometheusClient,
    PrometheusServer,
    scrape_jobs,
    start_prometheus,
)
from relayq_devstack.services import ServiceContext, ServiceSpec, relayq_services
from relayq_devstack.stack import Stack
from tests.observability import dashboard
from tests.observability.prometheus_fixture import REPO, RULE_FILES, load_yaml_rules, require_tool

pytestmark = pytest.mark.e2e

SERVICE_SOURCES = [
    REPO / folder / "src" for folder in ("ingest-svc", "worker-svc", "dlq-svc", "metrics-gateway")
] + [REPO / "libs" / "core" / "src"]  # the reconciler lives in the shared core
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


# --- which metrics a query needs, and which of them the services define ----------------------


def _recording_exprs() -> dict[str, str]:
    return {str(r["record"]): str(r["expr"]) for r in load_yaml_rules() if "record" in r}


def raw_metrics(expr: str, recorded: dict[str, str] | None = None) -> set[str]:
    """The scraped ``relayq_*`` metric names ``expr`` reads, through any recording rules."""
    recorded = _recording_exprs() if recorded is None else recorded
    # Label values and matchers are not metric names.
    code = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    found: set[str] = set()
    for name in _IDENTIFIER.findall(code):
        if name in recorded:
            found |= raw_metrics(recorded[name], recorded)
        elif name.startswith("relayq_"):
            found.add(name)
    return found


def _family(metric: str) -> str:
    """The name a service's source spells: without the exposition suffixes."""
    return re.sub(r"_(total|bucket|count|sum|created)$", "", metric)


def undefined_metrics(metrics: set[str]) -> list[str]:
    """Those of ``metrics`` that no service's source mentions yet."""
    sources = " ".join(
        path.read_text(encoding="utf-8")
        for folder in SERVICE_SOURCES
        for path in folder.rglob("*.py")
    )
    return sorted(m for m in metrics if _family(m) not in sources)


def needs(metrics: set[str]) -> list[pytest.MarkDecorator]:
    """``xfail(strict=True)`` while any of ``metrics`` is missing from the services' code."""
    missing = undefined_metrics(metrics)
    if not missing:
        return []
    reason = "waits for the services to expose: " + ", ".join(missing)
    return [pytest.mark.xfail(reason=reason, strict=True)]


def patience(request: pytest.FixtureRequest) -> float:
    """How long a check waits for data: not at all while it is an expected failure."""
    return 0.0 if request.node.get_closest_marker("xfail") else 20.0


def test_raw_metrics_follow_recording_rules() -> None:
    assert raw_metrics('sum(task:relayq_job_error:ratio_rate5m{task=~"relayq_x"})') == {
        "relayq_job_runs_total"
    }
    assert raw_metrics('sum(up{job="relayq-worker"})') == set()
    assert undefined_metrics({"relayq_no_such_metric_total"}) == ["relayq_no_such_metric_total"]


# --- the live stack --------------------------------------------------------------------------


@dataclass
class Live:
    """The running stack, its Prometheus, and what the test did to them."""

    stack: Stack
    prometheus: PrometheusServer
    ingest_http: str
    dlq_grpc: str
    dlq_token: str
    job_ids: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def client(self) -> PrometheusClient:
        return self.prometheus.client


def _http(method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"content-type": "application/json"}
    )
    try:
        with _NO_PROXY.open(request, timeout=10) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def submit(live: Live, task: str, payload: dict[str, Any], key: str | None = None) -> int:
    """POSTs a job; remembers its id when accepted."""
    body: dict[str, Any] = {"task": task, "payload": payload}
    if key:
        body["idempotency_key"] = key
    status, reply = _http("POST", f"{live.ingest_http}/v1/jobs", body)
    if status < 300:
        live.job_ids.append(reply["job_id"])
    return status


def submit_wave(live: Live, wave: int) -> None:
    """Jobs that succeed, retry once then succeed, and dead-letter at once."""
    for i in range(6):
        submit(live, "demo.echo", {"wave": wave, "i": i})
    for i in range(3):
        submit(live, "demo.flaky", {"fail_times": 1, "wave": wave, "i": i})
    for i in range(3):
        submit(live, "demo.fail", {"permanent": True, "wave": wave, "i": i})
    for i in range(2):
        submit(live, "demo.slow", {"ms": 50 * (i + 1), "wave": wave})


def wait_finished(live: Live, timeout: float = 30.0) -> None:
    """Until every accepted job has succeeded or been dead-lettered."""
    deadline = time.monotonic() + timeout
    pending = {job_id: "" for job_id in live.job_ids}
    while pending:
        states = {j: _http("GET", f"{live.ingest_http}/v1/jobs/{j}")[1] for j in pending}
        pending = {
            j: f"{job.get('task')}: {job.get('state')}"
            for j, job in states.items()
            if job.get("state") not in ("succeeded", "dead_lettered")
        }
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"jobs not finished after {timeout:.0f}s: {pending}")
        time.sleep(0.2)


def dlq_stub(live: Live) -> tuple[grpc.Channel, dead_letter_pb2_grpc.DeadLetterServiceStub]:
    channel = grpc.insecure_channel(live.dlq_grpc, options=[("grpc.enable_http_proxy", 0)])
    return channel, dead_letter_pb2_grpc.DeadLetterServiceStub(channel)


def dlq_active(live: Live) -> int:
    channel, stub = dlq_stub(live)
    with channel:
        stats = stub.GetDeadLetterStats(dead_letter_pb2.GetDeadLetterStatsRequest(), timeout=5)
    return int(stats.active)


def replay_and_drop(live: Live) -> None:
    """Replays one dead letter and drops another, so the DLQ action counters exist."""
    channel, stub = dlq_stub(live)
    try:
        with channel:
            listed = stub.ListDeadLetters(
                dead_letter_pb2.ListDeadLettersRequest(page_size=10), timeout=5
            ).dead_letters
            if len(listed) < 2:
                live.notes.append(f"only {len(listed)} dead letters to replay and drop")
                return
            auth = (("authorization", f"Bearer {live.dlq_token}"),)
            replay = dead_letter_pb2.ReplayDeadLettersRequest(ids=[listed[0].id], reason="test")
            for _ in stub.ReplayDeadLetters(replay, timeout=10, metadata=auth):
                pass
            drop = dead_letter_pb2.DropDeadLettersRequest(ids=[listed[1].id], reason="test")
            stub.DropDeadLetters(drop, timeout=5, metadata=auth)
    except grpc.RpcError as exc:
        live.notes.append(f"DLQ replay/drop failed: {exc.code().name}: {exc.details()}")


def _with_test_retry_policy(ctx: ServiceContext) -> list[ServiceSpec]:
    policy = str(REPO / "tests" / "data" / "retry-fast.toml")
    return [
        dataclasses.replace(spec, env={**spec.env, "RELAYQ_RETRY_POLICY": policy})
        if spec.group == "worker"
        else spec
        for spec in relayq_services(ctx)
    ]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    binary = require_tool("prometheus")
    root = tmp_path_factory.mktemp("live")
    specs: list[ServiceSpec] = []

    def services(ctx: ServiceContext) -> list[ServiceSpec]:
        made = _with_test_retry_policy(ctx)
        specs.extend(made)
        return made

    config = StackConfig.from_env(
        {},
        cwd=root,
        state_dir=root / "stack",
        ports={name: free_port() for name in DEFAULT_PORTS},
        workers=1,
        concurrency=2,
        fast=True,
        timeout=60.0,
        skip=frozenset({"flower", "prometheus"}),  # the test runs its own, scraping every second
    )
    stack = Stack(config, services=services)
    info = stack.up()
    prometheus: PrometheusServer | None = None
    try:
        running = [s for s in specs if s.group not in config.skip]
        prometheus = start_prometheus(
            root / "prometheus", scrape_jobs(running), rules=RULE_FILES, interval=1.0, binary=binary
        )
        result = Live(
            stack,
            prometheus,
            info.env["RELAYQ_INGEST_HTTP"],
            info.env["RELAYQ_DLQ_GRPC"],
            info.env.get("RELAYQ_DLQ_ADMIN_TOKEN", ""),
        )
        run_traffic(result)
        yield result
    finally:
        if prometheus is not None:
            prometheus.stop()
        stack.down()


def run_traffic(live: Live) -> None:
    """Two waves of jobs around a DLQ replay and drop. A counter's first sample is its
    baseline, so the second wave waits until Prometheus has scraped the first one's counters:
    only then do rates rise above zero."""
    submit_wave(live, 1)
    key = f"dup-{uuid.uuid4()}"
    submit(live, "demo.echo", {"same": True}, key=key)
    submit(live, "demo.echo", {"same": True}, key=key)  # the same job again: a duplicate
    submit(live, "no.such.task", {})  # rejected, counted as task "unknown"
    wait_finished(live)
    replay_and_drop(live)
    live.client.wait_for(
        lambda c: c.query('relayq_job_runs_total{outcome="dead_lettered"}'),
        timeout=20,
        what="the first wave scraped",
    )
    time.sleep(1.5)  # one more scrape: the DLQ actions just taken
    submit_wave(live, 2)
    wait_finished(live)


# --- the checks ------------------------------------------------------------------------------

QUERIES = dashboard.queries(dashboard.load())


@pytest.mark.parametrize(
    "query",
    [
        pytest.param(q, id=q.id, marks=needs(raw_metrics(dashboard.substitute(q.expr))))
        for q in QUERIES
    ],
)
def test_panel_returns_data(
    live: Live, query: dashboard.PanelQuery, request: pytest.FixtureRequest
) -> None:
    expr = dashboard.substitute(query.expr)
    try:
        live.client.wait_for(lambda c: c.query(expr), timeout=patience(request), what=query.id)
    except TimeoutError as exc:
        pytest.fail(f"{query.id}: no data for {expr}\n{exc}\nnotes: {live.notes}")


@pytest.mark.parametrize(
    ("expr", "what"),
    [
        ("relayq:jobs_succeeded:rate5m > 0", "throughput above zero"),
        ("relayq:job_error:ratio_rate5m > 0", "an error rate above zero"),
        ("relayq:job_retries:rate5m > 0", "a retry rate above zero"),
        ("relayq:job_duration_seconds:p95_rate5m > 0", "a P95 job duration"),
    ],
    ids=["throughput", "error-rate", "retry-rate", "p95"],
)
def test_fleet_aggregates(live: Live, expr: str, what: str) -> None:
    live.client.wait_for(lambda c: c.query(expr), timeout=20, what=what)


@pytest.mark.parametrize(
    "depth",
    [pytest.param("sum(relayq_dlq_depth)", marks=needs({"relayq_dlq_depth"}))],
)
def test_dlq_depth_equals_active_entries(
    live: Live, depth: str, request: pytest.FixtureRequest
) -> None:
    active = dlq_active(live)
    assert active > 0, "the test dead-lettered jobs: dlq-svc must hold some"

    def equal(client: PrometheusClient) -> bool:
        return client.value(depth) == float(active)

    live.client.wait_for(equal, timeout=patience(request), what=f"DLQ depth == {active}")


# Each scrape job, and a metric its service defines once it serves /metrics.
SERVED = {
    "relayq-ingest": "relayq_jobs_submitted_total",
    "relayq-worker": "relayq_job_runs_total",
    "relayq-dlq": "relayq_dlq_reports_total",
    "relayq-metrics-gateway": "relayq_queue_depth",
}


@pytest.mark.parametrize(
    "job", [pytest.param(job, marks=needs({metric})) for job, metric in SERVED.items()]
)
def test_every_target_is_up(live: Live, job: str) -> None:
    targets = [t for t in live.client.targets() if t["labels"]["job"] == job]
    assert targets, f"no {job} target"
    down = [(t["scrapeUrl"], t.get("lastError")) for t in targets if t["health"] != "up"]
    assert down == []


def test_duration_exemplars_lead_to_traces(live: Live) -> None:
    """Scraped as OpenMetrics and kept (exemplar storage): a latency point has a trace id."""

    def traced(client: PrometheusClient) -> list[str]:
        found = client.exemplars("relayq_job_duration_seconds_bucket")
        return [e["labels"]["trace_id"] for s in found for e in s["exemplars"]]

    trace_ids = live.client.wait_for(traced, timeout=20, what="exemplars")
    assert all(re.fullmatch(r"[0-9a-f]{32}", t) for t in trace_ids), trace_ids[:3]


def test_metric_labels_never_carry_a_job_id(live: Live) -> None:
    series = live.client.query('{__name__=~"relayq_.+"}')
    assert series
    leaked = [s["metric"] for s in series if set(s["metric"]) & {"job_id", "idempotency_key"}]
    assert leaked == []
    values = {v for s in series for v in s["metric"].values()}
    assert not values & set(live.job_ids), "a job id was used as a label value"
