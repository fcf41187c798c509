"""The ownership sweep, generated from the proto descriptors (through the gateway's route table).

For every RPC a member may call (``option (mall.auth.v1.access) = {member: true}``)
whose path names a resource: member A sends member B's resource names (B's
``members/{id}``, and the names of B's own resources that B's lists return,
such as ``orders/{id}`` or ``members/{id}/addresses/{id}``) and gets 403 or
404; afterwards everything B can read of their own is unchanged. A new RPC is
in the sweep as soon as it has an HTTP binding: nobody writes a test for it.
"""

from __future__ import annotations

import json

from google.api import field_behavior_pb2
from google.protobuf.descriptor import FieldDescriptor

from gateway.routing import LITERAL, Route
from mallkit.constraints import rules_of
from tests.fixtures.system import Caller, new_member

_FD = FieldDescriptor


def _var_template(route: Route, var) -> list[str]:
    """The segments of a variable: literals, and "*" for wildcards."""
    return [s.literal if s.kind == LITERAL else "*" for s in route.template.segments[var.start:var.end]]


def _fits(name: str, template: list[str]) -> bool:
    parts = name.split("/")
    return len(parts) == len(template) and all(t in ("*", p) for p, t in zip(parts, template, strict=True))


def _member_reads(routes: list[Route]) -> list[Route]:
    """GET routes a member may call on their own data: ``members/{me}`` somewhere in the path."""
    return [r for r in routes if r.http_method == "GET" and r.policy.member and any(
        _var_template(r, v)[:1] == ["members"] for v in r.template.variables)]


def _path(route: Route, values: dict[str, str]) -> str:
    """The route's path with each variable's segments replaced by the given names."""
    out, segs, i = [], route.template.segments, 0
    by_start = {v.start: v for v in route.template.variables}
    while i < len(segs):
        v = by_start.get(i)
        if v is not None:
            out.append(values[v.name])
            i = v.end
        else:
            out.append(segs[i].literal)
            i += 1
    return "/" + "/".join(out) + (f":{route.template.verb}" if route.template.verb else "")


def _names(value, depth: int = 0) -> set[str]:
    """The ``name`` of every resource in a response (the resources themselves, not references)."""
    out: set[str] = set()
    if depth > 2:
        return out
    if isinstance(value, dict):
        if isinstance(value.get("name"), str) and value["name"]:
            out.add(value["name"])
        for v in value.values():
            if isinstance(v, list):
                for item in v:
                    out |= _names(item, depth + 1)
    return out


def _own(template: list[str], member_id: int) -> str | None:
    """The template with the member wildcard filled in, or None if another wildcard remains."""
    parts = [str(member_id) if t == "*" and i and template[i - 1] == "members" else t for i, t in enumerate(template)]
    return None if "*" in parts else "/".join(parts)


async def _snapshot(gw, routes: list[Route], owner: Caller) -> dict[str, object]:
    """Everything the owner can read of their own, by path."""
    seen = {}
    for route in _member_reads(routes):
        values = {v.name: _own(_var_template(route, v), owner.member_id) for v in route.template.variables}
        if None in values.values():
            continue  # needs an id of another collection
        path = _path(route, values)
        resp = await gw.get(path, headers=owner.headers)
        seen[path] = (resp.status_code, resp.json())
    return seen


def _minimal_body(desc, depth: int = 0) -> dict:
    """The REQUIRED fields of a request, with values its declared rules accept (no pattern: plain text)."""
    body: dict = {}
    for f in desc.fields:
        if field_behavior_pb2.REQUIRED not in f.GetOptions().Extensions[field_behavior_pb2.field_behavior]:
            continue
        r = rules_of(f)
        if f.type == _FD.TYPE_STRING:
            if r.pattern is not None:
                continue
            value: object = "x" * max(r.min_len or 1, 1)
        elif f.type == _FD.TYPE_ENUM:
            value = f.enum_type.values[-1].name
        elif f.type == _FD.TYPE_BOOL:
            value = True
        elif f.type == _FD.TYPE_MESSAGE and not f.message_type.full_name.startswith("google.") and depth < 3:
            value = _minimal_body(f.message_type, depth + 1)
        elif f.type == _FD.TYPE_MESSAGE:
            continue
        else:
            value = 1 if f.type in (_FD.TYPE_INT32, _FD.TYPE_UINT32, _FD.TYPE_SINT32) else "1"
        body[f.json_name] = [value] if f.is_repeated else value
    return body


