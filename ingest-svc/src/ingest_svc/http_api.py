"""``POST /v1/jobs`` and ``GET /v1/jobs/{job_id}`` for webhooks and curl users.

The same validation and the same :class:`JobService` as gRPC; errors are JSON
``{"error": {"code": "INVALID_ARGUMENT", "message": "..."}}`` with a matching HTTP status.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict

from ingest_svc.metrics import count_rejected
from ingest_svc.submit import JobService
from ingest_svc.validation import Limits, validate_job_id, validate_submission
from relayq_core.catalog import Catalog
from relayq_core.errors import InvalidArgument, RelayqError
from relayq_core.jobs import JobRecord, SubmitResult
from relayq_core.telemetry import current_trace_id


class SubmitBody(BaseModel):
    """A job, as JSON. ``payload`` is checked by the shared validation, not by pydantic."""

    model_config = ConfigDict(extra="forbid")

    task: str = ""
    payload: Any = None
    job_id: str = ""
    idempotency_key: str = ""
    queue: str = ""


def _error(exc: RelayqError) -> JSONResponse:
    return JSONResponse(
        status_code=exc.http_status,
        content={"error": {"code": exc.code.name, "message": exc.message}},
    )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _submit_json(result: SubmitResult) -> dict[str, Any]:
    return {
        "job_id": result.job_id,
        "idempotency_key": result.idempotency_key,
        "queue": result.queue,
        "state": result.state.value,
        "duplicate": result.duplicate,
    }


def _job_json(job: JobRecord) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "idempotency_key": job.idempotency_key,
        "task": job.task,
        "queue": job.queue,
        "payload": job.payload,
        "state": job.state.value,
        "attempt_count": job.attempt_count,
        "duplicate_deliveries": job.duplicate_deliveries,
        "worker_losses": job.worker_losses,
        "attempts": [
            {
                "number": a.number,
                "worker": a.worker,
                "started_at": _iso(a.started_at),
                "duration_seconds": a.duration_seconds,
                "outcome": a.outcome,
                "error_type": a.error_type,
                "error_message": a.error_message,
                "countdown_seconds": a.countdown_seconds,
            }
            for a in job.attempts
        ],
        "result": job.result,
        "last_error": job.last_error,
        "trace_id": job.trace_id,
        "created_at": _iso(job.created_at),
        "updated_at": _iso(job.updated_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "next_attempt_at": _iso(job.next_attempt_at),
    }


def create_app(jobs: JobService, catalog: Catalog, limits: Limits) -> FastAPI:
    """The HTTP front door over ``jobs``."""
    app = FastAPI(title="relayq ingest", version="1", docs_url="/docs", redoc_url=None)

    @app.exception_handler(RelayqError)
    async def relayq_error(_: Request, exc: RelayqError) -> JSONResponse:
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def body_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        what = first.get("msg", "invalid request")
        return _error(InvalidArgument(f"{where}: {what}" if where else what))

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/jobs", status_code=201)
    async def submit_job(
        body: SubmitBody, idempotency_key: str | None = Header(default=None)
    ) -> JSONResponse:
        key = body.idempotency_key or (idempotency_key or "")
        try:
            spec = validate_submission(
                catalog,
                limits,
                task=body.task,
                payload=body.payload,
                job_id=body.job_id,
                idempotency_key=key,
                queue=body.queue,
                trace_id=current_trace_id(),
            )
        except RelayqError:
            count_rejected(catalog, body.task, body.queue)
            raise
        (result,) = await jobs.submit([spec], generated_ids=None if body.job_id else {spec.job_id})
        if isinstance(result, RelayqError):
            return _error(result)
        return JSONResponse(
            status_code=200 if result.duplicate else 201, content=_submit_json(result)
        )

    @app.get("/v1/jobs/{job_id}")
    async def get_job(job_id: str) -> dict[str, Any]:
        return _job_json(await jobs.get_job(validate_job_id(job_id)))

    return app
