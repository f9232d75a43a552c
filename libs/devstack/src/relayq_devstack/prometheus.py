"""A real Prometheus for the local stack and for tests: generated config, own data directory.

The binary is Debian's ``prometheus`` package (``/usr/bin/prometheus``); nothing here downloads
it. :func:`start_prometheus` runs one on a free port with the committed rule files
(``observability/prometheus/rules/``), :func:`prometheus_service` describes the one
``relayq-stack up`` runs, and :class:`PrometheusClient` reads the HTTP API (instant queries,
alerts, targets) the way a test or a script needs it.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from relayq_devstack.config import find_repo_root
from relayq_devstack.health import HttpOk
from relayq_devstack.ports import free_port
from relayq_devstack.process import ProcessFailed, ServiceProcess
from relayq_devstack.services import HOST, ServiceContext, ServiceSpec
from relayq_devstack.tools import missing_message

__all__ = [
    "PrometheusClient",
    "PrometheusError",
    "PrometheusServer",
    "ScrapeJob",
    "find_binary",
    "prometheus_argv",
    "prometheus_service",
    "render_config",
    "rule_files",
    "scrape_jobs",
    "start_prometheus",
]

# The scrape job of each service group: the names the alert rules and the dashboard use.
JOB_BY_GROUP: dict[str, str] = {
    "ingest": "relayq-ingest",
    "worker": "relayq-worker",
    "dlq": "relayq-dlq",
    "metrics-gateway": "relayq-metrics-gateway",
    "reconciler": "relayq-reconciler",
}
# The local stack scrapes and evaluates every 5 s: a demo shows on the dashboard at once, and a
# rate over the rules' 5m windows has plenty of samples.
STACK_INTERVAL = 5.0
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
T = TypeVar("T")


class PrometheusError(RuntimeError):
    """The Prometheus HTTP API answered with an error (``error_type`` is its ``errorType``,
    e.g. ``bad_data`` for a PromQL parse error)."""

    def __init__(self, message: str, error_type: str = "", status: int = 0) -> None:
        self.error_type = error_type
        self.status = status
        super().__init__(message)


def find_binary(name: str = "prometheus") -> Path | None:
    """``name`` on PATH, else Debian's ``/usr/bin/<name>``; None when not installed."""
    found = shutil.which(name)
    if found:
        return Path(found)
    fallback = Path("/usr/bin") / name
    return fallback if fallback.is_file() else None


def rule_files(repo: Path | None = None) -> list[Path]:
    """The committed rule files (``observability/prometheus/rules/*.yml``) of ``repo`` (default:
    the checkout this package runs from); empty outside a checkout."""
    root = repo or find_repo_root(Path(__file__).resolve().parent)
    if root is None:
        return []
    return sorted((root / "observability" / "prometheus" / "rules").glob("*.yml"))


def _duration(seconds: float) -> str:
    # Prometheus durations are integers with a unit; milliseconds keep any fraction exact.
    return f"{max(1, round(seconds * 1000))}ms"


@dataclass(frozen=True)
class ScrapeJob:
    """One ``scrape_configs`` entry with static targets (``host:port``)."""

    name: str
    targets: tuple[str, ...]
    metrics_path: str = "/metrics"


def render_config(
    jobs: Iterable[ScrapeJob],
    *,
    rules: Sequence[Path] = (),
    interval: float = 1.0,
    external_labels: Mapping[str, str] | None = None,
    alertmanagers: Sequence[str] = (),
) -> str:
    """A ``prometheus.yml`` (written as JSON, which is YAML) scraping ``jobs`` and evaluating
    ``rules`` every ``interval`` seconds, sending alerts to ``alertmanagers`` (``host:port``)."""
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": _duration(interval),
            "scrape_timeout": _duration(min(interval, 10.0)),
            "evaluation_interval": _duration(interval),
            "external_labels": dict(external_labels or {"stack": "relayq-local"}),
        },
        "rule_files": [str(path) for path in rules],
        "scrape_configs": [
            {
                "job_name": job.name,
                "metrics_path": job.metrics_path,
                "static_configs": [{"targets": list(job.targets)}],
            }
            for job in jobs
        ],
    }
    if alertmanagers:
        config["alerting"] = {
            "alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]
        }
    return json.dumps(config, indent=2) + "\n"


