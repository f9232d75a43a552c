"""Hypothesis strategies for hostile input: injection-looking text, odd Unicode, wrong shapes,
deep nesting, huge values, and byte-level corruption of valid requests."""

from __future__ import annotations

import uuid
from typing import Any

from google.protobuf import struct_pb2
from hypothesis import strategies as st

from relayq_core.catalog import load_catalog
from relayq_core.settings import packaged_default

#: The catalogue's tasks: the only names ingest accepts (Hypothesis also draws string constants
#: it finds in the code, so a name missing here would come up as an "unknown" task accepted).
TASKS = tuple(sorted(load_catalog(packaged_default("tasks.toml")).tasks))

#: Text that has broken parsers, SQL and terminals before.
NASTY = (
    "' OR '1'='1",
    "'; DROP TABLE relayq_jobs; --",
    '" OR ""="',
    "1; SELECT pg_sleep(10)",
    "$1",
    "::text",
    "%",
    "_",
    "%%",
    "%_%",
    "\\",
    "\\%",
    "\\_",
    "NULL",
    "null",
    "\x00",
    "a\x00b",
    "demo.echo\x00",
    "default\x00",
    "\x7f",
    "\x1b[2J",
    "\r\n",
    "\t",
    "\u202e",
    "\ufeff",
    "\uffff",
    "\U0001f600",
    "{{7*7}}",
    "${jndi:ldap://x/a}",
    "../../etc/passwd",
    "<script>alert(1)</script>",
    " demo.echo",
    "demo.echo ",
    "DEMO.ECHO",
    "%s%s%s%n",
    "\\x00",
    "\\u0000",
    "NaN",
    "Infinity",
    "-0",
    "",
)

#: Long text: around the limits (255-character keys, 1000-character filters) and far past them.
long_text = st.builds(
    lambda unit, n: unit * n,
    st.sampled_from(["x", "%", "_", "\x00", "é", "\U0001f600", "' OR 1=1 --"]),
    st.integers(min_value=100, max_value=5000),
)

hostile_text = st.one_of(
    st.sampled_from(NASTY),
    st.text(max_size=40),  # any code point but surrogates: controls, combining marks, astral
    st.text(st.characters(codec="ascii"), max_size=40),
    long_text,
)

#: Lone surrogates: valid in a JSON string escape ("\ud800"), not encodable as UTF-8.
surrogate_text = st.builds(
    lambda head, s, tail: head + s + tail,
    st.text(st.characters(codec="ascii"), max_size=5),
    st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3),
    st.text(st.characters(codec="ascii"), max_size=5),
)

ids = st.one_of(
    st.just(""),
    st.uuids().map(str),
    st.uuids().map(lambda u: f"fz:{u.hex}"),
    hostile_text,
)

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(),  # NaN, infinities, -0.0, subnormals
    hostile_text,
)

json_value = st.recursive(
    json_leaf,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(hostile_text, kids, max_size=4),
    max_leaves=20,
)


def nested(depth: int, kind: str = "dict") -> Any:
    """A value nested ``depth`` levels deep: dicts or lists."""
    value: Any = 1
    for _ in range(depth):
        value = {"a": value} if kind == "dict" else [value]
    return value


payload_dicts = st.one_of(
    st.dictionaries(hostile_text, json_value, max_size=6),
    st.builds(
        lambda d, kind: {"deep": nested(d, kind)},
        st.integers(min_value=20, max_value=60),
        st.sampled_from(["dict", "list"]),
    ),
    st.builds(lambda n: {"many": [0] * n}, st.integers(min_value=1000, max_value=20_000)),
    st.builds(lambda n: {f"k{i}": i for i in range(n)}, st.integers(min_value=500, max_value=3000)),
)


def unique_key() -> str:
    """A fresh idempotency key (so accepted jobs never collide across examples)."""
    return f"fz-{uuid.uuid4()}"


def struct(payload: dict[str, Any]) -> struct_pb2.Struct:
    """``payload`` as a protobuf Struct."""
    out = struct_pb2.Struct()
    out.update(payload)
    return out


#: Byte sequences that are not UTF-8: a stray continuation byte, a truncated sequence, an
#: overlong encoding, an encoded surrogate, a code point past U+10FFFF, bytes never used.
INVALID_UTF8 = (
    b"\x80",
    b"\xc3\x28",
    b"\xe2\x82",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xfe",
    b"\xff",
)
MARK = "~~MARK~~"


def corrupt_marker(data: bytes, bad: bytes) -> bytes:
    """``data`` with the UTF-8 of :data:`MARK` replaced by ``bad``, padded to the same length,
    so the message's lengths stay right and only the text becomes invalid UTF-8."""
    mark = MARK.encode()
    assert mark in data
    replacement = (bad + b"A" * len(mark))[: len(mark)]
    return data.replace(mark, replacement, 1)


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """Valid request bytes, damaged: bytes flipped, cut short, extended, or thrown away."""
    how = draw(st.sampled_from(["flip", "truncate", "append", "random", "insert"]))
    if how == "flip" and data:
        out = bytearray(data)
        for _ in range(draw(st.integers(min_value=1, max_value=4))):
            i = draw(st.integers(min_value=0, max_value=len(out) - 1))
            out[i] = draw(st.integers(min_value=0, max_value=255))
        return bytes(out)
    if how == "truncate" and data:
        return data[: draw(st.integers(min_value=0, max_value=len(data) - 1))]
    if how == "insert" and data:
        i = draw(st.integers(min_value=0, max_value=len(data)))
        return data[:i] + draw(st.binary(min_size=1, max_size=8)) + data[i:]
    if how == "append":
        return data + draw(st.binary(min_size=1, max_size=32))
    return draw(st.binary(max_size=256))
