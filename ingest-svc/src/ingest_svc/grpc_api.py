"""The gRPC servicer for ``relayq.v1.IngestService``: decode, call :class:`JobService`, encode."""

from __future__ import annotations

from typing import Any

import grpc

from ingest_svc import convert
from ingest_svc.metrics import count_rejected
from ingest_svc.submit import JobService
from ingest_svc.validation import Limits, validate_job_id, validate_submission
from relayq.v1 import ingest_pb2, ingest_pb2_grpc
from relayq_core.catalog import Catalog
from relayq_core.errors import InvalidArgument, RelayqError
from relayq_core.grpc_server import Registration, abort_with
from relayq_core.jobs import JobSpec
from relayq_core.telemetry import current_trace_id

Context = grpc.aio.ServicerContext[Any, Any]


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    """Thin adapter: the logic lives in ``ingest_svc.submit`` and ``ingest_svc.validation``."""

    def __init__(self, jobs: JobService, catalog: Catalog, limits: Limits, max_batch: int) -> None:
        self._jobs = jobs
        self._catalog = catalog
        self._limits = limits
        self._max_batch = max_batch

    def _validate(self, req: ingest_pb2.SubmitJobRequest) -> tuple[JobSpec, bool]:
        try:
            spec = validate_submission(
                self._catalog,
                self._limits,
                trace_id=current_trace_id(),
                **convert.submission_from_proto(req),
            )
        except RelayqError:
            count_rejected(self._catalog, req.task, req.queue)
            raise
        return spec, not req.job_id

    async def SubmitJob(
        self, request: ingest_pb2.SubmitJobRequest, context: Context
    ) -> ingest_pb2.SubmitJobResponse:
        try:
            spec, generated = self._validate(request)
            (result,) = await self._jobs.submit(
                [spec], generated_ids={spec.job_id} if generated else None
            )
        except RelayqError as exc:
            await abort_with(context, exc)
        if isinstance(result, RelayqError):
            await abort_with(context, result)
        return convert.submit_result_to_proto(result)

    async def SubmitJobs(
        self, request: ingest_pb2.SubmitJobsRequest, context: Context
    ) -> ingest_pb2.SubmitJobsResponse:
        if not request.jobs:
            await abort_with(context, InvalidArgument("jobs must hold at least one job"))
        if len(request.jobs) > self._max_batch:
            await abort_with(
                context,
                InvalidArgument(
                    f"a batch holds at most {self._max_batch} jobs, not {len(request.jobs)}"
                ),
            )
        answers: list[ingest_pb2.SubmitJobsResult | None] = [None] * len(request.jobs)
        valid: list[tuple[int, JobSpec]] = []
        generated: set[str] = set()
        for index, item in enumerate(request.jobs):
            try:
                spec, made_up = self._validate(item)
            except RelayqError as exc:
                answers[index] = ingest_pb2.SubmitJobsResult(
                    index=index,
                    error=ingest_pb2.ItemError(code=exc.code.name, message=exc.message),
                )
                continue
            valid.append((index, spec))
            if made_up:
                generated.add(spec.job_id)
        try:
            outcomes = await self._jobs.submit([s for _, s in valid], generated_ids=generated)
        except RelayqError as exc:
            await abort_with(context, exc)
        for (index, _), outcome in zip(valid, outcomes, strict=True):
            if isinstance(outcome, RelayqError):
                answers[index] = ingest_pb2.SubmitJobsResult(
                    index=index,
                    error=ingest_pb2.ItemError(code=outcome.code.name, message=outcome.message),
                )
            else:
                answers[index] = ingest_pb2.SubmitJobsResult(
                    index=index, job=convert.submit_result_to_proto(outcome)
                )
        return ingest_pb2.SubmitJobsResponse(results=[a for a in answers if a is not None])

    async def GetJob(
        self, request: ingest_pb2.GetJobRequest, context: Context
    ) -> ingest_pb2.GetJobResponse:
        try:
            job = await self._jobs.get_job(validate_job_id(request.job_id))
        except RelayqError as exc:
            await abort_with(context, exc)
        return ingest_pb2.GetJobResponse(job=convert.job_to_proto(job))


def registration(servicer: IngestServicer) -> Registration:
    """How :func:`relayq_core.grpc_server.start_server` mounts the servicer."""
    return Registration(
        full_name=ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name,
        add=lambda server: ingest_pb2_grpc.add_IngestServiceServicer_to_server(servicer, server),
    )
