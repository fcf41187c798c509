"""OpenAPI 3.1 document generated from the descriptors of the exposed services.

One operation per HTTP binding (``operationId`` = RPC name), summaries and
descriptions from the proto comments (read from ``mall/descriptors.binpb``,
which keeps source info), and schemas that follow the proto3 JSON mapping.

Resource-name variables become one path parameter per wildcard, named after
the collection before it (as Google's protoc-gen-openapi does), so that
``/v1/{name=members/*}`` is documented as ``/v1/members/{member}`` and does not
collide with ``/v1/{name=channelCodes/*}``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from google.api import field_behavior_pb2
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor, ServiceDescriptor
from google.rpc import code_pb2

from gateway.binding import (
    HTTP_BODY,
    INT32_TYPES,
    INT64_TYPES,
    SPECIAL_JSON,
    UINT32_TYPES,
    UINT64_TYPES,
    is_map,
    is_plain_message,
    is_repeated,
)
from gateway.routing import LITERAL, WILDCARD, Route, Variable
from mallkit.constraints import Rules, is_enforced_required, rules_of

log = logging.getLogger(__name__)
_FD = FieldDescriptor
_REF = "#/components/schemas/"
_QUERY_DEPTH = 3
#: What the gateway accepts for a 64-bit integer given as a string (the proto3 JSON form).
_INT64_STRING = r"^-?[0-9]{1,19}$"
_UINT64_STRING = r"^[0-9]{1,20}$"


def rule_keywords(rules: Rules, f: FieldDescriptor, *, for_item: bool = False) -> dict[str, Any]:
    """JSON Schema keywords of a field's declared rules (``mall.api.v1.field``).

    A rule applies to a value that is set, so unless the field is REQUIRED the
    default value ("" or 0) stays allowed, exactly as the services enforce it.
    """
    out: dict[str, Any] = {}
    optional = for_item is False and not rules.required
    if f.type == _FD.TYPE_STRING:
        if rules.pattern is not None:
            body = rules.pattern.pattern
            out["pattern"] = f"^(?:{body})?$" if optional else f"^(?:{body})$"
        if rules.max_len is not None:
            out["maxLength"] = rules.max_len
        if rules.min_len is not None and not optional:
            out["minLength"] = rules.min_len
        elif rules.required and not for_item:
            out["minLength"] = 1
    elif f.type in INT32_TYPES or f.type in UINT32_TYPES or f.type in INT64_TYPES or f.type in UINT64_TYPES:
        bounds = {}
        if rules.min is not None:
            bounds["minimum"] = rules.min
        if rules.max is not None:
            bounds["maximum"] = rules.max
        zero_ok = (rules.min is None or rules.min <= 0) and (rules.max is None or rules.max >= 0)
        if bounds and (zero_ok or not optional):
            out.update(bounds)
        elif bounds:
            out["anyOf"] = [{"const": 0}, bounds]
    return out


# -- comments ------------------------------------------------------------------
def descriptor_set_path() -> Path:
    """``gen/python/mall/descriptors.binpb``, next to the generated ``mall`` package."""
    import mall

    return Path(mall.__file__).resolve().parent / "descriptors.binpb"


def _clean(comment: str) -> str:
    lines = [line[1:] if line.startswith(" ") else line for line in comment.strip("\n").split("\n")]
    return "\n".join(lines).strip()


def load_comments(path: Path | None = None) -> dict[str, str]:
    """Full name -> leading comment, for services, methods, messages, fields, enums, values.

    Fields and enum values are keyed ``<parent full name>.<name>``. Without the
    descriptor set (protos not generated with source info) the docs simply
    have no descriptions.
    """
    path = path or descriptor_set_path()
    try:
        fds = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
    except OSError:
        log.warning("no descriptor set at %s: the API docs will have no descriptions", path)
        return {}
    out: dict[str, str] = {}
    for file in fds.file:
        where = {tuple(loc.path): loc.leading_comments for loc in file.source_code_info.location}

        def put(name: str, loc: tuple[int, ...], where: dict = where) -> None:
            if where.get(loc):
                out[name] = _clean(where[loc])

        def enum(e, full: str, loc: tuple[int, ...]) -> None:
            put(full, loc)
            for k, v in enumerate(e.value):
                put(f"{full}.{v.name}", (*loc, 2, k))

        def message(m, full: str, loc: tuple[int, ...]) -> None:
            put(full, loc)
            for k, f in enumerate(m.field):
                put(f"{full}.{f.name}", (*loc, 2, k))
            for k, n in enumerate(m.nested_type):
                message(n, f"{full}.{n.name}", (*loc, 3, k))
            for k, e in enumerate(m.enum_type):
                enum(e, f"{full}.{e.name}", (*loc, 4, k))

        prefix = f"{file.package}." if file.package else ""
        for i, m in enumerate(file.message_type):
            message(m, prefix + m.name, (4, i))
        for i, e in enumerate(file.enum_type):
            enum(e, prefix + e.name, (5, i))
        for i, s in enumerate(file.service):
            put(prefix + s.name, (6, i))
            for j, m in enumerate(s.method):
                put(f"{prefix}{s.name}.{m.name}", (6, i, 2, j))
    return out


def _summary(text: str) -> str:
    first = text.split("\n\n")[0].replace("\n", " ").strip()
    end = first.find(". ")
    return first[: end + 1] if end >= 0 else first


def _behaviors(f: FieldDescriptor) -> set[int]:
    return set(f.GetOptions().Extensions[field_behavior_pb2.field_behavior])


# -- schemas ---------------------------------------------------------------------
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {
        "type": "string",
        "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$",
        "description": 'Seconds with an "s" suffix, e.g. "1.5s".',
    },
    "google.protobuf.FieldMask": {
        "type": "string",
        "description": 'Comma-separated lowerCamelCase field paths, e.g. "nickname,avatarUrl".',
    },
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "required": ["@type"],
        "additionalProperties": True,
    },
}


class SchemaBuilder:
    """Component schemas of messages and enums, following the proto3 JSON mapping."""

    def __init__(self, comments: dict[str, str]):
        self.comments = comments
        self.components: dict[str, dict] = {}

    def message_ref(self, desc: Descriptor) -> dict:
        name = desc.full_name
        if name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[name])
        if name in SPECIAL_JSON:  # wrappers: the inner value, or null
            inner = self.scalar(desc.fields_by_name["value"])
            return {**inner, "type": [inner["type"], "null"]}
        if name not in self.components:
            self.components[name] = {}  # placeholder: recursive messages
            self.components[name] = self.message_schema(desc)
        return {"$ref": _REF + name}

    def enum_ref(self, desc: EnumDescriptor) -> dict:
        name = desc.full_name
        if name not in self.components:
            lines = [self.comments.get(name, "")]
            values = [
                f"- `{v.name}`: {self.comments.get(f'{name}.{v.name}', '')}".rstrip(": ")
                for v in desc.values
            ]
            lines.append("\n".join(values))
            self.components[name] = {
                "type": "string",
                "enum": [v.name for v in desc.values],
                "description": "\n\n".join(x for x in lines if x),
            }
        return {"$ref": _REF + name}

    def message_schema(self, desc: Descriptor, exclude: Iterable[str] = ()) -> dict:
        skip = set(exclude)
        props, required = {}, []
        for f in desc.fields:
            if f.name in skip:
                continue
            props[f.json_name] = self.field(f, f"{desc.full_name}.{f.name}")
            if is_enforced_required(f):  # what the services refuse when missing (mallkit.constraints)
                required.append(f.json_name)
        # The gateway refuses keys that are not fields ("is not a field of this request").
        schema: dict = {"type": "object", "properties": props, "additionalProperties": False}
        if required:
            schema["required"] = required
        if self.comments.get(desc.full_name):
            schema["description"] = self.comments[desc.full_name]
        return schema

    def scalar(self, f: FieldDescriptor) -> dict:
        t = f.type
        if t == _FD.TYPE_MESSAGE:
            return self.message_ref(f.message_type)
        if t == _FD.TYPE_ENUM:
            return self.enum_ref(f.enum_type)
        # proto3 JSON: answers carry 64-bit integers as strings; requests may send a string or a number.
        if t in INT64_TYPES:
            return {"type": ["string", "integer"], "format": "int64", "pattern": _INT64_STRING}
        if t in UINT64_TYPES:
            return {"type": ["string", "integer"], "format": "uint64", "pattern": _UINT64_STRING, "minimum": 0}
        if t in INT32_TYPES:
            return {"type": "integer", "format": "int32"}
        if t in UINT32_TYPES:
            return {"type": "integer", "minimum": 0, "maximum": 4294967295}
        if t == _FD.TYPE_DOUBLE:
            return {"type": "number", "format": "double"}
        if t == _FD.TYPE_FLOAT:
            return {"type": "number", "format": "float"}
        if t == _FD.TYPE_BOOL:
            return {"type": "boolean"}
        if t == _FD.TYPE_BYTES:
            return {"type": "string", "contentEncoding": "base64"}
        return {"type": "string"}

    def field(self, f: FieldDescriptor, comment_key: str | None = None, *, nullable: bool = True) -> dict:
        """A field's schema. In JSON bodies ``null`` stands for the default value (proto3 JSON
        mapping), so fields that are not REQUIRED also admit ``null``."""
        rules = rules_of(f)
        if is_map(f):
            value = f.message_type.fields_by_name["value"]
            schema: dict[str, Any] = {"type": "object", "additionalProperties": self.scalar(value)}
        elif is_repeated(f):
            schema = {"type": "array", "items": {**self.scalar(f), **rule_keywords(rules, f, for_item=True)}}
            if rules.max_items is not None:
                schema["maxItems"] = rules.max_items
        else:
            schema = {**self.scalar(f), **rule_keywords(rules, f)}
        behaviors = _behaviors(f)
        if nullable and not is_enforced_required(f):
            schema = _nullable(schema)
        if field_behavior_pb2.OUTPUT_ONLY in behaviors:
            schema["readOnly"] = True
        if field_behavior_pb2.INPUT_ONLY in behaviors:
            schema["writeOnly"] = True
        if field_behavior_pb2.IMMUTABLE in behaviors:
            schema["x-immutable"] = True
        comment = self.comments.get(comment_key or "")
        if comment:
            schema["description"] = comment
        return schema


def _nullable(schema: dict) -> dict:
    kind = schema.get("type")
    if isinstance(kind, str):
        return {**schema, "type": [kind, "null"]}
    if isinstance(kind, list):
        return schema if "null" in kind else {**schema, "type": [*kind, "null"]}
    if "$ref" in schema:
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        return {"anyOf": [{"$ref": schema["$ref"]}, {"type": "null"}], **rest}
    return schema  # google.protobuf.Value: anything


ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "description": "Every error (AIP-193): the google.rpc.Status of the failure.",
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "status", "message", "details"],
            "properties": {
                "code": {"type": "integer", "description": "The HTTP status code."},
                "status": {
                    "type": "string",
                    "enum": list(code_pb2.Code.keys()),
                    "description": "The canonical gRPC code name, e.g. NOT_FOUND.",
                },
                "message": {"type": "string", "description": "English, for developers."},
                "details": {
                    "type": "array",
                    "description": (
                        "google.rpc error details: ErrorInfo (reason, domain, metadata), "
                        "LocalizedMessage (zh-CN text to show), BadRequest (field violations), "
                        "ResourceInfo, RetryInfo, QuotaFailure."
                    ),
                    "items": _WELL_KNOWN["google.protobuf.Any"],
                },
            },
        }
    },
}


# -- paths -----------------------------------------------------------------------
def _singular(word: str) -> str:
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith("sses"):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def openapi_path(route: Route) -> tuple[str, list[tuple[str, Variable | None, str]]]:
    """The OpenAPI path of a route and its parameters (name, variable, resource pattern)."""
    t = route.template
    owner: dict[int, Variable] = {}
    for v in t.variables:
        for i in range(v.start, v.end):
            owner[i] = v
    pieces: list[str] = []
    params: list[tuple[str, Variable | None, str]] = []
    used: set[str] = set()
    for i, seg in enumerate(t.segments):
        if seg.kind == LITERAL:
            pieces.append(seg.literal)
            continue
        var = owner.get(i)
        prev = t.segments[i - 1] if i else None
        if var is not None and prev is not None and prev.kind == LITERAL and i - 1 >= var.start:
            base = _singular(prev.literal)
        elif var is not None:
            base = var.field_path[-1]
        else:
            base = f"segment{i}"
        name, n = base, 2
        while name in used:
            name, n = f"{base}{n}", n + 1
        used.add(name)
        pieces.append("{" + name + "}")
        pattern = ""
        if var is not None:
            pattern = "/".join(
                s.literal if s.kind == LITERAL else "*" if s.kind == WILDCARD else "**"
                for s in t.segments[var.start:var.end]
            )
        params.append((name, var, pattern))
    path = "/" + "/".join(pieces) + (f":{t.verb}" if t.verb else "")
    return path, params


# -- document --------------------------------------------------------------------
def _access(route: Route) -> dict:
    p = route.policy
    return {
        "public": bool(p and p.public),
        "member": bool(p and p.member),
        "staff_roles": list(p.staff_roles) if p else [],
        "service": bool(p and p.service),
    }


def build_openapi(
    routes: list[Route],
    services: dict[str, ServiceDescriptor],
    comments: dict[str, str] | None = None,
    *,
    title: str = "Mall API",
    version: str = "v1",
) -> dict:
    """The OpenAPI 3.1 document of ``routes`` (in proto order)."""
    comments = load_comments() if comments is None else comments
    schemas = SchemaBuilder(comments)
    paths: dict[str, dict] = {}
    op_ids: set[str] = set()
    for route in routes:
        path, op = _operation(route, schemas, comments, op_ids)
        paths.setdefault(path, {})[route.http_method.lower()] = op
    tags = [
        {"name": s.name, "description": comments.get(s.full_name, "")}
        for s in services.values()
    ]
    components = dict(sorted(schemas.components.items()))
    components["Error"] = ERROR_SCHEMA
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": (
                "HTTP/JSON API of the mall, generated from the google.api.http annotations "
                "of the gRPC services. JSON follows the proto3 mapping: lowerCamelCase "
                "names, 64-bit integers as strings, enums by name, times in RFC 3339. "
                "Send `Authorization: Bearer <token>` (from a login route) and, on "
                "mutations, an `Idempotency-Key` header. `wx.request` cannot send PATCH: "
                "send POST with `X-HTTP-Method-Override: PATCH`."
            ),
        },
        "tags": tags,
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }


def _operation(route: Route, schemas: SchemaBuilder, comments: dict[str, str], op_ids: set[str]):
    method = route.method
    service = method.containing_service
    description = comments.get(f"{service.full_name}.{method.name}", "")
    op_id = method.name if route.binding_index == 0 else f"{method.name}_{route.binding_index}"
    if op_id in op_ids:
        op_id = f"{service.name}_{op_id}"
    op_ids.add(op_id)

    path, path_params = openapi_path(route)
    request = method.input_type
    parameters = []
    wildcards = [i for i, s in enumerate(route.template.segments) if s.kind != LITERAL]
    for k, (name, var, pattern) in enumerate(path_params):
        desc = f"Segment of `{var.name}` (`{pattern}`)." if var is not None else "Path segment."
        if var is not None:
            field_comment = comments.get(_field_key(request, var.field_path), "")
            if field_comment:
                desc += " " + field_comment
        parameters.append({
            "name": name, "in": "path", "required": True, "schema": _path_schema(route, var, wildcards[k]),
            "description": desc,
        })
    if route.body != "*":
        parameters += _query_parameters(route, request, schemas, comments)

    op: dict = {
        "operationId": op_id,
        "tags": [service.name],
        "summary": _summary(description) or method.name,
        "description": description,
        "parameters": parameters,
    }
    if route.body:
        op["requestBody"] = {
            "required": route.body != "*",
            "content": {"application/json": {"schema": _body_schema(route, schemas)}},
        }
    if method.output_type.full_name == HTTP_BODY:  # a non-JSON answer (a CSV export): the body as sent
        ok_content: dict = {"text/csv": {"schema": {"type": "string"}}}
    else:
        if route.response_body:
            f = method.output_type.fields_by_name[route.response_body]
            response_schema = schemas.field(f, nullable=False)
        else:
            response_schema = schemas.message_ref(method.output_type)
        ok_content = {"application/json": {"schema": response_schema}}
    op["responses"] = {
        "200": {"description": "OK", "content": ok_content},
        "default": {
            "description": "Error",
            "content": {"application/json": {"schema": {"$ref": _REF + "Error"}}},
        },
    }
    op["security"] = [] if route.is_public else [{"bearerAuth": []}]
    op["x-mall-access"] = _access(route)
    op["x-grpc-method"] = route.rpc_path
    return path, op


def _segment_patterns(route: Route, var: Variable) -> list[str] | None:
    """The declared pattern of a path variable's field, one piece per template segment."""
    desc = route.method.input_type
    for name in var.field_path[:-1]:
        desc = desc.fields_by_name[name].message_type
    rules = rules_of(desc.fields_by_name[var.field_path[-1]])
    if rules.pattern is None:
        return None
    pieces = rules.pattern.pattern.split("/")
    return pieces if len(pieces) == var.end - var.start else None


