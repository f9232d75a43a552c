"""Secrets never reach a log line, and payload fields named in RELAYQ_REDACT_FIELDS are masked in
the DLQ's display but kept in the stored payload that a replay publishes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid

import pytest
from google.protobuf import json_format

from relayq.v1 import dead_letter_pb2 as pb
from relayq_core.catalog import Catalog
from tests.conftest import broker_messages
from tests.integration.dlq_fixtures import dlq_server, report_request

pytestmark = pytest.mark.integration

SECRETS = {
    "admin token": "dlq-admin-7f3a9c2e51",
    "api key": "rq_live_9d8e7f6a5b",
    "db password": "hunter2-pg-pass",
    "redis password": "r3dis-pass-word",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig",
    "card": "4111111111111111",
    "cvv": "987",
}

LOGGING_SCRIPT = textwrap.dedent(
    """
    import logging, sys
    from relayq_core.logging import configure_logging, get_logger

    s = {secrets!r}
    configure_logging("redaction-test", json=True, redact_fields=["card_number", "cvv"])
    log = get_logger("t")
    log.info("call_refused", authorization="Bearer " + s["admin token"])
    log.info("metadata_seen", metadata=[("x-api-key", s["api key"]), ("x-relayq-actor", "me")])
    log.info("settings_loaded", admin_token=s["admin token"], password=s["db password"],
             api_key=s["api key"], database_url="postgresql://relayq:" + s["db password"]
             + "@db:5432/relayq")
    log.info("payload_seen", payload={{"card_number": s["card"], "nested": [{{"CVV": s["cvv"]}}]}})
    log.warning("upstream_said", text="401 for Authorization: Bearer " + s["jwt"])
    logging.getLogger("kombu").warning(
        "Cannot connect to redis://:%s@cache:6379/0: refused", s["redis password"]
    )
    try:
        raise ConnectionError("postgresql://relayq:" + s["db password"] + "@db/relayq is down")
    except ConnectionError:
        log.exception("database_unreachable")
        logging.getLogger("asyncpg").exception("pool failed")
    """
)


def test_secrets_never_reach_the_log() -> None:
    """The real configure_logging, in a process of its own: structlog and stdlib lines alike."""
    script = LOGGING_SCRIPT.format(secrets=SECRETS)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    events = [line["event"] for line in lines]
    assert events[:5] == [
        "call_refused",
        "metadata_seen",
        "settings_loaded",
        "payload_seen",
        "upstream_said",
    ]
    assert len(lines) == 8, done.stderr  # every line still written, with its secrets masked
    for name, secret in SECRETS.items():
        assert secret not in done.stderr, name
    assert "postgresql://relayq:***@db:5432/relayq" in done.stderr
    by_event = {line["event"]: line for line in lines}
    assert by_event["payload_seen"]["payload"] == {"card_number": "***", "nested": [{"CVV": "***"}]}
    assert by_event["metadata_seen"]["metadata"] == [["x-api-key", "***"], ["x-relayq-actor", "me"]]


@pytest.mark.asyncio(loop_scope="session")
async def test_dlq_display_masks_named_fields_and_replay_publishes_the_original(
    database_url: str, quiet_broker_url: str, catalog: Catalog
) -> None:
    payload = {"card_number": SECRETS["card"], "order": {"cvv": SECRETS["cvv"], "id": 7}}
    async with dlq_server(
        database_url, quiet_broker_url, catalog, redact_fields="card_number, CVV"
    ) as dlq:
        task = f"t{uuid.uuid4().hex[:10]}.redact"
        report = report_request(task=task, payload=payload)
        reported = await dlq.stub.ReportDeadLetter(report)
        shown = await dlq.stub.GetDeadLetter(pb.GetDeadLetterRequest(id=report.job_id))
        listed = await dlq.stub.ListDeadLetters(
            pb.ListDeadLettersRequest(filter=pb.DeadLetterFilter(task=task))
        )
        for entry in (reported.dead_letter, shown.dead_letter, *listed.dead_letters):
            got = json_format.MessageToDict(entry.payload)
            assert got == {"card_number": "***", "order": {"cvv": "***", "id": 7.0}}
        stored = await dlq.pool.fetchval(
            "SELECT payload FROM dlq_entries WHERE job_id = $1", report.job_id
        )
        assert stored == payload, "the stored payload keeps every field"

        results = await dlq.replay(ids=[report.job_id])
        assert results[-1].result == "replayed"
    sent = [
        m
        for m in broker_messages(quiet_broker_url, "default")
        if m["kwargs"]["job_id"] == report.job_id
    ]
    assert len(sent) == 1
    assert sent[0]["kwargs"]["payload"] == payload, "replay publishes the original values"
