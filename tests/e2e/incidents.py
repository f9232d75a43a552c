"""The machinery of the incident rehearsals (tests/e2e/test_incidents.py): a real local stack with
its rule windows scaled down, the runbook's first commands, and a clock from fault to page.

Everything goes through what an on-call engineer has: ``relayq-stack`` (stop/start a component),
the stack's real Prometheus and Alertmanager, the alert sink Alertmanager posts to, and the
commands under **First commands (local stack)** in docs/runbook.md, run in bash after the
runbook's preamble.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import struct_pb2

from relayq.v1 import ingest_pb2, ingest_pb2_grpc
from relayq_core.settings import repo_root
from relayq_devstack.alerts import fetch_records
from relayq_devstack.prometheus import PrometheusClient

REPO = repo_root()
BIN = Path(sys.executable).parent
RUNBOOK = REPO / "docs" / "runbook.md"
#: Rule windows divided by this: a `for: 5m` waits 5 s, a `[5m]` rate looks back 5 s.
TIME_SCALE = 60
#: Where the rehearsals leave their figures (fault to firing, to notification, to resolution).
FIGURES = REPO / ".relayq" / "rehearsals.json"

_FIRST = re.compile(
    r"\*\*First commands \(local stack\)\*\*\s*\n+```console\n(.*?)^```", re.M | re.S
)


_ALERT_LINE = re.compile(r"^\*\*Alert:\*\* `(\w+)`", re.M)


def runbook_section(alert: str) -> str:
    """The runbook section whose **Alert:** line starts with ``alert``."""
    for section in RUNBOOK.read_text().split("\n## ")[1:]:
        match = _ALERT_LINE.search(section)
        if match and match.group(1) == alert:
            return section
    raise AssertionError(f"docs/runbook.md has no section whose **Alert:** line names {alert}")


def first_commands(alert: str) -> list[str]:
    """The ``$ `` lines of the section's **First commands (local stack)** block."""
    match = _FIRST.search(runbook_section(alert))
    assert match, f"the {alert} section has no **First commands (local stack)** console block"
    commands = [line[2:] for line in match.group(1).splitlines() if line.startswith("$ ")]
    assert commands, f"the {alert} section's first commands block has no `$ ` line"
    return commands


def preamble() -> str:
    """The runbook's first ``sh`` block, which loads the stack's endpoints and puts the tools
    on the path (its ``relayq-stack status`` left out: once per command would drown the rest)."""
    match = re.search(r"^```sh\n(.*?)^```", RUNBOOK.read_text(), re.M | re.S)
    assert match, "docs/runbook.md has no preamble block"
    lines = [line for line in match.group(1).splitlines() if line.strip() != "relayq-stack status"]
    return "\n".join(lines)


@dataclass
class Timing:
    """Seconds from the fault to each sign of it, for the closing figures."""

    incident: str
    alert: str
    firing: float = 0.0  # Prometheus has the alert firing
    notified: float = 0.0  # the receiver has the notification
    resolved: float = 0.0  # the receiver has the resolution, counted from the fault's removal


