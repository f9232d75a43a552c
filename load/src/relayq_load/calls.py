"""Which RPC a run calls, and how each request message is made from the data template.

The call is named as ghz names it (``relayq.v1.IngestService.SubmitJob``, or with a ``/`` before
the method) and resolved in the protobuf descriptor pool, so any unary method of the relayq
contract can be driven (``GetJob`` too). Requests are built from the rendered JSON with
``json_format``, the protobuf JSON mapping ghz uses as well.

Batching: with ``batch_size`` > 1 on a method whose request has exactly one repeated message
field (``SubmitJobsRequest.jobs``), the template describes one *element* and each request carries
``batch_size`` of them; ``{{.RequestNumber}}`` then counts elements, not calls, so keys made from
it stay unique. A template that already holds the repeated field is sent as it is (as ghz does).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message

from relayq.v1 import dead_letter_pb2, ingest_pb2  # noqa: F401  (register the services)
from relayq_load.template import CallData, CallTemplate, MethodNames


class CallSpecError(ValueError):
    """The call or its data cannot be used (unknown method, streaming, bad JSON...)."""


@dataclass(frozen=True)
class Method:
    """A resolved unary method: its HTTP/2 path and message classes."""

    descriptor: MethodDescriptor
    request_class: type[Message]
    response_class: type[Message]

    @property
    def path(self) -> str:
        """``/relayq.v1.IngestService/SubmitJob``"""
        return f"/{self.descriptor.containing_service.full_name}/{self.descriptor.name}"

    @property
    def full_name(self) -> str:
        """``relayq.v1.IngestService.SubmitJob``"""
        return str(self.descriptor.full_name)

    @property
    def names(self) -> MethodNames:
        """The names the template's ``{{.…Name}}`` actions show."""
        d = self.descriptor
        return MethodNames(
            full_name=str(d.full_name),
            method=str(d.name),
            service=str(d.containing_service.name),
            input=str(d.input_type.name),
            output=str(d.output_type.name),
        )

    def batch_field(self) -> FieldDescriptor | None:
        """The request's only repeated message field, if it has exactly one."""
        repeated = [
            f for f in self.descriptor.input_type.fields if f.is_repeated and f.message_type
        ]
        return repeated[0] if len(repeated) == 1 else None


def resolve(call: str) -> Method:
    """The unary method named ``package.Service.Method`` (or ``package.Service/Method``)."""
    name = call.strip().replace("/", ".")
    try:
        descriptor = descriptor_pool.Default().FindMethodByName(name)
    except KeyError:
        raise CallSpecError(
            f"unknown call {call!r} (e.g. relayq.v1.IngestService.SubmitJob)"
        ) from None
    if descriptor.client_streaming or descriptor.server_streaming:
        raise CallSpecError(f"{call} is a streaming method; only unary calls are supported")
    return Method(
        descriptor=descriptor,
        request_class=message_factory.GetMessageClass(descriptor.input_type),
        response_class=message_factory.GetMessageClass(descriptor.output_type),
    )


def _parse(text: str, message: Message) -> Message:
    try:
        return json_format.Parse(text, message)
    except json_format.ParseError as exc:
        raise CallSpecError(f"the data does not fit {message.DESCRIPTOR.name}: {exc}") from None


class RequestFactory:
    """Makes request number ``n`` (0-based, as ghz counts) of a run."""

    def __init__(
        self, method: Method, data: str, *, batch_size: int = 1, worker_id: str = ""
    ) -> None:
        self.method = method
        self.template = CallTemplate(data or "{}")
        self.batch_size = max(1, batch_size)
        self.worker_id = worker_id
        self._names = method.names
        self._field: FieldDescriptor | None = None
        self._element: Callable[[], Message] | None = None
        if self.batch_size > 1:
            field = method.batch_field()
            if field is None:
                raise CallSpecError(
                    f"--batch-size needs a request with one repeated message field; "
                    f"{method.descriptor.input_type.name} has none"
                )
            if not _describes_field(data, field.name):
                assert field.message_type is not None  # batch_field() picks message fields
                self._field = field
                self._element = message_factory.GetMessageClass(field.message_type)
        self._static: Message | None = None
        if self.template.is_static and self._field is None:
            self._static = _parse(self.template.text, method.request_class())
        # Check the template once now: a bad one fails before the run, not in every request.
        self.build(0)

    @property
    def jobs_per_request(self) -> int:
        """How many elements (jobs) each request carries."""
        return self.batch_size if self._field is not None else 1

    def _render(self, number: int) -> str:
        return self.template.render(CallData(number, self.worker_id, time.time_ns(), self._names))

    def build(self, number: int) -> Message:
        """The request message for call ``number``."""
        if self._static is not None:
            return self._static
        if self._field is None or self._element is None:
            return _parse(self._render(number), self.method.request_class())
        request = self.method.request_class()
        items = getattr(request, self._field.name)
        first = number * self.batch_size
        for i in range(first, first + self.batch_size):
            items.append(_parse(self._render(i), self._element()))
        return request


def _describes_field(data: str, field: str) -> bool:
    """Whether the template (as far as it parses as JSON) already sets ``field``."""
    try:
        parsed: Any = json.loads(data)
    except ValueError:
        return f'"{field}"' in data
    return isinstance(parsed, dict) and field in parsed


def template_as_json(data: str) -> Any:
    """The data as ghz puts it in ``options.data``: parsed JSON, or None when the raw template
    is not JSON (ghz's ``json.Unmarshal`` of it fails and the field is omitted)."""
    try:
        return json.loads(data) if data else None
    except ValueError:
        return None
