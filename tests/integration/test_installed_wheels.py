"""The compose image's install without Docker: every service starts from non-editable wheels.

deploy/Dockerfile installs the workspace packages non-editable (``uv sync --no-editable``): the
image holds site-packages, not a checkout, so a file found through the source layout
(``Path(__file__).parents[n]``, "the repository root") is missing there and nowhere else.

This module builds the wheels of every workspace member, installs them with the locked versions
into a fresh virtualenv outside the repository (leaving out what the Dockerfile leaves out), and
runs, from a folder outside the checkout, every compose service that uses the relayq image with
the command and environment compose gives it. Only the addresses change: Postgres and Redis are
this session's servers (a fresh database, a Redis database of its own), ports are free ones, and
``0.0.0.0`` binds become loopback. Each service must pass its health check (the same probes the
local stack uses) and then compose's own healthcheck command, run with the venv's tools. The
one-shot ``migrate`` must exit 0 and leave every owner's migrations applied.

The CLI scripts (console scripts that no compose service runs) must print their ``--help``.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from relayq_core.retry import load_policies
from relayq_core.settings import packaged_default
from relayq_devstack.health import celery_workers_ready, grpc_healthy, http_ok
from relayq_devstack.ports import free_port
from relayq_devstack.postgres import PostgresServer
from relayq_devstack.process import ProcessFailed, ServiceProcess, stop_all
from relayq_devstack.redis import RedisServer
from tests.integration.test_compose import (
    COMPOSE_FILE,
    DOCKERFILE,
    IMAGE,
    REPO,
    _compose_binary,
    _workspace_members,
    dockerfile_instructions,
    load_model,
)

pytestmark = pytest.mark.integration

UV = REPO / ".tools" / "bin" / "uv"
#: Health probes by compose service: each gets the service's local ports (compose's target port
#: -> the free port it got here) and the Redis URL. A relayq service compose adds must get one.
Probe = Callable[[Mapping[int, int], str], bool]
PROBES: dict[str, Probe] = {
    "ingest": lambda ports, _: (
        grpc_healthy(f"127.0.0.1:{ports[50051]}")
        and http_ok(f"http://127.0.0.1:{ports[8000]}/healthz")
    ),
    "dlq": lambda ports, _: (
        grpc_healthy(f"127.0.0.1:{ports[50052]}")
        and http_ok(f"http://127.0.0.1:{ports[9101]}/metrics")
    ),
    "worker": lambda ports, redis: (
        celery_workers_ready(redis, 1, name_prefix="celery@")
        and http_ok(f"http://127.0.0.1:{ports[9200]}/metrics")
    ),
    "metrics-gateway": lambda ports, _: http_ok(f"http://127.0.0.1:{ports[9100]}/healthz"),
    "reconciler": lambda ports, _: http_ok(f"http://127.0.0.1:{ports[9102]}/healthz"),
    "flower": lambda ports, _: http_ok(f"http://127.0.0.1:{ports[5555]}/healthcheck"),
}
#: Migration folders in the checkout, by owner: the installed packages must apply them all.
MIGRATIONS = {
    "ledger": REPO / "libs" / "core" / "src" / "relayq_core" / "db" / "migrations",
    "dlq": REPO / "dlq-svc" / "src" / "dlq_svc" / "migrations",
    "worker": REPO / "worker-svc" / "src" / "worker_svc" / "migrations",
}
START_TIMEOUT = 60.0


def _uv(*args: str, cwd: Path, timeout: float = 120) -> str:
    if not UV.is_file():
        pytest.fail(f"{UV} is missing: run `make setup` (it installs uv into .tools/)")
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV" and not k.startswith("UV_")}
    done = subprocess.run(
        [str(UV), *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"uv {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_skips() -> set[str]:
    """Packages the Dockerfile's ``uv sync`` leaves out (``--no-install-package NAME``)."""
    args = " ".join(
        a
        for kw, a in dockerfile_instructions(DOCKERFILE.read_text("utf-8"))
        if kw in {"ARG", "RUN"}
    )
    return {_norm(n) for n in re.findall(r"--no-install-package\s+([A-Za-z0-9_.-]+)", args)}


@dataclass(frozen=True)
class Wheel:
    """One built workspace wheel and what its metadata says."""

    path: Path
    name: str
    requires: frozenset[str]
    scripts: dict[str, str]