def _path_schema(route: Route, var: Variable | None, segment: int) -> dict:
    """A path parameter: one segment, matching its piece of the field's declared pattern."""
    schema: dict[str, Any] = {"type": "string", "minLength": 1}
    pieces = _segment_patterns(route, var) if var is not None else None
    if var is not None and pieces is not None:
        schema["pattern"] = f"^(?:{pieces[segment - var.start]})$"
    return schema


def _field_key(desc: Descriptor, field_path: tuple[str, ...]) -> str:
    for name in field_path[:-1]:
        desc = desc.fields_by_name[name].message_type
    return f"{desc.full_name}.{field_path[-1]}"


#: A body key that a path variable binds: the path's value wins (http.proto), whatever the body says.
_SET_BY_PATH = {"description": "Set by the path; a value sent here is ignored."}


def _body_schema(route: Route, schemas: SchemaBuilder) -> dict:
    request = route.method.input_type
    mask = request.fields_by_name.get("update_mask")
    if route.body not in ("", "*") and mask is not None and route.http_method == "PATCH":
        # A partial update: the resource's REQUIRED fields are not required here (only what changes is sent),
        # and its output-only fields are refused (mallkit.constraints), so they are not in the body at all.
        f = request.fields_by_name[route.body]
        schema = schemas.message_schema(f.message_type)
        schema.pop("required", None)
        schema["properties"] = {  # nothing is required in a partial update: null or "" (the default) is fine too
            k: _nullable({kw: x for kw, x in v.items() if kw != "minLength"})
            for k, v in schema["properties"].items() if not v.get("readOnly")
        }
        for p in route.path_fields:
            if len(p) == 2 and p[0] == route.body:
                schema["properties"][f.message_type.fields_by_name[p[1]].json_name] = dict(_SET_BY_PATH)
        schema["additionalProperties"] = False
        return schema
    if route.body == "*":
        in_path = {p[0] for p in route.path_fields if len(p) == 1}
        if not in_path:
            return schemas.message_ref(request)
        schema = schemas.message_schema(request, exclude=in_path)
        for name in in_path:
            schema["properties"][request.fields_by_name[name].json_name] = dict(_SET_BY_PATH)
        return schema
    return schemas.field(request.fields_by_name[route.body], nullable=False)