def _body(route: Route) -> dict | None:
    if not route.body:
        return None
    request = route.method.input_type
    if route.body == "*":
        in_path = {v.field_path[0] for v in route.template.variables}
        return {k: v for k, v in _minimal_body(request).items()
                if request.fields_by_name.get(k) is None or k not in in_path}
    return _minimal_body(request.fields_by_name[route.body].message_type)


async def test_member_a_never_reaches_member_bs_resources(mall_gateway, members, orders, staff_caller):
    gw = mall_gateway
    routes: list[Route] = list(gw.app.state.routes)
    a, b = await new_member(members), await new_member(members)
    # B owns something in every service: a nickname, an address, an order, a check-in, a touch of a message list.
    b_md = members.auth(b.token)
    product = await orders.product()
    address = await orders.address(b_md)
    await orders.order(b_md, product.skus[0].name, address=address)
    assert (await gw.patch("/v1/members/me", json={"nickname": "乙"}, headers=b.headers)).status_code == 200
    assert (await gw.post("/v1/members/me/pointsAccount:checkIn", json={}, headers=b.headers)).status_code == 200
    assert (await gw.post("/v1/members/me/cartItems", json={"sku": product.skus[0].name, "quantity": 1},
                          headers=b.headers)).status_code == 200

    before = await _snapshot(gw, routes, b)
    owned = set().union(*(_names(body) for _, body in before.values())) | {f"members/{b.member_id}"}
    assert any(n.startswith("orders/") for n in owned) and any("/addresses/" in n for n in owned), owned

    swept, skipped = [], []
    for route in routes:
        if not route.policy.member or not route.template.variables:
            continue
        values = {}
        for var in route.template.variables:
            template = _var_template(route, var)
            candidates = sorted(n for n in owned if _fits(n, template))
            if candidates:
                values[var.name] = candidates[0]
            elif _own(template, b.member_id) is not None:
                values[var.name] = _own(template, b.member_id)
            elif template[:2] == ["members", "*"]:  # B's namespace, a child B does not have: the same answer
                values[var.name] = _own(template, b.member_id) or _own(
                    [t if t != "*" or i == 1 else "1" for i, t in enumerate(template)], b.member_id)
        if len(values) != len(route.template.variables):
            skipped.append(str(route))  # a shared resource (items/{id}, groups/{id}): not B's to protect
            continue
        path = _path(route, values)
        body = _body(route)
        method = route.http_method
        for attempt in (body, {} if body else None):
            resp = await gw.request(method, path, headers=a.headers,
                                    content=None if attempt is None else json.dumps(attempt).encode(),
                                    )
            if resp.status_code != 400:
                break
        assert resp.status_code in (403, 404), (str(route), path, resp.status_code, resp.text[:300])
        swept.append(str(route))

    after = await _snapshot(gw, routes, b)
    assert after == before  # nothing of B's changed, whatever A sent
    # Every member-scoped route whose only resource is the member is in the sweep, and B's orders too.
    only_member = [str(r) for r in routes if r.policy.member and r.template.variables and all(
        _own(_var_template(r, v), b.member_id) for v in r.template.variables)]
    assert set(only_member) <= set(swept) and len(only_member) > 15, (only_member, swept)
    in_b_namespace = [str(r) for r in routes if r.policy.member and any(
        _var_template(r, v)[:2] == ["members", "*"] for v in r.template.variables)]
    assert set(in_b_namespace) <= set(swept), set(in_b_namespace) - set(swept)
    assert len(swept) > 25, (swept, skipped)
    assert any(s.startswith("POST /v1/{name=orders/*}:pay") for s in swept)
