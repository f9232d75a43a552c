"""Chaos runs: ``--chaos-size`` (or ``RELAYQ_CHAOS_SIZE``) picks ci (the default) or full."""

from __future__ import annotations

import os

import pytest

from tests.chaos.sizes import SIZES, ChaosSize


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--chaos-size",
        choices=sorted(SIZES),
        default=None,
        help="ci (make test) or full (make chaos); default: $RELAYQ_CHAOS_SIZE, else ci",
    )


@pytest.fixture(scope="session")
def chaos_size(request: pytest.FixtureRequest) -> ChaosSize:
    name = request.config.getoption("--chaos-size") or os.environ.get("RELAYQ_CHAOS_SIZE") or "ci"
    if name not in SIZES:
        raise pytest.UsageError(f"RELAYQ_CHAOS_SIZE must be one of {sorted(SIZES)}, not {name!r}")
    return SIZES[name]
