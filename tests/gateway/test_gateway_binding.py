"""HTTP -> request message: path, query and body, PATCH masks, and bad input (via a real upstream)."""

from __future__ import annotations

import json

import pytest
from google.api import http_pb2

from gateway.binding import bind_request
from gateway.config import SERVICES
from gateway.errors import InvalidFieldError
from gateway.routing import routes_of_rule
from mall.members.v1 import members_service_pb2 as pb
from tests.gateway.conftest import ADMIN, GUIDE, bearer, error_of, violations


async def test_get_binds_the_path_and_answers_proto3_json(gw, upstream, member_auth):
    r = await gw.get("/v1/members/me", headers=member_auth)
    assert r.status_code == 200, r.text
    assert upstream.servicer.last("GetMember").request.name == "members/me"
    body = r.json()
    assert body["name"] == "members/me"
    assert body["nickname"] == "小明"
    assert body["gender"] == "GENDER_FEMALE"
    assert body["growthValue"] == "1234"  # int64 as a string
    assert body["createTime"] == "2023-11-14T22:13:20Z"
    # Fields left at their defaults are still there, so the mini-program sees every field.
    assert body["phoneConsent"] is False and body["occupation"] == "" and body["attributes"] == {}


async def test_query_parameters_in_camel_or_snake_case(gw, upstream, admin_auth):
    r = await gw.get(
        "/v1/members?pageSize=5&page_token=abc&tier=tiers/2&firstTouchChannelCode=channelCodes/9",
        headers=admin_auth,
    )
    assert r.status_code == 200, r.text
    req = upstream.servicer.last("ListMembers").request
    assert (req.page_size, req.page_token, req.tier, req.first_touch_channel_code) == (
        5, "abc", "tiers/2", "channelCodes/9",
    )
    assert r.json() == {"members": [pb_member_json("members/1")], "nextPageToken": "next"}


def pb_member_json(name: str) -> dict:
    from google.protobuf import json_format

    return json_format.MessageToDict(pb.Member(name=name), always_print_fields_with_no_presence=True)


async def test_body_star_with_repeated_fields(gw, upstream):
    r = await gw.post(
        "/v1/members:applyTags",
        json={"members": ["members/1", "members/2"], "tags": ["tagGroups/g/tags/t"], "source": "TAG_SOURCE_RULE"},
        headers=bearer(GUIDE),
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"appliedCount": 2}
    req = upstream.servicer.last("ApplyTags").request
    assert list(req.members) == ["members/1", "members/2"] and req.source == pb.TAG_SOURCE_RULE


async def test_path_variables_override_the_body(gw, upstream, member_auth):
    r = await gw.post(
        "/v1/members/me/subscriptions:record",
        json={"parent": "members/99", "acceptedTemplateIds": ["tpl_a", "tpl_b"]},
        headers=member_auth,
    )
    assert r.status_code == 200, r.text
    req = upstream.servicer.last("RecordSubscriptions").request
    assert req.parent == "members/me"
    assert r.json() == {"remaining": {"tpl_a": 1, "tpl_b": 1}}


async def test_multi_segment_path_variable(gw, upstream, admin_auth):
    r = await gw.delete("/v1/tagGroups/3/tags/7", headers=admin_auth)
    assert r.status_code == 200 and r.json() == {}
    assert upstream.servicer.last("DeleteTag").request.name == "tagGroups/3/tags/7"
    r = await gw.get("/v1/tagGroups/3/tags", headers=admin_auth)
    assert upstream.servicer.last("ListTags").request.parent == "tagGroups/3"


async def test_patch_derives_the_update_mask_from_the_body(gw, upstream, member_auth):
    body = {"name": "members/7", "nickname": "小红", "region": {"province": "浙江省"}, "phoneConsent": False}
    r = await gw.patch("/v1/members/me", json=body, headers=member_auth)
    assert r.status_code == 200, r.text
    req = upstream.servicer.last("UpdateMember").request
    assert req.member.name == "members/me"  # from the path, not the body
    assert list(req.update_mask.paths) == ["nickname", "region", "phone_consent"]  # the name is not an update
    assert r.json()["nickname"] == "小红"


async def test_post_with_method_override_is_a_patch(gw, upstream, member_auth):
    r = await gw.post(
        "/v1/members/me",
        json={"avatarUrl": "https://img.example/a.png"},
        headers={**member_auth, "X-HTTP-Method-Override": "PATCH"},
    )
    assert r.status_code == 200, r.text
    req = upstream.servicer.last("UpdateMember").request
    assert req.member.avatar_url == "https://img.example/a.png"
    assert list(req.update_mask.paths) == ["avatar_url"]