def read_wheel(path: Path) -> Wheel:
    """Name, dependencies (names only) and console scripts of ``path``."""
    with zipfile.ZipFile(path) as whl:
        info = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
        meta = whl.read(info).decode()
        entry = info.replace("METADATA", "entry_points.txt")
        points = whl.read(entry).decode() if entry in whl.namelist() else ""
    name = re.search(r"^Name: (.+)$", meta, re.M)
    assert name, f"{path}: no Name in METADATA"
    requires = {
        _norm(re.split(r"[\s\[<>=!~;(]", r, maxsplit=1)[0])
        for r in re.findall(r"^Requires-Dist: (.+)$", meta, re.M)
    }
    scripts: dict[str, str] = {}
    section = ""
    for line in points.splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line and section == "console_scripts":
            key, _, value = line.partition("=")
            scripts[key.strip()] = value.strip()
    return Wheel(path, _norm(name.group(1)), frozenset(requires), scripts)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> list[Wheel]:
    """The wheels of every workspace member, built from the checkout."""
    out = tmp_path_factory.mktemp("wheels")
    _uv("build", "--all-packages", "--wheel", "--quiet", "-o", str(out), cwd=REPO)
    built = [read_wheel(p) for p in sorted(out.glob("*.whl"))]
    members = set()
    for member in _workspace_members():
        with (REPO / member / "pyproject.toml").open("rb") as fh:
            members.add(_norm(tomllib.load(fh)["project"]["name"]))
    assert {w.name for w in built} == members, "a wheel per workspace member"
    return built


def make_venv(root: Path, wheels: list[Wheel], skip: set[str]) -> Path:
    """A virtualenv under ``root`` with the workspace ``wheels`` and the lock's third-party
    packages, except ``skip``, installed non-editable; returns its ``bin`` folder."""
    requirements = root / "requirements.txt"
    no_emit = [arg for name in sorted(skip) for arg in ("--no-emit-package", name)]
    _uv(
        "export",
        "--frozen",
        "--no-dev",
        "--no-emit-workspace",
        "--no-hashes",
        "--no-header",
        "--no-annotate",
        *no_emit,
        "-o",
        str(requirements),
        cwd=REPO,
    )
    venv = root / "venv"
    # Our interpreter's base, not a download: the test must run offline from the uv cache.
    _uv("venv", "--quiet", "--python", sys.executable, str(venv), cwd=root)
    ours = [str(w.path) for w in wheels if w.name not in skip]
    _uv(
        "pip",
        "install",
        "--quiet",
        "--python",
        str(venv / "bin" / "python"),
        "--no-deps",
        "-r",
        str(requirements),
        *ours,
        cwd=root,
    )
    return venv / "bin"


