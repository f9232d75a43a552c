"""``dlq-tool`` entry point."""

from __future__ import annotations

import sys


def main() -> None:
    """Console entry point."""
    sys.exit(2)
