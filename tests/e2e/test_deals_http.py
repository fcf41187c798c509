"""Deals and payments through the real HTTP gateway: members act only on their own bargains, redemptions and
reviews; bad input is a 4xx naming the field; the points mall's WeChat Pay notifications reach their verifier raw."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tests.fixtures import gateway_client
from tests.orders.test_reviews import completed_order

pytestmark = pytest.mark.mariadb


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def key() -> dict:
    return {"Idempotency-Key": str(uuid.uuid4())}


async def login(gw) -> tuple[str, dict]:
    r = await gw.post("/v1/members:loginWithWechat", json={"code": f"d{uuid.uuid4().hex[:12]}"})
    assert r.status_code == 200, r.text
    return r.json()["member"]["name"], bearer(r.json()["accessToken"])


async def staff(gw) -> dict:
    r = await gw.post("/v1/staff:login", json={"username": "test-admin", "password": "test-admin-password"})
    assert r.status_code == 200, r.text
    return bearer(r.json()["accessToken"])


def fields(resp) -> list[str]:
    return [v["field"] for d in resp.json()["error"]["details"] if d["@type"].endswith("BadRequest")
            for v in d["fieldViolations"]]


def reason(resp) -> str:
    return next(d["reason"] for d in resp.json()["error"]["details"] if d["@type"].endswith("ErrorInfo"))


@pytest.fixture(scope="module")
async def gw(members, orders, points):
    async with gateway_client(members=members.addr, orders=orders.addr, points=points.addr) as client:
        yield client


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_bargains_through_the_gateway(gw, orders):
    admin = await staff(gw)
    product = await orders.product(price_fen=5_000, stock=10)
    now = datetime.now(UTC)
    activity = {"sku": product.skus[0].name, "startPriceFen": "5000", "floorPriceFen": "2000", "helpersNeeded": 3,
                "cutMode": "BARGAIN_CUT_MODE_RANDOM", "startTime": _iso(now - timedelta(minutes=1)),
                "endTime": _iso(now + timedelta(days=1)), "bargainDuration": "86400s", "perMemberLimit": 1}
    bad = [
        ({**activity, "floorPriceFen": "6000"}, "bargain_activity.floor_price_fen"),
        ({**activity, "helpersNeeded": 5000}, "bargain_activity.helpers_needed"),
        ({**activity, "endTime": _iso(now - timedelta(days=1))}, "bargain_activity.end_time"),
        ({**activity, "bargainDuration": "5s"}, "bargain_activity.bargain_duration"),
        ({**activity, "shareScene": "<script>"}, "bargain_activity.share_scene"),
        ({**activity, "sku": "products/x/skus/1"}, "bargain_activity.sku"),
    ]
    for body, field in bad:
        r = await gw.post("/v1/bargainActivities", json=body, headers=admin)
        assert r.status_code == 400 and field in fields(r), r.text
    r = await gw.post("/v1/bargainActivities", json={**activity, "cutMode": "NOT_A_MODE"}, headers=admin)
    assert r.status_code == 400, r.text
    alice, a = await login(gw)
    bob, b = await login(gw)
    assert (await gw.post("/v1/bargainActivities", json=activity, headers=a)).status_code == 403
    created = await gw.post("/v1/bargainActivities", json=activity, headers=admin)
    assert created.status_code == 200, created.text
    name = created.json()["name"]

    started = await gw.post(f"/v1/{name}/bargains", json={}, headers={**a, **key()})
    assert started.status_code == 200, started.text
    bargain = started.json()
    assert bargain["owner"] == alice and bargain["currentPriceFen"] == "5000"
    assert (await gw.post(f"/v1/{name}/bargains", json={}, headers=a)).status_code == 400  # request id required
    # Bob helps (once), cannot buy Alice's bargain; Alice cannot help her own.
    helped = await gw.post(f"/v1/{bargain['name']}:help", json={}, headers=b)
    assert helped.status_code == 200 and helped.json()["helper"] == bob, helped.text
    again = await gw.post(f"/v1/{bargain['name']}:help", json={}, headers=b)
    assert again.status_code == 400 and reason(again) == "BARGAIN_ALREADY_HELPED"
    own = await gw.post(f"/v1/{bargain['name']}:help", json={}, headers=a)
    assert own.status_code == 400 and reason(own) == "BARGAIN_OWN"
    theft = await gw.post(f"/v1/{bargain['name']}:buy", json={}, headers={**b, **key()})
    assert theft.status_code == 403, theft.text
    bad_name = await gw.post("/v1/bargainActivities/1/bargains/abc:help", json={}, headers=b)
    assert bad_name.status_code == 400 and "bargain" in fields(bad_name), bad_name.text
    missing = await gw.get(f"/v1/{name}/bargains/99999999", headers=b)
    assert missing.status_code == 404, missing.text
    other_addr = await gw.post(f"/v1/{bargain['name']}:buy", json={"address": f"{bob}/addresses/1"},
                               headers={**a, **key()})
    assert other_addr.status_code == 403, other_addr.text  # another member's address
    bought = await gw.post(f"/v1/{bargain['name']}:buy", json={}, headers={**a, **key()})
    assert bought.status_code == 200, bought.text
    assert bought.json()["payableFen"] == helped.json()["priceAfterFen"]
    assert bought.json()["bargain"] == bargain["name"] and bought.json()["member"] == alice
    seen = await gw.get(f"/v1/{bargain['name']}", headers=b)
    assert seen.status_code == 200 and seen.json()["state"] == "BARGAIN_STATE_BOUGHT"


async def test_points_cash_redemptions_through_the_gateway(gw, points, wechatpay_sim):
    admin = await staff(gw)
    item = await gw.post("/v1/items", json={"displayName": "积分+现金券", "kind": "ITEM_KIND_VIRTUAL", "pointsPrice": "50",
                                            "cashPriceFen": "990", "stock": "10", "state": "ITEM_STATE_ACTIVE"},
                         headers=admin)
    assert item.status_code == 200, item.text
    alice, a = await login(gw)
    bob, b = await login(gw)
    await points.grant(int(alice.split("/")[1]), 100)
    r = await gw.post(f"/v1/{item.json()['name']}:redeem", json={}, headers={**a, **key()})
    assert r.status_code == 200 and r.json()["state"] == "REDEMPTION_STATE_PENDING_PAYMENT", r.text
    redemption = r.json()["name"]
    mine = redemption.replace(alice, "members/me")
    # Bob cannot pay (or see) Alice's redemption, under her id or as "me".
    assert (await gw.post(f"/v1/{redemption}:pay", json={}, headers=b)).status_code == 403
    assert (await gw.post(f"/v1/{mine}:pay", json={}, headers=b)).status_code == 404
    bad = await gw.post("/v1/members/me/redemptions/abc:pay", json={}, headers=a)
    assert bad.status_code == 400 and "name" in fields(bad), bad.text
    paid = await gw.post(f"/v1/{mine}:pay", json={}, headers=a)
    assert paid.status_code == 200 and paid.json()["package"].startswith("prepay_id="), paid.text
    otn = r.json()["outTradeNo"]
    headers, body = wechatpay_sim.notification(otn)
    forged = await gw.post("/v1/wechatpay/points/notifications", content=body,
                           headers={**headers, "Wechatpay-Signature": "Zm9yZ2Vk"})
    assert forged.status_code == 403, forged.text
    for _ in range(3):
        ok = await gw.post("/v1/wechatpay/points/notifications", content=body, headers=headers)
        assert ok.status_code == 200, ok.text
    done = await gw.get(f"/v1/{mine}", headers=a)
    assert done.status_code == 200 and done.json()["state"] == "REDEMPTION_STATE_COMPLETED", done.text


async def test_reviews_through_the_gateway(gw, orders, members):
    admin = await staff(gw)
    product = await orders.product(price_fen=1_500)
    sku = product.skus[0].name
    alice, a = await login(gw)
    bob, b = await login(gw)
    o = await completed_order(orders, orders.member_md(int(alice.split("/")[1])), [sku])
    bad = [
        ({"sku": sku, "rating": 6}, "review.rating"),
        ({"sku": sku, "rating": 5, "text": "x" * 501}, "review.text"),
        ({"sku": sku, "rating": 5, "imageUrls": ["javascript:alert(1)"]}, "review.image_urls[0]"),
        ({"sku": sku, "rating": 5, "imageUrls": ["https://a.example/x.jpg"] * 10}, "review.image_urls"),
        ({"sku": "products/1/skus/x", "rating": 5}, "review.sku"),
    ]
    for body, field in bad:
        r = await gw.post(f"/v1/{o.name}/reviews", json=body, headers=a)
        assert r.status_code == 400 and field in fields(r), r.text
    theirs = await gw.post(f"/v1/{o.name}/reviews", json={"sku": sku, "rating": 4}, headers=b)
    assert theirs.status_code == 403, theirs.text
    made = await gw.post(f"/v1/{o.name}/reviews", json={"sku": sku, "rating": 4, "text": "不错",
                                                        "imageUrls": ["https://img.example.com/1.jpg"]}, headers=a)
    assert made.status_code == 200 and made.json()["state"] == "REVIEW_STATE_PENDING", made.text
    twice = await gw.post(f"/v1/{o.name}/reviews", json={"sku": sku, "rating": 1}, headers=a)
    assert twice.status_code == 400 and reason(twice) == "REVIEW_EXISTS"
    review = made.json()["name"]
    assert (await gw.post(f"/v1/{review}:moderate", json={"state": "REVIEW_STATE_APPROVED"}, headers=a)).status_code \
        == 403
    wrong = await gw.post(f"/v1/{review}:moderate", json={"state": "REVIEW_STATE_PENDING"}, headers=admin)
    assert wrong.status_code == 400 and "state" in fields(wrong), wrong.text
    ok = await gw.post(f"/v1/{review}:moderate", json={"state": "REVIEW_STATE_APPROVED"}, headers=admin)
    assert ok.status_code == 200, ok.text
    # Public: no token needed.
    listed = await gw.get(f"/v1/{product.name}/reviews")
    assert listed.status_code == 200 and [x["name"] for x in listed.json()["reviews"]] == [review], listed.text
    rating = await gw.get(f"/v1/{product.name}/rating")
    assert rating.status_code == 200 and rating.json()["reviewCount"] == "1" and rating.json()["averageRating"] == 4
    assert (await gw.get("/v1/reviews", headers=a)).status_code == 403
    queue = await gw.get("/v1/reviews", params={"state": "REVIEW_STATE_APPROVED"}, headers=admin)
    assert queue.status_code == 200 and review in [x["name"] for x in queue.json()["reviews"]]
