"""The span files: OTLP JSON lines, one file per process, rotated, pruned, flushed at shutdown."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

from relayq_core.settings import CommonSettings
from relayq_core.tracefile import ProcessSpanFile, prune, span_files


def provider(exporter: ProcessSpanFile, batch: bool = False) -> TracerProvider:
    p = TracerProvider(resource=Resource.create({"service.name": "test-svc"}))
    p.add_span_processor(
        BatchSpanProcessor(exporter, schedule_delay_millis=60_000)
        if batch
        else SimpleSpanProcessor(exporter)
    )
    return p


def names(path: Path) -> list[str]:
    """Span names in a file, in order (each line one OTLP JSON TracesData)."""
    found: list[str] = []
    for line in path.read_text().splitlines():
        for rs in json.loads(line)["resourceSpans"]:
            for scope in rs["scopeSpans"]:
                found.extend(s["name"] for s in scope["spans"])
    return found


def test_a_span_becomes_one_otlp_json_line_in_the_processs_file(tmp_path: Path) -> None:
    exporter = ProcessSpanFile(tmp_path, "test svc", 1 << 20)
    tracer = provider(exporter).get_tracer("t")
    with tracer.start_as_current_span("submit", attributes={"relayq.job_id": "j1"}):
        pass
    path = tmp_path / f"test_svc-{os.getpid()}.jsonl"
    assert exporter.path == path and span_files(tmp_path) == [path]
    data = json.loads(path.read_text())
    rs = data["resourceSpans"][0]
    assert {"key": "service.name", "value": {"stringValue": "test-svc"}} in rs["resource"][
        "attributes"
    ]
    span = rs["scopeSpans"][0]["spans"][0]
    assert span["name"] == "submit" and len(span["traceId"]) == 32 and len(span["spanId"]) == 16
    assert span["attributes"] == [{"key": "relayq.job_id", "value": {"stringValue": "j1"}}]


def test_the_file_rotates_at_max_bytes_keeping_one_old_file(tmp_path: Path) -> None:
    exporter = ProcessSpanFile(tmp_path, "svc", 2_000)
    tracer = provider(exporter).get_tracer("t")
    for n in range(30):
        with tracer.start_as_current_span(f"span-{n}", attributes={"pad": "x" * 200}):
            pass
    current, rotated = exporter.path, exporter.path.with_name(exporter.path.name + ".1")
    assert span_files(tmp_path)[0] == rotated  # one old file, no more
    assert {p.name for p in span_files(tmp_path)} <= {current.name, rotated.name}
    line = len(rotated.read_text().splitlines()[0])
    assert rotated.stat().st_size < 2_000 + line
    kept = names(rotated) + (names(current) if current.exists() else [])
    # the newest spans are kept, in order; the oldest went with the rotations
    assert kept == [f"span-{n}" for n in range(30 - len(kept), 30)] and len(kept) < 15


def test_shutdown_flushes_what_the_batch_processor_still_holds(tmp_path: Path) -> None:
    exporter = ProcessSpanFile(tmp_path, "svc", 1 << 20)
    p = provider(exporter, batch=True)
    with p.get_tracer("t").start_as_current_span("last words"):
        pass
    assert not exporter.path.exists()  # still in the batch (a minute's delay)
    p.shutdown()
    assert names(exporter.path) == ["last words"]


def test_a_forked_child_writes_its_own_file(tmp_path: Path) -> None:
    exporter = ProcessSpanFile(tmp_path, "svc", 1 << 20)
    tracer = provider(exporter).get_tracer("t")
    with tracer.start_as_current_span("parent before fork"):
        pass
    pid = os.fork()
    if pid == 0:  # the child: a span, then out without running the parent's atexit hooks
        code = 1
        try:
            with tracer.start_as_current_span("child"):
                pass
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert names(tmp_path / f"svc-{os.getpid()}.jsonl") == ["parent before fork"]
    assert names(tmp_path / f"svc-{pid}.jsonl") == ["child"]


def test_opening_a_file_prunes_the_oldest_files_to_the_budget(tmp_path: Path) -> None:
    for n in range(5):
        path = tmp_path / f"old-{n}.jsonl"
        path.write_text("x" * 1000)
        os.utime(path, (1_000_000 + n, 1_000_000 + n))
    (tmp_path / "notes.txt").write_text("y" * 5000)  # not a span file: never touched
    deleted = prune(tmp_path, 2_500)
    assert sorted(p.name for p in deleted) == ["old-0.jsonl", "old-1.jsonl", "old-2.jsonl"]
    assert sorted(p.name for p in span_files(tmp_path)) == ["old-3.jsonl", "old-4.jsonl"]
    assert (tmp_path / "notes.txt").exists()


def test_the_setting_is_read_from_relayq_traces_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RELAYQ_TRACES_DIR", str(tmp_path))
    monkeypatch.setenv("RELAYQ_TRACES_MAX_BYTES", "1000")
    settings = CommonSettings()
    assert settings.traces_dir == tmp_path and settings.traces_max_bytes == 1000
    monkeypatch.setenv("RELAYQ_TRACES_DIR", "")
    assert CommonSettings().traces_dir is None


def test_a_file_deleted_under_a_writer_is_made_again(tmp_path: Path) -> None:
    """Another process's pruning may delete a live file: the next export starts a new one."""
    exporter = ProcessSpanFile(tmp_path, "svc", 1 << 20)
    tracer = provider(exporter).get_tracer("t")
    with tracer.start_as_current_span("before"):
        pass
    exporter.path.unlink()
    with tracer.start_as_current_span("lost with the deleted file"):
        pass
    with tracer.start_as_current_span("after"):
        pass
    assert names(exporter.path) == ["after"]
