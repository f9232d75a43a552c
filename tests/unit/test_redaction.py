"""What the redaction masks, and what it leaves alone (pure)."""

from __future__ import annotations

import pytest

from relayq_core.redaction import (
    MASK,
    Redactor,
    field_names,
    is_secret_key,
    mask_fields,
    redact,
    scrub_text,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://relayq:hunter2@db:5432/relayq", "postgresql://relayq:***@db:5432/relayq"),
        ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
        ("connect to postgresql://db/relayq failed", "connect to postgresql://db/relayq failed"),
        ("authorization: Bearer abc.def-ghi", "authorization: Bearer ***"),
        ("Authorization: Basic dXNlcjpwYXNz", "Authorization: Basic ***"),
        ("RELAYQ_DLQ_ADMIN_TOKEN=t0ken rest", "RELAYQ_DLQ_ADMIN_TOKEN=*** rest"),
        ("?user=a&password=p4ss&x=1", "?user=a&password=***&x=1"),
        ("{'api_key': 'k3y', 'n': 1}", "{'api_key': '***', 'n': 1}"),
        ('{"x-api-key": "k3y"}', '{"x-api-key": "***"}'),
        # prose stays readable
        ("a basic check of the bearer of bad news", "a basic check of the bearer of bad news"),
        ("page_token is not valid", "page_token is not valid"),
    ],
)
def test_scrub_text(text: str, expected: str) -> None:
    assert scrub_text(text) == expected


@pytest.mark.parametrize(
    "key", ["authorization", "Authorization", "x-api-key", "api_key", "admin_token", "password"]
)
def test_secret_keys(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize("key", ["idempotency_key", "job_id", "task", "key", "auth", "event"])
def test_ordinary_keys(key: str) -> None:
    assert not is_secret_key(key)


def test_field_names() -> None:
    assert field_names(" card_number, CVV,,") == frozenset({"card_number", "cvv"})
    assert field_names("") == frozenset()


def test_mask_fields_at_any_depth_and_copies() -> None:
    payload = {"card_number": "4111", "order": {"items": [{"CVV": 123, "sku": "a"}]}, "n": 1}
    masked = mask_fields(payload, field_names("card_number,cvv"))
    assert masked == {"card_number": MASK, "order": {"items": [{"CVV": MASK, "sku": "a"}]}, "n": 1}
    assert payload["card_number"] == "4111", "the original is untouched"
    assert mask_fields(payload, frozenset()) is payload


def test_redact_walks_structures() -> None:
    metadata = [("x-api-key", "k"), ("authorization", "Bearer t"), ("x-relayq-actor", "me")]
    out = redact(
        {"md": metadata, "dsn": "postgresql://u:p@h/db", "payload": {"cvv": 1}}, frozenset({"cvv"})
    )
    assert out == {
        "md": [("x-api-key", MASK), ("authorization", MASK), ("x-relayq-actor", "me")],
        "dsn": "postgresql://u:***@h/db",
        "payload": {"cvv": MASK},
    }


def test_redactor_processor_keeps_the_event_name() -> None:
    event = {
        "event": "token_refreshed",
        "token": "abc",
        "idempotency_key": "k",
        "error": "Bearer zz-9f3 rejected",
    }
    out = Redactor()(None, "info", event)
    assert out == {
        "event": "token_refreshed",
        "token": MASK,
        "idempotency_key": "k",
        "error": "Bearer *** rejected",
    }
