"""The monitoring binaries the stack and the tests run, and the one command that installs them.

Debian's ``prometheus`` package ships ``prometheus`` and ``promtool``; ``prometheus-alertmanager``
ships ``prometheus-alertmanager`` (Debian's name for ``alertmanager``) and ``amtool``. ``make
setup`` installs both when it can (``scripts/install-tools.sh``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

INSTALL_COMMAND = (
    "sudo apt-get install -y --no-install-recommends prometheus prometheus-alertmanager"
)
# Each tool's names, in the order they are looked for (upstream's tarball calls it alertmanager).
_NAMES: dict[str, tuple[str, ...]] = {
    "alertmanager": ("prometheus-alertmanager", "alertmanager"),
}


def find_tool(name: str) -> Path | None:
    """``name`` (or its other name) on PATH, else in ``/usr/bin``; None when not installed."""
    for candidate in _NAMES.get(name, (name,)):
        found = shutil.which(candidate)
        if found:
            return Path(found)
        fallback = Path("/usr/bin") / candidate
        if fallback.is_file():
            return fallback
    return None


def missing_message(name: str) -> str:
    """What to tell someone whose ``name`` is missing."""
    return f"{name} is not installed: run `make setup`, or {INSTALL_COMMAND}"
