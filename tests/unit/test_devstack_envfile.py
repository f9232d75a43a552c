"""stack.env: the writer and the reader agree, and the file is plain dotenv."""

from __future__ import annotations

from pathlib import Path

import pytest

from relayq_devstack.envfile import format_env, parse_env, read_env, write_env

STACK = {
    "RELAYQ_INGEST_GRPC": "127.0.0.1:50051",
    "RELAYQ_INGEST_HTTP": "http://127.0.0.1:8000",
    "RELAYQ_DLQ_GRPC": "127.0.0.1:50052",
    "RELAYQ_REDIS_URL": "redis://127.0.0.1:23456/0",
    "RELAYQ_DATABASE_URL": "postgresql://postgres@127.0.0.1:23457/relayq",
    "RELAYQ_FLOWER_URL": "http://127.0.0.1:5555",
    "RELAYQ_METRICS_URL": "http://127.0.0.1:9100",
}


def test_round_trip_keeps_values_and_order(tmp_path: Path) -> None:
    path = tmp_path / "stack.env"
    write_env(path, STACK, header="written by a test\nsecond line")
    assert read_env(path) == STACK
    assert list(read_env(path)) == list(STACK)
    assert not list(tmp_path.glob(".stack.env.*")), "no temporary file left behind"


def test_urls_are_written_bare_so_a_shell_can_source_them() -> None:
    text = format_env(STACK, header="comment")
    assert text.splitlines()[0] == "# comment"
    assert "RELAYQ_DATABASE_URL=postgresql://postgres@127.0.0.1:23457/relayq" in text.splitlines()


@pytest.mark.parametrize(
    "value", ["", "two words", 'a "quoted" value', "back\\slash", "line\nbreak", "x # not comment"]
)
def test_awkward_values_round_trip(value: str) -> None:
    assert parse_env(format_env({"KEY": value})) == {"KEY": value}


def test_reader_accepts_common_dotenv_forms() -> None:
    text = """
    # comment
    export A=1
    B = 'single # quoted'
    C="double"  # trailing comment
    D=bare # trailing comment
    """
    assert parse_env(text) == {"A": "1", "B": "single # quoted", "C": "double", "D": "bare"}


def test_rejects_what_is_not_dotenv() -> None:
    with pytest.raises(ValueError):
        parse_env("just words")
    with pytest.raises(ValueError):
        format_env({"not a name": "x"})
