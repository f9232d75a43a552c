"""dlq-tool talks only gRPC: it imports the generated contract, grpc and the standard library,
never dlq-svc's store or servicer, the shared core, or a database driver."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from relayq_core.settings import repo_root

TOOL = repo_root() / "dlq-svc" / "src" / "dlq_svc" / "tool"
ALLOWED = ("dlq_svc.tool", "relayq.v1", "grpc", "google.protobuf", "__future__")


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_tool_modules_import_only_grpc_the_contract_and_stdlib() -> None:
    offenders = {
        f"{path.name}: {name}"
        for path in TOOL.glob("*.py")
        for name in imported(path)
        if not name.startswith(ALLOWED) and name.split(".")[0] not in sys.stdlib_module_names
    }
    assert offenders == set()


def test_running_the_tool_loads_no_server_code() -> None:
    probe = (
        "import sys, dlq_svc.tool.main, dlq_svc.tool.commands;"
        "print('\\n'.join(sorted(sys.modules)))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout.split()
    forbidden = ("asyncpg", "relayq_core", "celery", "kombu", "redis", "pydantic", "structlog")
    assert [m for m in loaded if m.split(".")[0] in forbidden] == []
    assert [
        m for m in loaded if m.startswith("dlq_svc.") and not m.startswith("dlq_svc.tool")
    ] == []
