"""``POST /v1/jobs`` and ``GET /v1/jobs/{job_id}`` for webhooks and curl users.

The same validation and the same :class:`JobService` as gRPC; errors are JSON
``{"error": {"code": "INVALID_ARGUMENT", "message": "..."}}`` with a matching HTTP status, for
every refusal: relayq's own, FastAPI's (unparsable body, unknown route, wrong method) and the
body size limit (413).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder
from pydantic import BaseModel, ConfigDict
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingest_svc.auth import ApiKeyMiddleware, ApiKeys
from ingest_svc.metrics import SubmitMetricsMiddleware, count_rejected
from ingest_svc.submit import JobService
from ingest_svc.validation import Limits, validate_job_id, validate_submission
from relayq_core.catalog import Catalog
from relayq_core.errors import InvalidArgument, RelayqError
from relayq_core.jobs import JobRecord, SubmitResult
from relayq_core.settings import DEFAULT_MAX_MESSAGE_BYTES
from relayq_core.telemetry import current_trace_id

#: The gRPC status names HTTP refusals that do not come from relayq's errors are reported as.
_HTTP_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    409: "ALREADY_EXISTS",
    413: "RESOURCE_EXHAUSTED",
    415: "INVALID_ARGUMENT",
    422: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
}
_MAX_MESSAGE_CHARS = 1000


class SubmitBody(BaseModel):
    """A job, as JSON. ``payload`` is checked by the shared validation, not by pydantic."""

    model_config = ConfigDict(extra="forbid")

    task: str = ""
    payload: Any = None
    job_id: str = ""
    idempotency_key: str = ""
    queue: str = ""


def _error_body(code: str, message: str) -> dict[str, Any]:
    # A message may quote the client's input: bounded, and lone surrogates (from a JSON
    # "\ud800" escape) spelled out, since they cannot be encoded in the UTF-8 reply.
    if len(message) > _MAX_MESSAGE_CHARS:
        message = message[:_MAX_MESSAGE_CHARS] + "…"
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return {"error": {"code": code, "message": message}}


def _error(exc: RelayqError) -> JSONResponse:
    return JSONResponse(
        status_code=exc.http_status, content=_error_body(exc.code.name, exc.message)
    )


class BodyLimit:
    """Refuses a request body over ``max_bytes`` (413, the JSON error body), whether it declares
    its length or streams it, before anything reads it. (Starlette's own limit answers in plain
    text once a Content-Length is over.)"""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = JSONResponse(
            status_code=413,
            content=_error_body(
                "RESOURCE_EXHAUSTED", f"the request body is larger than {self.max_bytes} bytes"
            ),
        )
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await too_large(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await too_large(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)


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


def create_app(
    jobs: JobService,
    catalog: Catalog,
    limits: Limits,
    *,
    max_body_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    api_keys: ApiKeys | None = None,
) -> FastAPI:
    """The HTTP front door over ``jobs``; a body over ``max_body_bytes`` is refused (413), and
    with ``api_keys`` every request but probes needs an ``X-API-Key`` (see ``ingest_svc.auth``).
    """
    app = FastAPI(title="relayq ingest", version="1", docs_url="/docs", redoc_url=None)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    if api_keys is not None:  # added last: outermost, so a refused caller's body is never read
        app.add_middleware(ApiKeyMiddleware, keys=api_keys, error_body=_error_body)
    # Outside both: a refusal by either (413, 401) is a refusal of the submit too.
    app.add_middleware(SubmitMetricsMiddleware)

    @app.exception_handler(RelayqError)
    async def relayq_error(_: Request, exc: RelayqError) -> JSONResponse:
        return _error(exc)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "INVALID_ARGUMENT")
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            # FastAPI's answer to a body json.loads gave up on other than by JSONDecodeError:
            # bytes that are not UTF-8, nesting past the parser's recursion limit.
            message = "the request body is not valid JSON (UTF-8 text, within parsing limits)"
        else:
            message = str(exc.detail)
        return JSONResponse(
            status_code=exc.status_code,
            content=_error_body(code, message),
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def body_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        what = first.get("msg", "invalid request")
        return _error(InvalidArgument(f"{where}: {what}" if where else what))

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        # OpenMetrics when asked (Prometheus does): the only format that carries exemplars.
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(REGISTRY), media_type=content_type)

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
