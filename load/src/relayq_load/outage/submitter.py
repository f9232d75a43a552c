"""An open-loop submitter: ``SubmitJob`` over gRPC and ``POST /v1/jobs`` over HTTP, taking turns
at a fixed rate whatever the answers take (a hung submit does not slow the offered load, as it
would not slow a fleet of webhook senders), each call timed from its send to its answer.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
from google.protobuf import struct_pb2

from relayq.v1 import ingest_pb2, ingest_pb2_grpc


@dataclass(frozen=True)
class Call:
    """One submit: which door, when it was sent (seconds since the run started), how long its
    answer took, and what it was."""

    door: str
    sent: float
    seconds: float
    ok: bool
    code: str
    job_id: str = ""


@dataclass
class Submitter:
    """Submits ``demo.echo`` jobs with keys ``<run>-<n>`` to ingest's two doors."""

    grpc_address: str
    http_url: str
    run: str
    deadline: float
    calls: list[Call] = field(default_factory=list)
    _n: int = 0

    async def submit_for(self, seconds: float, rate: float, started: float) -> None:
        """Sends ``rate`` submits a second (alternating doors) for ``seconds``; returns when
        every call sent has been answered (or hit the deadline)."""
        limits = httpx.Limits(max_connections=10_000, max_keepalive_connections=200)
        async with (
            grpc.aio.insecure_channel(self.grpc_address) as channel,
            httpx.AsyncClient(base_url=self.http_url, limits=limits) as http,
        ):
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            pending: set[asyncio.Task[None]] = set()
            interval = 1.0 / rate
            first = time.monotonic()
            for i in range(math.ceil(seconds * rate)):
                delay = first + i * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                self._n += 1
                n = self._n
                call = self._grpc(stub, n, started) if n % 2 else self._http(http, n, started)
                task = asyncio.create_task(call)
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.wait(pending)

    def _payload(self, n: int) -> dict[str, Any]:
        return {"run": self.run, "n": n}

    async def _grpc(
        self, stub: ingest_pb2_grpc.IngestServiceAsyncStub, n: int, started: float
    ) -> None:
        payload = struct_pb2.Struct()
        payload.update(self._payload(n))
        request = ingest_pb2.SubmitJobRequest(
            task="demo.echo", payload=payload, idempotency_key=f"{self.run}-{n}"
        )
        sent = time.monotonic()
        try:
            reply = await stub.SubmitJob(request, timeout=self.deadline)
        except grpc.aio.AioRpcError as err:
            self.calls.append(
                Call("grpc", sent - started, time.monotonic() - sent, False, err.code().name)
            )
            return
        self.calls.append(
            Call("grpc", sent - started, time.monotonic() - sent, True, "OK", reply.job_id)
        )

    async def _http(self, http: httpx.AsyncClient, n: int, started: float) -> None:
        body = {"task": "demo.echo", "payload": self._payload(n)}
        sent = time.monotonic()
        try:
            reply = await http.post(
                "/v1/jobs",
                json=body,
                headers={"Idempotency-Key": f"{self.run}-{n}"},
                timeout=self.deadline,
            )
        except httpx.HTTPError as exc:
            self.calls.append(
                Call("http", sent - started, time.monotonic() - sent, False, type(exc).__name__)
            )
            return
        took = time.monotonic() - sent
        if reply.status_code == 201:
            self.calls.append(
                Call("http", sent - started, took, True, "201", reply.json()["job_id"])
            )
        else:
            self.calls.append(Call("http", sent - started, took, False, str(reply.status_code)))


def timeline(calls: Sequence[Call]) -> list[list[float]]:
    """Per second since the run started: ``[second, calls sent, answered OK, max latency s]``."""
    seconds: dict[int, list[float]] = {}
    for c in calls:
        row = seconds.setdefault(int(c.sent), [float(int(c.sent)), 0.0, 0.0, 0.0])
        row[1] += 1
        row[2] += c.ok
        row[3] = max(row[3], round(c.seconds, 3))
    return [seconds[k] for k in sorted(seconds)]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by the nearest-rank method; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def summarise(calls: Sequence[Call], bound: float = 1.0) -> dict[str, Any]:
    """Count, availability (answered OK), p50 / p99 / max latency, and the share of calls
    answered OK within ``bound`` seconds."""
    latencies = [c.seconds for c in calls]
    ok = [c for c in calls if c.ok]
    codes: dict[str, int] = {}
    for c in calls:
        codes[c.code] = codes.get(c.code, 0) + 1
    return {
        "calls": len(calls),
        "ok": len(ok),
        "availability_pct": round(100.0 * len(ok) / len(calls), 2) if calls else None,
        "within_bound_pct": (
            round(100.0 * sum(c.seconds < bound for c in ok) / len(calls), 2) if calls else None
        ),
        "p50_ms": round(1000 * percentile(latencies, 0.50), 1),
        "p99_ms": round(1000 * percentile(latencies, 0.99), 1),
        "max_ms": round(1000 * max(latencies, default=0.0), 1),
        "codes": codes,
    }