@dataclass
class Rehearsal:
    """A running local stack, and what a rehearsal does with it."""

    state: Path
    env: dict[str, str]  # the process environment for every command
    stack: dict[str, str] = field(default_factory=dict)  # stack.env
    timings: list[Timing] = field(default_factory=list)

    @property
    def prometheus(self) -> PrometheusClient:
        return PrometheusClient(self.stack["RELAYQ_PROMETHEUS_URL"])

    def cli(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / argv[0]), *argv[1:]],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def stop(self, *names: str) -> None:
        done = self.cli("relayq-stack", "stop", *names)
        assert done.returncode == 0, done.stdout + done.stderr

    def start(self, *names: str) -> None:
        done = self.cli("relayq-stack", "start", *names, timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr

    def notifications(self) -> list[dict[str, Any]]:
        return fetch_records(self.stack["RELAYQ_ALERT_SINK_URL"])

    def _received(self, alert: str, status: str, since: float) -> dict[str, Any] | None:
        for record in self.notifications():
            at = datetime.fromisoformat(record["receivedAt"]).timestamp()
            if record["alertname"] == alert and record["status"] == status and at >= since:
                return record
        return None

    def wait_paged(self, incident: str, alert: str, fault_at: float, timeout: float) -> Timing:
        """Waits until Prometheus fires ``alert`` and the receiver has its notification."""
        timing = Timing(incident, alert)
        deadline = time.time() + timeout
        while True:
            now = time.time()
            if not timing.firing and self.prometheus.firing(alert):
                timing.firing = now - fault_at
            if timing.firing and (record := self._received(alert, "firing", fault_at)):
                received = datetime.fromisoformat(record["receivedAt"]).timestamp()
                timing.notified = received - fault_at
                self.timings.append(timing)
                return timing
            assert now < deadline, (
                f"{alert} not {'notified' if timing.firing else 'firing'} "
                f"{timeout:.0f} s after the fault; alerts: {self.prometheus.alerts()}; "
                f"received: {[(r['alertname'], r['status']) for r in self.notifications()]}"
            )
            time.sleep(0.25)

    def wait_resolved(self, timing: Timing, cleared_at: float, timeout: float) -> None:
        """Waits until the receiver has the resolution of ``timing``'s alert."""
        deadline = time.time() + timeout
        while not (record := self._received(timing.alert, "resolved", cleared_at)):
            assert time.time() < deadline, (
                f"{timing.alert} not resolved {timeout:.0f} s after the fault was removed; "
                f"firing: {self.prometheus.firing(timing.alert)}"
            )
            time.sleep(0.25)
        timing.resolved = datetime.fromisoformat(record["receivedAt"]).timestamp() - cleared_at

    def first_commands(self, alert: str) -> str:
        """Runs the section's first commands, as an engineer would type them after the
        preamble; returns what they printed (stdout and stderr, each command's in turn)."""
        out: list[str] = []
        for command in first_commands(alert):
            done = subprocess.run(
                ["bash", "-c", f"{preamble()}\n{command}"],
                env=self.env,
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            out.append(f"$ {command}\n{done.stdout}{done.stderr}[exit {done.returncode}]")
        return "\n".join(out)

    def save_figures(self) -> None:
        FIGURES.parent.mkdir(parents=True, exist_ok=True)
        FIGURES.write_text(
            json.dumps([t.__dict__ for t in self.timings], indent=2) + "\n", encoding="utf-8"
        )


def payload(value: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


def submit(
    address: str, jobs: Iterable[tuple[str, dict[str, Any]]], job_ids: Callable[[int], str]
) -> tuple[list[str], list[grpc.StatusCode]]:
    """Submits ``jobs`` one call each (task, payload) with the given job ids; the ids accepted
    and the status codes of the refusals."""

    async def run() -> tuple[list[str], list[grpc.StatusCode]]:
        accepted: list[str] = []
        refused: list[grpc.StatusCode] = []
        async with grpc.aio.insecure_channel(address) as channel:
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            for n, (task, body) in enumerate(jobs):
                request = ingest_pb2.SubmitJobRequest(
                    task=task, payload=payload(body), job_id=job_ids(n)
                )
                try:
                    reply = await stub.SubmitJob(request, timeout=10)
                    accepted.append(reply.job_id)
                except grpc.aio.AioRpcError as err:
                    refused.append(err.code())
        return accepted, refused

    return asyncio.run(run())


def base_env(state: Path) -> dict[str, str]:
    """A clean environment for a stack in ``state``, its windows scaled down."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAYQ_", "OTEL_"))}
    env["RELAYQ_STATE_DIR"] = str(state)
    env["RELAYQ_STACK_RULE_TIME_SCALE"] = str(TIME_SCALE)
    env["RELAYQ_STACK_SCRAPE_INTERVAL"] = "1"
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    return env
