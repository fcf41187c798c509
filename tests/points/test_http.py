"""The mini-program's and the operators' view of the points service, over HTTP through the gateway."""

from __future__ import annotations

import json
import uuid

from tests.fixtures.points import fresh_member_id


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


async def login(gw) -> dict:
    r = await gw.post("/v1/members:loginWithWechat", json={"code": f"p{uuid.uuid4().hex[:10]}"})
    assert r.status_code == 200, r.text
    return r.json()


async def staff_token(gw) -> str:
    r = await gw.post("/v1/staff:login", json={"username": "test-admin", "password": "test-admin-password"})
    assert r.status_code == 200, r.text
    return r.json()["accessToken"]


def violations(resp) -> list[str]:
    body = resp.json()["error"]
    return [v["field"] for d in body["details"] if d["@type"].endswith("BadRequest") for v in d["fieldViolations"]]


async def test_a_member_sees_only_their_own_balance_ledger_and_redemptions(points_gateway, points):
    gw = points_gateway
    a, b = await login(gw), await login(gw)
    ha, hb = bearer(a["accessToken"]), bearer(b["accessToken"])
    a_id, b_id = (int(x["member"]["name"].split("/")[1]) for x in (a, b))
    await points.grant(a_id, 300)
    await points.grant(b_id, 300)
    staff = bearer(await staff_token(gw))
    item = await gw.post("/v1/items", json={"displayName": "保温杯", "kind": "ITEM_KIND_PHYSICAL", "pointsPrice": "100",
                                            "stock": "10", "state": "ITEM_STATE_ACTIVE"}, headers=staff)
    assert item.status_code == 200, item.text
    address = {"recipient": "张三", "phone": "13800138000", "province": "浙江省", "city": "杭州市", "detail": "1 号"}
    r = await gw.post(f"/v1/{item.json()['name']}:redeem", json={"shippingAddress": address},
                      headers={**hb, "Idempotency-Key": str(uuid.uuid4())})
    assert r.status_code == 200, r.text
    b_redemption = r.json()["name"]
    me = await gw.get("/v1/members/me/pointsAccount", headers=ha)
    assert me.status_code == 200 and me.json()["availablePoints"] == "300"
    assert me.json()["name"] == f"members/{a_id}/pointsAccount"
    ledger = await gw.get("/v1/members/me/pointsEntries", headers=ha)
    assert ledger.status_code == 200 and [e["availableDelta"] for e in ledger.json()["pointsEntries"]] == ["300"]
    assert (await gw.get("/v1/members/me/redemptions", headers=ha)).json().get("redemptions", []) == []
    assert [x["name"] for x in (await gw.get("/v1/members/me/redemptions", headers=hb)).json()["redemptions"]] == [
        b_redemption]
    for path in [f"/v1/members/{b_id}/pointsAccount", f"/v1/members/{b_id}/pointsEntries",
                 f"/v1/members/{b_id}/redemptions", "/v1/members/-/redemptions", f"/v1/{b_redemption}",
                 f"/v1/members/{fresh_member_id()}/pointsAccount"]:
        r = await gw.get(path, headers=ha)
        assert r.status_code == 403, (path, r.text)
    for path in [f"/v1/{b_redemption}:cancel", f"/v1/members/{b_id}/pointsAccount:checkIn"]:
        r = await gw.post(path, json={}, headers=ha)
        assert r.status_code == 403, (path, r.text)
    assert (await gw.get(f"/v1/{b_redemption}", headers=hb)).json()["state"] == "REDEMPTION_STATE_PENDING_SHIPMENT"
    # Staff see everyone's redemptions and the member's account.
    all_ = await gw.get("/v1/members/-/redemptions", headers=staff, params={"pageSize": 100})
    assert all_.status_code == 200 and b_redemption in [x["name"] for x in all_.json()["redemptions"]]
    assert (await gw.get(f"/v1/members/{b_id}/pointsAccount", headers=staff)).json()["availablePoints"] == "200"
    await points.check()


async def test_staff_routes_refuse_members(points_gateway):
    gw = points_gateway
    h = bearer((await login(gw))["accessToken"])
    for method, path, body in [
        ("POST", "/v1/items", {"displayName": "x", "kind": "ITEM_KIND_VIRTUAL", "pointsPrice": "1", "stock": "1"}),
        ("PATCH", "/v1/items/1", {"stock": "1000"}),
        ("POST", "/v1/tasks", {"kind": "TASK_KIND_JOIN_GROUP", "displayName": "x", "rewardPoints": "1"}),
        ("POST", "/v1/members/me/pointsAccount:adjust", {"points": "1000", "reason": "free points"}),
        ("POST", "/v1/members/1/redemptions/1:ship", {"carrier": "x", "trackingNumber": "1"}),
        ("POST", "/v1/members/1/redemptions/1:deliver", {}),
    ]:
        r = await gw.request(method, path, json=body, headers=h)
        assert r.status_code == 403, (path, r.text)
    staff = bearer(await staff_token(gw))
    r = await gw.post("/v1/members/me/pointsAccount:checkIn", json={}, headers=staff)  # a member-only route
    assert r.status_code == 403
    assert (await gw.get("/v1/items")).status_code == 401