def prometheus_argv(
    binary: Path, config: Path, data_dir: Path, port: int, *, retention: str = "2d"
) -> list[str]:
    """The command line of a Prometheus listening on loopback only."""
    return [
        str(binary),
        f"--config.file={config}",
        f"--storage.tsdb.path={data_dir}",
        f"--storage.tsdb.retention.time={retention}",
        f"--web.listen-address={HOST}:{port}",
        # POST /-/reload picks up changed rule files without a restart.
        "--web.enable-lifecycle",
        # The duration histogram's exemplars carry trace ids: keep them queryable.
        "--enable-feature=exemplar-storage",
        "--log.level=warn",
    ]


def scrape_jobs(specs: Iterable[ServiceSpec]) -> list[ScrapeJob]:
    """A scrape job per service group whose specs expose metrics (``ServiceSpec.metrics``)."""
    targets: dict[str, list[str]] = {}
    for spec in specs:
        if spec.metrics and spec.group in JOB_BY_GROUP:
            targets.setdefault(JOB_BY_GROUP[spec.group], []).append(spec.metrics)
    return [ScrapeJob(name, tuple(found)) for name, found in targets.items()]


def prometheus_service(
    ctx: ServiceContext,
    specs: Sequence[ServiceSpec],
    root: Path,
    *,
    rules: Sequence[Path] | None = None,
    interval: float = STACK_INTERVAL,
    alertmanagers: Sequence[str] = (),
) -> ServiceSpec | None:
    """The stack's Prometheus (config and data under ``root``), scraping ``specs`` and
    evaluating ``rules`` (default: the committed files in place) every ``interval`` seconds,
    alerting to ``alertmanagers``; None when the binary is not installed."""
    binary = find_binary()
    if binary is None:
        return None
    port = ctx.ports["prometheus"]
    config = root / "prometheus.yml"
    url = f"http://{HOST}:{port}"
    text = render_config(
        [
            ScrapeJob("prometheus", (f"{HOST}:{port}",)),
            # Its own metrics tell whether notifications fail (AlertmanagerNotificationsFailing).
            *([ScrapeJob("alertmanager", tuple(alertmanagers))] if alertmanagers else []),
            *scrape_jobs(specs),
        ],
        rules=rule_files() if rules is None else rules,
        interval=interval,
        alertmanagers=alertmanagers,
    )
    return ServiceSpec(
        name="prometheus",
        group="prometheus",
        argv=tuple(prometheus_argv(binary, config, root / "data", port)),
        health=HttpOk(f"{url}/-/ready"),
        endpoint=url,
        port=port,
        files={config: text},
    )


