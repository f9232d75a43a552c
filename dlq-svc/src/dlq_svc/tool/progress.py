"""A progress bar on stderr for bulk replays, from the ``done``/``total`` the stream carries.

On a terminal it redraws one line in place; otherwise (a log, a CI job) it writes a plain line
at every tenth of the way, so the output stays readable.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

from dlq_svc.tool.render import format_span

BAR_WIDTH = 30
REDRAW_SECONDS = 0.1


class Progress:
    """Shows ``done`` of ``total`` with a rate and an estimate of the time left."""

    def __init__(
        self,
        stream: TextIO,
        *,
        label: str,
        interactive: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._label = label
        self._interactive = interactive
        self._clock = clock
        self._started = clock()
        self._last_draw = float("-inf")
        self._last_tenth = -1
        self._drawn = False

    def line(self, done: int, total: int) -> str:
        """The text for ``done`` of ``total``: bar, count, percentage, rate, time left."""
        fraction = done / total if total > 0 else 1.0
        filled = round(BAR_WIDTH * fraction)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        text = f"{self._label} [{bar}] {done}/{total} {fraction:4.0%}"
        elapsed = self._clock() - self._started
        if done and elapsed > 0:
            rate = done / elapsed
            text += f"  {rate:.1f}/s"
            if done < total:
                text += f"  eta {format_span((total - done) / rate)}"
        return text

    def update(self, done: int, total: int) -> None:
        """Records progress; draws when the line is due."""
        now = self._clock()
        if self._interactive:
            if done >= total or now - self._last_draw >= REDRAW_SECONDS:
                self._stream.write("\r" + self.line(done, total) + "\x1b[K")
                self._stream.flush()
                self._last_draw = now
                self._drawn = True
            return
        tenth = 10 * done // total if total > 0 else 10
        if tenth != self._last_tenth:
            self._stream.write(self.line(done, total) + "\n")
            self._stream.flush()
            self._last_tenth = tenth

    def close(self) -> None:
        """Ends the in-place line, so what follows starts on a fresh one."""
        if self._interactive and self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False
