"""The dead-letter operations behind the gRPC API: plain code over a :class:`Store`.

The servicer decodes a request, calls one method here and encodes the answer; tests call these
methods directly too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

from dlq_svc.metrics import DROPS, REPORTS
from dlq_svc.model import (
    Cursor,
    DeadLetter,
    DeadLetterReport,
    EntryRef,
    Filter,
    Page,
    ReplayProgress,
    ReportOutcome,
    Selection,
    Stats,
    Status,
)
from dlq_svc.replay import Replayer
from dlq_svc.store import Store
from relayq_core.errors import NotFound
from relayq_core.logging import get_logger, job_context
from relayq_core.telemetry import JOB_ID, tag_current_span

log = get_logger(__name__)


def _quoted(ids: list[str], most: int = 5) -> str:
    shown = ", ".join(f'"{i}"' for i in ids[:most])
    return shown + (f" and {len(ids) - most} more" if len(ids) > most else "")


class DeadLetters:
    """Report, read, replay, drop and purge dead letters."""

    def __init__(self, store: Store, replayer: Replayer) -> None:
        self._store = store
        self._replayer = replayer

    async def report(self, report: DeadLetterReport) -> ReportOutcome:
        """Stores a worker's report (idempotent on job and final attempt)."""
        outcome = await self._store.report(report)
        tag_current_span(
            {
                JOB_ID: report.job_id,
                "relayq.dlq_reason": report.reason.value,
                "relayq.attempt": report.final_attempt,
                "error.type": report.error_type,
                "relayq.duplicate": outcome.duplicate,
            }
        )
        if not outcome.duplicate:
            REPORTS.labels(task=report.task, reason=report.reason.value).inc()
        with job_context(report.job_id, report.idempotency_key, task=report.task):
            log.info(
                "dead_letter_report_duplicate" if outcome.duplicate else "dead_letter_reported",
                reason=report.reason.value,
                final_attempt=report.final_attempt,
                error_type=report.error_type,
                worker=report.worker,
                status=outcome.entry.status.value,
                dead_letter_count=outcome.entry.dead_letter_count,
            )
        return outcome

    async def get(self, job_id: str) -> DeadLetter:
        """One entry with its traceback and audit trail; NotFound if there is none."""
        entry = await self._store.get(job_id)
        if entry is None:
            raise NotFound(f'no dead letter with id "{job_id}"')
        return entry

    async def page(self, filter: Filter, page_size: int, after: Cursor | None) -> Page:
        """One page, newest first."""
        return await self._store.page(filter, page_size, after)

    async def stats(self) -> Stats:
        """Counts by task, reason and status; the oldest active entry."""
        return await self._store.stats()

    def replay(
        self,
        selection: Selection,
        *,
        dry_run: bool,
        rate: float | None,
        actor: str,
        note: str,
    ) -> AsyncIterator[ReplayProgress]:
        """Replays the selection; see :mod:`dlq_svc.replay`."""
        return self._replayer.run(selection, dry_run=dry_run, rate=rate, actor=actor, note=note)

    async def drop(
        self, selection: Selection, *, reason: str, actor: str, dry_run: bool
    ) -> list[EntryRef]:
        """Takes the selected active entries out of the active DLQ; those dropped (or that
        would be). By ids, every id must exist (else NotFound and nothing is dropped); entries
        that are not active are left as they are."""
        if selection.filter is not None:
            refs = await self._store.select(selection.filter)
        else:
            found = await self._store.find(selection.ids)
            missing = [i for i in selection.ids if i not in found]
            if missing:
                raise NotFound(f"no dead letter with id {_quoted(missing)}; nothing was dropped")
            refs = [found[i] for i in selection.ids]
        refs = [r for r in refs if r.status is Status.ACTIVE]
        if dry_run:
            log.info("dead_letter_drop_dry_run", count=len(refs), actor=actor)
            return refs
        done = {r.job_id for r in await self._store.drop([r.job_id for r in refs], actor, reason)}
        # In the selection's order (ids as given, a filter oldest first), not the database's.
        dropped = [r for r in refs if r.job_id in done]
        for ref in dropped:
            DROPS.labels(task=ref.task).inc()
            with job_context(ref.job_id, ref.idempotency_key, task=ref.task):
                log.info("dead_letter_dropped", actor=actor, reason=reason)
        return dropped

    async def purge(self, older_than: timedelta, *, dry_run: bool, actor: str) -> int:
        """Deletes entries dropped more than ``older_than`` ago; how many (or would be)."""
        cutoff = datetime.now(UTC) - older_than
        count = await self._store.purge(cutoff, dry_run=dry_run)
        log.info(
            "dead_letters_purged",
            count=count,
            dry_run=dry_run,
            dropped_before=cutoff.isoformat(),
            actor=actor,
        )
        return count
