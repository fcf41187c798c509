"""The mini-program's and the operators' view: HTTP through the gateway to the members service and its database."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid

import jwt
from sqlalchemy import func, select

from members.models import Member, Store


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


async def login(gateway, user: str | None = None, **extra) -> dict:
    user = user or f"h{uuid.uuid4().hex[:10]}"
    r = await gateway.post("/v1/members:loginWithWechat", json={"code": f"{user}#{uuid.uuid4().hex[:6]}", **extra})
    assert r.status_code == 200, r.text
    return r.json()


async def staff_token(gateway) -> str:
    r = await gateway.post("/v1/staff:login", json={"username": "test-admin", "password": "test-admin-password"})
    assert r.status_code == 200, r.text
    return r.json()["accessToken"]


def violations(resp) -> list[str]:
    body = resp.json()["error"]
    return [v["field"] for d in body["details"] if d["@type"].endswith("BadRequest") for v in d["fieldViolations"]]


async def test_login_then_me_then_update_with_method_override(gateway):
    session = await login(gateway)
    assert session["created"] is True and session["member"]["name"].startswith("members/")
    me = await gateway.get("/v1/members/me", headers=bearer(session["accessToken"]))
    assert me.status_code == 200 and me.json()["name"] == session["member"]["name"]
    assert me.json()["growthValue"] == "0"  # int64 as a string, defaults present
    upd = await gateway.post("/v1/members/me", json={"nickname": "小明", "region": {"province": "浙江省", "city": "杭州市"}},
                             headers={**bearer(session["accessToken"]), "X-HTTP-Method-Override": "PATCH"})
    assert upd.status_code == 200, upd.text
    assert upd.json()["nickname"] == "小明" and upd.json()["region"]["city"] == "杭州市"
    assert upd.json()["occupation"] == ""


async def test_forged_expired_and_alg_none_tokens_get_401(gateway, members):
    session = await login(gateway)
    claims = jwt.decode(session["accessToken"], options={"verify_signature": False})
    expired = jwt.encode({**claims, "exp": int(time.time()) - 10}, members.app.settings.platform.token_secret.get_secret_value(),
                         algorithm="HS256")
    forged = jwt.encode({**claims, "sub": "members/1"}, "not-the-secret-but-long-enough-000", algorithm="HS256")
    header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode()).rstrip(b"=").decode()
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    for token in [expired, forged, f"{header}.{payload}.", "garbage"]:
        r = await gateway.get("/v1/members/me", headers=bearer(token))
        assert r.status_code == 401, (token, r.text)
        assert r.json()["error"]["status"] == "UNAUTHENTICATED"
    assert (await gateway.get("/v1/members/me")).status_code == 401


async def test_member_a_can_never_touch_member_b(gateway):
    a = await login(gateway)
    b = await login(gateway)
    b_name = b["member"]["name"]
    for path in [f"/v1/{b_name}", "/v1/members/987654321", f"/v1/{b_name}/touchpoints", f"/v1/{b_name}/tierChanges"]:
        r = await gateway.get(path, headers=bearer(a["accessToken"]))
        assert r.status_code == 403, (path, r.text)
    r = await gateway.patch(f"/v1/{b_name}", json={"nickname": "pwned"}, headers=bearer(a["accessToken"]))
    assert r.status_code == 403
    r = await gateway.get("/v1/members/me", headers=bearer(b["accessToken"]))
    assert r.json()["nickname"] == ""


async def test_staff_routes_refuse_members_and_admit_staff(gateway):
    session = await login(gateway)
    for method, path, body in [("GET", "/v1/members", None), ("POST", "/v1/tiers", {"displayName": "x"}),
                               ("POST", "/v1/members:applyTags", {"members": [], "tags": []}),
                               ("GET", "/v1/staff", None)]:
        r = await gateway.request(method, path, json=body, headers=bearer(session["accessToken"]))
        assert r.status_code == 403, (path, r.text)
    token = await staff_token(gateway)
    r = await gateway.get("/v1/members", params={"pageSize": 2}, headers=bearer(token))
    assert r.status_code == 200 and len(r.json()["members"]) == 2 and r.json()["nextPageToken"]


async def test_bad_input_is_4xx_naming_the_field_and_writes_nothing(gateway, members):
    session = await login(gateway)
    h = {**bearer(session["accessToken"]), "X-HTTP-Method-Override": "PATCH"}
    cases = [
        (b'{"nickname": "x"', "body"),  # malformed JSON
        (json.dumps({"nickname": 12}).encode(), "nickname"),  # wrong type
        (json.dumps({"gender": "GENDER_ROBOT"}).encode(), "gender"),  # unknown enum
        (json.dumps({"nickname": "名" * 40}).encode(), "member.nickname"),  # overlong
        (json.dumps({"nickname": "<img src=x onerror=alert(1)>"}).encode(), "member.nickname"),  # markup injection
        (json.dumps({"phone": "1' OR '1'='1"}).encode(), "member.phone"),  # SQL-ish injection
        (json.dumps({"birthday": {"year": 2020, "month": 13, "day": 1}}).encode(), "member.birthday"),
    ]
    for body, field in cases:
        r = await gateway.post("/v1/members/me", content=body, headers={**h, "Content-Type": "application/json"})
        assert r.status_code == 400, (body, r.text)
        assert any(field in v for v in violations(r)), (body, violations(r))
    r = await gateway.post("/v1/members/me?updateMask=openid", json={"nickname": "ok"}, headers=h)
    assert r.status_code == 400 and violations(r) == ["update_mask"]
    r = await gateway.post("/v1/members/me", content=b'{"nickname":"' + b"a" * 70000 + b'"}', headers=h)
    assert r.status_code == 413
    member_id = int(session["member"]["name"].split("/")[1])
    async with members.engine.connect() as conn:
        row = (await conn.execute(select(Member.nickname, Member.phone, Member.gender).where(Member.id == member_id))).one()
    assert tuple(row) == ("", None, 0)


async def test_same_idempotency_key_50_times_concurrently_one_store(gateway, members):
    token = await staff_token(gateway)
    key = str(uuid.uuid4())
    name = f"店{key[:6]}"
    send = lambda: gateway.post("/v1/stores", json={"displayName": name},  # noqa: E731
                                headers={**bearer(token), "Idempotency-Key": key})
    responses = await asyncio.gather(*[send() for _ in range(50)])
    assert {r.status_code for r in responses} == {200}
    assert len({r.json()["name"] for r in responses}) == 1
    async with members.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(Store).where(Store.display_name == name))).scalar() == 1
    other = await gateway.post("/v1/stores", json={"displayName": name + "2"}, headers={**bearer(token), "Idempotency-Key": key})
    assert other.status_code == 400
    assert other.json()["error"]["details"][0]["reason"] == "REQUEST_ID_REUSED"


async def test_one_trace_from_http_through_grpc_to_sql(gateway, spans):
    session = await login(gateway)
    trace_id = uuid.uuid4().hex
    r = await gateway.get("/v1/members/me", headers={**bearer(session["accessToken"]),
                                                      "traceparent": f"00-{trace_id}-{'1' * 16}-01"})
    assert r.status_code == 200
    assert r.headers["traceparent"].split("-")[1] == trace_id
    await asyncio.sleep(0.05)
    mine = [s for s in spans.get_finished_spans() if format(s.context.trace_id, "032x") == trace_id]
    kinds = {s.kind.name for s in mine}
    names = [s.name for s in mine]
    assert "SERVER" in kinds and "CLIENT" in kinds
    assert any("GetMember" in n for n in names), names
    assert any(s.attributes.get("db.system") or s.attributes.get("db.system.name") for s in mine), names
    http_server = [s for s in mine if s.kind.name == "SERVER" and "GetMember" not in s.name]
    grpc_server = [s for s in mine if s.kind.name == "SERVER" and "GetMember" in s.name]
    assert http_server and grpc_server


async def test_healthz_and_openapi(gateway):
    r = await gateway.get("/healthz")
    assert r.status_code == 200 and r.json()["upstreams"]["members"] == "SERVING"
    doc = (await gateway.get("/openapi.json")).json()
    ops = {op["operationId"] for p in doc["paths"].values() for op in p.values() if isinstance(op, dict) and "operationId" in op}
    assert {"LoginWithWechat", "GetMember", "UpdateMember", "ApplyTags"} <= ops
    assert not {"AddGrowth", "SendReach"} & ops
