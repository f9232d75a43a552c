"""Chaos: a real local stack, a mixed load, faults on a schedule, and an audit that finds nothing.

While clients submit ``demo.transfer``, ``demo.charge``, ``demo.echo``, ``demo.webhook`` (to a
real HTTP receiver that injects 5xx, 429, slow answers and dropped connections), ``demo.flaky``
and ``demo.fail`` jobs, an injector SIGKILLs random pool processes and whole worker nodes again
and again (the harness's supervisor starts replacements), restarts Redis with its AOF, makes
Redis lose its data (FLUSHALL and/or a restart without persistence: the reconciler repairs),
publishes a second message for many accepted jobs (as an at-least-once broker may), restarts
Postgres, takes dlq-svc down while jobs dead-letter, and kills ingest-svc mid-load (clients
retry with the same keys). Then every job must end as its kind demands, each transfer applied
once (the journal and the balances say so), each webhook delivered with its own key and never
twice at once, nothing stuck, and the ledger, the DLQ and the metrics must agree
(tests/chaos/audit.py says exactly how). The figures are printed and written to
``.relayq/chaos-<size>.json``.

The audit must be able to fail: ``test_the_audit_catches_a_worker_that_skips_the_claim`` runs a
small load with every message delivered twice against a worker with the claim switched off (a
test-only setting) and expects the audit to report the double applications.

``make test`` runs the CI size; ``make chaos`` the full one (``RELAYQ_CHAOS_SIZE=full``).
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
import redis

from relayq.v1 import ingest_pb2_grpc
from relayq_core.jobs import JobSpec
from relayq_core.retry import load_policies
from relayq_core.settings import repo_root
from tests.chaos import audit as checks
from tests.chaos.load import (
    CHANNEL_OPTIONS,
    JobPlan,
    LoadReport,
    plan,
    request_for,
    resubmit_all,
    run_load,
    submit_until_accepted,
)
from tests.chaos.sizes import (
    AUDIT,
    DLQ_DOWN,
    DUPLICATES,
    INGEST_KILL,
    NEVER,
    POSTGRES_RESTART,
    REDIS_DATA_LOSS,
    REDIS_FLUSHALL,
    REDIS_RESTART,
    ChaosSize,
)
from tests.chaos.stack import RETRY_POLICY, ChaosStack
from tests.support.http_receiver import Receiver

POLICIES = load_policies(RETRY_POLICY)

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(3600)]


class _RecordedProbe:
    """Watches the ledger for a batch's first rows, from a connection opened beforehand."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._loop = asyncio.new_event_loop()
        self._conn: asyncpg.Connection | None = None

    def __enter__(self) -> _RecordedProbe:
        self._conn = self._loop.run_until_complete(asyncpg.connect(self._url))
        return self

    def __exit__(self, *_: object) -> None:
        if self._conn is not None:
            self._loop.run_until_complete(self._conn.close())
        self._loop.close()

    def wait(self, keys: list[str], timeout: float) -> bool:
        """Whether any of ``keys`` was recorded within ``timeout`` (polled without pause)."""
        assert self._conn is not None
        conn = self._conn

        async def poll() -> bool:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM relayq_jobs"
                    " WHERE idempotency_key = ANY($1::text[]))",
                    keys,
                ):
                    return True
            return False

        return self._loop.run_until_complete(poll())


