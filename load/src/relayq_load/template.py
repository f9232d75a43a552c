"""ghz-style call data templates: JSON text with per-request ``{{...}}`` actions.

The actions are those of ghz's call template data (``runner/call_template_data.go``):
``{{.RequestNumber}}``, ``{{.UUID}}`` (one per request), ``{{newUUID}}`` (fresh at each use),
``{{.WorkerID}}``, ``{{.Timestamp}}`` (RFC 3339), ``{{.TimestampUnix}}``,
``{{.TimestampUnixMilli}}``, ``{{.TimestampUnixNano}}``, the method's names
(``{{.FullyQualifiedName}}``, ``{{.MethodName}}``, ``{{.ServiceName}}``, ``{{.InputName}}``,
``{{.OutputName}}``) and ``{{randomString N}}`` / ``{{randomInt MIN MAX}}``.

Like ghz, rendering is plain text substitution before the JSON is parsed, so a number action may
stand unquoted (``{"n": {{.RequestNumber}}}``). Unlike ghz, an unknown action is an error when
the template is compiled rather than a silent fallback to the raw text: a typo must not send
thousands of identical requests.

The template is compiled once into literal parts and small render functions, because it is
rendered for every request of a run.
"""

from __future__ import annotations

import random
import re
import string
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

_ACTION = re.compile(r"{{-?\s*(.*?)\s*-?}}")
_CHARSET = string.ascii_letters + string.digits


class TemplateError(ValueError):
    """The call data template has an action this tool does not know."""


@dataclass(frozen=True)
class MethodNames:
    """The names of the called method, for the ``{{.…Name}}`` actions."""

    full_name: str = ""  # relayq.v1.IngestService.SubmitJob
    method: str = ""  # SubmitJob
    service: str = ""  # IngestService
    input: str = ""  # SubmitJobRequest
    output: str = ""  # SubmitJobResponse


@dataclass
class CallData:
    """What one request's actions may refer to (ghz's ``callTemplateData``)."""

    request_number: int
    worker_id: str
    now_ns: int
    names: MethodNames
    _uuid: str | None = None

    @property
    def uuid(self) -> str:
        """The request's own UUID: the same at every ``{{.UUID}}`` of one rendering."""
        if self._uuid is None:
            self._uuid = str(uuid.uuid4())
        return self._uuid


Render = Callable[[CallData], str]


def _rfc3339(now_ns: int) -> str:
    return (
        datetime.fromtimestamp(now_ns // 1_000_000_000, UTC)
        .astimezone()
        .isoformat()
        .replace("+00:00", "Z")
    )


def _random_string(args: list[str]) -> Render:
    length = int(args[0]) if args else 0

    def render(_: CallData) -> str:
        n = length if length > 0 else random.randint(2, 16)
        return "".join(random.choices(_CHARSET, k=n))

    return render


def _random_int(args: list[str]) -> Render:
    if len(args) != 2:
        raise TemplateError("randomInt takes two arguments: {{randomInt MIN MAX}}")
    low, high = int(args[0]), int(args[1])
    if high <= low:
        raise TemplateError(f"randomInt needs MIN < MAX, got {low} and {high}")
    # Go's rand.Intn(max-min)+min: MAX itself is never drawn.
    return lambda _: str(random.randrange(low, high))


_FIELDS: dict[str, Render] = {
    ".RequestNumber": lambda d: str(d.request_number),
    ".WorkerID": lambda d: d.worker_id,
    ".UUID": lambda d: d.uuid,
    ".Timestamp": lambda d: _rfc3339(d.now_ns),
    ".TimestampUnix": lambda d: str(d.now_ns // 1_000_000_000),
    ".TimestampUnixMilli": lambda d: str(d.now_ns // 1_000_000),
    ".TimestampUnixNano": lambda d: str(d.now_ns),
    ".FullyQualifiedName": lambda d: d.names.full_name,
    ".MethodName": lambda d: d.names.method,
    ".ServiceName": lambda d: d.names.service,
    ".InputName": lambda d: d.names.input,
    ".OutputName": lambda d: d.names.output,
    "newUUID": lambda _: str(uuid.uuid4()),
}
_FUNCS: dict[str, Callable[[list[str]], Render]] = {
    "randomString": _random_string,
    "randomInt": _random_int,
}


def _compile_action(action: str) -> Render:
    words = action.split()
    if not words:
        raise TemplateError("empty action {{}}")
    name, args = words[0], words[1:]
    if name in _FIELDS and not args:
        return _FIELDS[name]
    if name in _FUNCS:
        try:
            return _FUNCS[name](args)
        except ValueError as exc:
            if isinstance(exc, TemplateError):
                raise
            raise TemplateError(f"bad arguments in {{{{{action}}}}}: {exc}") from None
    known = ", ".join(sorted([*_FIELDS, *_FUNCS]))
    raise TemplateError(f"unknown template action {{{{{action}}}}} (known: {known})")


class CallTemplate:
    """A compiled template; :meth:`render` returns the text for one request."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._literals: list[str] = []
        self._actions: list[Render] = []
        pos = 0
        for match in _ACTION.finditer(text):
            self._literals.append(text[pos : match.start()])
            self._actions.append(_compile_action(match.group(1)))
            pos = match.end()
        self._literals.append(text[pos:])

    @property
    def is_static(self) -> bool:
        """True when every request gets the same text (no actions)."""
        return not self._actions

    def render(self, data: CallData) -> str:
        """The template's text with every action replaced for this request."""
        if not self._actions:
            return self.text
        parts = [self._literals[0]]
        for action, literal in zip(self._actions, self._literals[1:], strict=True):
            parts.append(action(data))
            parts.append(literal)
        return "".join(parts)
