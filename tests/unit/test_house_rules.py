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


def test_only_config_modules_read_the_environment() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("ingest-svc", "worker-svc", "dlq-svc", "metrics-gateway", "libs/core")
        for path in (ROOT / folder / "src").rglob("*.py")
        if "os.environ" in path.read_text()
        and path.name not in ("config.py", "settings.py")
        and "/tool/" not in str(path)
    ]
    assert offenders == []