@pytest.fixture(scope="module")
def image_venv(wheels: list[Wheel], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the image installs: everything but the Dockerfile's ``--no-install-package``s."""
    skip = image_skips()
    assert "relayq-devstack" in skip, "the image leaves the Docker-less dev stack out"
    return make_venv(tmp_path_factory.mktemp("image"), wheels, skip)


def _run(argv: list[str], env: Mapping[str, str], cwd: Path, timeout: float = 60) -> str:
    done = subprocess.run(
        argv,
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, (
        f"{shlex.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    )
    return done.stdout


def base_env(bin_dir: Path, home: Path) -> dict[str, str]:
    """A container-like environment: the venv first on PATH (as the Dockerfile sets it)."""
    return {
        "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
        "VIRTUAL_ENV": str(bin_dir.parent),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
    }


def test_the_installed_packages_come_from_the_venv_not_the_checkout(
    image_venv: Path, wheels: list[Wheel], tmp_path: Path
) -> None:
    modules = ["relayq", "relayq_core", "ingest_svc", "worker_svc", "dlq_svc", "metrics_gateway"]
    code = "import importlib; print('\\n'.join(importlib.import_module(m).__path__[0] for m in %r))"
    out = _run(
        [str(image_venv / "python"), "-c", code % modules], base_env(image_venv, tmp_path), tmp_path
    )
    site = image_venv.parent / "lib"
    for module, location in zip(modules, out.split(), strict=True):
        assert Path(location).is_relative_to(site), f"{module} resolves to {location}"
    pth = [p for p in site.rglob("*.pth") if str(REPO) in p.read_text(errors="replace")]
    assert not pth, f"an editable install points into the checkout: {pth}"


# --- the compose services -------------------------------------------------------------------


@dataclass
class Service:
    """A compose service of the relayq image, rewritten to run here."""

    name: str
    argv: list[str]
    env: dict[str, str]
    healthcheck: list[str] | None
    ports: dict[int, int]
    one_shot: bool


def _service_ports(spec: Mapping[str, Any]) -> set[int]:
    env = spec.get("environment") or {}
    ports = {int(v) for k, v in env.items() if k.endswith("_PORT") and v}
    ports |= {int(p["target"]) for p in spec.get("ports") or []}
    return ports


def localize(model: Mapping[str, Any], database_url: str, redis_url: str) -> list[Service]:
    """The relayq-image services of ``model``, with hosts and ports pointed at this machine."""
    specs = {n: s for n, s in model["services"].items() if s.get("image") == IMAGE}
    ports = {n: {p: free_port() for p in sorted(_service_ports(s))} for n, s in specs.items()}
    # Compose names every other service by host; nothing listens on jaeger's stand-in (spans are
    # best-effort), the others are this session's servers.
    nowhere = free_port()

    def rewrite(service: str, text: str, shared: Mapping[str, str]) -> str:
        for value, local in shared.items():
            text = text.replace(value, local)
        for other, mapping in ports.items():
            for port, local_port in mapping.items():
                text = re.sub(rf"\b{re.escape(other)}:{port}\b", f"127.0.0.1:{local_port}", text)
        for port, local_port in ports[service].items():
            text = re.sub(rf"(?<=[=:]){port}\b", str(local_port), text)
        text = re.sub(r"\bjaeger:\d+\b", f"127.0.0.1:{nowhere}", text)
        return text.replace("$$", "$")

    services = []
    for name, spec in specs.items():
        env: dict[str, str] = {k: v or "" for k, v in (spec.get("environment") or {}).items()}
        # The URLs compose gives, whatever their spelling, become this session's servers.
        shared = {}
        if env.get("RELAYQ_DATABASE_URL"):
            shared[env["RELAYQ_DATABASE_URL"]] = database_url
        for redis_value in {env.get("RELAYQ_REDIS_URL", ""), "redis://redis:6379/0"} - {""}:
            shared[redis_value] = redis_url
        local_env = {}
        for key, value in env.items():
            if key.endswith("_HOST") and value == "0.0.0.0":
                value = "127.0.0.1"
            elif key.endswith("_PORT") and value:
                value = str(ports[name][int(value)])
            local_env[key] = rewrite(name, value, shared)
        test = (spec.get("healthcheck") or {}).get("test")
        services.append(
            Service(
                name=name,
                argv=[rewrite(name, a, shared) for a in spec["command"]],
                env=local_env,
                healthcheck=[rewrite(name, a, shared) for a in test] if test else None,
                ports=ports[name],
                one_shot=spec.get("restart") == "no",
            )
        )
    return services


def fresh_database(postgres: PostgresServer, name: str) -> str:
    """An empty database on the session's server (no fixture has migrated it)."""
    postgres.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', database="postgres")
    postgres.psql(f'CREATE DATABASE "{name}"', database="postgres")
    return postgres.url_for(name)


async def _applied(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT owner, count(*) AS n FROM relayq_schema_migrations GROUP BY owner"
        )
    finally:
        await conn.close()
    return {r["owner"]: r["n"] for r in rows}


def run_healthcheck(service: Service, env: Mapping[str, str], cwd: Path) -> None:
    """Compose's healthcheck command for ``service``, as Docker would run it in the container."""
    assert service.healthcheck, f"{service.name}: compose gives it no healthcheck"
    kind, *args = service.healthcheck
    argv = ["/bin/sh", "-c", args[0]] if kind == "CMD-SHELL" else args
    # Docker sets HOSTNAME, which Celery's default node name (celery@<hostname>) comes from.
    _run(argv, {**env, "HOSTNAME": socket.gethostname()}, cwd, timeout=30)


@dataclass(frozen=True)
class Installed:
    """The compose services, localized, and the servers they were pointed at."""

    services: list[Service]
    database_url: str
    redis_url: str


@pytest.fixture
def installed(
    image_venv: Path, postgres: PostgresServer, redis_server: RedisServer, tmp_path: Path
) -> Installed:
    """Compose's relayq services on a fresh database and a Redis database of their own."""
    database_url = fresh_database(postgres, "installed_wheels")
    redis_url = redis_server.url.rsplit("/", 1)[0] + "/14"
    model = load_model(_compose_binary(), COMPOSE_FILE, base_env(image_venv, tmp_path))
    return Installed(localize(model, database_url, redis_url), database_url, redis_url)


def run_flaky_job(ingest_http: str) -> dict[str, Any]:
    """Submits ``demo.flaky`` (fails once, then succeeds) over HTTP and waits for its end."""
    with httpx.Client(base_url=ingest_http, trust_env=False, timeout=5) as client:
        reply = client.post("/v1/jobs", json={"task": "demo.flaky", "payload": {"fail_times": 1}})
        assert reply.status_code == 201, reply.text
        job_id = reply.json()["job_id"]
        deadline = time.monotonic() + 30
        while True:
            job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
            if job["state"] in {"succeeded", "dead_lettered"} or time.monotonic() > deadline:
                return job
            time.sleep(0.1)


def test_every_compose_service_starts_from_the_installed_wheels(
    image_venv: Path, installed: Installed, tmp_path: Path
) -> None:
    services = {s.name: s for s in installed.services}
    one_shots = [s for s in installed.services if s.one_shot]
    running = [s for s in installed.services if not s.one_shot]
    assert {"migrate", "ingest", "worker", "dlq", "metrics-gateway", "reconciler"} <= set(services)
    assert {s.name for s in running} <= set(PROBES), "give every compose service a probe"
    cwd = tmp_path / "run"  # outside the checkout: nothing may resolve through it
    cwd.mkdir()
    env = base_env(image_venv, tmp_path)

    for one_shot in one_shots:
        _run(one_shot.argv, {**env, **one_shot.env}, cwd, timeout=60)

    procs: list[ServiceProcess] = []
    try:
        for service in running:
            procs.append(
                ServiceProcess(
                    service.name,
                    service.argv,
                    log_path=tmp_path / "logs" / f"{service.name}.log",
                    env={**env, **service.env},
                    cwd=cwd,
                    inherit_env=False,
                )
            )
        deadline = time.monotonic() + START_TIMEOUT
        failures = []
        for service, proc in zip(running, procs, strict=True):
            probe = functools.partial(PROBES[service.name], service.ports, installed.redis_url)
            try:
                proc.wait_healthy(probe, timeout=max(1.0, deadline - time.monotonic()))
            except ProcessFailed as exc:
                failures.append(str(exc))
        assert not failures, "\n\n".join(failures)

        # Compose's own healthchecks, as Docker runs them in the container.
        with ThreadPoolExecutor(len(running)) as pool:
            list(pool.map(lambda s: run_healthcheck(s, {**env, **s.env}, cwd), running))

        applied = asyncio.run(_applied(installed.database_url))
        assert applied == {
            owner: len(list(folder.glob("*.sql"))) for owner, folder in MIGRATIONS.items()
        }, "every owner's migrations, found in the installed packages"

        # A job through the installed stack, retried by the retry policy the worker package
        # ships (demo.flaky's base delay differs from the default's, so the countdown tells).
        policy = load_policies(packaged_default("retry.toml")).for_task("demo.flaky")
        assert (
            policy.base_delay_seconds
            != load_policies(packaged_default("retry.toml")).default.base_delay_seconds
        )
        job = run_flaky_job(f"http://127.0.0.1:{services['ingest'].ports[8000]}")
        assert job["state"] == "succeeded", job
        first = job["attempts"][0]
        assert len(job["attempts"]) == 2 and first["outcome"] == "failed", job
        low = policy.base_delay_seconds * (1 - policy.jitter)
        high = policy.base_delay_seconds * (1 + policy.jitter)
        assert low <= first["countdown_seconds"] <= high, job
        assert all(p.is_running() for p in procs)
    finally:
        # Not a test of graceful stops (their own tests do that): spans queued for the OTLP
        # stand-in, which nothing answers, would hold ingest and dlq-svc for their export timeout.
        stop_all(procs, timeout=3)


# --- the CLI scripts ------------------------------------------------------------------------


def compose_commands(model: Mapping[str, Any]) -> set[str]:
    """The programs compose runs in the relayq image."""
    return {s["command"][0] for s in model["services"].values() if s.get("image") == IMAGE}


def assert_helps(bin_dir: Path, scripts: set[str], home: Path) -> None:
    """Every script in ``scripts`` prints a usage and exits 0 on ``--help``."""

    def help_of(script: str) -> str:
        return _run([str(bin_dir / script), "--help"], base_env(bin_dir, home), home)

    with ThreadPoolExecutor(8) as pool:
        outputs = dict(zip(sorted(scripts), pool.map(help_of, sorted(scripts)), strict=True))
    for script, out in outputs.items():
        assert "usage" in out.lower(), f"{script} --help printed no usage:\n{out}"


def test_the_image_cli_scripts_print_their_help(
    image_venv: Path, wheels: list[Wheel], tmp_path: Path
) -> None:
    """The CLIs of every package the image installs with all its dependencies (dlq-tool and
    relayq-ledger, which the runbook runs in the containers)."""
    model = load_model(_compose_binary(), COMPOSE_FILE, base_env(image_venv, tmp_path))
    skip = image_skips()
    whole = [w for w in wheels if w.name not in skip and not (w.requires & skip)]
    scripts = {s for w in whole for s in w.scripts} - compose_commands(model)
    assert {"dlq-tool", "relayq-ledger"} <= scripts
    assert_helps(image_venv, scripts, tmp_path)


def test_every_cli_script_prints_its_help_with_every_package_installed(
    wheels: list[Wheel], tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """All the CLIs (relayq-stack and the load tools too), from a venv of every package."""
    bin_dir = make_venv(tmp_path_factory.mktemp("full"), wheels, skip=set())
    model = load_model(_compose_binary(), COMPOSE_FILE, base_env(bin_dir, tmp_path))
    scripts = {s for w in wheels for s in w.scripts} - compose_commands(model)
    assert {"dlq-tool", "relayq-ledger", "relayq-stack", "relayq-bench"} <= scripts
    assert_helps(bin_dir, scripts, tmp_path)
