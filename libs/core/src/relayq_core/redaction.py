"""Keeping secrets and sensitive payload fields out of what people read: logs and displays.

Two kinds of masking, both replacing a value with :data:`MASK`:

- **secrets**, always: the value of any key named like a credential (``authorization``,
  ``password``, ``secret``, ``token``, ``api_key``, ``x-api-key`` ...), a ``Bearer``/``Basic``
  credential or a URL's password inside any text (``postgresql://user:***@host``), and
  ``password=...``-style assignments in text;
- **configured payload fields** (``RELAYQ_REDACT_FIELDS``, e.g. ``card_number,cvv``), at any
  depth, by exact name (case-insensitive).

Masking makes a copy: the stored payload, which a replay needs intact, is never touched.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

MASK = "***"

_SECRET_KEY = re.compile(
    r"authorization|passw(or)?d|secret|token|api[-_]?key|private[-_]?key|cookie|credential",
    re.IGNORECASE,
)
# A Bearer token (one with a digit or punctuation, or 8+ letters: "the bearer of" is prose), or
# Basic credentials (base64, 8+ characters).
_CREDENTIAL = re.compile(
    r"\b(bearer)(\s+)(?=\S*[0-9\-._~+/=]|[A-Za-z]{8})[A-Za-z0-9\-._~+/]+=*"
    r"|\b(basic)(\s+)[A-Za-z0-9+/]{8,}=*",
    re.IGNORECASE,
)
_URL_PASSWORD = re.compile(r"\b([a-z][a-z0-9+.\-]*://[^\s:/@]*:)[^\s@/]+@", re.IGNORECASE)
# key=value (query strings, DSN parameters) and quoted-key forms ('password': 'x', "token": "x").
_ASSIGNMENT = re.compile(
    r"""((?:passw(?:or)?d|pwd|secret|token|api[-_]?key|authorization)["']?"""
    r"""(?:\s*=\s*|["']?\s*:\s*["']))([^\s"'&;,}]+)""",
    re.IGNORECASE,
)


# Every pattern above needs one of these in the text: most values (ids, names, numbers) have
# none, and one search clears them instead of three substitutions.
_MAYBE_SECRET = re.compile(
    r"bearer|basic|://|passw|pwd|secret|token|api[-_]?key|authorization", re.IGNORECASE
)


def field_names(spec: str | Iterable[str]) -> frozenset[str]:
    """Field names from ``"card_number, cvv"`` (or any iterable of names), lower-cased."""
    names = spec.split(",") if isinstance(spec, str) else spec
    return frozenset(n.strip().lower() for n in names if n.strip())


@functools.lru_cache(maxsize=4096)
def is_secret_key(name: str) -> bool:
    """Whether a key's name says its value is a credential (names repeat: cached)."""
    return bool(_SECRET_KEY.search(name))


def scrub_text(text: str) -> str:
    """``text`` with credentials and URL passwords masked."""
    if not text or not _MAYBE_SECRET.search(text):
        return text
    text = _CREDENTIAL.sub(
        lambda m: f"{m.group(1) or m.group(3)}{m.group(2) or m.group(4)}{MASK}", text
    )
    text = _URL_PASSWORD.sub(lambda m: f"{m.group(1)}{MASK}@", text)
    return _ASSIGNMENT.sub(lambda m: f"{m.group(1)}{MASK}", text)


def mask_fields(value: Any, fields: frozenset[str]) -> Any:
    """A copy of a JSON value with the values of keys named in ``fields`` masked, at any depth."""
    if not fields:
        return value
    if isinstance(value, Mapping):
        return {
            k: MASK if str(k).lower() in fields else mask_fields(v, fields)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [mask_fields(v, fields) for v in value]
    return value


def _hidden(key: Any, fields: frozenset[str]) -> bool:
    return isinstance(key, str) and (is_secret_key(key) or key.lower() in fields)


def redact(value: Any, fields: frozenset[str] = frozenset()) -> Any:
    """A copy of ``value`` with secrets masked everywhere and ``fields`` masked at any depth.

    Handles mappings, lists, tuples (a ``("x-api-key", "...")`` metadata pair is masked as
    well) and text; other values are returned as they are.
    """
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, Mapping):
        return {k: MASK if _hidden(k, fields) else redact(v, fields) for k, v in value.items()}
    if isinstance(value, tuple):
        if len(value) == 2 and _hidden(value[0], fields):
            return (value[0], MASK)
        return tuple(redact(v, fields) for v in value)
    if isinstance(value, list):
        if len(value) == 2 and _hidden(value[0], fields):
            return [value[0], MASK]
        return [redact(v, fields) for v in value]
    return value


class Redactor:
    """A structlog processor: masks secrets and ``fields`` in every event, just before rendering.

    The event's own name and the logger's bookkeeping keys are never masked as keys (their
    text is still scrubbed).
    """

    _KEEP = frozenset({"event", "level", "timestamp", "logger", "service"})

    def __init__(self, fields: frozenset[str] = frozenset()) -> None:
        self._fields = fields

    def __call__(
        self, _: Any, __: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in list(event.items()):
            if key not in self._KEEP and _hidden(key, self._fields):
                event[key] = MASK
            else:
                event[key] = redact(value, self._fields)
        return event
