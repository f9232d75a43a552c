"""The baseline: bare Celery with a no-op task on the stack's Redis, the ceiling relayq is
measured against.

Same Celery settings as relayq's workers (``relayq_core.broker.celery_config``: ``acks_late``,
JSON, prefetch 1, the same transport options), the same worker flags (prefork,
``--without-gossip --without-mingle``), the same layout of nodes and pool processes, messages of
the same shape (relayq's keyword arguments), but its own Redis database and queue, and a task
that does nothing: no ledger, no logs, no metrics, no traces.

The worker runs as ``celery -A relayq_load.baseline worker`` (the broker comes from
``$RELAYQ_BASELINE_BROKER_URL``). A run stops the consumers, publishes every message in bulk,
starts the consumers and times until the queue and the unacked set are empty, then checks with
``inspect stats`` that every task ran.

Publishing in bulk: Celery's ``send_task`` costs a few hundred microseconds a message, which on
this machine makes publishing slower than consuming. So one message is made by ``send_task``
and read back as kombu stored it, and every message of the run is that envelope with its own
task id, delivery tag and keyword arguments, pushed through a Redis pipeline: byte for byte what
Celery would have written.
"""

from __future__ import annotations

import base64
import copy
import json
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from relayq_core.broker import celery_config
from relayq_load.config import baseline_broker_url

QUEUE = "baseline"
TASK = "baseline.noop"
NODE_PREFIX = "baseline"


def make_app(broker_url: str) -> Celery:
    """The baseline's Celery app on ``broker_url``."""
    app = Celery("relayq-baseline", set_as_current=False)
    app.conf.update(celery_config(broker_url, QUEUE))
    app.conf.worker_hijack_root_logger = True
    return app


app = make_app(baseline_broker_url())


@app.task(name=TASK)  # type: ignore[untyped-decorator]
def noop(**_: Any) -> None:
    """Does nothing: what is left is Celery's own cost per message."""


def worker_argv(bin_dir: Path, node: int, concurrency: int) -> list[str]:
    """The command line of baseline worker node ``node``."""
    return [
        str(bin_dir / "celery"),
        "-A",
        "relayq_load.baseline",
        "worker",
        "--pool=prefork",
        f"--concurrency={concurrency}",
        f"--queues={QUEUE}",
        "--loglevel=WARNING",
        "--without-gossip",
        "--without-mingle",
        f"--hostname={NODE_PREFIX}{node}@%h",
    ]


def _message_kwargs(n: int, run: str) -> dict[str, Any]:
    key = f"baseline-{run}-{n}"
    return {"job_id": key, "idempotency_key": key, "payload": {"n": n}, "queue": QUEUE}


def _envelope(client: Celery, broker: redis.Redis) -> dict[str, Any]:
    """A message exactly as Celery's producer stores it in Redis (via a scratch queue)."""
    scratch = f"{QUEUE}.template"
    with client.producer_or_acquire() as producer:
        client.send_task(
            TASK, kwargs=_message_kwargs(0, "template"), queue=scratch, producer=producer
        )
    raw = broker.lpop(scratch)
    broker.delete(f"_kombu.binding.{scratch}", f"_kombu.binding_permanent.{scratch}")
    if not isinstance(raw, bytes | str):
        raise RuntimeError("the template message did not reach Redis")
    envelope: dict[str, Any] = json.loads(raw)
    envelope["properties"]["delivery_info"]["routing_key"] = QUEUE
    return envelope


def publish_bulk(client: Celery, broker: redis.Redis, jobs: int, chunk: int = 2000) -> bytes:
    """Pushes ``jobs`` messages onto the queue; returns one of them (for its size)."""
    template = _envelope(client, broker)
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    run = uuid.uuid4().hex[:8]
    sample = b""
    pipe = broker.pipeline(transaction=False)
    for n in range(jobs):
        kwargs = _message_kwargs(n, run)
        task_id = str(uuid.uuid4())
        message = copy.deepcopy(template)
        message["body"] = base64.b64encode(json.dumps([[], kwargs, embed]).encode()).decode()
        message["headers"].update(id=task_id, root_id=task_id, kwargsrepr=repr(kwargs))
        message["properties"].update(correlation_id=task_id, delivery_tag=str(uuid.uuid4()))
        encoded = json.dumps(message).encode()
        sample = sample or encoded
        pipe.lpush(QUEUE, encoded)
        if (n + 1) % chunk == 0:
            pipe.execute()
    pipe.execute()
    return sample


def _processed(client: Celery, nodes: list[str]) -> int:
    stats = client.control.inspect(destination=nodes, timeout=2.0).stats() or {}
    return sum(int(s.get("total", {}).get(TASK, 0)) for s in stats.values())


def run_baseline(
    broker_url: str, jobs: int, nodes: list[str], timeout: float = 600
) -> dict[str, Any]:
    """Publishes ``jobs`` messages with the consumers stopped, then times the drain."""
    client = make_app(broker_url)
    control = client.control
    before = _processed(client, nodes)
    control.cancel_consumer(QUEUE, destination=nodes, reply=True, timeout=5.0)
    run = uuid.uuid4().hex[:8]
    start_publish = time.perf_counter()
    with client.producer_or_acquire() as producer:
        for n in range(jobs):
            client.send_task(TASK, kwargs=_message_kwargs(n, run), queue=QUEUE, producer=producer)
    publish_seconds = time.perf_counter() - start_publish
    broker = redis.Redis.from_url(broker_url)
    try:
        message = broker.lindex(QUEUE, 0)
        waiting = int(broker.llen(QUEUE))
        if waiting < jobs:
            raise RuntimeError(f"only {waiting} of {jobs} baseline messages are waiting")
        started = time.perf_counter()
        control.add_consumer(QUEUE, destination=nodes, reply=True, timeout=5.0)
        deadline = time.monotonic() + timeout
        while True:
            pipe = broker.pipeline(transaction=False)
            pipe.llen(QUEUE)
            pipe.hlen("unacked")
            queued, unacked = pipe.execute()
            if int(queued) == 0 and int(unacked) == 0:
                drained = time.perf_counter() - started
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the baseline did not drain in {timeout}s")
            time.sleep(0.02)
    finally:
        broker.close()
    ran = _processed(client, nodes) - before
    client.close()
    if ran < jobs:
        raise RuntimeError(f"the baseline drained but ran {ran} of {jobs} tasks")
    return {
        "jobs": jobs,
        "seconds": drained,
        "jobs_per_min": jobs / drained * 60,
        "publish_seconds": publish_seconds,
        "publish_per_s": jobs / publish_seconds,
        "message_bytes": len(message) if message else None,
    }
