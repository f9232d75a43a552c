"""House rules that a grep can enforce."""

from __future__ import annotations

import re
from pathlib import Path

from relayq_core.settings import repo_root

ROOT = repo_root()


def test_workers_never_sleep() -> None:
    """Retries go through self.retry(countdown=...); no worker code pauses itself."""
    pattern = re.compile(r"(^|[^a-z_])(time|asyncio)\.sleep\(")
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in (ROOT / "worker-svc").rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if pattern.search(line)
    ]
    assert offenders == []


def test_the_grep_would_catch_a_sleep() -> None:
    pattern = re.compile(r"(^|[^a-z_])(time|asyncio)\.sleep\(")
    assert pattern.search("    time.sleep(2)") and pattern.search("await asyncio.sleep(1)")


READS = re.compile(r"os\.getenv\(|os\.environ(?!\[[^\]]+\]\s*=[^=])")


def test_only_config_modules_read_the_environment() -> None:
    """Settings are read once, in config.py (settings.py in the core); writes are allowed."""
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for folder in ("ingest-svc", "worker-svc", "dlq-svc", "metrics-gateway", "libs/core")
        for path in (ROOT / folder / "src").rglob("*.py")
        if path.name not in ("config.py", "settings.py") and "/tool/" not in str(path)
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if READS.search(line) and not line.lstrip().startswith(("#", '"', "``"))
    ]
    assert offenders == []


def test_the_environment_rule_tells_reads_from_writes() -> None:
    assert READS.search('x = os.environ["A"]') and READS.search("os.environ.get('A')")
    assert READS.search("os.getenv('A')")
    assert not READS.search('os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)')


def test_celery_never_caps_a_jobs_retries() -> None:
    """The retry policy decides; Celery's default max_retries (3) would cut jobs short."""
    from worker_svc.app import app, catalog

    for name in catalog.tasks:
        assert app.tasks[name].max_retries is None, name


def _imports(module: str) -> set[str]:
    """The modules ``module``'s source imports at its top level (from its AST)."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text())
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_the_worker_edge_has_no_import_cycle() -> None:
    """app -> tasks -> execute -> runner: the tasks and the adapter never import the app."""
    for module in ("worker_svc.tasks.demo", "worker_svc.execute", "worker_svc.runner"):
        assert "worker_svc.app" not in _imports(module), module


def test_the_celery_adapter_builds_nothing_at_import_time() -> None:
    """Importing the adapter (as the parent process does before forking) makes no runtime,
    connection, HTTP client or gRPC channel: the pool process builds them on first use."""
    import subprocess
    import sys

    probe = (
        "import worker_svc.execute, worker_svc.tasks\n"
        "from worker_svc import services\n"
        "assert services.services.cache_info().currsize == 0, 'services built at import'\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_celerys_hard_time_limit_is_opt_in() -> None:
    """No task gets a Celery time_limit unless its policy asks (hard_time_limit_seconds): every
    job would otherwise leave a cancelled timer in its consumer until the limit's end (measured:
    +0.47 MiB per 1,000 jobs, 27 MiB over 60,000 jobs in three minutes, against flat without)."""
    from worker_svc.app import app, catalog, policies

    for name in catalog.tasks:
        limit = policies.for_task(name).hard_time_limit_seconds
        assert app.tasks[name].time_limit == (limit or None), name


def test_a_hard_time_limit_inside_relayqs_own_is_refused(tmp_path: Path) -> None:
    """A Celery limit that could fire while relayq's own time limit still handles the attempt
    stops the worker at start-up, naming the file and the task."""
    import subprocess
    import sys

    policy = tmp_path / "retry.toml"
    policy.write_text('[tasks."demo.hang"]\ntimeout_seconds = 2.0\nhard_time_limit_seconds = 5\n')
    probe = "from worker_svc.app import configuration_problems; print(configuration_problems())"
    env = {"RELAYQ_RETRY_POLICY": str(policy), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "demo.hang: hard_time_limit_seconds must exceed" in done.stdout, done.stdout
