"""The demo tasks (``demo.*``)."""

from __future__ import annotations

from typing import Any

from celery import Task

from worker_svc.app import app
from worker_svc.execute import execute
from worker_svc.handlers import demo


@app.task(name="demo.echo", bind=True)
def echo(self: Task, **message: Any) -> Any:
    """Returns its payload."""
    return execute(self, demo.echo, message)


@app.task(name="demo.slow", bind=True)
def slow(self: Task, **message: Any) -> Any:
    """Takes ``payload.ms`` milliseconds."""
    return execute(self, demo.slow, message)


@app.task(name="demo.charge", bind=True)
def charge(self: Task, **message: Any) -> Any:
    """Charges ``payload.amount_cents`` to ``payload.account``, once per idempotency key."""
    return execute(self, demo.charge, message)


@app.task(name="demo.flaky", bind=True)
def flaky(self: Task, **message: Any) -> Any:
    """Fails the first ``payload.fail_times`` attempts, then succeeds."""
    return execute(self, demo.flaky, message)


@app.task(name="demo.fail", bind=True)
def fail(self: Task, **message: Any) -> Any:
    """Always fails (permanently when ``payload.permanent``)."""
    return execute(self, demo.fail, message)


@app.task(name="demo.crash", bind=True)
def crash(self: Task, **message: Any) -> Any:
    """Kills its worker process: a poison job."""
    return execute(self, demo.crash, message)
