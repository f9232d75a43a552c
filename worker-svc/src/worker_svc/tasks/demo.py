"""The demo tasks (``demo.*``)."""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task

from worker_svc.execute import execute
from worker_svc.handlers import demo


@shared_task(name="demo.echo", bind=True)
def echo(self: Task, **message: Any) -> Any:
    """Returns its payload."""
    return execute(self, demo.echo, message)


@shared_task(name="demo.slow", bind=True)
def slow(self: Task, **message: Any) -> Any:
    """Takes ``payload.ms`` milliseconds."""
    return execute(self, demo.slow, message)


@shared_task(name="demo.charge", bind=True)
def charge(self: Task, **message: Any) -> Any:
    """Charges ``payload.amount_cents`` to ``payload.account``, once per idempotency key."""
    return execute(self, demo.charge, message)


@shared_task(name="demo.transfer", bind=True)
def transfer(self: Task, **message: Any) -> Any:
    """Moves ``payload.amount_cents`` between two accounts, with a journal row."""
    return execute(self, demo.transfer, message)


@shared_task(name="demo.webhook", bind=True)
def webhook(self: Task, **message: Any) -> Any:
    """POSTs ``payload.body`` to ``payload.url`` with the job's Idempotency-Key."""
    return execute(self, demo.webhook, message)


@shared_task(name="demo.hang", bind=True)
def hang(self: Task, **message: Any) -> Any:
    """Never returns (``payload.mode``: async, blocking or stubborn)."""
    return execute(self, demo.hang, message)


@shared_task(name="demo.flaky", bind=True)
def flaky(self: Task, **message: Any) -> Any:
    """Fails the first ``payload.fail_times`` attempts, then succeeds."""
    return execute(self, demo.flaky, message)


@shared_task(name="demo.fail", bind=True)
def fail(self: Task, **message: Any) -> Any:
    """Always fails (permanently when ``payload.permanent``)."""
    return execute(self, demo.fail, message)


@shared_task(name="demo.crash", bind=True)
def crash(self: Task, **message: Any) -> Any:
    """Kills its worker process: a poison job."""
    return execute(self, demo.crash, message)
