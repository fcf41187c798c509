"""Defect class 8: the constraints are declared once (``mall.api.v1.field`` and field_behavior in the protos),
enforced by every service for every request (mallkit.constraints in the shared interceptor) and stated by the
OpenAPI document. The checks walk the route table and the descriptors, so a new field or route is covered."""

from __future__ import annotations

import re

from google.api import field_behavior_pb2
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FieldDescriptor

from gateway.routing import LITERAL, Route
from mallkit.constraints import rules_of
from tests.fixtures.system import new_member

_FD = FieldDescriptor


def _violations(resp) -> set[str]:
    out = set()
    for d in resp.json()["error"]["details"]:
        if d["@type"].endswith("BadRequest"):
            out |= {v["field"] for v in d["fieldViolations"]}
    return out


def _path(route: Route, member: bool) -> str:
    parts, segs = [], route.template.segments
    for i, s in enumerate(segs):
        if s.kind == LITERAL:
            parts.append(s.literal)
        elif i and segs[i - 1].kind == LITERAL and segs[i - 1].literal == "members" and member:
            parts.append("me")
        elif i and segs[i - 1].kind == LITERAL and segs[i - 1].literal == "visitors":
            parts.append("v" * 20)
        else:
            parts.append("1")
    return "/" + "/".join(parts) + (f":{route.template.verb}" if route.template.verb else "")


def _body_fields(route: Route):
    """(json path, proto path, field) of the top-level string fields of a route's body with a max_len."""
    request = route.method.input_type
    if route.body == "*":
        prefix_json, prefix_proto, desc = "", "", request
    else:
        f = request.fields_by_name[route.body]
        if f.type != _FD.TYPE_MESSAGE:
            return []
        prefix_json, prefix_proto, desc = "", f"{f.name}.", f.message_type
    in_path = {v.field_path[-1] for v in route.template.variables}
    return [(prefix_json + f.json_name, prefix_proto + f.name, f) for f in desc.fields
            if f.type == _FD.TYPE_STRING and not f.is_repeated and rules_of(f).max_len is not None
            and f.name not in in_path and not rules_of(f).output_only]


def test_every_declared_pattern_is_portable_and_anchored_by_fullmatch(mall_gateway):
    seen = 0
    for route in mall_gateway.app.state.routes:
        for desc in (route.method.input_type,):
            stack = [desc]
            while stack:
                d = stack.pop()
                for f in d.fields:
                    r = rules_of(f)
                    if r.pattern is not None:
                        seen += 1
                        assert not re.search(r"\\[dwsb]", r.pattern.pattern, re.I), f.full_name
                        assert r.pattern.fullmatch("1\n") is None and r.pattern.fullmatch("") is None
                    if f.type == _FD.TYPE_MESSAGE and not f.message_type.full_name.startswith("google.") \
                            and f.message_type is not d and len(stack) < 50:
                        stack.append(f.message_type)
    assert seen > 50