async def test_bad_input_gets_clear_4xx_naming_the_field(points_gateway, points):
    gw = points_gateway
    session = await login(gw)
    h = bearer(session["accessToken"])
    staff = bearer(await staff_token(gw))
    member_id = int(session["member"]["name"].split("/")[1])
    await points.grant(member_id, 50)
    item = (await gw.post("/v1/items", json={"displayName": "券", "kind": "ITEM_KIND_VIRTUAL", "pointsPrice": "10",
                                             "stock": "5"}, headers=staff)).json()
    cases = [
        ("POST", f"/v1/{item['name']}:redeem", b'{"quantity": ', h, "body"),
        ("POST", f"/v1/{item['name']}:redeem", json.dumps({"quantity": "many"}).encode(), h, "quantity"),
        ("POST", f"/v1/{item['name']}:redeem", json.dumps({"quantity": 500}).encode(), h, "quantity"),
        ("POST", f"/v1/{item['name']}:redeem", json.dumps({"quantity": -1}).encode(), h, "quantity"),
        ("POST", f"/v1/{item['name']}:redeem", json.dumps({"shippingAddress": {
            "recipient": "<script>", "phone": "1' OR '1'='1", "province": "x", "city": "y", "detail": "z"}}).encode(),
         h, "shipping_address.phone"),
        ("POST", "/v1/items/abc:redeem", b"{}", h, "name"),
        ("GET", "/v1/members/me/pointsEntries?pageSize=-5", None, h, "page_size"),
        ("GET", "/v1/members/me/pointsEntries?pageToken=forged", None, h, "page_token"),
        ("POST", "/v1/items", json.dumps({"displayName": "x", "kind": "ITEM_KIND_ROBOT", "pointsPrice": "1",
                                          "stock": "1"}).encode(), staff, "kind"),
        ("POST", "/v1/items", json.dumps({"displayName": "x", "kind": "ITEM_KIND_COUPON", "pointsPrice": "0",
                                          "stock": "-1"}).encode(), staff, "item.points_price"),
        ("POST", f"/v1/members/{member_id}/pointsAccount:adjust",
         json.dumps({"points": "0", "reason": "x", "requestId": str(uuid.uuid4())}).encode(), staff, "points"),
        ("POST", f"/v1/members/{member_id}/pointsAccount:adjust", json.dumps({"points": "5"}).encode(), staff,
         "reason"),
        ("POST", "/v1/tasks", json.dumps({"kind": "TASK_KIND_JOIN_GROUP", "displayName": "x", "rewardPoints": "0",
                                          "frequency": "TASK_FREQUENCY_DAILY"}).encode(), staff, "task.reward_points"),
    ]
    for method, path, body, headers, field in cases:
        r = await gw.request(method, path, content=body, headers={**headers, "Content-Type": "application/json"})
        assert r.status_code == 400, (path, body, r.text)
        assert any(field in v for v in violations(r)), (path, body, violations(r), r.text)
    poor = await gw.post(f"/v1/{item['name']}:redeem", json={"quantity": 6}, headers=h)
    assert poor.status_code == 400 and poor.json()["error"]["details"][0]["reason"] == "INSUFFICIENT_POINTS"
    r = await gw.get("/v1/items/999999999", headers=h)
    assert r.status_code == 404
    account = (await gw.get("/v1/members/me/pointsAccount", headers=h)).json()
    assert account["availablePoints"] == "50"  # nothing was written
    await points.check()


async def test_openapi_documents_member_and_staff_routes_but_not_internal_ones(points_gateway):
    doc = (await points_gateway.get("/openapi.json")).json()
    ops = {op["operationId"] for p in doc["paths"].values() for op in p.values() if isinstance(op, dict)
           and "operationId" in op}
    assert {"GetPointsAccount", "CheckIn", "RedeemItem", "AdjustPoints", "ListPointsEntries"} <= ops
    assert not {"PendPurchasePoints", "ConfirmPurchasePoints", "ReversePurchasePoints"} & ops