async def test_explicit_update_mask_is_kept(gw, upstream, member_auth):
    r = await gw.patch(
        "/v1/members/me?updateMask=nickname,avatar_url", json={"nickname": "a", "occupation": "b"}, headers=member_auth
    )
    assert r.status_code == 200, r.text
    assert list(upstream.servicer.last("UpdateMember").request.update_mask.paths) == ["nickname", "avatar_url"]


async def test_idempotency_key_header_becomes_the_request_id(gw, upstream):
    r = await gw.post(
        "/v1/tiers",
        json={"displayName": "金卡会员", "growthThreshold": "1000"},
        headers={**bearer(ADMIN), "Idempotency-Key": "6d0c3f3e-9a4e-4c1b-8a8e-1f2b3c4d5e6f"},
    )
    assert r.status_code == 200, r.text
    req = upstream.servicer.last("CreateTier").request
    assert req.request_id == "6d0c3f3e-9a4e-4c1b-8a8e-1f2b3c4d5e6f"
    assert req.tier.growth_threshold == 1000
    # A request id given in the request wins over the header.
    await gw.post(
        "/v1/tiers?requestId=from-query", json={"displayName": "x"}, headers={**bearer(ADMIN), "Idempotency-Key": "h"}
    )
    assert upstream.servicer.last("CreateTier").request.request_id == "from-query"


# -- bad input: 400 naming the field, and the upstream never called -------------------------
@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        (b'{"nickname": "x",', "body", "INVALID_JSON"),
        (b"\xff\xfe", "body", "INVALID_JSON"),
        (b'{"nickname": NaN}', "body", "INVALID_JSON"),
        (b'["nickname"]', "body", "INVALID_FIELD"),
        (b'"just a string"', "body", "INVALID_FIELD"),
        (b'{"gender": {"x": 1}}', "member.gender", "INVALID_FIELD"),
        (b'{"gender": "GENDER_UNKNOWN"}', "member.gender", "INVALID_FIELD"),
        (b'{"nickname": {"a": 1}}', "member.nickname", "INVALID_FIELD"),
        (b'{"nickname": 12}', "member.nickname", "INVALID_FIELD"),
        (b'{"phoneConsent": "yes"}', "member.phone_consent", "INVALID_FIELD"),
        (b'{"growthValue": "lots"}', "member.growth_value", "INVALID_FIELD"),
        (b'{"growthValue": 1e30}', "member.growth_value", "INVALID_FIELD"),
        (b'{"birthday": "2020-01-01"}', "member.birthday", "INVALID_FIELD"),
        (b'{"birthday": {"year": "soon"}}', "member.birthday.year", "INVALID_FIELD"),
        (b'{"region": {"city": ["a"]}}', "member.region.city", "INVALID_FIELD"),
        (b'{"attributes": {"child": 3}}', 'member.attributes["child"]', "INVALID_FIELD"),
        (b'{"createTime": "yesterday"}', "member.create_time", "INVALID_FIELD"),
        (b'{"favouriteColour": "red"}', "member.favouriteColour", "INVALID_FIELD"),
        (b'{"nickname": "a", "nick_name": "b", "avatarUrl": "x", "avatar_url": "y"}', "member.nick_name",
         "INVALID_FIELD"),
        (b"[" * 5000 + b"]" * 5000, "body", "INVALID_JSON"),
    ],
)
async def test_bad_bodies_are_400_naming_the_field(gw, upstream, member_auth, body, field, reason):
    r = await gw.patch("/v1/members/me", content=body, headers={**member_auth, "Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    err = error_of(r)
    assert err["status"] == "INVALID_ARGUMENT"
    assert err["by_type"]["ErrorInfo"]["reason"] == reason
    assert err["by_type"]["ErrorInfo"]["domain"] == "gateway.mall"
    assert err["by_type"]["LocalizedMessage"]["locale"] == "zh-CN"
    assert field in violations(r)
    assert upstream.servicer.calls == []


async def test_every_bad_field_is_named(gw, upstream, member_auth):
    r = await gw.patch(
        "/v1/members/me", json={"gender": [1], "nickname": [], "foo": 1, "tags": [1]}, headers=member_auth
    )
    assert r.status_code == 400
    assert set(violations(r)) == {"member.gender", "member.nickname", "member.foo", "member.tags"}


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("pageSize=abc", "page_size"),
        ("pageSize=99999999999", "page_size"),
        ("pageSize=1&pageSize=2", "page_size"),
        ("colour=red", "colour"),
        ("tier.name=x", "tier.name"),
    ],
)
async def test_bad_query_parameters_are_400_naming_them(gw, upstream, admin_auth, query, field):
    r = await gw.get(f"/v1/members?{query}", headers=admin_auth)
    assert r.status_code == 400, r.text
    assert field in violations(r)
    assert upstream.servicer.calls == []


