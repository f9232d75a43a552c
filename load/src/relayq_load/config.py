"""Where the load tools find the stack: read once, here (the package's only environment read).

The ingest address comes from ``$RELAYQ_INGEST_GRPC``, else from the local stack's
``stack.env`` (``$RELAYQ_STATE_DIR`` or ``<repo>/.relayq``), the file ``relayq-stack up`` writes.
"""

from __future__ import annotations

import os
from pathlib import Path

from relayq_devstack.config import resolve_state_dir
from relayq_devstack.envfile import parse_env
from relayq_devstack.state import StatePaths


def stack_env(state_dir: Path | None = None) -> dict[str, str]:
    """The variables of ``<state dir>/stack.env`` ({} when no stack wrote one)."""
    path = StatePaths(resolve_state_dir(state_dir)).stack_env
    try:
        return parse_env(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


def clean_child_env(**extra: str) -> dict[str, str]:
    """Our environment without ``RELAYQ_*`` variables, plus ``extra``: what a stack or baseline
    process started by the bench gets, so that it starts its own servers instead of joining
    whatever the caller's shell points at."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYQ_")}
    env.update(extra)
    return env


def baseline_broker_url() -> str:
    """The baseline Celery worker's broker (the bench passes ``$RELAYQ_BASELINE_BROKER_URL``)."""
    return os.environ.get("RELAYQ_BASELINE_BROKER_URL", "redis://127.0.0.1:6379/15")


def default_ingest_address(state_dir: Path | None = None) -> str | None:
    """``$RELAYQ_INGEST_GRPC``, else the running local stack's ingest address, else None."""
    return os.environ.get("RELAYQ_INGEST_GRPC") or stack_env(state_dir).get("RELAYQ_INGEST_GRPC")
