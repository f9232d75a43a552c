"""Finished spans as OTLP JSON lines in a directory: one file per process, bounded in size.

The encoding and the writing are OpenTelemetry's own file exporter
(``opentelemetry-exporter-otlp-json-file``): each line is one ``TracesData`` object in the
standard OTLP JSON encoding (hex trace and span ids, lowerCamelCase keys), as the OTel
specification's file exporter and the Collector's ``otlpjsonfile`` receiver define it. This
module only decides *which* file it writes to:

- ``<dir>/<service>-<pid>.jsonl``, opened on the first export in the process that exports, so a
  Celery prefork child never writes into its parent's file (one writer per file: lines never
  interleave);
- rotated at ``max_bytes`` (the full file becomes ``….jsonl.1``, replacing an older one);
- when a process opens its file, the oldest files in the directory are deleted until the
  directory holds at most :data:`DIRECTORY_BUDGET` times ``max_bytes`` (processes that exited
  leave their files behind).

The batch span processor in front of it (telemetry.py) does the batching and flushes on
shutdown; every export is written and flushed before it returns.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.exporter.otlp.json.file.trace_exporter import FileSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

#: The directory is pruned (oldest files first) to this many times a process's ``max_bytes``.
DIRECTORY_BUDGET = 8
#: The suffixes of span files (current and rotated).
SUFFIXES = (".jsonl", ".jsonl.1")


def span_files(directory: Path) -> list[Path]:
    """The span files in ``directory`` (current and rotated), oldest first."""
    if not directory.is_dir():
        return []
    files = [p for p in directory.iterdir() if p.is_file() and p.name.endswith(SUFFIXES)]
    return sorted(files, key=_mtime)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def prune(directory: Path, budget_bytes: int, keep: Path | None = None) -> list[Path]:
    """Deletes the oldest span files until the rest take at most ``budget_bytes``; never
    ``keep``. Returns what it deleted."""
    files = [p for p in span_files(directory) if p != keep]
    sizes = {p: p.stat().st_size if p.exists() else 0 for p in files}
    total = sum(sizes.values()) + (keep.stat().st_size if keep and keep.exists() else 0)
    deleted = []
    for path in files:
        if total <= budget_bytes:
            break
        path.unlink(missing_ok=True)
        total -= sizes[path]
        deleted.append(path)
    return deleted


class ProcessSpanFile(SpanExporter):
    """A span exporter writing ``service``'s spans to this process's file in ``directory``."""

    def __init__(self, directory: Path, service: str, max_bytes: int) -> None:
        self._directory = directory
        self._service = re.sub(r"[^A-Za-z0-9_.-]", "_", service) or "relayq"
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._pid = -1
        self._file: FileSpanExporter | None = None
        self._closed = False
        os.register_at_fork(after_in_child=self._forget_parent)

    @property
    def path(self) -> Path:
        """The file this process writes (whether or not it exists yet)."""
        return self._directory / f"{self._service}-{os.getpid()}.jsonl"

    def _forget_parent(self) -> None:
        # The parent's file and lock are not this process's: a fresh lock (the parent may have
        # held it at the fork) and a file of its own on the first export.
        self._lock = threading.Lock()
        self._file = None

    def _current(self) -> FileSpanExporter:
        if self._file is None or self._pid != os.getpid():
            self._directory.mkdir(parents=True, exist_ok=True)
            prune(self._directory, DIRECTORY_BUDGET * self._max_bytes, keep=self.path)
            self._file = FileSpanExporter(self.path)
            self._pid = os.getpid()
        return self._file

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Writes ``spans`` as one line; rotates the file once it reaches ``max_bytes``."""
        with self._lock:
            if self._closed:
                return SpanExportResult.FAILURE
            try:
                current = self._current()
            except OSError:
                return SpanExportResult.FAILURE
            result = current.export(spans)
            try:
                full = self.path.stat().st_size >= self._max_bytes
            except OSError:
                full = False  # pruned by another process while open: a new file next time
                current.shutdown()
                self._file = None
            if full:
                current.shutdown()
                self._file = None
                with contextlib.suppress(OSError):
                    os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            return result

    def shutdown(self) -> None:
        """Closes the file (after the processor's last export)."""
        with self._lock:
            self._closed = True
            if self._file is not None and self._pid == os.getpid():
                self._file.shutdown()
            self._file = None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Every export is flushed before it returns: nothing to do."""
        return True