async def test_query_parameters_are_refused_where_the_body_holds_everything(gw, upstream):
    r = await gw.post("/v1/members:applyTags?members=members/1", json={"tags": ["t"]}, headers=bearer(ADMIN))
    assert r.status_code == 400
    assert "members" in violations(r)
    r = await gw.patch("/v1/members/me?member.nickname=x", json={}, headers=bearer(ADMIN))
    assert "member.nickname" in violations(r)
    assert upstream.servicer.calls == []


async def test_only_patch_may_override_post(gw, upstream, member_auth):
    r = await gw.post("/v1/members/me", json={}, headers={**member_auth, "X-HTTP-Method-Override": "DELETE"})
    assert r.status_code == 400
    assert "X-HTTP-Method-Override" in violations(r)
    assert upstream.servicer.calls == []


# -- binding details that no members route exercises (a synthetic GET rule on real messages) --
def _get_route(method: str, path: str):
    rule = http_pb2.HttpRule(get=path)
    return routes_of_rule("members", SERVICES["members"].descriptor().methods_by_name[method], rule)[0]


def test_repeated_and_nested_query_parameters():
    route = _get_route("ApplyTags", "/x")
    msg = bind_request(
        route, "GET", {}, [("members", "members/1"), ("members", "members/2"), ("source", "TAG_SOURCE_RULE")], b""
    )
    assert list(msg.members) == ["members/1", "members/2"] and msg.source == pb.TAG_SOURCE_RULE
    with pytest.raises(InvalidFieldError):  # enums by name only, as the OpenAPI document says
        bind_request(route, "GET", {}, [("source", "3")], b"")
    route = _get_route("UpdateMember", "/x/{member.name=members/*}")
    msg = bind_request(
        route,
        "GET",
        {("member", "name"): "members/me"},
        [("member.region.city", "杭州市"), ("member.phone_consent", "true"), ("member.birthday.year", "1990"),
         ("updateMask", "region.city,phone_consent")],
        b"",
    )
    assert msg.member.region.city == "杭州市" and msg.member.phone_consent is True
    assert msg.member.birthday.year == 1990
    assert list(msg.update_mask.paths) == ["region.city", "phone_consent"]
    with pytest.raises(InvalidFieldError) as exc:
        bind_request(route, "GET", {}, [("member.attributes", "x")], b"")
    assert exc.value.field_violations[0].field == "member.attributes"


def test_bad_json_never_escapes_as_an_exception():
    route = _get_route("UpdateMember", "/x/{member.name=members/*}")
    route = routes_of_rule(
        "members", route.method, http_pb2.HttpRule(patch="/x/{member.name=members/*}", body="member")
    )[0]
    for body in [b'{"a":' * 3000, b"1" * 60000, json.dumps({"tags": [None] * 5}).encode(), b"{\"\\ud800\": 1}"]:
        try:
            bind_request(route, "PATCH", {}, [], body)
        except InvalidFieldError:
            pass
        except Exception as exc:  # noqa: BLE001
            assert type(exc).__name__ == "InvalidJsonError", exc


