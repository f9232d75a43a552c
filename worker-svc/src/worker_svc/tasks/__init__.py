"""Celery tasks, one module per family. Each task is one line: :func:`execute` with its handler."""

from worker_svc.tasks import demo

__all__ = ["demo"]