def _query_parameters(route: Route, request: Descriptor, schemas: SchemaBuilder, comments) -> list[dict]:
    out: list[dict] = []
    path_fields = route.path_fields

    def walk(desc: Descriptor, proto: tuple[str, ...], json_prefix: str, depth: int) -> None:
        for f in desc.fields:
            here = (*proto, f.name)
            if here in path_fields or (not proto and f.name == route.body) or is_map(f):
                continue
            behaviors = _behaviors(f)
            if field_behavior_pb2.OUTPUT_ONLY in behaviors:
                continue
            name = json_prefix + f.json_name
            if is_plain_message(f):
                if not is_repeated(f) and depth < _QUERY_DEPTH:
                    walk(f.message_type, here, name + ".", depth + 1)
                continue
            if f.type == _FD.TYPE_MESSAGE and f.message_type.full_name in (
                "google.protobuf.Struct",
                "google.protobuf.Value",
                "google.protobuf.ListValue",
                "google.protobuf.Any",
            ):
                continue
            param = {
                "name": name,
                "in": "query",
                "schema": schemas.field(f, nullable=False),
                "description": comments.get(f"{desc.full_name}.{f.name}", ""),
            }
            param["schema"].pop("description", None)
            if is_repeated(f):
                param["style"], param["explode"] = "form", True
            if is_enforced_required(f) and not proto:
                param["required"] = True
            out.append(param)

    walk(request, (), "", 0)
    return out
