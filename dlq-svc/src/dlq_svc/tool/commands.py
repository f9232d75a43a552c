"""One function per subcommand: build the request from the parsed flags, call dlq-svc through
:class:`DlqClient`, print through :mod:`render`. Each returns its exit code.

Bulk operations (replay or drop of more than one id or by filter, and purge) change many entries
at once, so they first count what would happen (a dry run) and ask; ``--yes`` skips the
question, and without a terminal to ask on they refuse. A replay or drop by filter then acts on
exactly the entries that were counted (by id), not on whatever matches a moment later.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TextIO

from dlq_svc.tool import render
from dlq_svc.tool.args import filters_from
from dlq_svc.tool.client import MAX_IDS, DeadLetterClient
from dlq_svc.tool.errors import EXIT_OK, EXIT_USAGE, UsageError
from dlq_svc.tool.progress import Progress
from relayq.v1 import dead_letter_pb2

WOULD_REPLAY = "would_replay"
REPLAYED = "replayed"


@dataclass(frozen=True)
class Terminal:
    """Where output goes and whether there is a person to ask."""

    out: TextIO
    err: TextIO
    inp: TextIO
    # stdin is a terminal: confirmations can be asked.
    interactive: bool
    # stderr is a terminal: the progress bar redraws in place.
    err_is_tty: bool
    # stdout's width when it is a terminal (tables fit it), else None.
    width: int | None = None

    @classmethod
    def std(cls) -> Terminal:
        """The process's own streams."""
        return cls(
            out=sys.stdout,
            err=sys.stderr,
            inp=sys.stdin,
            interactive=sys.stdin is not None and sys.stdin.isatty(),
            err_is_tty=sys.stderr.isatty(),
            width=shutil.get_terminal_size().columns if sys.stdout.isatty() else None,
        )

    def print(self, text: str) -> None:
        """A line of results on stdout."""
        print(text, file=self.out)

    def note(self, text: str) -> None:
        """A line for the operator on stderr (never mixed into ``--json`` output)."""
        print(text, file=self.err)


Command = Callable[[argparse.Namespace, DeadLetterClient, Terminal, datetime], int]


def require_terminal(term: Terminal, verb: str) -> None:
    """Refuses a bulk change that nobody can confirm (exit 2)."""
    if not term.interactive:
        raise UsageError(
            f"refusing to {verb} without confirmation: stdin is not a terminal "
            "(pass --yes, or --dry-run to preview)"
        )


def confirm(term: Terminal, question: str) -> bool:
    """Asks ``question [y/N]`` on the terminal; only y/yes agrees."""
    term.err.write(f"{question} [y/N] ")
    term.err.flush()
    answer = term.inp.readline()
    if not answer.endswith("\n"):
        term.err.write("\n")  # EOF: end the prompt's line
    return answer.strip().lower() in ("y", "yes")


def chunks(ids: Sequence[str], size: int = MAX_IDS) -> Iterator[list[str]]:
    """``ids`` in slices the server accepts in one request."""
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])


def _selection(ns: argparse.Namespace) -> dead_letter_pb2.DeadLetterFilter | None:
    """The filter of a replay or drop (None when ids were given)."""
    if ns.ids:
        return None
    # --all is an empty filter: every active entry (a filter only ever selects active ones).
    return filters_from(ns).to_proto()


# -- list / show / stats -----------------------------------------------------------------------


def run_list(
    ns: argparse.Namespace, client: DeadLetterClient, term: Terminal, now: datetime
) -> int:
    """``list``: entries matching the filters, newest first, up to ``--limit``."""
    page = client.list_entries(filters_from(ns).to_proto(), limit=ns.limit, page_size=ns.page_size)
    if ns.json:
        term.print(render.dumps([render.message_dict(e) for e in page.entries]))
        return EXIT_OK
    term.print(render.entries_table(page.entries, now, width=term.width))
    if page.more:
        term.note(f"(showing {len(page.entries)}; more match: raise --limit or narrow the filters)")
    return EXIT_OK


