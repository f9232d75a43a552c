"""What a worker process runs deliveries with, built on first use in that process.

Nothing here is made at import time: the Celery adapter (:mod:`worker_svc.execute`) asks for
:func:`services` when its first message arrives in a pool process, after the fork, so no
connection, thread or channel is ever inherited from the parent.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from relayq_core.catalog import Catalog, load_catalog
from relayq_core.db.ledger import JobLedger
from relayq_core.retry import RetryPolicies, load_policies
from relayq_core.tls import client_tls
from worker_svc import config
from worker_svc.config import WorkerSettings
from worker_svc.dlq_client import DlqClient
from worker_svc.runtime import DeliveryLimits, Runtime


@functools.cache
def catalog() -> Catalog:
    """The task catalogue (read once per process)."""
    return load_catalog(config.load().catalog_path)


@functools.cache
def policies() -> RetryPolicies:
    """The retry policies (read once per process)."""
    return load_policies(config.load().retry_policy_path)


@dataclass(frozen=True)
class Services:
    """A worker process's collaborators."""

    settings: WorkerSettings
    catalog: Catalog
    policies: RetryPolicies
    runtime: Runtime
    ledger: JobLedger
    dlq: DlqClient


@functools.cache
def services() -> Services:
    """This process's services (built on the first call)."""
    settings = config.load()
    return Services(
        settings=settings,
        catalog=catalog(),
        policies=policies(),
        runtime=Runtime(
            settings.database_url,
            DeliveryLimits(
                lock_wait_seconds=settings.lock_wait_seconds,
                lease_seconds=settings.lease_seconds,
                kill_grace_seconds=settings.kill_grace_seconds,
                unsafe_skip_claim=settings.unsafe_skip_claim,
                dead_peer_seconds=settings.dead_peer_seconds,
            ),
            http_timeout_seconds=settings.http_timeout_seconds,
            http_connect_timeout_seconds=settings.http_connect_timeout_seconds,
        ),
        ledger=JobLedger(),
        dlq=DlqClient(settings.dlq_grpc, settings.dlq_timeout_seconds, client_tls(settings)),
    )


def shutdown() -> None:
    """Releases what this process built (a pool process shutting down); nothing if unused."""
    if services.cache_info().currsize == 0:
        return
    svc = services()

    async def close() -> None:
        await svc.dlq.close()
        await svc.runtime.close()

    svc.runtime.run(close())
