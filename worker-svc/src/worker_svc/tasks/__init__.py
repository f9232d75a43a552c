"""Celery tasks, one module per family. Each task is one line: :func:`execute` with its handler.

They are Celery shared tasks: they name no app, and the worker app (worker_svc.app) picks them
up when it imports this package.
"""

from worker_svc.tasks import demo

__all__ = ["demo"]
