"""HTTP request -> request message, and response message -> JSON.

Binding follows ``google/api/http.proto`` and grpc-gateway:

* ``body: "*"``: the JSON body is the request message (minus path fields);
  query parameters are refused, every field is in the body;
* ``body: "field"``: the JSON body is that field; other fields come from the
  query string;
* no body: every field comes from the query string;
* path variables are set last and override the body and the query.

Query keys are field paths with lowerCamelCase or snake_case names
(``pageSize``, ``page_size``, ``member.region.city``); a repeated field takes
the key once per value. JSON follows the proto3 JSON mapping
(:mod:`google.protobuf.json_format`).

On PATCH with ``body: "<resource>"`` and no ``update_mask`` given, the mask is
the top-level keys of the body (fields bound by the path excluded), like
grpc-gateway: ``{"nickname": "x", "region": {...}}`` -> ``nickname,region``.
Send an explicit ``updateMask`` in the query for anything finer.

Bad input raises :class:`~gateway.errors.InvalidFieldError` (or
:class:`~gateway.errors.InvalidJsonError` for a body that is not JSON) naming each
bad field by its proto path, such as ``member.gender`` or ``tags[2]``.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import re
from collections.abc import Iterable, Mapping

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from gateway.errors import InvalidFieldError, InvalidJsonError
from gateway.routing import Route
from mallkit.errors import FieldViolation

_FD = FieldDescriptor
INT32_TYPES = {_FD.TYPE_INT32, _FD.TYPE_SINT32, _FD.TYPE_SFIXED32}
UINT32_TYPES = {_FD.TYPE_UINT32, _FD.TYPE_FIXED32}
INT64_TYPES = {_FD.TYPE_INT64, _FD.TYPE_SINT64, _FD.TYPE_SFIXED64}
UINT64_TYPES = {_FD.TYPE_UINT64, _FD.TYPE_FIXED64}

#: Well-known messages whose JSON form is not an object of their fields.
SPECIAL_JSON = {
    "google.protobuf.Any",
    "google.protobuf.Duration",
    "google.protobuf.FieldMask",
    "google.protobuf.ListValue",
    "google.protobuf.Struct",
    "google.protobuf.Timestamp",
    "google.protobuf.Value",
    "google.protobuf.BoolValue",
    "google.protobuf.BytesValue",
    "google.protobuf.DoubleValue",
    "google.protobuf.FloatValue",
    "google.protobuf.Int32Value",
    "google.protobuf.Int64Value",
    "google.protobuf.StringValue",
    "google.protobuf.UInt32Value",
    "google.protobuf.UInt64Value",
}
_QUERYABLE_MESSAGES = SPECIAL_JSON - {
    "google.protobuf.Any",
    "google.protobuf.ListValue",
    "google.protobuf.Struct",
    "google.protobuf.Value",
}
#: A response of this type is the HTTP body itself (its content_type and data), not JSON.
HTTP_BODY = "google.api.HttpBody"
_MAX_VIOLATIONS = 20
_MAX_DEPTH = 32
#: Integers in the path and the query: ASCII only (``int()`` would read "١" as 1 and "1_0" as 10).
_INTEGER = re.compile(r"-?[0-9]{1,20}")
_NUMBER = re.compile(r"-?[0-9]{1,20}(\.[0-9]{1,20})?([eE][-+]?[0-9]{1,3})?")
_INTEGER_TYPES = INT32_TYPES | UINT32_TYPES | INT64_TYPES | UINT64_TYPES
_INTEGER_WRAPPERS = {
    "google.protobuf.Int32Value", "google.protobuf.UInt32Value", "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value",
}


# -- helpers on descriptors ---------------------------------------------------
def is_repeated(f: FieldDescriptor) -> bool:
    return f.is_repeated


def is_map(f: FieldDescriptor) -> bool:
    return (
        f.type == _FD.TYPE_MESSAGE
        and f.message_type.GetOptions().map_entry
        and is_repeated(f)
    )


def is_plain_message(f: FieldDescriptor) -> bool:
    """A message field whose JSON is an object of its fields."""
    return f.type == _FD.TYPE_MESSAGE and not is_map(f) and f.message_type.full_name not in SPECIAL_JSON


def field_by_json_key(desc: Descriptor, key: str) -> FieldDescriptor | None:
    """A field by its JSON name (``avatarUrl``) or proto name (``avatar_url``)."""
    f = desc.fields_by_name.get(key)
    if f is not None:
        return f
    for f in desc.fields:
        if f.json_name == key:
            return f
    return None


def expected(f: FieldDescriptor) -> str:
    """What a field's JSON value must look like, for error messages."""
    t = f.type
    if t == _FD.TYPE_ENUM:
        names = [v.name for v in f.enum_type.values]
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        return f"must be one of {shown}"
    if t == _FD.TYPE_MESSAGE:
        name = f.message_type.full_name
        return {
            "google.protobuf.Timestamp": 'must be an RFC 3339 time such as "2024-05-01T08:00:00Z"',
            "google.protobuf.Duration": 'must be a duration in seconds such as "1.5s"',
            "google.protobuf.FieldMask": 'must be a comma-separated list of field names such as "nickname,region"',
            "google.protobuf.Struct": "must be a JSON object",
            "google.protobuf.ListValue": "must be a JSON array",
            "google.protobuf.Any": 'must be a JSON object with "@type"',
            "google.protobuf.Value": "must be a JSON value",
        }.get(name) or (
            expected(f.message_type.fields_by_name["value"])
            if name in SPECIAL_JSON
            else "must be a JSON object"
        )
    if t in INT32_TYPES:
        return "must be a 32-bit integer"
    if t in UINT32_TYPES:
        return "must be a non-negative 32-bit integer"
    if t in INT64_TYPES:
        return "must be a 64-bit integer (a number or a decimal string)"
    if t in UINT64_TYPES:
        return "must be a non-negative 64-bit integer (a number or a decimal string)"
    if t in (_FD.TYPE_DOUBLE, _FD.TYPE_FLOAT):
        return "must be a number"
    if t == _FD.TYPE_BOOL:
        return "must be true or false"
    if t == _FD.TYPE_BYTES:
        return "must be base64-encoded bytes"
    return "must be a string"