class Injector:
    """Two threads: periodic SIGKILLs (pool processes, whole nodes) and the one-off faults."""

    def __init__(
        self,
        stack: ChaosStack,
        size: ChaosSize,
        seed: int,
        kill_batch: list[JobPlan],
        report: LoadReport,
        jobs: list[JobPlan],
    ) -> None:
        self.stack = stack
        self.size = size
        self.kill_batch = kill_batch
        self.report = report
        self.jobs = {j.key: j for j in jobs}
        #: How the SubmitJobs call ingest died in the middle of ended for its client.
        self.kill_call = ""
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.timeline: list[tuple[float, str]] = []
        self._t0 = 0.0
        self._threads = [
            threading.Thread(target=self._guard(self._periodic), name="kills", daemon=True),
            threading.Thread(target=self._guard(self._scheduled), name="faults", daemon=True),
        ]

    def _guard(self, body: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                body()
            except Exception:
                self.errors.append(traceback.format_exc())

        return run

    def _note(self, what: str) -> None:
        self.timeline.append((round(time.monotonic() - self._t0, 1), what))

    def start(self) -> None:
        self._t0 = time.monotonic()
        for thread in self._threads:
            thread.start()

    def _periodic(self) -> None:
        next_pool = self.size.pool_kill_every
        next_node = self.size.node_kill_every
        while not self.stop.wait(0.2):
            now = time.monotonic() - self._t0
            if now >= next_node:
                self.stack.kill_node(self.rng)
                self._note("node SIGKILL")
                next_node += self.size.node_kill_every
            if now >= next_pool:
                if self.stack.kill_pool_process(self.rng):
                    self._note("pool process SIGKILL")
                next_pool += self.size.pool_kill_every

    def _scheduled(self) -> None:
        for fraction, fault in self.size.faults:
            at = self._t0 + fraction * self.size.submit_seconds
            if self.stop.wait(max(0.0, at - time.monotonic())):
                return
            self._note(f"{fault} begins")
            if fault == REDIS_RESTART:
                self.stack.redis_restart()
            elif fault == REDIS_FLUSHALL:
                self.stack.redis_flushall()
            elif fault == REDIS_DATA_LOSS:
                self.stack.redis_data_loss()
            elif fault == POSTGRES_RESTART:
                self.stack.postgres_restart()
            elif fault == DLQ_DOWN:
                self.stack.dlq_down(self.size.dlq_down_seconds, self.stop.wait)
            elif fault == INGEST_KILL:
                self._ingest_kill()
            elif fault == DUPLICATES:
                self._duplicates()
            else:
                raise ValueError(fault)
            self._note(f"{fault} ends")

    def _duplicates(self) -> None:
        """A second message for a share of the jobs accepted so far (many already done)."""
        accepted = sorted(self.report.job_ids.items())
        chosen = self.rng.sample(accepted, round(len(accepted) * self.size.duplicate_share))
        specs = [
            JobSpec(job_id, key, self.jobs[key].task, "default", self.jobs[key].payload)
            for key, job_id in chosen
        ]
        self.stack.duplicate_messages(specs)

    def _ingest_kill(self) -> None:
        """SIGKILLs ingest in the middle of a big SubmitJobs call, then retries it as its
        client would: same keys, until accepted. Some of the batch may be in the ledger (and
        even published) without the client having heard of it."""
        with grpc.insecure_channel(self.stack.ingest_address, options=CHANNEL_OPTIONS) as ch:
            stub = ingest_pb2_grpc.IngestServiceStub(ch)
            with _RecordedProbe(self.stack.database_url) as probe:
                call = stub.SubmitJobs.future(request_for(self.kill_batch), timeout=30)
                # Killed as soon as the batch is in the ledger: the publish and the mark that
                # follow take a few milliseconds, and the kill lands in them.
                probe.wait([j.key for j in self.kill_batch], timeout=10)
                self.stack.ingest_kill()
            try:
                call.result()
                self.kill_call = "OK (answered before the kill)"
            except grpc.RpcError as exc:
                self.kill_call = exc.code().name
            self.stop.wait(2.0)
            self.stack.start("ingest")
            self.stack.wait_healthy("ingest")
            submit_until_accepted(stub, self.kill_batch, self.report)

    def join_scheduled(self, timeout: float) -> None:
        self._threads[1].join(timeout)

    def halt(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=120)


async def drain(stack: ChaosStack, keys: list[str], timeout: float) -> int:
    """Waits until every job has ended; how many have not."""
    deadline = time.monotonic() + timeout
    left = len(keys)
    while time.monotonic() < deadline:
        try:
            left = await checks.non_terminal(stack.database_url, keys)
        except OSError:
            left = len(keys)
        if left == 0:
            return 0
        await asyncio.sleep(2)
    return left


def queue_empty(stack: ChaosStack) -> bool:
    client = redis.Redis.from_url(stack.redis.url, socket_timeout=2)
    try:
        return int(client.llen("default")) == 0
    except redis.RedisError:
        return False
    finally:
        client.close()


async def test_nothing_is_lost_or_applied_twice_under_chaos(
    chaos_size: ChaosSize, tmp_path_factory: pytest.TempPathFactory
) -> None:
    figures = await run_chaos(chaos_size, tmp_path_factory)
    assert not figures["problems"], "\n".join(figures["problems"])


async def test_the_audit_catches_a_worker_that_skips_the_claim(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The audit can fail: the same harness, a small load delivered twice, a worker whose
    deliveries skip the lock and claim. Duplicates of finished transfers then run again."""
    figures = await run_chaos(
        AUDIT, tmp_path_factory, worker_env={"RELAYQ_WORKER_UNSAFE_SKIP_CLAIM": "true"}
    )
    problems = "\n".join(figures["problems"])
    assert figures["applied_twice"] > 0, problems
    assert "transferred more than once" in problems, problems
    assert "balances differ from what the succeeded transfers moved" in problems, problems
    assert "succeeded jobs without exactly one success" in problems, problems


async def run_chaos(
    size: ChaosSize,
    tmp_path_factory: pytest.TempPathFactory,
    worker_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One run: the stack up, the load and the faults, the drain, the audit; its figures (with
    ``problems``), also written to ``.relayq/chaos-<size>.json``."""
    seed = random.randrange(1 << 30)
    run_id = uuid.uuid4().hex[:8]
    if size.name == "full":
        # Kept after the run for whoever reads the figures (logs in state/logs), until the next
        # `make chaos`. The CI size, which `make test` runs (perhaps several at once in one
        # checkout), uses a temporary directory of its own.
        root = repo_root() / ".relayq" / "chaos-full"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
    else:
        root = tmp_path_factory.mktemp(f"chaos-{size.name}")
    stack = ChaosStack(root, size, worker_env)
    receiver = Receiver()
    receiver.start()
    audit = checks.Audit()
    began = time.monotonic()
    await asyncio.to_thread(stack.up)
    jobs = plan(run_id, size.jobs, seed, size.hold_ms, webhook_url=receiver.url())
    keys = [j.key for j in jobs]
    cut = len(jobs) - size.kill_batch
    streamed, kill_batch = jobs[:cut], jobs[cut:]
    load = LoadReport()
    injector = Injector(stack, size, seed, kill_batch, load, jobs)
    try:
        started = time.monotonic()
        injector.start()
        await run_load(
            stack.ingest_address, streamed, size.submit_seconds, size.batch, size.senders, load
        )
        await asyncio.to_thread(injector.join_scheduled, size.submit_seconds + 120)
        injector.halt()  # the drain runs without faults: every fault has had its effect
        loaded = time.monotonic()
        left = await drain(stack, keys, size.drain_timeout)
        drained = time.monotonic()
        deadline = time.monotonic() + 30
        while not queue_empty(stack) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)  # stray duplicates (the reconciler errs towards publishing)
        # Every client retries once more, as if every answer had been lost: one job per key.
        not_same = await asyncio.to_thread(resubmit_all, stack.ingest_address, jobs, load)
        audit.check(not not_same, f"a re-submit did not return the first job: {not_same[:5]}")

        # Metrics first, then the ledger: a late duplicate can only make the ledger larger.
        live = {
            n: stack.worker_metrics_url(n) for n in stack.workers if stack.procs[n].is_running()
        }
        live_dirs = {n: stack.metric_dirs[n][-1] for n in live}
        dead_dirs = [
            d for n, dirs in stack.metric_dirs.items() for d in dirs if d not in live_dirs.values()
        ]
        metrics_snapshot = {n: checks.runs_from_scrape(u) for n, u in live.items()}
        pool_slots = size.workers * size.concurrency
        slack = (
            stack.faults["pool_process_sigkill"]
            + stack.faults["node_sigkill"] * size.concurrency
            + stack.faults["postgres_restart"] * pool_slots
        )
        ledger = await checks.audit_ledger(
            audit,
            stack.database_url,
            jobs,
            load,
            max_worker_losses=min(
                p.max_worker_losses for p in (POLICIES.default, *POLICIES.tasks.values())
            ),
            # a Postgres restart that cuts a claim's answer off makes its retry count a loss
            kill_capacity=stack.faults["pool_process_sigkill"]
            + stack.faults["node_sigkill"] * size.concurrency
            + stack.faults["postgres_restart"] * pool_slots,
        )
        checks.audit_metrics(audit, ledger, live, dead_dirs, live_dirs, slack)
        del metrics_snapshot
        await checks.audit_dlq(audit, stack.dlq_address, stack.database_url, jobs)
        checks.audit_webhooks(audit, receiver, jobs, await checks.states(stack.database_url, keys))

        # Services that lived through the Postgres and Redis restarts still work.
        gateway = checks.scrape(stack.gateway_metrics_url())
        dlq_depth = sum(v for _, v in gateway.get("relayq_dlq_depth", []))
        active = audit.figures["dlq"]["active"]
        audit.check(
            dlq_depth == active, f"the gateway's relayq_dlq_depth is {dlq_depth}, the DLQ {active}"
        )
        audit.check(
            bool(gateway.get("relayq_queue_oldest_job_age_seconds")),
            "the gateway no longer reads the ledger",
        )
        reconciler = checks.scrape(stack.reconciler_metrics_url())
        requeued = {
            labels["reason"]: int(v)
            for labels, v in reconciler.get("relayq_reconciler_requeued_total", [])
        }
        resets = int(sum(v for _, v in reconciler.get("relayq_reconciler_broker_resets_total", [])))
        losses = stack.faults["redis_flushall"] + stack.faults["redis_data_loss"]
        audit.check(
            resets >= 1 + losses, f"the reconciler saw {resets} broker resets for {losses} losses"
        )
        ingest = checks.scrape(f"http://127.0.0.1:{stack.port('ingest_http')}/metrics")

        unavailable = load.failed_calls["UNAVAILABLE"] + load.item_errors["UNAVAILABLE"]
        audit.check(not load.unexpected, f"clients got unexpected answers: {load.unexpected[:5]}")
        audit.check(
            stack.faults["ingest_kill"] == 0 or injector.kill_call == "UNAVAILABLE",
            f"ingest was killed mid-call, and the call ended {injector.kill_call!r}",
        )
        for _, fault in size.faults:
            audit.check(stack.faults[fault] >= 1, f"fault {fault} was never injected")
        audit.check(
            size.pool_kill_every == NEVER or stack.faults["pool_process_sigkill"] >= 1,
            "no pool process was killed",
        )
        audit.check(
            size.node_kill_every == NEVER or stack.faults["node_sigkill"] >= 1,
            "no node was killed",
        )
        audit.check(not injector.errors, f"the injector failed: {injector.errors}")
        audit.check(left == 0, f"{left} jobs had not ended after {size.drain_timeout} s")

        audit.figures |= {
            "size": size.name,
            "seed": seed,
            "jobs": len(jobs),
            "by_task": dict(sorted(Counter(j.task for j in jobs).items())),
            "workers": size.workers,
            "concurrency": size.concurrency,
            "faults": dict(sorted(stack.faults.items())),
            "duplicates_published": stack.duplicates,
            "worker_env": worker_env or {},
            "dlq_down_seconds": size.dlq_down_seconds,
            "node_exits": dict(stack.node_exits),
            "client": {
                "calls": load.calls,
                "failed_calls": dict(load.failed_calls),
                "item_errors": dict(load.item_errors),
                "resent_items": load.resent_items,
                "duplicates_returned": load.duplicates,
                "unavailable_seen": unavailable,
                "kill_batch": len(kill_batch),
                "kill_batch_call": injector.kill_call,
                "resubmitted_all_keys_same_job": not not_same,
            },
            "reconciler_requeued": requeued,
            "reconciler_broker_resets": resets,
            "ingest_submitted_since_restart": {
                labels["outcome"]: int(v)
                for labels, v in ingest.get("relayq_jobs_submitted_total", [])
            },
            "timeline": injector.timeline,
            "seconds": {
                "start_stack": round(started - began, 1),
                "load": round(load.seconds, 1),
                "drain": round(drained - loaded, 1),
                "total": round(time.monotonic() - began, 1),
            },
            "throughput_jobs_per_second": round(len(jobs) / max(1.0, drained - started), 1),
            "logs": str(stack.stack.paths.logs),
        }
    finally:
        injector.halt()
        await asyncio.to_thread(stack.down)
        receiver.stop()
    figures = {**audit.figures, "problems": audit.problems}
    out = repo_root() / ".relayq" / f"chaos-{size.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2, default=str) + "\n", encoding="utf-8")
    summary = {
        k: figures.get(k) for k in ("jobs", "lost", "applied_twice", "stuck", "wrong_outcome")
    }
    print(f"\nchaos {size.name}: {json.dumps(summary)} faults {figures.get('faults')} -> {out}")
    assert Path(out).exists()
    return figures