class PrometheusClient:
    """The parts of the HTTP API tests and scripts use; every call answers within ``timeout``."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with _NO_PROXY.open(f"{self.url}{path}{query}", timeout=self.timeout) as resp:
                body: dict[str, Any] = json.load(resp)
        except urllib.error.HTTPError as exc:
            # 400 (bad_data: a PromQL parse error) and 422 (execution) carry a JSON error.
            try:
                body = json.load(exc)
            except ValueError:
                raise PrometheusError(f"HTTP {exc.code} from {path}", status=exc.code) from None
            raise PrometheusError(
                str(body.get("error", exc.reason)), str(body.get("errorType", "")), exc.code
            ) from None
        if body.get("status") != "success":
            raise PrometheusError(str(body.get("error")), str(body.get("errorType", "")))
        return body["data"]

    def ready(self) -> bool:
        """True once Prometheus answers ``/-/ready`` (it has loaded its config and TSDB)."""
        try:
            with _NO_PROXY.open(f"{self.url}/-/ready", timeout=self.timeout) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query's result: a vector's samples (``metric``, ``value``), or one
        pseudo-sample for a scalar or string. Raises :class:`PrometheusError` on a bad query."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self._get("/api/v1/query", params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The single value of ``expr`` (a one-sample vector or a scalar); None if empty."""
        result = self.query(expr)
        if not result:
            return None
        if len(result) > 1:
            raise PrometheusError(f"{expr!r} returned {len(result)} samples, expected one")
        return float(result[0]["value"][1])

    def exemplars(self, expr: str, seconds: float = 300.0) -> list[dict[str, Any]]:
        """Exemplars of the series ``expr`` selects over the last ``seconds`` (each item has
        ``seriesLabels`` and ``exemplars``: ``labels`` such as ``trace_id``, ``value``)."""
        now = time.time()
        params = {"query": expr, "start": f"{now - seconds:.3f}", "end": f"{now:.3f}"}
        found: list[dict[str, Any]] = self._get("/api/v1/query_exemplars", params)
        return found

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending and firing), as ``/api/v1/alerts`` lists them."""
        alerts: list[dict[str, Any]] = self._get("/api/v1/alerts")["alerts"]
        return alerts

    def firing(self, name: str | None = None) -> list[dict[str, Any]]:
        """Firing alerts, optionally only those named ``name``."""
        return [
            a
            for a in self.alerts()
            if a["state"] == "firing" and (name is None or a["labels"]["alertname"] == name)
        ]

    def rule_groups(self) -> list[dict[str, Any]]:
        """Loaded rule groups with each rule's health and last error."""
        groups: list[dict[str, Any]] = self._get("/api/v1/rules")["groups"]
        return groups

    def targets(self) -> list[dict[str, Any]]:
        """Active scrape targets with ``health`` (up/down/unknown) and ``labels``."""
        targets: list[dict[str, Any]] = self._get("/api/v1/targets")["activeTargets"]
        return targets

    def loaded_config(self) -> str:
        """The configuration Prometheus runs with, as it prints it (YAML)."""
        return str(self._get("/api/v1/status/config")["yaml"])

    def reload(self) -> None:
        """Re-reads the config and rule files (``--web.enable-lifecycle``)."""
        request = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        with _NO_PROXY.open(request, timeout=self.timeout) as resp:
            if resp.status != 200:
                raise PrometheusError(f"reload answered HTTP {resp.status}", status=resp.status)

    def wait_for(
        self,
        probe: Callable[[PrometheusClient], T | None],
        *,
        timeout: float = 30.0,
        interval: float = 0.25,
        what: str = "condition",
    ) -> T:
        """Polls ``probe(self)`` until it returns something truthy, and returns that; raises
        :class:`TimeoutError` (with the last value or error) after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        last: object = None
        while True:
            try:
                got = probe(self)
                if got:
                    return got
                last = got
            except PrometheusError as exc:
                last = exc
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{what}: not met after {timeout:.0f}s (last: {last!r})")
            time.sleep(interval)


@dataclass
class PrometheusServer:
    """A Prometheus started by :func:`start_prometheus`; :meth:`stop` ends it."""

    process: ServiceProcess
    port: int
    config_path: Path
    data_dir: Path
    rules: list[Path] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Its base URL, e.g. ``http://127.0.0.1:15123``."""
        return f"http://{HOST}:{self.port}"

    @property
    def client(self) -> PrometheusClient:
        """An HTTP API client for it."""
        return PrometheusClient(self.url)

    def write_config(self, jobs: Iterable[ScrapeJob], interval: float = 1.0) -> None:
        """Replaces the scrape jobs (same rules) and reloads. Prometheus hands new targets to
        its scrapers at most every 5 s, so the first scrape of a new target takes that long."""
        self.config_path.write_text(
            render_config(jobs, rules=self.rules, interval=interval), encoding="utf-8"
        )
        self.client.reload()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Prometheus flushes and exits), SIGKILL after ``timeout``."""
        self.process.stop(timeout)


def start_prometheus(
    workdir: Path,
    jobs: Iterable[ScrapeJob] = (),
    *,
    rules: Sequence[Path] | None = None,
    interval: float = 1.0,
    port: int | None = None,
    binary: Path | None = None,
    timeout: float = 30.0,
    alertmanagers: Sequence[str] = (),
) -> PrometheusServer:
    """Starts Prometheus with its config, data and log under ``workdir`` and waits until it is
    ready. ``rules`` defaults to the committed rule files; ``interval`` is both the scrape and
    the evaluation interval; alerts go to ``alertmanagers`` (``host:port``). Raises
    :class:`FileNotFoundError` when the binary is missing, and :class:`ProcessFailed` (with its
    log) when it does not come up.
    """
    found = binary or find_binary()
    if found is None:
        raise FileNotFoundError(missing_message("prometheus"))
    rule_list = list(rule_files() if rules is None else rules)
    jobs = list(jobs)
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(
        render_config(jobs, rules=rule_list, interval=interval, alertmanagers=alertmanagers),
        encoding="utf-8",
    )
    attempts = 1 if port is not None else 3
    for attempt in range(attempts):
        chosen = port if port is not None else free_port()
        data_dir = workdir / "data"
        proc = ServiceProcess(
            "prometheus",
            prometheus_argv(found, config, data_dir, chosen),
            log_path=workdir / "prometheus.log",
        )
        client = PrometheusClient(f"http://{HOST}:{chosen}", timeout=1.0)
        try:
            proc.wait_healthy(client.ready, timeout=timeout)
        except ProcessFailed as exc:
            proc.stop(timeout=5)
            # Another process took the free port before Prometheus bound it: try a new one.
            if "address already in use" in exc.log_tail and attempt + 1 < attempts:
                continue
            raise
        return PrometheusServer(proc, chosen, config, data_dir, rule_list)
    raise AssertionError("unreachable")  # pragma: no cover