def run_show(
    ns: argparse.Namespace, client: DeadLetterClient, term: Terminal, now: datetime
) -> int:
    """``show ID``: every field of one entry."""
    entry = client.get(ns.id)
    term.print(
        render.dumps(render.message_dict(entry)) if ns.json else render.entry_detail(entry, now)
    )
    return EXIT_OK


def run_stats(
    ns: argparse.Namespace, client: DeadLetterClient, term: Terminal, now: datetime
) -> int:
    """``stats``: counts and the oldest active entry."""
    stats = client.stats()
    term.print(
        render.dumps(render.message_dict(stats)) if ns.json else render.stats_text(stats, now)
    )
    return EXIT_OK


# -- replay ------------------------------------------------------------------------------------


def _replay_requests(
    ns: argparse.Namespace, ids: Sequence[str] | None, *, dry_run: bool
) -> list[dead_letter_pb2.ReplayDeadLettersRequest]:
    def request(
        part: Sequence[str] = (), flt: dead_letter_pb2.DeadLetterFilter | None = None
    ) -> dead_letter_pb2.ReplayDeadLettersRequest:
        return dead_letter_pb2.ReplayDeadLettersRequest(
            ids=part,
            filter=flt,
            dry_run=dry_run,
            rate_per_second=ns.rate or 0.0,
            reason=ns.note or "",
        )

    if ids is None:
        return [request(flt=_selection(ns))]
    return [request(part) for part in chunks(ids)]


def _stream(
    client: DeadLetterClient,
    requests: Sequence[dead_letter_pb2.ReplayDeadLettersRequest],
    progress: Progress | None,
    total: int | None,
) -> Iterator[dead_letter_pb2.ReplayDeadLettersResponse]:
    handled = 0
    for request in requests:
        base = handled
        for result in client.replay(request):
            handled = base + result.done
            if progress is not None:
                progress.update(handled, total if total is not None else result.total)
            yield result


def run_replay(
    ns: argparse.Namespace, client: DeadLetterClient, term: Terminal, now: datetime
) -> int:
    """``replay``: re-enqueue entries (by id or filter), rate-limited, with progress."""
    ids: list[str] | None = list(ns.ids) if ns.ids else None
    bulk = ids is None or len(ids) > 1
    if ns.dry_run:
        preview = [r for q in _replay_requests(ns, ids, dry_run=True) for r in client.replay(q)]
        _print_replay(term, ns, preview, dry_run=True)
        return EXIT_OK
    if bulk and not ns.yes:
        require_terminal(term, "replay")
        preview = [r for q in _replay_requests(ns, ids, dry_run=True) for r in client.replay(q)]
        targets = [r.id for r in preview if r.result == WOULD_REPLAY]
        skipped = [r for r in preview if r.result != WOULD_REPLAY]
        if skipped:
            term.note(f"{len(skipped)} of {len(preview)} would be skipped:")
            term.note(render.table(("ID", "RESULT"), ([r.id, r.result] for r in skipped)))
        if not targets:
            _print_replay(term, ns, [], dry_run=False)
            return EXIT_OK
        if not confirm(term, f"Replay {len(targets)} {render.plural(len(targets))}?"):
            term.note("Nothing replayed.")
            return EXIT_USAGE
        if ids is None:
            ids = targets  # exactly what was confirmed
    requests = _replay_requests(ns, ids, dry_run=False)
    progress = Progress(term.err, label="replay", interactive=term.err_is_tty) if bulk else None
    results: list[dead_letter_pb2.ReplayDeadLettersResponse] = []
    try:
        for result in _stream(client, requests, progress, len(ids) if ids else None):
            results.append(result)
    except BaseException:
        if progress is not None:
            progress.close()
        if results:
            done = sum(r.result == REPLAYED for r in results)
            term.note(f"Stopped after {len(results)} entries ({done} replayed).")
            if ns.json:
                term.print(render.dumps([render.replay_result_dict(r) for r in results]))
        raise
    if progress is not None:
        progress.close()
    _print_replay(term, ns, results, dry_run=False)
    return EXIT_OK


