"""HTTP routes derived from the ``google.api.http`` annotations of the RPCs.

:class:`PathTemplate` implements the path template syntax of
``google/api/http.proto``::

    Template = "/" Segments [ Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;
    FieldPath = IDENT { "." IDENT } ;
    Verb     = ":" LITERAL ;

:func:`build_routes` turns every RPC that carries an HTTP rule (and its
``additional_bindings``) into a :class:`Route`; RPCs without a rule are meant
for other services only and get no route at all. :class:`RouteTable` picks the
most specific route for a request: a custom verb beats none, and position by
position a literal segment beats ``*``, which beats ``**`` (so ``GET
/v1/members`` wins over ``GET /v1/{name=members/*}`` when both could match).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from google.api import annotations_pb2, http_pb2
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from mallkit.auth import access_policy

LITERAL, WILDCARD, DEEP = 0, 1, 2  # segment kinds, in order of precedence
_LITERAL_RE = re.compile(r"[^/{}*:=]+")
_FIELD_PATH_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_ENCODED_SLASH = re.compile("%2[fF]")


class TemplateError(ValueError):
    """A path template that does not follow the grammar."""


@dataclass(frozen=True)
class Segment:
    kind: int
    literal: str = ""


@dataclass(frozen=True)
class Variable:
    """A ``{field.path=...}`` capture over segments ``[start, end)``."""

    field_path: tuple[str, ...]
    start: int
    end: int

    @property
    def name(self) -> str:
        return ".".join(self.field_path)


class PathTemplate:
    """A compiled path template; :meth:`match` binds its variables."""

    def __init__(self, text: str):
        self.text = text
        self.segments: list[Segment] = []
        self.variables: list[Variable] = []
        self.verb = ""
        self._parse()
        self.deep = bool(self.segments) and self.segments[-1].kind == DEEP
        #: Sort key: lower is more specific.
        self.precedence = (0 if self.verb else 1, tuple(s.kind for s in self.segments))

    def __repr__(self) -> str:
        return f"PathTemplate({self.text!r})"

    # -- parsing ---------------------------------------------------------
    def _parse(self) -> None:
        text = self.text
        if not text.startswith("/"):
            raise TemplateError(f"{text!r}: a template starts with '/'")
        self._pos = 1
        self._segments(variable=None)
        if self._peek() == ":":
            self._pos += 1
            self.verb = self._literal()
        if self._pos != len(text):
            raise TemplateError(f"{text!r}: unexpected {text[self._pos]!r} at {self._pos}")
        for i, seg in enumerate(self.segments):
            if seg.kind == DEEP and i != len(self.segments) - 1:
                raise TemplateError(f"{text!r}: '**' must be the last segment")
        names = [v.name for v in self.variables]
        if len(set(names)) != len(names):
            raise TemplateError(f"{text!r}: a field is bound twice")

    def _peek(self) -> str:
        return self.text[self._pos] if self._pos < len(self.text) else ""

    def _literal(self) -> str:
        m = _LITERAL_RE.match(self.text, self._pos)
        if not m:
            raise TemplateError(f"{self.text!r}: expected a literal at {self._pos}")
        self._pos = m.end()
        return m.group()

    def _segments(self, variable: str | None) -> None:
        self._segment(variable)
        while self._peek() == "/":
            self._pos += 1
            self._segment(variable)

    def _segment(self, variable: str | None) -> None:
        if self.text.startswith("**", self._pos):
            self._pos += 2
            self.segments.append(Segment(DEEP))
        elif self._peek() == "*":
            self._pos += 1
            self.segments.append(Segment(WILDCARD))
        elif self._peek() == "{":
            if variable is not None:
                raise TemplateError(f"{self.text!r}: variables cannot nest")
            self._variable()
        else:
            self.segments.append(Segment(LITERAL, self._literal()))

    def _variable(self) -> None:
        self._pos += 1  # "{"
        m = _FIELD_PATH_RE.match(self.text, self._pos)
        if not m:
            raise TemplateError(f"{self.text!r}: expected a field path at {self._pos}")
        self._pos = m.end()
        start = len(self.segments)
        if self._peek() == "=":
            self._pos += 1
            self._segments(variable=m.group())
        else:
            self.segments.append(Segment(WILDCARD))
        if self._peek() != "}":
            raise TemplateError(f"{self.text!r}: expected '}}' at {self._pos}")
        self._pos += 1
        self.variables.append(Variable(tuple(m.group().split(".")), start, len(self.segments)))

    # -- matching --------------------------------------------------------
    def match(self, parts: list[str]) -> dict[tuple[str, ...], str] | None:
        """Bind the variables to the raw (percent-encoded) path segments, or None.

        ``parts`` excludes the verb. Values are percent-decoded; a variable
        over several segments keeps ``%2F`` encoded, as http.proto says.
        """
        segs = self.segments
        if self.deep:
            if len(parts) < len(segs) - 1:
                return None
        elif len(parts) != len(segs):
            return None
        for seg, part in zip(segs, parts, strict=False):  # parts may be longer after **
            if seg.kind == DEEP:
                break
            if seg.kind == LITERAL:
                if part != seg.literal:
                    return None
            elif not part:
                return None
        values = {}
        for var in self.variables:
            end = len(parts) if (self.deep and var.end == len(segs)) else var.end
            captured = parts[var.start:end]
            if end - var.start == 1 and segs[var.start].kind == WILDCARD:
                values[var.field_path] = unquote(captured[0])
            else:
                values[var.field_path] = "/".join(
                    unquote(_ENCODED_SLASH.sub("%252F", p)) for p in captured
                )
        return values


@dataclass(frozen=True)
class Route:
    """One HTTP binding of an RPC."""

    service: str  # registry name, "members"
    method: MethodDescriptor
    http_method: str  # "GET", "POST", ...
    template: PathTemplate
    body: str  # "" (no body), "*" or a top-level field name
    response_body: str
    binding_index: int = 0  # 0: the main rule, then the additional bindings
    policy: Any = None  # mall.auth.v1.AccessPolicy or None (nobody may call)
    raw: Any = None  # mall.gateway.v1.RawBinding: bind the raw body and headers, not JSON
    request_class: type[Message] = field(init=False)
    response_class: type[Message] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "request_class", GetMessageClass(self.method.input_type))
        object.__setattr__(self, "response_class", GetMessageClass(self.method.output_type))

    @property
    def rpc_path(self) -> str:
        """``/mall.members.v1.MembersService/GetMember``."""
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def path_fields(self) -> set[tuple[str, ...]]:
        return {v.field_path for v in self.template.variables}

    @property
    def is_public(self) -> bool:
        return bool(self.policy is not None and self.policy.public)

    def __str__(self) -> str:
        return f"{self.http_method} {self.template.text}"


def raw_binding(method: MethodDescriptor) -> Any:
    """The ``mall.gateway.v1.raw_binding`` option of an RPC, or None."""
    from mall.gateway.v1 import raw_binding_pb2

    opts = method.GetOptions()
    return opts.Extensions[raw_binding_pb2.raw_binding] if opts.HasExtension(raw_binding_pb2.raw_binding) else None


def http_rule(method: MethodDescriptor) -> http_pb2.HttpRule | None:
    opts = method.GetOptions()
    if not opts.HasExtension(annotations_pb2.http):
        return None
    return opts.Extensions[annotations_pb2.http]


def routes_of_rule(service: str, method: MethodDescriptor, rule: http_pb2.HttpRule) -> list[Route]:
    """The routes of one rule and its additional bindings (validated)."""
    policy = access_policy(method)
    raw = raw_binding(method)
    rules = [rule, *rule.additional_bindings]
    routes = []
    for index, r in enumerate(rules):
        kind = r.WhichOneof("pattern")
        if kind is None:
            raise TemplateError(f"{method.full_name}: HTTP rule without a pattern")
        if kind == "custom":
            verb, path = r.custom.kind.upper(), r.custom.path
        else:
            verb, path = kind.upper(), getattr(r, kind)
        route = Route(
            service=service,
            method=method,
            http_method=verb,
            template=PathTemplate(path),
            body=r.body,
            response_body=r.response_body,
            binding_index=index,
            policy=policy,
            raw=raw,
        )
        _validate(route)
        routes.append(route)
    return routes


def _validate(route: Route) -> None:
    where = f"{route.method.full_name} ({route})"
    request = route.method.input_type
    if route.body not in ("", "*"):
        f = request.fields_by_name.get(route.body)
        if f is None or f.is_repeated:
            raise TemplateError(f"{where}: body {route.body!r} is not a singular field of the request")
    for var in route.template.variables:
        desc = request
        for i, name in enumerate(var.field_path):
            f = desc.fields_by_name.get(name) if desc is not None else None
            if f is None or f.is_repeated:
                raise TemplateError(f"{where}: path field {var.name!r} is not a singular field")
            last = i == len(var.field_path) - 1
            if last and f.type == FieldDescriptor.TYPE_MESSAGE:
                raise TemplateError(f"{where}: path field {var.name!r} must be a scalar")
            desc = f.message_type
    if route.response_body and route.response_body not in route.method.output_type.fields_by_name:
        raise TemplateError(f"{where}: response_body {route.response_body!r} is not a field")


def build_routes(services: Iterable[tuple[str, ServiceDescriptor]]) -> list[Route]:
    """Every HTTP binding of the given services, in proto order."""
    routes: list[Route] = []
    for name, service in services:
        for method in service.methods:
            rule = http_rule(method)
            if rule is not None:
                routes.extend(routes_of_rule(name, method, rule))
    return routes


class NoRouteError(Exception):
    """No route has this path (404)."""


class WrongMethodError(Exception):
    """Routes have this path, but not for this HTTP method (405)."""

    def __init__(self, allowed: list[str]):
        super().__init__(", ".join(allowed))
        self.allowed = allowed


class RouteTable:
    """Finds the route of a request path."""

    def __init__(self, routes: list[Route]):
        seen: dict[tuple, Route] = {}
        for r in routes:
            key = (r.http_method, r.template.verb, tuple(r.template.segments))
            if key in seen:
                raise TemplateError(f"{r.method.full_name} and {seen[key].method.full_name} share {r}")
            seen[key] = r
        self.routes = sorted(routes, key=lambda r: r.template.precedence)
        # The routes a path can match, by its second segment ("members" of /v1/members/me): those
        # with that literal there and those with a variable there, in precedence order. A request
        # then tries a handful of templates, not every route of every service.
        def second(r: Route) -> str | None:
            segs = r.template.segments
            return segs[1].literal if len(segs) > 1 and segs[1].kind == LITERAL else None

        self._any = [r for r in self.routes if second(r) is None]
        self._by_second = {lit: [r for r in self.routes if second(r) in (lit, None)]
                           for lit in {second(r) for r in self.routes} - {None}}

    def __iter__(self):
        return iter(self.routes)

    def match(self, http_method: str, raw_path: str) -> tuple[Route, dict[tuple[str, ...], str]]:
        """The most specific route and its path values; NoRouteError or WrongMethodError otherwise."""
        if not raw_path.startswith("/"):
            raise NoRouteError(raw_path)
        parts = raw_path[1:].split("/")
        # The custom verb is what follows the last ":" of the last segment, and a
        # route matches only with its own verb (or none for none): "GET
        # /v1/orders/1:pay" is PayOrder's path with the wrong method, never
        # GetOrder of "orders/1:pay".
        head, colon, request_verb = parts[-1].rpartition(":")
        candidate = [*parts[:-1], head] if colon else parts
        allowed: list[str] = []
        routes = self._by_second.get(candidate[1], self._any) if len(candidate) > 1 else self._any
        for route in routes:  # most specific first
            verb = route.template.verb
            if (verb != request_verb or not verb) if colon else bool(verb):
                continue
            values = route.template.match(candidate)
            if values is None:
                continue
            if route.http_method == http_method:
                return route, values
            if route.http_method not in allowed:
                allowed.append(route.http_method)
        if allowed:
            raise WrongMethodError(allowed)
        raise NoRouteError(raw_path)

    def template_of(self, http_method: str, raw_path: str) -> str | None:
        """The template a request would be routed to (for span names), or None."""
        try:
            return self.match(http_method, raw_path)[0].template.text
        except (NoRouteError, WrongMethodError):
            return None
