"""ghz-style call data templates, and the requests the load tool builds from them."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from relayq.v1 import ingest_pb2
from relayq_load.calls import CallSpecError, RequestFactory, resolve, template_as_json
from relayq_load.cli import go_duration
from relayq_load.template import CallData, CallTemplate, MethodNames, TemplateError

NAMES = MethodNames(
    "relayq.v1.IngestService.SubmitJob",
    "SubmitJob",
    "IngestService",
    "SubmitJobRequest",
    "SubmitJobResponse",
)


def render(text: str, number: int = 7, now_ns: int = 1_700_000_000_123_456_789) -> str:
    return CallTemplate(text).render(CallData(number, "w3", now_ns, NAMES))


def test_a_template_without_actions_is_static() -> None:
    template = CallTemplate('{"task": "demo.echo"}')
    assert template.is_static
    assert render('{"task": "demo.echo"}') == '{"task": "demo.echo"}'


def test_request_number_and_timestamps_render_as_ghz_does() -> None:
    out = render(
        '{"n": {{.RequestNumber}}, "s": {{.TimestampUnix}}, "ms": {{.TimestampUnixMilli}}, '
        '"ns": {{.TimestampUnixNano}}, "w": "{{.WorkerID}}"}'
    )
    assert json.loads(out) == {
        "n": 7,
        "s": 1_700_000_000,
        "ms": 1_700_000_000_123,
        "ns": 1_700_000_000_123_456_789,
        "w": "w3",
    }


def test_timestamp_is_rfc3339_to_the_second() -> None:
    out = render("{{.Timestamp}}", now_ns=1_700_000_000_999_000_000)
    assert "." not in out
    assert datetime.fromisoformat(out) == datetime.fromtimestamp(1_700_000_000, UTC)


def test_uuid_is_one_per_request_and_new_uuid_is_fresh_each_time() -> None:
    out = json.loads(render('["{{.UUID}}", "{{.UUID}}", "{{newUUID}}", "{{ newUUID }}"]'))
    assert out[0] == out[1]
    assert len({out[1], out[2], out[3]}) == 3
    for value in out:
        assert uuid.UUID(value).version == 4
    again = json.loads(render('["{{.UUID}}"]'))
    assert again[0] != out[0]


def test_method_names() -> None:
    out = render("{{.FullyQualifiedName}} {{.MethodName}} {{.ServiceName}} {{.InputName}}")
    assert out == "relayq.v1.IngestService.SubmitJob SubmitJob IngestService SubmitJobRequest"
    assert render("{{.OutputName}}") == "SubmitJobResponse"


def test_random_functions() -> None:
    assert len(render("{{randomString 12}}")) == 12
    assert 2 <= len(render("{{randomString 0}}")) <= 16
    values = {int(render("{{randomInt 3 6}}")) for _ in range(200)}
    assert values == {3, 4, 5}


@pytest.mark.parametrize(
    "text",
    ["{{.RequestNumbr}}", "{{uuid}}", "{{}}", "{{randomInt 5}}", "{{randomInt 5 1}}"],
)
def test_unknown_or_malformed_actions_fail_at_compile_time(text: str) -> None:
    with pytest.raises(TemplateError):
        CallTemplate(text)


def test_resolve_accepts_both_ghz_spellings() -> None:
    dotted = resolve("relayq.v1.IngestService.SubmitJob")
    slashed = resolve("relayq.v1.IngestService/SubmitJob")
    assert dotted.path == slashed.path == "/relayq.v1.IngestService/SubmitJob"
    assert dotted.request_class is ingest_pb2.SubmitJobRequest
    with pytest.raises(CallSpecError):
        resolve("relayq.v1.IngestService.Nope")


def test_single_requests_come_from_the_rendered_json() -> None:
    factory = RequestFactory(
        resolve("relayq.v1.IngestService.SubmitJob"),
        '{"task": "demo.echo", "payload": {"n": {{.RequestNumber}}}, '
        '"idempotency_key": "k-{{.RequestNumber}}"}',
    )
    request = factory.build(41)
    assert isinstance(request, ingest_pb2.SubmitJobRequest)
    assert request.task == "demo.echo"
    assert request.idempotency_key == "k-41"
    assert request.payload["n"] == 41
    assert factory.jobs_per_request == 1


def test_a_batch_carries_batch_size_elements_numbered_by_element() -> None:
    factory = RequestFactory(
        resolve("relayq.v1.IngestService.SubmitJobs"),
        '{"task": "demo.echo", "idempotency_key": "k-{{.RequestNumber}}"}',
        batch_size=3,
    )
    request = factory.build(2)
    assert isinstance(request, ingest_pb2.SubmitJobsRequest)
    assert [job.idempotency_key for job in request.jobs] == ["k-6", "k-7", "k-8"]
    assert factory.jobs_per_request == 3


def test_a_template_that_already_holds_the_batch_is_sent_as_it_is() -> None:
    factory = RequestFactory(
        resolve("relayq.v1.IngestService.SubmitJobs"),
        '{"jobs": [{"task": "demo.echo"}, {"task": "demo.slow", "payload": {"ms": 1}}]}',
        batch_size=10,
    )
    request = factory.build(0)
    assert isinstance(request, ingest_pb2.SubmitJobsRequest)
    assert [job.task for job in request.jobs] == ["demo.echo", "demo.slow"]
    assert factory.jobs_per_request == 1


def test_bad_data_fails_before_the_run() -> None:
    with pytest.raises(CallSpecError):
        RequestFactory(resolve("relayq.v1.IngestService.SubmitJob"), '{"tsak": "x"}')
    with pytest.raises(CallSpecError):
        RequestFactory(resolve("relayq.v1.IngestService.SubmitJob"), "{not json")
    with pytest.raises(CallSpecError):
        RequestFactory(resolve("relayq.v1.IngestService.SubmitJob"), "{}", batch_size=5)


def test_options_data_is_the_parsed_template_or_omitted() -> None:
    assert template_as_json('{"task": "demo.echo"}') == {"task": "demo.echo"}
    # An unquoted action is not JSON until rendered: ghz leaves options.data out then.
    assert template_as_json('{"n": {{.RequestNumber}}}') is None
    assert template_as_json("") is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10s", 10.0), ("1m30s", 90.0), ("250ms", 0.25), ("1h", 3600.0), ("2", 2.0), ("1.5s", 1.5)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert go_duration(text) == pytest.approx(seconds)