def _print_replay(
    term: Terminal,
    ns: argparse.Namespace,
    results: Sequence[dead_letter_pb2.ReplayDeadLettersResponse],
    *,
    dry_run: bool,
) -> None:
    if ns.json:
        term.print(render.dumps([render.replay_result_dict(r) for r in results]))
    else:
        term.print(render.replay_text(results, dry_run=dry_run))


# -- drop --------------------------------------------------------------------------------------


def _drop(
    client: DeadLetterClient,
    ns: argparse.Namespace,
    ids: Sequence[str] | None,
    *,
    dry_run: bool,
) -> dead_letter_pb2.DropDeadLettersResponse:
    if ids is None:
        return client.drop(
            dead_letter_pb2.DropDeadLettersRequest(
                filter=_selection(ns), reason=ns.note, dry_run=dry_run
            )
        )
    merged = dead_letter_pb2.DropDeadLettersResponse(dry_run=dry_run)
    for part in chunks(ids):
        reply = client.drop(
            dead_letter_pb2.DropDeadLettersRequest(ids=part, reason=ns.note, dry_run=dry_run)
        )
        merged.ids.extend(reply.ids)
        merged.count += reply.count
    return merged


def run_drop(
    ns: argparse.Namespace, client: DeadLetterClient, term: Terminal, now: datetime
) -> int:
    """``drop``: take entries out of the active DLQ with a reason (kept, audited)."""
    ids: list[str] | None = list(ns.ids) if ns.ids else None
    bulk = ids is None or len(ids) > 1
    if not ns.dry_run and bulk and not ns.yes:
        require_terminal(term, "drop")
        preview = _drop(client, ns, ids, dry_run=True)
        if preview.count == 0:
            _print_drop(term, ns, preview, ids)
            return EXIT_OK
        if not confirm(term, f"Drop {preview.count} {render.plural(preview.count)}?"):
            term.note("Nothing dropped.")
            return EXIT_USAGE
        if ids is None and len(preview.ids) == preview.count:
            ids = list(preview.ids)  # exactly what was confirmed
    reply = _drop(client, ns, ids, dry_run=ns.dry_run)
    _print_drop(term, ns, reply, ns.ids or None)
    return EXIT_OK


def _print_drop(
    term: Terminal,
    ns: argparse.Namespace,
    reply: dead_letter_pb2.DropDeadLettersResponse,
    asked: Sequence[str] | None,
) -> None:
    if ns.json:
        term.print(render.dumps(render.message_dict(reply)))
    else:
        term.print(render.drop_text(reply, asked=len(asked) if asked else None))


# -- purge -------------------------------------------------------------------------------------


def run_purge(
    ns: argparse.Namespace, client: DeadLetterClient, term: Terminal, now: datetime
) -> int:
    """``purge``: delete dropped entries whose drop is older than ``--older-than-days``."""
    days: float = ns.older_than_days
    if not ns.dry_run and not ns.yes:
        require_terminal(term, "purge")
        preview = client.purge(
            dead_letter_pb2.PurgeDeadLettersRequest(older_than_days=days, dry_run=True)
        )
        if preview.count == 0:
            _print_purge(term, ns, preview, days)
            return EXIT_OK
        question = (
            f"Purge {preview.count} dropped {render.plural(preview.count)} older than "
            f"{render.format_days(days)}? They are deleted for good."
        )
        if not confirm(term, question):
            term.note("Nothing purged.")
            return EXIT_USAGE
    reply = client.purge(
        dead_letter_pb2.PurgeDeadLettersRequest(older_than_days=days, dry_run=ns.dry_run)
    )
    _print_purge(term, ns, reply, days)
    return EXIT_OK


def _print_purge(
    term: Terminal,
    ns: argparse.Namespace,
    reply: dead_letter_pb2.PurgeDeadLettersResponse,
    days: float,
) -> None:
    term.print(
        render.dumps(render.message_dict(reply)) if ns.json else render.purge_text(reply, days)
    )


COMMANDS: dict[str, Command] = {
    "list": run_list,
    "show": run_show,
    "stats": run_stats,
    "replay": run_replay,
    "drop": run_drop,
    "purge": run_purge,
}
