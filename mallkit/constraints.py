"""Field constraints declared in the protos, enforced for every request.

The rules are the ``(mall.api.v1.field)`` option of each field (pattern,
lengths, range, most items) and ``(google.api.field_behavior)``: REQUIRED
strings, messages and repeated fields must be set, and OUTPUT_ONLY fields
must not be written by an update (neither set in the resource of a request
with an ``update_mask`` nor named in the mask). :func:`check_request` runs in
the shared server interceptor before every handler, so no service can forget
it; the gateway's OpenAPI document states the same rules
(:func:`rules_of` is what both read), so they cannot drift apart.

Enum fields must hold a value the enum defines (proto3 keeps unknown numbers).
A rule applies to a value that is set (a non-empty string, a non-zero number,
each element of a repeated field). Inside the resource of an update (a
request with ``update_mask``) REQUIRED is not enforced: a partial update sends
only what changes.

Why an option of our own and not protovalidate (``buf.validate``): protovalidate
2.1.0 on PyPI is a Rust extension built on a second protobuf runtime
(``protobuf-py``) and needs ``buf/validate/validate.proto`` vendored into our
protoc build; the rules we need (pattern, lengths, range, items) are a small
subset, and the OpenAPI document must state each of them anyway, which this
module's :func:`rules_of` gives to both sides from one declaration.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

from google.api import annotations_pb2, field_behavior_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from mallkit.auth import current_principal
from mallkit.errors import PermissionDenied
from mallkit.names import is_id
from mallkit.validation import Validator

_FD = FieldDescriptor
_INTEGERS = {
    _FD.TYPE_INT32, _FD.TYPE_INT64, _FD.TYPE_SINT32, _FD.TYPE_SINT64, _FD.TYPE_SFIXED32, _FD.TYPE_SFIXED64,
    _FD.TYPE_UINT32, _FD.TYPE_UINT64, _FD.TYPE_FIXED32, _FD.TYPE_FIXED64,
}
#: Regex escapes that are not ASCII-only in Python (and differ from ECMA-262).
_NON_PORTABLE = re.compile(r"\\[dDwWsSbB]")
_MAX_DEPTH = 16


@dataclass(frozen=True)
class Rules:
    """The constraints of one field (empty when it has none)."""

    pattern: re.Pattern[str] | None = None
    shape: str = ""
    min_len: int | None = None
    max_len: int | None = None
    min: int | None = None
    max: int | None = None
    max_items: int | None = None
    required: bool = False
    output_only: bool = False

    @property
    def empty(self) -> bool:
        return self == _NONE


_NONE = Rules()


def _extension():
    from mall.api.v1 import field_pb2  # generated code: imported when first needed

    return field_pb2.field


def behaviors(f: FieldDescriptor) -> set[int]:
    return set(f.GetOptions().Extensions[field_behavior_pb2.field_behavior])


@functools.cache
def rules_of(f: FieldDescriptor) -> Rules:
    """The declared rules of a field (cached per descriptor)."""
    opts = f.GetOptions()
    b = behaviors(f)
    ext = _extension()
    kw: dict = {
        "required": field_behavior_pb2.REQUIRED in b,
        "output_only": field_behavior_pb2.OUTPUT_ONLY in b,
    }
    if opts.HasExtension(ext):
        r = opts.Extensions[ext]
        if r.pattern:
            if _NON_PORTABLE.search(r.pattern):
                raise ValueError(f"{f.full_name}: pattern {r.pattern!r} uses \\d, \\w, \\s or \\b: write ASCII classes")
            kw["pattern"] = re.compile(r.pattern)
            kw["shape"] = r.shape
        for name in ("min_len", "max_len", "min", "max", "max_items"):
            if r.HasField(name):
                kw[name] = getattr(r, name)
    rules = Rules(**kw)
    return _NONE if rules == _NONE else rules


def is_enforced_required(f: FieldDescriptor) -> bool:
    """Whether REQUIRED can be checked on this field: a string, message or list must be set, an enum
    must not be UNSPECIFIED, a number must be set when its range excludes 0. A bool, or a number whose
    range holds 0, is always "set" in proto3 (0 and false are values), so REQUIRED there only documents."""
    r = rules_of(f)
    if not r.required:
        return False
    if f.is_repeated or f.type in (_FD.TYPE_STRING, _FD.TYPE_MESSAGE, _FD.TYPE_BYTES, _FD.TYPE_ENUM):
        return True
    return f.type in _INTEGERS and r.min is not None and r.min > 0


def _is_update(desc: Descriptor) -> bool:
    mask = desc.fields_by_name.get("update_mask")
    return mask is not None and mask.message_type is not None and mask.message_type.full_name == "google.protobuf.FieldMask"


def _scalar(v: Validator, path: str, r: Rules, f: FieldDescriptor, value) -> None:
    if f.type == _FD.TYPE_ENUM:
        if f.enum_type.values_by_number.get(value) is None:
            v.fail(path, "is not a known value")  # proto3 keeps unknown numbers: no service must see one
    elif f.type == _FD.TYPE_STRING:
        if value == "":
            return
        if r.max_len is not None and len(value) > r.max_len or r.min_len is not None and len(value) < r.min_len:
            lo = r.min_len or 1
            v.fail(path, f"must be {lo} to {r.max_len} characters" if r.max_len is not None
                   else f"must be at least {lo} characters")
        elif r.pattern is not None and not r.pattern.fullmatch(value):
            v.fail(path, f"must look like {r.shape}" if r.shape else f"must match {r.pattern.pattern}")
    elif f.type in _INTEGERS and value != 0:
        if (r.min is not None and value < r.min) or (r.max is not None and value > r.max):
            if r.min is not None and r.max is not None:
                v.fail(path, f"must be between {r.min} and {r.max}")
            elif r.min is not None:
                v.fail(path, f"must be at least {r.min}")
            else:
                v.fail(path, f"must be at most {r.max}")


def _walk(v: Validator, msg: Message, prefix: str, require: bool, depth: int) -> None:
    if depth > _MAX_DEPTH:
        return
    desc = msg.DESCRIPTOR
    for f in desc.fields:
        r = rules_of(f)
        message_typed = f.type == _FD.TYPE_MESSAGE
        ours = message_typed and not f.message_type.full_name.startswith("google.")
        if r.empty and not ours and f.type != _FD.TYPE_ENUM:
            continue
        path = prefix + f.name
        if f.is_repeated:
            if message_typed and f.message_type.GetOptions().map_entry:
                continue  # maps: keys and values are the service's to check
            items = getattr(msg, f.name)
            if require and r.required and not items:
                v.fail(path, "is required")
            if r.max_items is not None and len(items) > r.max_items:
                v.fail(path, f"must have at most {r.max_items} items")
            for i, item in enumerate(items):
                if ours:
                    _walk(v, item, f"{path}[{i}].", require, depth + 1)
                elif not message_typed:
                    _scalar(v, f"{path}[{i}]", r, f, item)
        elif message_typed:
            if msg.HasField(f.name):
                if ours:
                    _walk(v, getattr(msg, f.name), path + ".", require, depth + 1)
            elif require and r.required:
                v.fail(path, "is required")
        else:
            value = getattr(msg, f.name)
            if require and is_enforced_required(f) and not value:
                v.fail(path, "is required")
            else:
                _scalar(v, path, r, f, value)


def _output_only(v: Validator, msg: Message) -> None:
    """An update may not write OUTPUT_ONLY fields: neither set them nor name them in the mask."""
    desc = msg.DESCRIPTOR
    resource = next((f for f in desc.fields if f.type == _FD.TYPE_MESSAGE and f.name != "update_mask"
                     and not f.is_repeated and not f.message_type.full_name.startswith("google.")), None)
    if resource is None:
        return
    rdesc = resource.message_type
    for path in msg.update_mask.paths:
        f = rdesc.fields_by_name.get(path.split(".")[0])
        if f is not None and rules_of(f).output_only:
            v.fail("update_mask", f"{path!r} is output only and cannot be updated")
    if not msg.HasField(resource.name):
        return
    body = getattr(msg, resource.name)
    for f, _ in body.ListFields():
        if rules_of(f).output_only:
            v.fail(f"{resource.name}.{f.name}", "is output only and cannot be set")


def _member_names(msg: Message, depth: int = 0):
    """The values of the fields declared as member names (pattern ``members/(me|...``), one level deep."""
    for f in msg.DESCRIPTOR.fields:
        if f.is_repeated:
            continue
        if f.type == _FD.TYPE_STRING:
            r = rules_of(f)
            if r.pattern is not None and r.pattern.pattern.startswith(_MEMBER_PREFIX):
                yield f.name, getattr(msg, f.name)
        elif depth == 0 and f.type == _FD.TYPE_MESSAGE and not f.message_type.full_name.startswith("google.") \
                and msg.HasField(f.name):
            for name, value in _member_names(getattr(msg, f.name), 1):
                yield f"{f.name}.{name}", value


_MEMBER_PREFIX = "members/(me|"


def owner_first(msg: Message) -> None:
    """A member naming another member in any member-name field is PERMISSION_DENIED, before any
    other check or lookup (so neither a validation error nor a NOT_FOUND says whether it exists)."""
    p = current_principal.get()
    if p is None or not p.is_member:
        return
    for _, value in _member_names(msg):
        key = value.split("/")[1] if value.startswith("members/") and value.count("/") >= 1 else ""
        if is_id(key) and key != p.id:
            raise PermissionDenied(
                "members may only access their own data", reason="NOT_OWNER", zh="无权访问他人的信息"
            )


def check_request(msg: Message, *, required: bool = True) -> None:
    """INVALID_ARGUMENT naming every field of ``msg`` that breaks its declared rules
    (after :func:`owner_first`). ``required=False`` skips the REQUIRED checks."""
    owner_first(msg)
    v = Validator()
    update = _is_update(msg.DESCRIPTOR)
    if not required:
        _walk(v, msg, "", False, 0)
    elif update:
        _output_only(v, msg)
        for f in msg.DESCRIPTOR.fields:  # REQUIRED holds at the top level of an update, not inside its resource
            r = rules_of(f)
            if f.type == _FD.TYPE_MESSAGE and not f.is_repeated and r.required and not msg.HasField(f.name):
                v.fail(f.name, "is required")
        _walk(v, msg, "", False, 0)
    else:
        _walk(v, msg, "", True, 0)
    v.done()


class RequestRules:
    """What the server interceptor calls for each RPC of ``descriptors``.

    Patterns, lengths, ranges and output-only hold for every RPC; REQUIRED is
    enforced on the RPCs the gateway exposes (those with a ``google.api.http``
    rule), whose requests clients build from the OpenAPI document. RPCs meant
    for other services only (events, growth) keep their own checks.
    """

    def __init__(self, descriptors: Iterable[ServiceDescriptor]):
        self.public = {
            f"/{sd.full_name}/{m.name}" for sd in descriptors for m in sd.methods
            if m.GetOptions().HasExtension(annotations_pb2.http)
        }

    def check(self, method: str, request: Message) -> None:
        check_request(request, required=method in self.public)
