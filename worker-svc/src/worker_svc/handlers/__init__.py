"""Plain job handlers: ``async def handler(ctx: JobContext, payload: dict) -> JSON``.

They know nothing about Celery; unit tests call them directly.
"""