def _filled(cls, seed: int, depth: int = 0):
    """A message of ``cls`` with about half its fields set to varied values (nested, repeated, maps)."""
    import random

    from google.protobuf.descriptor import FieldDescriptor as FD

    from gateway.binding import is_map

    rnd = random.Random(seed)
    msg = cls()
    scalars = {FD.TYPE_STRING: ["", "x", "小明", 'a"b'], FD.TYPE_BYTES: [b"\x00\xff"], FD.TYPE_BOOL: [True, False],
               FD.TYPE_DOUBLE: [0.0, 1.5, float("inf"), float("nan")], FD.TYPE_FLOAT: [0.0, 0.1],
               FD.TYPE_INT64: [0, -5, 2**62], FD.TYPE_UINT64: [0, 2**63], FD.TYPE_INT32: [0, -3, 2**30]}

    def value(f):
        if f.type == FD.TYPE_ENUM:
            return rnd.choice([v.number for v in f.enum_type.values])
        return rnd.choice(scalars.get(f.type, [0, 7]))

    if msg.DESCRIPTOR.full_name.startswith("google.protobuf.") or depth > 3:
        return msg
    for f in msg.DESCRIPTOR.fields:
        if rnd.random() < 0.5 or (f.containing_oneof and msg.WhichOneof(f.containing_oneof.name)):
            continue
        sub = f.message_type
        if is_map(f):
            key, val = sub.fields_by_name["key"], sub.fields_by_name["value"]
            for _ in range(2):
                k = value(key)
                if val.message_type is None:
                    getattr(msg, f.name)[k] = value(val)
                else:
                    getattr(msg, f.name)[k].CopyFrom(_filled(type(getattr(msg, f.name)[k]), rnd.random(), depth + 1))
        elif f.is_repeated:
            for _ in range(rnd.randint(1, 3)):
                if sub is None:
                    getattr(msg, f.name).append(value(f))
                else:
                    getattr(msg, f.name).add().CopyFrom(_filled(type(getattr(msg, f.name).add()), rnd.random(), depth + 1))
        elif sub is not None:
            target = getattr(msg, f.name)
            if sub.full_name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
                target.seconds, target.nanos = rnd.choice([(0, 0), (1_700_000_000, 5000), (3, 123456789)])
            elif sub.full_name == "google.protobuf.FieldMask":
                target.paths.extend(["avatar_url", "region"])
            else:
                target.CopyFrom(_filled(type(target), rnd.random(), depth + 1))
                target.SetInParent()
        else:
            setattr(msg, f.name, value(f))
    return msg


def test_response_json_prints_exactly_what_json_format_prints():
    """The gateway's own printer (faster) against MessageToDict, byte for byte, on every message
    of every exposed service: key order, int64 strings, enums, times, defaults, maps, NaN."""
    from google.protobuf import json_format
    from google.protobuf.message_factory import GetMessageClass

    from gateway.binding import message_json

    types = {d for s in SERVICES.values() for m in s.descriptor().methods for d in (m.input_type, m.output_type)}
    checked = 0
    for desc in sorted(types, key=lambda d: d.full_name):
        for seed in range(8):
            msg = _filled(GetMessageClass(desc), seed)
            want = json_format.MessageToDict(msg, always_print_fields_with_no_presence=True)
            dump = json.dumps  # as JSONResponse renders it
            assert dump(message_json(msg), ensure_ascii=False, separators=(",", ":")) == dump(
                want, ensure_ascii=False, separators=(",", ":")), desc.full_name
            checked += 1
    assert checked > 500


def test_bodies_of_plain_strings_bind_as_json_format_binds_them():
    """The parser-free path for bodies of plain string fields agrees with json_format, and every
    other body (a number, null, a oneof or optional field, a key twice, an unknown key) still goes
    through json_format and its field errors."""
    from google.protobuf import json_format

    from gateway.binding import _parse_into, _set_plain_strings
    from mall.community.v1 import community_service_pb2 as cpb

    plain = [{"visitorId": "v" * 20, "shareToken": "t0k"}, {"visitor_id": "v" * 20, "client_event_id": "e" * 16},
             {"name": "groups/1/posts/2"}, {}]
    for body in plain:
        ours, theirs = cpb.ViewPostRequest(), cpb.ViewPostRequest()
        assert _set_plain_strings(body, ours)
        json_format.ParseDict(body, theirs)
        assert ours == theirs and ours.SerializeToString() == theirs.SerializeToString()
    for body in ({"visitorId": 7}, {"visitorId": None}, {"visitorId": "a", "visitor_id": "b"}, {"nope": "x"}):
        assert not _set_plain_strings(body, cpb.ViewPostRequest())
    with pytest.raises(InvalidFieldError) as err:
        _parse_into({"visitorId": 7}, cpb.ViewPostRequest())
    assert err.value.metadata["field"] == "visitor_id"
    with pytest.raises(InvalidFieldError):
        _parse_into({"nope": "x"}, cpb.ViewPostRequest())
    from gateway.binding import _plain_string_fields

    in_oneofs = 0
    for file in (pb.DESCRIPTOR, cpb.DESCRIPTOR):  # optional (proto3) and oneof fields: never the plain path
        for desc in file.message_types_by_name.values():
            chosen = set(_plain_string_fields(desc).values())
            in_oneofs += sum(1 for f in desc.fields if f.containing_oneof is not None and f.type == f.TYPE_STRING)
            assert all(f.containing_oneof is None and f.type == f.TYPE_STRING for f in chosen)
    assert in_oneofs  # the rule was put to the test
