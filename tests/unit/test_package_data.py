"""The services find their data inside their packages, never through the source checkout.

The Docker image installs the packages non-editable: a path derived from the checkout layout
(``Path(__file__).parents[n]``, the repository root) points into the venv there.
tests/integration/test_installed_wheels.py proves the installed packages start; this grep finds
the mistake in a second.
"""

from __future__ import annotations

import re

from relayq_core.catalog import load_catalog
from relayq_core.retry import load_policies
from relayq_core.settings import packaged_default, repo_root

ROOT = repo_root()
INSTALLED = ("libs/proto", "libs/core", "ingest-svc", "worker-svc", "dlq-svc", "metrics-gateway")
CHECKOUT = re.compile(r"\.parents\[|(?<!def )\brepo_root\(\)|find_repo_root|\.\./")
#: repo_root() itself, kept for tests and dev tools.
ALLOWED = {("libs/core/src/relayq_core/settings.py", "return Path(__file__).resolve().parents[4]")}


def checkout_paths(text: str) -> list[str]:
    """Lines of ``text`` that derive a path from the checkout layout (code, not prose)."""
    return [
        line.strip()
        for line in text.splitlines()
        if CHECKOUT.search(line) and not line.lstrip().startswith(("#", '"', "``"))
    ]


def test_installed_packages_never_find_files_through_the_checkout() -> None:
    found = {
        (str(path.relative_to(ROOT)), line)
        for folder in INSTALLED
        for path in sorted((ROOT / folder / "src").rglob("*.py"))
        if "/relayq/v1/" not in str(path)  # generated
        for line in checkout_paths(path.read_text(encoding="utf-8"))
    }
    assert found - ALLOWED == set()


def test_the_grep_would_catch_a_checkout_path() -> None:
    code = (
        'ROOT = Path(__file__).resolve().parents[4] / "config"\n'
        "path = repo_root() / 'config' / 'retry.toml'\n"
        "MIGRATIONS = Path(__file__).with_name('migrations')\n"
        "def repo_root() -> Path:\n"
    )
    assert len(checkout_paths(code)) == 2


def test_the_packaged_defaults_are_valid() -> None:
    catalog = load_catalog(packaged_default("tasks.toml"))
    policies = load_policies(packaged_default("retry.toml"))
    assert {"demo.echo", "demo.flaky"} <= set(catalog.tasks)
    assert set(policies.tasks) <= set(catalog.tasks)
