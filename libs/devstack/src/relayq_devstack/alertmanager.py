"""A real Alertmanager and its alert sink, for the local stack and for tests.

The binary is Debian's ``prometheus-alertmanager`` (``make setup`` installs it). Its routing
tree is the committed ``observability/alertmanager/alertmanager.yml`` (the one compose mounts),
rendered into the state directory by :func:`render_alertmanager_config`: the receivers' webhook
URL (compose's ``alert-sink`` service) becomes the local sink's, and for incident rehearsals the
group timers are divided by the rules' time scale. :func:`alertmanager_service` and
:func:`alert_sink_service` describe what ``relayq-stack up`` runs; :func:`start_alertmanager`
and :func:`start_alert_sink` start them on free ports for tests.
"""

from __future__ import annotations

import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relayq_devstack import alert_sink
from relayq_devstack.config import find_repo_root
from relayq_devstack.health import HttpOk
from relayq_devstack.ports import free_port
from relayq_devstack.process import ServiceProcess
from relayq_devstack.rules import scale_duration
from relayq_devstack.services import HOST, ServiceContext, ServiceSpec
from relayq_devstack.tools import find_tool, missing_message

__all__ = [
    "COMPOSE_SINK_URL",
    "AlertmanagerClient",
    "ManagedServer",
    "alert_sink_argv",
    "alert_sink_service",
    "alertmanager_argv",
    "alertmanager_service",
    "committed_config",
    "render_alertmanager_config",
    "start_alert_sink",
    "start_alertmanager",
]

# The webhook URL the committed file's receivers post to: compose's alert-sink service.
COMPOSE_SINK_URL = "http://alert-sink:9095/webhook"
_TIMER = re.compile(
    r"^(\s*(?:group_wait|group_interval|repeat_interval):\s*)((?:\d+(?:ms|[smhdwy]))+)(\s*(?:#.*)?)$"
)
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def committed_config(repo: Path | None = None) -> Path:
    """``observability/alertmanager/alertmanager.yml`` of ``repo`` (default: this checkout)."""
    root = repo or find_repo_root(Path(__file__).resolve().parent)
    if root is None:
        raise FileNotFoundError("not in a relayq checkout: no observability/alertmanager/")
    return root / "observability" / "alertmanager" / "alertmanager.yml"


def render_alertmanager_config(text: str, *, sink_url: str, time_scale: float = 1.0) -> str:
    """The committed config's ``text`` with every receiver posting to ``sink_url`` (the sink's
    ``/webhook``) and, with ``time_scale`` > 1, ``group_wait``, ``group_interval`` and
    ``repeat_interval`` divided by it (never below 1 s): a rehearsal is notified in seconds."""
    if COMPOSE_SINK_URL not in text:
        raise ValueError(f"the Alertmanager config names no {COMPOSE_SINK_URL} to replace")
    text = text.replace(COMPOSE_SINK_URL, sink_url)
    if time_scale == 1:
        return text
    lines: list[str] = []
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\n")
        match = _TIMER.match(body)
        if match:
            head, duration, tail = match.groups()
            body = f"{head}{scale_duration(duration, time_scale)}{tail}"
            line = body + line[len(line.rstrip("\n")) :]
        lines.append(line)
    return "".join(lines)


def alertmanager_argv(binary: Path, config: Path, data_dir: Path, port: int) -> list[str]:
    """A single Alertmanager on loopback: no gossip cluster (``--cluster.listen-address=``)."""
    url = f"http://{HOST}:{port}"
    return [
        str(binary),
        f"--config.file={config}",
        f"--storage.path={data_dir}",
        f"--web.listen-address={HOST}:{port}",
        f"--web.external-url={url}",
        "--cluster.listen-address=",
        "--log.level=warn",
    ]


def alert_sink_argv(python_or_script: str, port: int, store: Path) -> list[str]:
    """The sink's command line: a console script, or a Python interpreter running the module's
    file as a script (as compose does: standard library only, no package import)."""
    head = [python_or_script]
    if Path(python_or_script).name.startswith("python"):
        head.append(alert_sink.__file__)
    return [*head, "--host", HOST, "--port", str(port), "--file", str(store)]


