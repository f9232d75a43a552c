"""The shared gRPC server pieces that need no server: status message bounds."""

from __future__ import annotations

from urllib.parse import quote

from relayq_core.grpc_server import MAX_DETAILS_WIRE_BYTES, bounded_details


def wire_size(message: str) -> int:
    """The length of ``message`` as grpc-message carries it (percent-encoded UTF-8)."""
    return len(
        quote(message.encode("utf-8", "surrogatepass"), safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")
    )


def test_short_messages_are_kept() -> None:
    assert (
        bounded_details('task "x" is not a registered task') == 'task "x" is not a registered task'
    )


def test_long_messages_fit_the_trailers_whatever_their_characters() -> None:
    """A refusal quoting a long value would overflow the client's 8 KiB metadata limit and
    reach it as RESOURCE_EXHAUSTED without its message (found by the fuzzer)."""
    for unit in ("x", "é", "\U0001f600", "\x00", "%"):
        message = bounded_details(f'reason "{unit * 50_000}" is not one of ...')
        assert message.endswith("…(truncated)")
        assert wire_size(message) <= MAX_DETAILS_WIRE_BYTES
