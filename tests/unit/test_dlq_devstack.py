"""The local stack gives dlq-svc an admin token and tells clients (dlq-tool) what it is."""

from __future__ import annotations

import stat
from pathlib import Path

from relayq_devstack.config import DEFAULT_PORTS
from relayq_devstack.services import ServiceContext, relayq_services, stack_env
from relayq_devstack.stack import DLQ_TOKEN_FILE, dlq_admin_token
from relayq_devstack.state import StatePaths

GROUPS = {"ingest", "dlq", "worker", "metrics-gateway", "flower"}


def _ctx(token: str) -> ServiceContext:
    return ServiceContext(
        bin_dir=Path("/venv/bin"),
        redis_url="redis://127.0.0.1:1000/0",
        database_url="postgresql://postgres@127.0.0.1:1001/relayq",
        ports=dict(DEFAULT_PORTS),
        dlq_admin_token=token,
    )


def test_only_dlq_gets_the_token_and_stack_env_carries_it() -> None:
    specs = {s.name: s for s in relayq_services(_ctx("tok"))}
    assert specs["dlq"].env["RELAYQ_DLQ_ADMIN_TOKEN"] == "tok"
    assert all("RELAYQ_DLQ_ADMIN_TOKEN" not in s.env for n, s in specs.items() if n != "dlq")
    assert stack_env(_ctx("tok"), GROUPS)["RELAYQ_DLQ_ADMIN_TOKEN"] == "tok"
    assert "RELAYQ_DLQ_ADMIN_TOKEN" not in stack_env(_ctx("tok"), GROUPS - {"dlq"})


def test_no_token_no_variable() -> None:
    specs = {s.name: s for s in relayq_services(_ctx(""))}
    assert "RELAYQ_DLQ_ADMIN_TOKEN" not in specs["dlq"].env
    assert "RELAYQ_DLQ_ADMIN_TOKEN" not in stack_env(_ctx(""), GROUPS)


def test_the_token_is_made_once_kept_private_and_reused(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path / "state")
    first = dlq_admin_token(paths)
    assert len(first) >= 40 and first == dlq_admin_token(paths), "stable across restarts"
    path = paths.root / DLQ_TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_text("\n")
    renewed = dlq_admin_token(paths)
    assert renewed and renewed != first, "an emptied file gets a new token"
