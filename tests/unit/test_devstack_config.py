"""Stack configuration, the service list as data, and stack.json's round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from relayq_devstack.config import DEFAULT_PORTS, StackConfig, find_repo_root
from relayq_devstack.health import (
    AllOf,
    CeleryWorkers,
    GrpcHealth,
    HttpOk,
    check_from_json,
    check_to_json,
)
from relayq_devstack.services import ServiceContext, relayq_services, stack_env
from relayq_devstack.state import Component, StackState, StatePaths


def test_repo_root_is_the_uv_workspace(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.uv.workspace]\nmembers = ['a']\n")
    member = tmp_path / "a" / "src"
    member.mkdir(parents=True)
    (tmp_path / "a" / "pyproject.toml").write_text("[project]\nname = 'a'\n")
    assert find_repo_root(member) == tmp_path
    assert find_repo_root(Path("/")) is None


def test_config_reads_env_and_flags_win(tmp_path: Path) -> None:
    env = {
        "RELAYQ_STATE_DIR": str(tmp_path / "state"),
        "RELAYQ_STACK_WORKERS": "4",
        "RELAYQ_STACK_WORKER_CONCURRENCY": "8",
        "RELAYQ_REDIS_URL": "redis://elsewhere:6379/0",
    }
    config = StackConfig.from_env(env, cwd=tmp_path, workers=3, ports={"flower": 5556})
    assert config.state_dir == (tmp_path / "state").resolve()
    assert (config.workers, config.concurrency) == (3, 8)
    assert config.redis_url == "redis://elsewhere:6379/0"
    assert config.database_url is None
    assert config.ports == {**DEFAULT_PORTS, "flower": 5556}
    assert config.explicit_ports == {"flower"}


def test_config_defaults_to_dot_relayq_at_the_repo_root(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.uv.workspace]\nmembers = []\n")
    (tmp_path / "sub").mkdir()
    config = StackConfig.from_env({}, cwd=tmp_path / "sub")
    assert config.state_dir == tmp_path.resolve() / ".relayq"
    assert (config.workers, config.concurrency, config.timeout) == (2, 2, 90.0)


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        StackConfig.from_env({"RELAYQ_STACK_WORKERS": "many"}, cwd=Path("/"))
    with pytest.raises(ValueError):
        StackConfig.from_env({}, cwd=Path("/"), workers=0)
    with pytest.raises(ValueError):
        StackConfig.from_env({}, cwd=Path("/"), ports={"nope": 1})


def _ctx(workers: int = 2) -> ServiceContext:
    return ServiceContext(
        bin_dir=Path("/venv/bin"),
        redis_url="redis://127.0.0.1:1000/0",
        database_url="postgresql://postgres@127.0.0.1:1001/relayq",
        ports=dict(DEFAULT_PORTS),
        workers=workers,
        concurrency=3,
    )


def test_services_are_wired_by_env() -> None:
    specs = {s.name: s for s in relayq_services(_ctx(workers=3))}
    assert list(specs) == [
        "ingest",
        "dlq",
        "worker1",
        "worker2",
        "worker3",
        "metrics-gateway",
        "reconciler",
        "flower",
    ]
    ingest = specs["ingest"]
    assert ingest.argv == ("/venv/bin/relayq-ingest",)
    assert ingest.env["RELAYQ_INGEST_GRPC_PORT"] == "50051"
    assert ingest.env["RELAYQ_INGEST_HTTP_PORT"] == "8000"
    assert ingest.env["RELAYQ_INGEST_HOST"] == "127.0.0.1"
    assert ingest.health == AllOf(
        (GrpcHealth("127.0.0.1:50051"), HttpOk("http://127.0.0.1:8000/healthz"))
    )
    assert specs["dlq"].env["RELAYQ_DLQ_GRPC_PORT"] == "50052"
    nodes = {specs[f"worker{i}"].env["RELAYQ_WORKER_NODE_NAME"] for i in (1, 2, 3)}
    assert nodes == {"worker1@%h", "worker2@%h", "worker3@%h"}
    assert specs["worker2"].env["RELAYQ_WORKER_CONCURRENCY"] == "3"
    assert specs["worker2"].health == CeleryWorkers("redis://127.0.0.1:1000/0", 1, "worker2@")
    assert specs["metrics-gateway"].env["RELAYQ_METRICS_PORT"] == "9100"
    assert specs["metrics-gateway"].env["RELAYQ_EXPECTED_WORKERS"] == "3"  # the stack's nodes
    assert specs["reconciler"].argv == ("/venv/bin/relayq-reconciler",)
    assert specs["reconciler"].env["RELAYQ_RECONCILER_PORT"] == "9102"
    assert specs["reconciler"].health == HttpOk("http://127.0.0.1:9102/healthz")
    assert "--broker=redis://127.0.0.1:1000/0" in specs["flower"].argv
    assert specs["flower"].health == HttpOk("http://127.0.0.1:5555/healthcheck")
    for spec in specs.values():
        if spec.group != "flower":
            assert spec.env["RELAYQ_DATABASE_URL"] == "postgresql://postgres@127.0.0.1:1001/relayq"
            assert spec.env["RELAYQ_REDIS_URL"] == "redis://127.0.0.1:1000/0"
            assert spec.env["RELAYQ_LOG_JSON"] == "true"


def test_stack_env_has_exactly_the_documented_names() -> None:
    groups = {"ingest", "dlq", "worker", "metrics-gateway", "reconciler", "flower"}
    assert stack_env(_ctx(), groups) == {
        "RELAYQ_INGEST_GRPC": "127.0.0.1:50051",
        "RELAYQ_INGEST_HTTP": "http://127.0.0.1:8000",
        "RELAYQ_DLQ_GRPC": "127.0.0.1:50052",
        "RELAYQ_REDIS_URL": "redis://127.0.0.1:1000/0",
        "RELAYQ_DATABASE_URL": "postgresql://postgres@127.0.0.1:1001/relayq",
        "RELAYQ_FLOWER_URL": "http://127.0.0.1:5555",
        "RELAYQ_METRICS_URL": "http://127.0.0.1:9100",
        "RELAYQ_RECONCILER_URL": "http://127.0.0.1:9102",
    }
    assert "RELAYQ_FLOWER_URL" not in stack_env(_ctx(), groups - {"flower"})
    assert "RELAYQ_RECONCILER_URL" not in stack_env(_ctx(), groups - {"reconciler"})


def test_health_checks_survive_json() -> None:
    checks = [spec.health for spec in relayq_services(_ctx())]
    assert [check_from_json(check_to_json(c)) for c in checks] == checks


def test_state_round_trip(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path)
    state = StackState(
        phase="up",
        components=[
            Component("redis", "redis", "redis://127.0.0.1:1/0", pid=10, create_time=1.5, port=1),
            Component(
                "postgres", "postgres", "postgresql://x", health={"kind": "http", "url": "u"}
            ),
        ],
        env={"A": "b"},
        notes=["moved"],
    )
    state.save(paths)
    loaded = StackState.load(paths)
    assert loaded == state
    assert loaded is not None and loaded.components[1].health_check() == HttpOk("u")
    assert not loaded.components[1].managed
    StackState.clear(paths)
    assert StackState.load(paths) is None


def test_busy_default_ports_move_and_say_so(tmp_path: Path) -> None:
    import socket

    from relayq_devstack.ports import free_port
    from relayq_devstack.stack import StackError, _resolve_ports

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", free_port()))
        busy.listen()
        taken = busy.getsockname()[1]
        cfg = StackConfig(state_dir=tmp_path, ports={**DEFAULT_PORTS, "flower": taken})
        ports, notes = _resolve_ports(cfg, {"flower"})
        assert ports["flower"] != taken
        assert set(ports) == set(DEFAULT_PORTS), "skipped services keep a port: specs need one"
        assert notes == [f"port {taken} (flower) is busy: using {ports['flower']} instead"]

        explicit = StackConfig.from_env({}, cwd=tmp_path, ports={"flower": taken})
        with pytest.raises(StackError, match="asked for but is busy"):
            _resolve_ports(explicit, {"flower"})


def test_restart_backoff_doubles_up_to_its_cap() -> None:
    from relayq_devstack.config import RestartPolicy

    default = RestartPolicy()
    assert [default.delay(k) for k in range(7)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert default.delay(10_000) == 30.0  # no overflow after a long crash loop


def test_supervision_fields_round_trip_and_names_resolve(tmp_path: Path) -> None:
    import stat

    paths = StatePaths(tmp_path)
    worker = Component(
        "worker1",
        "service",
        "worker1@",
        pid=10,
        group="worker",
        argv=["relayq-worker"],
        env={"RELAYQ_DLQ_ADMIN_TOKEN": "secret"},
        cwd="/tmp",
        held=True,
        restarts=3,
        last_exit_code=70,
        restart_times=[1.0, 2.0],
    )
    old = Component("worker2", "service", "worker2@", pid=11)  # a stack.json from before
    state = StackState(components=[worker, old], supervisor_pid=42, supervisor_create_time=1.0)
    state.save(paths)
    loaded = StackState.load(paths)
    assert loaded == state
    # It holds components' environments (dlq-svc's admin token): private to the user.
    assert stat.S_IMODE(paths.stack_json.stat().st_mode) == 0o600
    assert [c.name for c in state.find(["worker"])] == ["worker1"]
    assert [c.name for c in state.find(["worker2", "worker1"])] == ["worker1", "worker2"]
    with pytest.raises(ValueError, match=r"unknown component\(s\): nope"):
        state.find(["nope", "worker"])
