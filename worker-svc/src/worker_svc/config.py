"""worker-svc settings: the only place this service reads its environment."""

from __future__ import annotations

import functools
from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from relayq_core.settings import CommonSettings, packaged_default


class WorkerSettings(CommonSettings):
    """``RELAYQ_WORKER_*`` plus the stack-wide ``RELAYQ_*`` values."""

    model_config = SettingsConfigDict(env_prefix="RELAYQ_WORKER_", extra="ignore", frozen=True)

    concurrency: int = Field(4, gt=0, description="Prefork pool processes in this worker")
    node_name: str = Field("", description="Celery node name (e.g. worker1@%h); empty: default")
    queues: str = Field("", description="Comma-separated queues; empty: every catalogue queue")
    prefetch_multiplier: int = Field(1, gt=0)
    retry_policy_path: Path = Field(
        default_factory=lambda: packaged_default("retry.toml"),
        validation_alias="RELAYQ_RETRY_POLICY",
        description="The retry policy file (TOML)",
    )
    dlq_grpc: str = Field(
        "127.0.0.1:50052", validation_alias="RELAYQ_DLQ_GRPC", description="dlq-svc address"
    )
    dlq_timeout_seconds: float = Field(5.0, gt=0, description="Deadline of one DLQ report")
    dlq_retry_max_seconds: float = Field(
        60.0, gt=0, description="Longest wait between DLQ report retries while dlq-svc is down"
    )
    lock_wait_seconds: float = Field(
        10.0, gt=0, description="How long a duplicate delivery waits for the running one"
    )
    defer_seconds: float = Field(5.0, gt=0, description="Then it is re-tried after this delay")
    metrics_port: int = Field(
        9200, ge=0, le=65535, description="/metrics port (on by default); 0: no metrics"
    )
    metrics_host: str = Field("127.0.0.1")
    metrics_dir: Path | None = Field(
        None, description="Where pool processes share metric files; default: a fresh temp dir"
    )
    stall_seconds: float = Field(
        60.0,
        ge=0,
        description="The watchdog stops a node that received nothing for this long while its "
        "queue had messages and it had a free slot (docs/reliability.md); 0: no watchdog",
    )
    watchdog_interval_seconds: float = Field(5.0, gt=0, description="Between watchdog samples")
    stall_exit_grace_seconds: float = Field(
        30.0, gt=0, description="A stalled node's warm shutdown gets this long, then it exits"
    )
    task_events: bool = Field(
        False, description="Send per-task events (Flower's task views); costs consumer CPU"
    )
    lease_seconds: float = Field(
        15.0,
        ge=3,
        description="A running attempt's lease: renewed every third of it while its handler "
        "runs; a worker cut off from the database for most of it stops the handler (cancelled, "
        "or its process killed) before another delivery may take the job over "
        "(docs/reliability.md)",
    )
    kill_grace_seconds: float = Field(
        10.0,
        gt=0,
        description="A handler still running this long after its time limit (it ignored the "
        "cancellation, or blocks the event loop) is stopped by killing its pool process",
    )
    dead_peer_seconds: float = Field(
        20.0,
        ge=2,
        description="PostgreSQL drops a worker session whose peer went silent (a partition, a "
        "host lost) after about this long, releasing its jobs' locks (TCP keepalives and "
        "tcp_user_timeout on every worker connection)",
    )
    http_timeout_seconds: float = Field(
        10.0, gt=0, description="Handlers' HTTP client: the longest wait for each read or write"
    )
    http_connect_timeout_seconds: float = Field(
        5.0, gt=0, description="Handlers' HTTP client: the longest wait for a connection"
    )
    unsafe_skip_claim: bool = Field(
        False,
        description="TEST ONLY: run deliveries without the job's lock and claim, so duplicate "
        "messages apply effects twice. It exists so that tests can prove the audits catch "
        "that; never set it anywhere else",
    )


@functools.cache
def load() -> WorkerSettings:
    """This process's settings, read from the environment once."""
    return WorkerSettings()