def alert_sink_service(ctx: ServiceContext, root: Path) -> ServiceSpec:
    """The stack's alert sink; notifications go to ``root/alerts.jsonl``."""
    port = ctx.ports["alert_sink"]
    url = f"http://{HOST}:{port}"
    return ServiceSpec(
        name="alert-sink",
        group="alert-sink",
        argv=tuple(alert_sink_argv(ctx.script("relayq-alert-sink"), port, root / "alerts.jsonl")),
        health=HttpOk(f"{url}/-/healthy"),
        endpoint=url,
        port=port,
        env={"PYTHONUNBUFFERED": "1"},
    )


def alertmanager_service(
    ctx: ServiceContext, root: Path, *, time_scale: float = 1.0, repo: Path | None = None
) -> ServiceSpec | None:
    """The stack's Alertmanager (rendered config and data under ``root``), posting to the
    stack's alert sink; None when the binary is not installed."""
    binary = find_tool("alertmanager")
    if binary is None:
        return None
    port = ctx.ports["alertmanager"]
    config = root / "alertmanager.yml"
    url = f"http://{HOST}:{port}"
    text = render_alertmanager_config(
        committed_config(repo).read_text(encoding="utf-8"),
        sink_url=f"http://{HOST}:{ctx.ports['alert_sink']}/webhook",
        time_scale=time_scale,
    )
    return ServiceSpec(
        name="alertmanager",
        group="alertmanager",
        argv=tuple(alertmanager_argv(binary, config, root / "data", port)),
        health=HttpOk(f"{url}/-/ready"),
        endpoint=url,
        port=port,
        files={config: text},
    )


class AlertmanagerClient:
    """The parts of Alertmanager's v2 API that tests and scripts read."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def alerts(self, **filters: bool) -> list[dict[str, Any]]:
        """``GET /api/v2/alerts`` (``inhibited=True``, ``active=False``... as query flags);
        each alert has ``labels``, ``status.state`` and ``status.inhibitedBy``."""
        query = urllib.parse.urlencode({k: str(v).lower() for k, v in filters.items()})
        with _NO_PROXY.open(f"{self.url}/api/v2/alerts?{query}", timeout=self.timeout) as resp:
            found: list[dict[str, Any]] = json.load(resp)
        return found

    def ready(self) -> bool:
        """True once it answers ``/-/ready``."""
        try:
            with _NO_PROXY.open(f"{self.url}/-/ready", timeout=self.timeout) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False


@dataclass
class ManagedServer:
    """A server process started by :func:`start_alertmanager` or :func:`start_alert_sink`."""

    process: ServiceProcess
    port: int

    @property
    def url(self) -> str:
        """Its base URL."""
        return f"http://{HOST}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, SIGKILL after ``timeout``."""
        self.process.stop(timeout)


def start_alert_sink(
    workdir: Path, *, port: int | None = None, timeout: float = 20.0
) -> ManagedServer:
    """The sink as its own process (this interpreter), storing into ``workdir/alerts.jsonl``;
    returns once it answers."""
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    proc = ServiceProcess(
        "alert-sink",
        alert_sink_argv(sys.executable, port, workdir / "alerts.jsonl"),
        log_path=workdir / "alert-sink.log",
        env={"PYTHONUNBUFFERED": "1"},
    )
    try:
        proc.wait_healthy(HttpOk(f"http://{HOST}:{port}/-/healthy"), timeout)
    except BaseException:
        proc.stop(2)
        raise
    return ManagedServer(proc, port)


def start_alertmanager(
    workdir: Path,
    *,
    sink_url: str,
    time_scale: float = 1.0,
    config_text: str | None = None,
    port: int | None = None,
    binary: Path | None = None,
    timeout: float = 30.0,
) -> ManagedServer:
    """Alertmanager with the committed routing tree (or ``config_text``) rendered to post to
    ``sink_url``; config, data and log under ``workdir``. Raises :class:`FileNotFoundError`
    (with the install command) when the binary is missing."""
    found = binary or find_tool("alertmanager")
    if found is None:
        raise FileNotFoundError(missing_message("alertmanager"))
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "alertmanager.yml"
    text = config_text or committed_config().read_text(encoding="utf-8")
    config.write_text(
        render_alertmanager_config(text, sink_url=sink_url, time_scale=time_scale),
        encoding="utf-8",
    )
    proc = ServiceProcess(
        "alertmanager",
        alertmanager_argv(found, config, workdir / "data", port),
        log_path=workdir / "alertmanager.log",
    )
    try:
        proc.wait_healthy(HttpOk(f"http://{HOST}:{port}/-/ready"), timeout)
    except BaseException:
        proc.stop(2)
        raise
    return ManagedServer(proc, port)
