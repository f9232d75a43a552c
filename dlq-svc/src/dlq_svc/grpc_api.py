"""The gRPC servicer for ``relayq.v1.DeadLetterService``: decode, call :class:`DeadLetters`,
encode. Every domain error leaves through :func:`relayq_core.grpc_server.abort_with`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from dlq_svc import convert, validation
from dlq_svc.auth import ACTOR_KEY, metadata_value
from dlq_svc.model import DeadLetter, Selection
from dlq_svc.service import DeadLetters
from relayq.v1 import dead_letter_pb2 as pb
from relayq.v1 import dead_letter_pb2_grpc
from relayq_core.errors import RelayqError
from relayq_core.grpc_server import Registration, abort_with

Context = grpc.aio.ServicerContext[Any, Any]


def _actor(context: Context) -> str:
    return validation.actor(metadata_value(context.invocation_metadata(), ACTOR_KEY))


class DeadLetterServicer(dead_letter_pb2_grpc.DeadLetterServiceServicer):
    """Thin adapter: the logic lives in ``dlq_svc.service``, ``replay`` and ``validation``."""

    def __init__(
        self,
        service: DeadLetters,
        *,
        trace_url_template: str,
        max_ids: int,
        redact_fields: frozenset[str] = frozenset(),
    ) -> None:
        self._service = service
        self._trace_url_template = trace_url_template
        self._max_ids = max_ids
        self._redact_fields = redact_fields

    def _entry(self, entry: DeadLetter) -> pb.DeadLetter:
        """An entry as clients see it: payload fields named in RELAYQ_REDACT_FIELDS masked."""
        return convert.dead_letter_to_proto(entry, self._trace_url_template, self._redact_fields)

    def _selection(
        self, ids: Any, has_filter: bool, f: pb.DeadLetterFilter, action: str
    ) -> Selection:
        return validation.selection(
            list(ids),
            convert.filter_from_proto(f) if has_filter else None,
            max_ids=self._max_ids,
            action=action,
        )

    async def ReportDeadLetter(
        self, request: pb.ReportDeadLetterRequest, context: Context
    ) -> pb.ReportDeadLetterResponse:
        try:
            outcome = await self._service.report(convert.report_from_proto(request))
        except RelayqError as exc:
            await abort_with(context, exc)
        return pb.ReportDeadLetterResponse(
            dead_letter=self._entry(outcome.entry),
            duplicate=outcome.duplicate,
        )

    async def ListDeadLetters(
        self, request: pb.ListDeadLettersRequest, context: Context
    ) -> pb.ListDeadLettersResponse:
        try:
            page = await self._service.page(
                convert.filter_from_proto(request.filter),
                validation.page_size(request.page_size),
                validation.decode_page_token(request.page_token),
            )
        except RelayqError as exc:
            await abort_with(context, exc)
        return pb.ListDeadLettersResponse(
            dead_letters=[self._entry(e) for e in page.entries],
            next_page_token=validation.encode_page_token(page.next) if page.next else "",
        )

    async def GetDeadLetter(
        self, request: pb.GetDeadLetterRequest, context: Context
    ) -> pb.GetDeadLetterResponse:
        try:
            entry = await self._service.get(validation.entry_id(request.id))
        except RelayqError as exc:
            await abort_with(context, exc)
        return pb.GetDeadLetterResponse(dead_letter=self._entry(entry))

    async def GetDeadLetterStats(
        self, request: pb.GetDeadLetterStatsRequest, context: Context
    ) -> pb.GetDeadLetterStatsResponse:
        try:
            stats = await self._service.stats()
        except RelayqError as exc:
            await abort_with(context, exc)
        return convert.stats_to_proto(stats)

    async def ReplayDeadLetters(
        self, request: pb.ReplayDeadLettersRequest, context: Context
    ) -> AsyncIterator[pb.ReplayDeadLettersResponse]:
        try:
            selection = self._selection(
                request.ids, request.HasField("filter"), request.filter, "replay"
            )
            progress = self._service.replay(
                selection,
                dry_run=request.dry_run,
                rate=validation.rate_limit(request.rate_per_second),
                actor=_actor(context),
                note=validation.replay_note(request.reason),
            )
            async for step in progress:
                yield convert.progress_to_proto(step)
        except RelayqError as exc:
            await abort_with(context, exc)

    async def DropDeadLetters(
        self, request: pb.DropDeadLettersRequest, context: Context
    ) -> pb.DropDeadLettersResponse:
        try:
            selection = self._selection(
                request.ids, request.HasField("filter"), request.filter, "drop"
            )
            dropped = await self._service.drop(
                selection,
                reason=validation.drop_reason(request.reason),
                actor=_actor(context),
                dry_run=request.dry_run,
            )
        except RelayqError as exc:
            await abort_with(context, exc)
        return pb.DropDeadLettersResponse(
            ids=[r.job_id for r in dropped], count=len(dropped), dry_run=request.dry_run
        )

    async def PurgeDeadLetters(
        self, request: pb.PurgeDeadLettersRequest, context: Context
    ) -> pb.PurgeDeadLettersResponse:
        try:
            count = await self._service.purge(
                validation.retention(request.older_than_days),
                dry_run=request.dry_run,
                actor=_actor(context),
            )
        except RelayqError as exc:
            await abort_with(context, exc)
        return pb.PurgeDeadLettersResponse(count=count, dry_run=request.dry_run)


def registration(servicer: dead_letter_pb2_grpc.DeadLetterServiceServicer) -> Registration:
    """How :func:`relayq_core.grpc_server.start_server` mounts the servicer."""
    return Registration(
        full_name=pb.DESCRIPTOR.services_by_name["DeadLetterService"].full_name,
        add=lambda server: dead_letter_pb2_grpc.add_DeadLetterServiceServicer_to_server(
            servicer, server
        ),
    )
