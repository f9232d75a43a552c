"""Ingest's API keys: the configuration format and the check (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest_svc.auth import ApiKeys, hash_key, load_api_keys
from ingest_svc.config import IngestSettings
from relayq_core.errors import PermissionDenied, Unauthenticated

KEYS = ApiKeys.parse(
    [
        f"billing:{hash_key('k-billing')}",
        "",
        "# the webhooks relay",
        f"hooks:{hash_key('k-hooks')}",
    ],
    "test",
)


def test_hash_key_is_sha256_hex() -> None:
    assert hash_key("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_a_configured_key_names_its_client() -> None:
    assert KEYS.identify("k-billing") == "billing"
    assert KEYS.identify(" k-hooks ") == "hooks"


@pytest.mark.parametrize("presented", [None, ""])
def test_no_key_is_unauthenticated(presented: str | None) -> None:
    with pytest.raises(Unauthenticated, match="x-api-key"):
        KEYS.identify(presented)


@pytest.mark.parametrize("presented", ["k-billin", "K-BILLING", hash_key("k-billing"), "\ud800"])
def test_any_other_key_is_permission_denied(presented: str) -> None:
    with pytest.raises(PermissionDenied):
        KEYS.identify(presented)


@pytest.mark.parametrize(
    "entry", ["billing:k-billing", "billing", f":{hash_key('x')}", f"a b:{hash_key('x')}"]
)
def test_a_malformed_entry_fails_without_echoing_it(entry: str) -> None:
    with pytest.raises(ValueError) as err:
        ApiKeys.parse(["# fine", entry], "RELAYQ_INGEST_API_KEYS")
    assert "RELAYQ_INGEST_API_KEYS, entry 2: expected client_name:sha256hex" in str(err.value)
    assert "k-billing" not in str(err.value)


def test_file_and_inline_keys_add_up(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# clients\nbilling:{hash_key('a')}\n")
    keys = load_api_keys(keys_file, f" hooks:{hash_key('b')} ,")
    assert keys is not None
    assert (keys.identify("a"), keys.identify("b")) == ("billing", "hooks")


def test_nothing_configured_means_no_check() -> None:
    assert load_api_keys(None, "") is None
    assert load_api_keys(None, "  ") is None


def test_a_configured_but_empty_list_refuses_to_start(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# nobody yet\n")
    with pytest.raises(ValueError, match="none is listed"):
        load_api_keys(keys_file, "")


def test_settings_read_both_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RELAYQ_INGEST_API_KEYS_FILE", str(tmp_path / "keys"))
    monkeypatch.setenv("RELAYQ_INGEST_API_KEYS", f"a:{hash_key('x')}")
    settings = IngestSettings()
    assert settings.api_keys_file == tmp_path / "keys"
    assert settings.api_keys == f"a:{hash_key('x')}"
    monkeypatch.setenv("RELAYQ_INGEST_API_KEYS_FILE", "")
    assert IngestSettings().api_keys_file is None
