"""What a caller may see of an answer: fields the protos declare ``INPUT_ONLY`` (a staff account's
password, ...) are cleared from every response before it leaves the service, whatever the servicer
put there. Declare such fields ``optional`` in the proto, so a cleared field is absent from the
JSON the gateway prints ("every field present" covers fields without presence only).

Fields a caller may see depending on who they are (a quiz's correct option: staff, or a member who
answered) are the servicer's to set or not; this is the floor under them.
"""

from __future__ import annotations

import functools
from typing import Any

from google.api import field_behavior_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor
from google.protobuf.message import Message

#: descriptor full name -> (fields to clear, message fields to look into (name, repeated))
_PLANS: dict[str, tuple[tuple[str, ...], tuple[tuple[str, bool], ...]]] = {}


def _input_only(field: FieldDescriptor) -> bool:
    return field_behavior_pb2.INPUT_ONLY in field.GetOptions().Extensions[field_behavior_pb2.field_behavior]


def _plan(desc: Descriptor, visiting: frozenset[str] = frozenset()):
    if desc.full_name in _PLANS:
        return _PLANS[desc.full_name]
    clear, nested = [], []
    for f in desc.fields:
        if _input_only(f):
            clear.append(f.name)
        elif f.message_type is not None and not f.message_type.GetOptions().map_entry \
                and f.message_type.full_name not in visiting:
            sub = _plan(f.message_type, visiting | {desc.full_name})
            if sub[0] or sub[1]:
                nested.append((f.name, f.is_repeated))
    plan = (tuple(clear), tuple(nested))
    if not visiting:
        _PLANS[desc.full_name] = plan
    return plan


def has_input_only(desc: Descriptor) -> bool:
    clear, nested = _plan(desc)
    return bool(clear or nested)


def strip_input_only(msg: Message) -> Message:
    """Clear every INPUT_ONLY field of ``msg`` and of the messages in it; returns ``msg``."""
    clear, nested = _plan(msg.DESCRIPTOR)
    for name in clear:
        msg.ClearField(name)
    for name, repeated in nested:
        if repeated:
            for item in getattr(msg, name):
                strip_input_only(item)
        elif msg.HasField(name):
            strip_input_only(getattr(msg, name))
    return msg


class _Filtered:
    """A servicer whose RPCs answering messages with INPUT_ONLY fields strip them."""

    def __init__(self, inner: Any, methods: set[str]):
        self._inner = inner
        self._methods = methods

    def __getattr__(self, name: str):
        attr = getattr(self._inner, name)
        if name not in self._methods:
            return attr

        @functools.wraps(attr)
        async def call(request, context):
            response = await attr(request, context)
            return strip_input_only(response) if isinstance(response, Message) else response

        return call


def filter_outputs(servicer: Any, descriptor: ServiceDescriptor) -> Any:
    """``servicer``, with the answers of its RPCs cleared of INPUT_ONLY fields (itself when none has any)."""
    methods = {m.name for m in descriptor.methods
               if not getattr(m, "server_streaming", False) and has_input_only(m.output_type)}
    return _Filtered(servicer, methods) if methods else servicer
