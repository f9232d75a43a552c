"""``relayq-trace``: a fixed set of spans, written by the real exporter, read back and drawn.

The spans are what the services make for a job that fails twice into the DLQ and is replayed
(names, kinds, parents and attributes as in the services), with fixed times and ids, written by
:class:`relayq_core.tracefile.ProcessSpanFile` into one file per service, with another job's
spans around them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from relayq_core.tracefile import ProcessSpanFile
from relayq_devstack import trace_cli
from relayq_devstack.traces import JobNotFound, NoSpanFiles, job_trace

T0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
MS = 1_000_000


class Sequential(IdGenerator):
    """Ids 1, 2, 3 ... (trace ids 0xa1, 0xa2 ...): the output is the same on every run."""

    def __init__(self) -> None:
        self.spans = 0
        self.traces = 0

    def generate_span_id(self) -> int:
        self.spans += 1
        return self.spans

    def generate_trace_id(self) -> int:
        self.traces += 1
        return 0xA0 + self.traces


class Stack:
    """One tracer provider (and span file) per service, sharing the id sequence."""

    def __init__(self, directory: Path) -> None:
        ids = Sequential()
        self.providers: dict[str, TracerProvider] = {}
        for service in ("ingest-svc", "worker-svc", "dlq-svc"):
            provider = TracerProvider(
                resource=Resource.create({"service.name": service}), id_generator=ids
            )
            provider.add_span_processor(
                SimpleSpanProcessor(ProcessSpanFile(directory, service, 1 << 20))
            )
            self.providers[service] = provider

    def span(
        self,
        service: str,
        name: str,
        start_ms: float,
        end_ms: float,
        parent: SdkSpan | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        error: str = "",
        events: dict[str, dict[str, Any]] | None = None,
        links: list[Link] | None = None,
        **attributes: Any,
    ) -> SdkSpan:
        tracer = self.providers[service].get_tracer("test")
        context = trace.set_span_in_context(parent) if parent is not None else None
        span = tracer.start_span(
            name,
            context=context,
            kind=kind,
            attributes={k.replace("__", "."): v for k, v in attributes.items()},
            links=links,
            start_time=T0 + int(start_ms * MS),
        )
        for event, event_attributes in (events or {}).items():
            span.add_event(event, event_attributes, timestamp=T0 + int(start_ms * MS) + MS)
        if error:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=T0 + int(end_ms * MS))
        assert isinstance(span, SdkSpan)
        return span


def exception(kind: str, message: str) -> dict[str, dict[str, Any]]:
    return {"exception": {"exception.type": kind, "exception.message": message}}


@pytest.fixture
def spans(tmp_path: Path) -> Iterator[Path]:
    """job-1: submitted, two attempts, dead-lettered, replayed 10 s later and run again;
    job-2 (another job of the same batch submit) and job-9 (unrelated) around it."""
    s = Stack(tmp_path)
    submit = s.span(
        "ingest-svc",
        "/relayq.v1.IngestService/SubmitJobs",
        0,
        5,
        kind=SpanKind.SERVER,
        relayq__job_ids=["job-1", "job-2"],
    )
    publish = s.span(
        "ingest-svc", "publish", 2, 3, submit, SpanKind.PRODUCER, relayq__job_ids=["job-1", "job-2"]
    )
    # a span under the batch's publish that names no job (an uninstrumented hop) stays with it
    s.span("worker-svc", "run/demo.echo", 8, 9, publish, SpanKind.CONSUMER)
    s.span("worker-svc", "run/demo.echo", 9, 11, publish, SpanKind.CONSUMER, relayq__job_id="job-2")
    run1 = s.span(
        "worker-svc",
        "run/demo.fail",
        10,
        30,
        publish,
        SpanKind.CONSUMER,
        error="RuntimeError: boom",
        events=exception("RuntimeError", "boom\nsecond line"),
        relayq__job_id="job-1",
        relayq__attempt=1,
        relayq__outcome="retry_scheduled",
        relayq__retry_in_seconds=0.1,
        error__type="RuntimeError",
    )
    retry = s.span("worker-svc", "apply_async/demo.fail", 25, 26, run1, SpanKind.PRODUCER)
    run2 = s.span(
        "worker-svc",
        "run/demo.fail",
        130,
        160,
        retry,
        SpanKind.CONSUMER,
        error="RuntimeError: boom",
        events=exception("RuntimeError", "boom"),
        relayq__job_id="job-1",
        relayq__attempt=2,
        relayq__outcome="dead_lettered",
        relayq__dlq_reason="retries_exhausted",
        error__type="RuntimeError",
    )
    report = s.span(
        "worker-svc",
        "/relayq.v1.DeadLetterService/ReportDeadLetter",
        140,
        150,
        run2,
        SpanKind.CLIENT,
        rpc__grpc__status_code=0,
    )
    s.span(
        "dlq-svc",
        "/relayq.v1.DeadLetterService/ReportDeadLetter",
        142,
        148,
        report,
        SpanKind.SERVER,
        relayq__job_id="job-1",
        relayq__dlq_reason="retries_exhausted",
        relayq__attempt=2,
    )
    s.span("worker-svc", "run/demo.echo", 200, 201, kind=SpanKind.CONSUMER, relayq__job_id="job-9")
    original = submit.get_span_context()
    rpc = s.span(
        "dlq-svc", "/relayq.v1.DeadLetterService/ReplayDeadLetters", 10_000, 10_020, None,
        SpanKind.SERVER,
    )  # fmt: skip
    replay = s.span(
        "dlq-svc",
        "relayq.replay",
        10_002,
        10_010,
        rpc,
        links=[Link(original)],
        relayq__job_id="job-1",
        relayq__replay_of_trace_id=format(original.trace_id, "032x"),
    )
    republish = s.span("dlq-svc", "publish", 10_004, 10_006, replay, SpanKind.PRODUCER)
    s.span(
        "worker-svc",
        "run/demo.fail",
        10_012,
        10_040,
        republish,
        SpanKind.CONSUMER,
        relayq__job_id="job-1",
        relayq__attempt=3,
        relayq__outcome="succeeded",
    )
    yield tmp_path


#: The waterfall of job-1 at width 12 (a file: its lines are wider than the code's).
EXPECTED = (Path(__file__).parents[1] / "data" / "trace-waterfall.txt").read_text()


def test_the_waterfall_of_a_failed_dead_lettered_and_replayed_job(spans: Path) -> None:
    result = job_trace(spans, "job-1")
    assert trace_cli.render(result, width=12) == EXPECTED


def test_the_json_has_every_span_in_order_with_its_attributes(spans: Path) -> None:
    data = trace_cli.as_json(job_trace(spans, "job-1"))
    assert data["version"] == 1 and data["job_id"] == "job-1"
    first, replay = data["traces"]
    assert [(s["depth"], s["service"], s["name"]) for s in first["spans"]][:4] == [
        (0, "ingest-svc", "/relayq.v1.IngestService/SubmitJobs"),
        (1, "ingest-svc", "publish"),
        (2, "worker-svc", "run/demo.echo"),
        (2, "worker-svc", "run/demo.fail"),
    ]
    assert data["attempts"] == [
        {
            "attempt": n,
            "outcome": outcome,
            "error_type": error,
            "dlq_reason": reason,
            "trace_id": trace_id,
            "span_id": span_id,
        }
        for n, outcome, error, reason, trace_id, span_id in [
            (1, "retry_scheduled", "RuntimeError", None, first["trace_id"], "0000000000000005"),
            (2, "dead_lettered", "RuntimeError", "retries_exhausted", first["trace_id"],
             "0000000000000007"),
            (3, "succeeded", None, None, replay["trace_id"], "000000000000000e"),
        ]
    ]  # fmt: skip
    attempts = [s for t in data["traces"] for s in t["spans"] if s["name"] == "run/demo.fail"]
    assert [a["attributes"]["relayq.attempt"] for a in attempts] == [1, 2, 3]
    assert [a["status"] for a in attempts] == ["error", "error", "unset"]
    assert attempts[0]["events"][0] == {
        "name": "exception",
        "offset_ms": 11.0,
        "attributes": {"exception.type": "RuntimeError", "exception.message": "boom\nsecond line"},
    }
    assert replay["links_to"] == [first["trace_id"]]
    assert replay["spans"][1]["links"][0]["trace_id"] == first["trace_id"]
    assert replay["spans"][1]["parent_span_id"] == replay["spans"][0]["span_id"]
    json.dumps(data)  # plain JSON types only


def test_another_job_of_the_same_batch_shows_its_own_attempts_only(spans: Path) -> None:
    result = job_trace(spans, "job-2")
    names = [(n.span.name, n.span.attributes.get("relayq.job_id")) for n in result.traces[0].nodes]
    assert names == [
        ("/relayq.v1.IngestService/SubmitJobs", None),
        ("publish", None),
        ("run/demo.echo", None),  # names no job: it stays with the trace
        ("run/demo.echo", "job-2"),
    ]
    assert len(result.traces) == 1


def test_a_torn_last_line_is_skipped(spans: Path) -> None:
    worker = next(spans.glob("worker-svc-*.jsonl"))
    with worker.open("a") as fh:
        fh.write('{"resourceSpans":[{"resource":{"attri')
    assert len(job_trace(spans, "job-1").traces) == 2


def test_the_cli_says_what_is_missing_and_exits_non_zero(
    spans: Path, tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    assert trace_cli.main(["job-404", "--dir", str(spans)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("relayq-trace: no span of job job-404 in the 3 span files in ")
    assert len(err.strip().splitlines()) == 1
    empty = tmp_path_factory.mktemp("empty")
    assert trace_cli.main(["job-1", "--dir", str(empty)]) == 2
    assert capsys.readouterr().err.startswith(f"relayq-trace: no span files in {empty}")
    with pytest.raises(NoSpanFiles):
        job_trace(empty / "missing", "job-1")
    with pytest.raises(JobNotFound):
        job_trace(spans, "job-404")


def test_the_cli_prints_the_waterfall_and_json(
    spans: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELAYQ_TRACES_DIR", str(spans))  # the default --dir
    assert trace_cli.main(["job-1", "--width", "12"]) == 0
    assert capsys.readouterr().out == EXPECTED
    assert trace_cli.main(["job-1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["job_id"] == "job-1"


def test_the_command_starts_without_importing_the_stacks_servers() -> None:
    """On call, at 3am: relayq-trace answers in a fraction of a second (redis alone costs ~2 s
    to import), so the package imports its server modules on first use only."""
    code = (
        "import sys, relayq_devstack.trace_cli; "
        "print(sorted({'redis', 'psutil'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
