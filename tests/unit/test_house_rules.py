"""House rules that a grep can enforce."""

from __future__ import annotations

import re

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