# -- JSON body -----------------------------------------------------------------
def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """An object's members; a key given twice is refused (which one would win is not the client's guess)."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def parse_json(body: bytes) -> object:
    """The JSON value of a body; None for an empty body. Duplicate keys in an object are refused."""
    if not body.strip():
        return None
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
        # "\ud800" parses into a str that is not valid Unicode: refuse it here,
        # before it reaches the protobuf runtime. Only a \u escape can make one
        # (strict UTF-8 decoding refuses encoded surrogates), so only then look.
        if b"\\u" in body:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeDecodeError:
        raise InvalidJsonError("must be UTF-8 encoded JSON") from None
    except UnicodeEncodeError:
        raise InvalidJsonError("contains an unpaired surrogate escape such as \\ud800") from None
    except RecursionError:
        raise InvalidJsonError("is nested too deeply") from None
    except _DuplicateKey as exc:
        raise InvalidJsonError(f"has the key {json.dumps(str(exc), ensure_ascii=False)} more than once") from None
    except ValueError as exc:
        raise InvalidJsonError(f"is not valid JSON ({exc})") from None
    return value


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def locate_errors(desc: Descriptor, value: object, path: str = "", depth: int = 0) -> list[FieldViolation]:
    """The bad fields of a JSON object meant for ``desc``, by proto path.

    json_format only says that parsing failed somewhere; this walks the value
    field by field (trying each leaf on its own) to say where and why.
    """
    if not isinstance(value, dict):
        return [FieldViolation(path or "body", "must be a JSON object")]
    if depth > _MAX_DEPTH:
        return [FieldViolation(path or "body", "is nested too deeply")]
    out: list[FieldViolation] = []
    seen: set[str] = set()
    oneofs: dict[str, str] = {}
    cls = GetMessageClass(desc)

    def leaf_ok(f: FieldDescriptor, v: object) -> bool:
        try:
            json_format.ParseDict({f.name: v}, cls())
        except Exception:  # noqa: BLE001 - any failure means this value is bad
            return False
        return True

    for key, v in value.items():
        f = field_by_json_key(desc, key)
        if f is None:
            out.append(FieldViolation(_join(path, key), "is not a field of this request"))
            continue
        fpath = _join(path, f.name)
        if f.name in seen:
            out.append(FieldViolation(fpath, "is given twice (as camelCase and snake_case)"))
            continue
        seen.add(f.name)
        oneof = f.containing_oneof
        if oneof is not None and v is not None:
            if oneof.name in oneofs:
                out.append(FieldViolation(fpath, f"cannot be set together with {oneofs[oneof.name]}"))
                continue
            oneofs[oneof.name] = f.name
        if v is None:
            continue  # null: the default value
        if is_map(f):
            if not isinstance(v, dict):
                out.append(FieldViolation(fpath, "must be a JSON object"))
                continue
            value_field = f.message_type.fields_by_name["value"]
            for k, item in v.items():
                ipath = f"{fpath}[{json.dumps(k, ensure_ascii=False)}]"
                if is_plain_message(value_field):
                    out += locate_errors(value_field.message_type, item, ipath, depth + 1)
                elif not leaf_ok(f, {k: item}):
                    out.append(FieldViolation(ipath, expected(value_field)))
        elif is_repeated(f):
            if not isinstance(v, list):
                out.append(FieldViolation(fpath, "must be a JSON array"))
                continue
            for i, item in enumerate(v):
                ipath = f"{fpath}[{i}]"
                if is_plain_message(f):
                    out += locate_errors(f.message_type, item, ipath, depth + 1)
                elif not leaf_ok(f, [item]):
                    out.append(FieldViolation(ipath, expected(f)))
        elif is_plain_message(f):
            out += locate_errors(f.message_type, v, fpath, depth + 1)
        elif not leaf_ok(f, v):
            out.append(FieldViolation(fpath, expected(f)))
        if len(out) >= _MAX_VIOLATIONS:
            break
    return out[:_MAX_VIOLATIONS]


def enum_numbers(desc: Descriptor, value: object, path: str = "", depth: int = 0) -> list[FieldViolation]:
    """Enum fields given as numbers: the API takes enums by name only (as the document says)."""
    if not isinstance(value, dict) or depth > _MAX_DEPTH:
        return []
    out: list[FieldViolation] = []
    for key, v in value.items():
        f = field_by_json_key(desc, key)
        if f is None or v is None:
            continue
        fpath = _join(path, f.name)
        if f.type == _FD.TYPE_ENUM:
            items = v if isinstance(v, list) and is_repeated(f) else [v]
            if any(isinstance(i, (int, float)) for i in items):  # bool too: json_format reads false as 0
                out.append(FieldViolation(fpath, expected(f)))
        elif is_plain_message(f) and not is_map(f):
            for i, item in enumerate(v if isinstance(v, list) and is_repeated(f) else [v]):
                out += enum_numbers(f.message_type, item, f"{fpath}[{i}]" if is_repeated(f) else fpath, depth + 1)
    return out


@functools.cache
def _plain_string_fields(desc: Descriptor) -> dict[str, FieldDescriptor]:
    """Singular string fields outside any oneof, by JSON and by proto name."""
    out: dict[str, FieldDescriptor] = {}
    for f in desc.fields:
        if f.type == _FD.TYPE_STRING and not is_repeated(f) and f.containing_oneof is None:
            out[f.name] = out[f.json_name] = f
    return out


def _set_plain_strings(data: dict, msg: Message) -> bool:
    """A body of plain string fields only (ids, tokens, names: most bodies of the hot writes) is set
    as json_format would set it, without its parser; False (nothing set) for any other body."""
    fields = _plain_string_fields(msg.DESCRIPTOR)
    names = []
    for key, v in data.items():
        f = fields.get(key)
        if f is None or type(v) is not str or f.name in names:  # noqa: E721 - exactly str
            return False
        names.append(f.name)
    for name, v in zip(names, data.values(), strict=True):
        setattr(msg, name, v)
    return True


def _parse_into(data: dict, msg: Message) -> None:
    if _set_plain_strings(data, msg):
        return
    numbers = enum_numbers(msg.DESCRIPTOR, data)
    if numbers:
        raise InvalidFieldError(numbers)
    try:
        json_format.ParseDict(data, msg)
    except Exception as exc:  # noqa: BLE001 - never a 500 for bad input
        violations = locate_errors(msg.DESCRIPTOR, data)
        if not violations:
            violations = [FieldViolation("body", f"could not be parsed ({type(exc).__name__})")]
        raise InvalidFieldError(violations) from None


# -- query string --------------------------------------------------------------
def _resolve_query_key(desc: Descriptor, key: str) -> list[FieldDescriptor] | str:
    """The fields along a query key, or a description of why it is not one."""
    fields: list[FieldDescriptor] = []
    for i, part in enumerate(key.split(".")):
        f = field_by_json_key(desc, part)
        if f is None:
            return "is not a field of this request"
        fields.append(f)
        last = i == len(key.split(".")) - 1
        if last:
            break
        if not is_plain_message(f) or is_repeated(f):
            return "is not a field of this request"
        desc = f.message_type
    leaf = fields[-1]
    if is_map(leaf) or (
        leaf.type == _FD.TYPE_MESSAGE and leaf.message_type.full_name not in _QUERYABLE_MESSAGES
    ):
        return "cannot be set in the query string"
    return fields


def _query_value(f: FieldDescriptor, raw: str) -> object:
    if f.type == _FD.TYPE_BOOL or (
        f.type == _FD.TYPE_MESSAGE and f.message_type.full_name == "google.protobuf.BoolValue"
    ):
        lowered = raw.lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        return raw  # json_format will refuse it with the right message
    if f.type == _FD.TYPE_ENUM and raw not in f.enum_type.values_by_name:
        return {"not": "an enum name"}  # by name only, as the document says; json_format refuses it
    if (f.type in _INTEGER_TYPES or (
        f.type == _FD.TYPE_MESSAGE and f.message_type.full_name in _INTEGER_WRAPPERS
    )) and not _INTEGER.fullmatch(raw):
        return {"not": "an integer"}  # json_format refuses it with the field's message
    if f.type == _FD.TYPE_MESSAGE and f.message_type.full_name == "google.protobuf.FieldMask":
        # Accept snake_case paths too ("avatar_url"); the JSON form is camelCase.
        return ",".join(_lower_camel(p.strip()) for p in raw.split(",") if p.strip())
    return raw


def _lower_camel(path: str) -> str:
    return ".".join(
        part.split("_")[0] + "".join(w[:1].upper() + w[1:] for w in part.split("_")[1:])
        for part in path.split(".")
    )


def bind_query(route: Route, msg: Message, items: Iterable[tuple[str, str]]) -> None:
    grouped: dict[str, list[str]] = {}
    for key, value in items:
        grouped.setdefault(key, []).append(value)
    violations: list[FieldViolation] = []
    for key, values in grouped.items():
        fields = _resolve_query_key(msg.DESCRIPTOR, key)
        if isinstance(fields, str):
            violations.append(FieldViolation(key, fields))
            continue
        path = ".".join(f.name for f in fields)
        if route.body == "*":
            violations.append(FieldViolation(path, "must be sent in the JSON body, not the query string"))
            continue
        if route.body and fields[0].name == route.body:
            violations.append(FieldViolation(path, "must be sent in the JSON body"))
            continue
        leaf = fields[-1]
        if not is_repeated(leaf) and len(values) > 1:
            violations.append(FieldViolation(path, "is given more than once"))
            continue
        converted = [_query_value(leaf, v) for v in values]
        data: object = converted if is_repeated(leaf) else converted[0]
        for f in reversed(fields):
            data = {f.name: data}
        part = type(msg)()
        try:
            json_format.ParseDict(data, part)
        except Exception:  # noqa: BLE001
            violations.append(FieldViolation(path, expected(leaf)))
            continue
        msg.MergeFrom(part)
    if violations:
        raise InvalidFieldError(violations)


# -- path ----------------------------------------------------------------------
def _path_scalar(f: FieldDescriptor, raw: str, name: str) -> object:
    try:
        if f.type == _FD.TYPE_STRING:
            return raw
        if f.type == _FD.TYPE_BOOL:
            return {"true": True, "false": False}[raw]
        if f.type == _FD.TYPE_ENUM:
            return f.enum_type.values_by_name[raw].number  # by name only
        if f.type in (_FD.TYPE_DOUBLE, _FD.TYPE_FLOAT):
            if not _NUMBER.fullmatch(raw):
                raise ValueError(raw)
            return float(raw)
        if f.type == _FD.TYPE_BYTES:
            return raw.encode()
        if not _INTEGER.fullmatch(raw):
            raise ValueError(raw)
        return int(raw)
    except (KeyError, ValueError):
        raise InvalidFieldError.one(name, expected(f)) from None


def bind_path(msg: Message, values: dict[tuple[str, ...], str]) -> None:
    for field_path, raw in values.items():
        target = msg
        for name in field_path[:-1]:
            target = getattr(target, name)
        f = target.DESCRIPTOR.fields_by_name[field_path[-1]]
        value = _path_scalar(f, raw, ".".join(field_path))
        try:
            setattr(target, f.name, value)
        except (TypeError, ValueError):  # out of range for the field's type
            raise InvalidFieldError.one(".".join(field_path), expected(f)) from None


# -- the whole request -----------------------------------------------------------
def bind_request(
    route: Route,
    http_method: str,
    path_values: dict[tuple[str, ...], str],
    query: Iterable[tuple[str, str]],
    body: bytes,
    idempotency_key: str | None = None,
) -> Message:
    """The request message of an HTTP request; InvalidFieldError/InvalidJsonError on bad input."""
    msg = route.request_class()
    desc = msg.DESCRIPTOR
    body_json = parse_json(body) if route.body else None
    if body_json is None and body.strip() and route.body == "*":
        raise InvalidFieldError.one("body", "must be a JSON object")  # a literal null
    if body_json is None and route.body not in ("", "*"):
        raise InvalidFieldError.one(route.body, "is required: send it as the JSON body")
    if body_json is not None:
        if route.body == "*":
            if not isinstance(body_json, dict):
                raise InvalidFieldError.one("body", "must be a JSON object")
            _parse_into(body_json, msg)
        else:
            f = desc.fields_by_name[route.body]
            if is_plain_message(f) and not isinstance(body_json, dict):
                raise InvalidFieldError.one("body", f"must be a JSON object (the {f.name})")
            _parse_into({f.name: body_json}, msg)
    bind_query(route, msg, query)
    bind_path(msg, path_values)
    if http_method == "PATCH" and route.body not in ("", "*"):
        _derive_update_mask(route, msg, body_json)
    if idempotency_key:
        rid = desc.fields_by_name.get("request_id")
        if rid is not None and rid.type == _FD.TYPE_STRING and not msg.request_id:
            msg.request_id = idempotency_key
    return msg


def _derive_update_mask(route: Route, msg: Message, body_json: object) -> None:
    mask_field = msg.DESCRIPTOR.fields_by_name.get("update_mask")
    if (
        mask_field is None
        or mask_field.message_type is None
        or mask_field.message_type.full_name != "google.protobuf.FieldMask"
        or msg.HasField("update_mask")
        or not isinstance(body_json, dict)
    ):
        return
    resource = msg.DESCRIPTOR.fields_by_name[route.body].message_type
    if resource is None:
        return
    in_path = {p[1] for p in route.path_fields if len(p) == 2 and p[0] == route.body}
    paths = []
    for key in body_json:
        f = field_by_json_key(resource, key)
        if f is not None and f.name not in in_path and f.name not in paths:
            paths.append(f.name)
    msg.update_mask.paths.extend(paths)


# -- responses -------------------------------------------------------------------
@functools.cache
def _input_only(desc: Descriptor) -> tuple[frozenset[str], tuple[tuple[str, Descriptor], ...]]:
    """JSON names of the INPUT_ONLY fields of a message, and its message fields that may hold some."""
    from google.api import field_behavior_pb2

    own = frozenset(f.json_name for f in desc.fields
                    if field_behavior_pb2.INPUT_ONLY in f.GetOptions().Extensions[field_behavior_pb2.field_behavior])
    nested = tuple((f.json_name, f.message_type) for f in desc.fields
                   if is_plain_message(f) and f.message_type is not desc and _reaches_input_only(f.message_type))
    return own, nested


@functools.cache
def _reaches_input_only(desc: Descriptor, depth: int = 0) -> bool:
    if depth > 8:
        return False
    from google.api import field_behavior_pb2

    for f in desc.fields:
        if field_behavior_pb2.INPUT_ONLY in f.GetOptions().Extensions[field_behavior_pb2.field_behavior]:
            return True
        if is_plain_message(f) and f.message_type is not desc and _reaches_input_only(f.message_type, depth + 1):
            return True
    return False


def _drop_input_only(desc: Descriptor, data: object) -> None:
    """INPUT_ONLY fields (a staff password) are never part of an answer, not even empty."""
    if not isinstance(data, dict):
        return
    own, nested = _input_only(desc)
    for key in own:
        data.pop(key, None)
    for key, child in nested:
        value = data.get(key)
        for item in value if isinstance(value, list) else [value]:
            _drop_input_only(child, item)


class _Fallback(Exception):
    """A value the fast printer does not handle itself (an enum number with no name)."""


#: Messages json_format prints in a form of their own; ``MessageToDict`` prints them for us.
_WKT_FILES = {"google/protobuf/wrappers.proto"}
#: ...except these, which it prints with their ``ToJsonString``.
_AS_STRING = {"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask"}


def _as_string(msg: Message) -> str:
    return msg.ToJsonString()


@functools.cache
def _printer(desc: Descriptor):
    """A function printing a message of ``desc`` exactly as
    ``json_format.MessageToDict(msg, always_print_fields_with_no_presence=True)`` does, in a
    fraction of its time: the per-field decisions it takes on every call (type, name, the
    default of every unset field) are taken here once. Keys in the same order: the set fields
    (``ListFields``, by number), then the unset fields without presence, in declaration order."""
    fallback = functools.partial(json_format.MessageToDict, always_print_fields_with_no_presence=True)
    if desc.full_name in _AS_STRING:
        return _as_string
    if desc.full_name in SPECIAL_JSON or desc.file.name in _WKT_FILES or _enum_json_options():
        return fallback
    if any(f.type == _FD.TYPE_FLOAT for f in desc.fields):  # ToShortestFloat: let json_format do it
        return fallback
    convert = {f: _value_printer(f) for f in desc.fields}
    names = {f: f.json_name for f in desc.fields}
    empty = fallback(GetMessageClass(desc)())  # the JSON of every unset field without presence
    unset = []  # (json name, factory of a fresh empty list/dict or None, default JSON)
    for f in desc.fields:
        if f.has_presence:
            continue
        if is_map(f):
            unset.append((f.json_name, dict, None))
        elif is_repeated(f):
            unset.append((f.json_name, list, None))
        else:
            unset.append((f.json_name, None, empty[f.json_name]))

    def to_json(msg: Message) -> dict:
        js = {}
        for f, value in msg.ListFields():
            name = names.get(f)
            if name is None:  # an extension
                raise _Fallback
            js[name] = convert[f](value)
        for name, make, default in unset:
            if name not in js:
                js[name] = make() if make else default
        return js

    return to_json


@functools.cache
def _enum_json_options() -> bool:
    """The JSON-name option of enum values is known to this process (json_format would honour it)."""
    from google.protobuf import descriptor_pool

    try:
        descriptor_pool.Default().FindExtensionByName("pb.enumvalue.json")
    except KeyError:
        return False
    return True


def _value_printer(f: FieldDescriptor):
    """The JSON of one value of ``f`` (a whole list for a repeated field, an object for a map)."""
    if is_map(f):
        key_field = f.message_type.fields_by_name["key"]
        item = _scalar_printer(f.message_type.fields_by_name["value"])
        if key_field.type == _FD.TYPE_BOOL:
            return lambda value: {("true" if k else "false"): item(value[k]) for k in value}
        return lambda value: {str(k): item(value[k]) for k in value}
    item = _scalar_printer(f)
    if is_repeated(f):
        return lambda value: [item(v) for v in value]
    return item


def _scalar_printer(f: FieldDescriptor):
    t = f.type
    if t == _FD.TYPE_MESSAGE or t == _FD.TYPE_GROUP:
        child = f.message_type
        return lambda value: _printer(child)(value)
    if t == _FD.TYPE_ENUM:
        if f.enum_type.full_name == "google.protobuf.NullValue":
            return lambda value: None
        names = {v.number: v.name for v in f.enum_type.values}

        def enum(value: int) -> str:
            name = names.get(value)
            if name is None:  # an open enum's unknown number, or an error: json_format's answer
                raise _Fallback
            return name

        return enum
    if t == _FD.TYPE_BYTES:
        return lambda value: base64.b64encode(value).decode("utf-8")
    if t == _FD.TYPE_STRING:
        return str
    if t == _FD.TYPE_BOOL:
        return bool
    if t in INT64_TYPES or t in UINT64_TYPES:
        return str
    if t == _FD.TYPE_DOUBLE:
        return _double
    return _identity  # 32-bit integers


def _identity(value: object) -> object:
    return value


def _double(value: float) -> object:
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    if math.isnan(value):
        return "NaN"
    return value


def message_json(msg: Message) -> dict:
    """``json_format.MessageToDict(msg, always_print_fields_with_no_presence=True)``, faster."""
    try:
        return _printer(msg.DESCRIPTOR)(msg)
    except _Fallback:
        return json_format.MessageToDict(msg, always_print_fields_with_no_presence=True)


def response_json(route: Route, msg: Message) -> object:
    """The proto3 JSON of a response: lowerCamelCase, int64 as strings, defaults included
    (except INPUT_ONLY fields, which are never output)."""
    data = message_json(msg)
    if _reaches_input_only(msg.DESCRIPTOR):
        _drop_input_only(msg.DESCRIPTOR, data)
    if route.response_body:
        return data.get(msg.DESCRIPTOR.fields_by_name[route.response_body].json_name)
    return data


def bind_raw(route: Route, headers: Mapping[str, str], body: bytes) -> Message:
    """A request of a route with a raw binding: the body verbatim, headers into fields."""
    message = route.request_class()
    try:
        setattr(message, route.raw.body_field, body.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidFieldError.one("body", "must be UTF-8 text") from None
    for field_name, header in route.raw.header_fields.items():
        setattr(message, field_name, headers.get(header, ""))
    return message
