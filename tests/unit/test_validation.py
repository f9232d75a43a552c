"""The submission rules shared by gRPC and HTTP."""

from __future__ import annotations

from typing import Any

import pytest

from ingest_svc.validation import Limits, validate_job_id, validate_submission
from relayq_core.catalog import Catalog, TaskSpec
from relayq_core.errors import InvalidArgument
from relayq_core.jobs import JobSpec

CATALOG = Catalog(
    default_queue="default",
    tasks={
        "demo.echo": TaskSpec("demo.echo", "default"),
        "mail.send": TaskSpec("mail.send", "mail"),
    },
)
LIMITS = Limits(max_payload_bytes=1024, max_payload_depth=4)


def submit(**fields: Any) -> JobSpec:
    args: dict[str, Any] = {"task": "demo.echo", "payload": {}}
    args.update(fields)
    return validate_submission(CATALOG, LIMITS, **args)


def test_defaults_fill_job_id_key_and_queue() -> None:
    spec = submit(payload={"x": 1})
    assert len(spec.job_id) == 36
    assert spec.idempotency_key == spec.job_id
    assert spec.queue == "default"
    assert submit(task="mail.send").queue == "mail"


def test_client_ids_are_kept() -> None:
    spec = submit(job_id="order-42", idempotency_key="charge:order-42")
    assert (spec.job_id, spec.idempotency_key) == ("order-42", "charge:order-42")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"task": ""}, "task is required"),
        ({"task": "demo.nope"}, 'task "demo.nope" is not a registered task; known tasks: demo.e'),
        ({"payload": [1, 2]}, "payload must be a JSON object, not an array"),
        ({"payload": "text"}, "payload must be a JSON object, not a string"),
        ({"payload": 3}, "payload must be a JSON object, not a number"),
        ({"payload": {"a": "x" * 2000}}, "bytes as JSON; the limit is 1024"),
        ({"payload": {"a": {"b": {"c": {"d": 1}}}}}, "nested deeper than 4 levels"),
        ({"payload": {"a": float("nan")}}, "finite"),
        ({"job_id": "has space"}, "job_id must be"),
        ({"job_id": "x" * 129}, "job_id must be"),
        ({"idempotency_key": "k" * 256}, "is 256 characters long; the limit is 255"),
        ({"idempotency_key": "a\nb"}, "control characters"),
        ({"queue": "nowhere"}, 'queue "nowhere" is not served; known queues: default, mail'),
        # What PostgreSQL cannot store is refused here, not by the database (found by the fuzzer)
        ({"payload": {"a": "x\x00"}}, "payload strings must not contain NUL characters"),
        ({"payload": {"a\x00": 1}}, "payload keys must not contain NUL characters"),
        ({"payload": {"a": ["\ud800"]}}, "payload strings must be valid Unicode"),
        ({"payload": {"\udfff": 1}}, "payload keys must be valid Unicode"),
        ({"idempotency_key": "k\ud800"}, "idempotency_key must be valid Unicode"),
        ({"idempotency_key": "k\x00"}, "idempotency_key must not contain control characters"),
        ({"task": "t\ud800"}, "task must be valid Unicode"),
        ({"queue": "q\ud800"}, "queue must be valid Unicode"),
        ({"queue": "q\x00"}, "queue must not contain control characters"),
        ({"job_id": "abc\n"}, "job_id must be"),
    ],
)
def test_bad_input_names_the_problem(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        submit(**fields)
    assert message in err.value.message


def test_integral_floats_become_ints_so_grpc_and_http_agree() -> None:
    from_grpc = submit(payload={"n": 1.0, "xs": [2.0, 2.5]})
    from_http = submit(payload={"n": 1, "xs": [2, 2.5]})
    assert from_grpc.payload == {"n": 1, "xs": [2, 2.5]}
    assert from_grpc.fingerprint == from_http.fingerprint


def test_missing_payload_is_an_empty_object() -> None:
    assert submit(payload=None).payload == {}


def test_validate_job_id() -> None:
    assert validate_job_id("abc") == "abc"
    with pytest.raises(InvalidArgument, match="required"):
        validate_job_id("")
    with pytest.raises(InvalidArgument, match="not a valid"):
        validate_job_id("../etc")
    with pytest.raises(InvalidArgument, match="not a valid"):
        validate_job_id("abc\n")  # "$" would match before a final newline


def test_grpc_payloads_keep_non_finite_numbers_for_validation_to_refuse() -> None:
    """json_format.MessageToDict raised a bare ValueError on NaN (UNKNOWN to the client)."""
    from ingest_svc.convert import submission_from_proto
    from relayq.v1 import ingest_pb2

    request = ingest_pb2.SubmitJobRequest(task="demo.echo")
    request.payload.update({"x": [float("inf")], "n": 1.0, "s": "a", "b": True, "z": None})
    fields = submission_from_proto(request)
    assert fields["payload"]["x"] == [float("inf")]
    assert fields["payload"]["n"] == 1.0 and fields["payload"]["z"] is None
    with pytest.raises(InvalidArgument, match="finite"):
        validate_submission(CATALOG, LIMITS, **fields)


def test_repository_catalog_is_valid() -> None:
    from relayq_core.catalog import load_catalog
    from relayq_core.settings import packaged_default

    catalog = load_catalog(packaged_default("tasks.toml"))
    assert {"demo.echo", "demo.slow"} <= set(catalog.tasks)
