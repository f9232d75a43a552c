"""Fixtures: a real Prometheus (Debian's binary) with the committed rules, on a free port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from relayq_devstack.prometheus import PrometheusServer, start_prometheus
from tests.observability.prometheus_fixture import RULE_FILES, require_tool


@pytest.fixture(scope="session")
def rules_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """A Prometheus that scrapes only itself and has every recording and alert rule loaded:
    enough to parse any query against the rules' names."""
    binary = require_tool("prometheus")
    server = start_prometheus(
        tmp_path_factory.mktemp("prometheus"), rules=RULE_FILES, interval=1.0, binary=binary
    )
    try:
        yield server
    finally:
        server.stop()