async def test_the_document_states_every_declared_rule(mall_gateway):
    doc = (await mall_gateway.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    checked = 0
    for name, schema in schemas.items():
        if not name.startswith("mall."):
            continue
        desc = _message(mall_gateway, name)
        if desc is None or schema.get("type") != "object":
            continue
        for f in desc.fields:
            r, prop = rules_of(f), schema["properties"][f.json_name]
            target = prop["items"] if f.is_repeated and "items" in prop else prop
            if r.max_len is not None:
                assert target["maxLength"] == r.max_len, f.full_name
                checked += 1
            if r.pattern is not None:
                assert r.pattern.pattern in target["pattern"], f.full_name
                checked += 1
            if r.max_items is not None:
                assert prop["maxItems"] == r.max_items, f.full_name
    # Path parameters carry their segment's pattern: a client cannot build "members/²".
    params = doc["paths"]["/v1/members/{member}/pointsAccount:checkIn"]["post"]["parameters"]
    member = next(p for p in params if p["name"] == "member")
    assert re.fullmatch(member["schema"]["pattern"][1:-1], "me") and not re.search(member["schema"]["pattern"], "²")
    assert checked > 40


def _message(gw, full_name: str):
    try:
        return descriptor_pool.Default().FindMessageTypeByName(full_name)
    except KeyError:
        return None


async def test_every_declared_length_is_enforced_through_the_gateway(mall_gateway, members, staff_caller):
    member = await new_member(members)
    checked = 0
    for route in mall_gateway.app.state.routes:
        if route.is_public or route.raw is not None or not route.body:
            continue
        fields = _body_fields(route)
        if not fields:
            continue
        caller = member if route.policy.member else staff_caller
        path = _path(route, caller is member)
        for json_path, proto_path, f in fields:
            too_long = "长" * (rules_of(f).max_len + 1)
            body = {json_path: too_long}
            method = "POST" if route.http_method == "PATCH" else route.http_method
            headers = {**caller.headers, **({"X-HTTP-Method-Override": "PATCH"} if route.http_method == "PATCH" else {})}
            resp = await mall_gateway.request(method, path, json=body, headers=headers)
            assert resp.status_code == 400, (route.method.name, json_path, resp.status_code, resp.text[:300])
            assert proto_path in _violations(resp), (route.method.name, proto_path, resp.text[:300])
            checked += 1
    assert checked > 30


async def test_output_only_fields_in_an_update_are_refused(mall_gateway, members, staff_caller):
    member = await new_member(members)
    checked = 0
    for route in mall_gateway.app.state.routes:
        if route.http_method != "PATCH":
            continue
        resource = route.method.input_type.fields_by_name[route.body]
        caller = member if route.policy.member else staff_caller
        path = _path(route, caller is member)
        for f in resource.message_type.fields:
            if field_behavior_pb2.OUTPUT_ONLY not in f.GetOptions().Extensions[field_behavior_pb2.field_behavior]:
                continue
            resp = await mall_gateway.patch(path, params={"updateMask": f.json_name}, json={}, headers=caller.headers)
            assert resp.status_code == 400, (route.method.name, f.name, resp.text[:300])
            assert "update_mask" in _violations(resp), resp.text
            checked += 1
    assert checked >= 10
    # In the body: the derived mask names it, and the field itself is named.
    resp = await mall_gateway.patch("/v1/members/me", json={"nickname": "新名字", "growthValue": "99999"},
                                    headers=member.headers)
    assert resp.status_code == 400, resp.text
    assert {"member.growth_value"} <= _violations(resp) or {"update_mask"} <= _violations(resp)
    me = (await mall_gateway.get("/v1/members/me", headers=member.headers)).json()
    assert me["growthValue"] == "0" and me["nickname"] != "新名字"  # nothing was applied


async def test_duplicate_json_keys_are_refused(mall_gateway, members):
    member = await new_member(members)
    resp = await mall_gateway.patch("/v1/members/me", content=b'{"nickname": "a", "nickname": "b"}',
                                    headers={**member.headers, "content-type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["details"][0]["reason"] == "INVALID_JSON"
    assert "nickname" in resp.json()["error"]["message"]
    nested = b'{"lines": [{"sku": "products/1/skus/1", "sku": "products/2/skus/2", "quantity": 1}]}'
    resp = await mall_gateway.post("/v1/orders", content=nested, headers={**member.headers,
                                                                          "content-type": "application/json"})
    assert resp.status_code == 400 and "sku" in resp.json()["error"]["message"], resp.text


async def test_page_size_over_the_maximum_is_clamped_to_100_as_the_readme_says(mall_gateway, members, staff_caller):
    for _ in range(101):
        await members.login()
    resp = await mall_gateway.get("/v1/members", params={"pageSize": 1000}, headers=staff_caller.headers)
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["members"]) == 100 and resp.json()["nextPageToken"]
    resp = await mall_gateway.get("/v1/members", params={"pageSize": -1}, headers=staff_caller.headers)
    assert resp.status_code == 400 and "page_size" in _violations(resp)
