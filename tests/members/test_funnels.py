"""Funnels and reports (有数): a scenario driven end to end through the gateway (arrive by code ->
register -> pay -> pay again, on two channels and two brand days) equals the funnel the API
computes; a share chain arrival -> register -> order counts for the post and the sharer exactly
once, also when the event is delivered twice; the CSV exports match the JSON; staff only."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, date, datetime, timedelta

import pytest

from mall.community.v1 import community_events_pb2 as cev
from mall.community.v1 import community_service_pb2 as cpb
from mall.events.v1 import events_pb2
from mall.members.v1 import members_service_pb2 as pb
from members import channels as channels_module
from members import funnels as funnels_module
from members import identity as identity_module
from tests.community.helpers import join, make_group, new_member_id
from tests.community.test_content import post as create_post
from tests.fixtures import deliver, gateway_client, until


@pytest.fixture(scope="module")
async def mall(members, orders, community):
    """The real gateway in front of members, orders and community (over ASGI)."""
    async with gateway_client(members=members.addr, orders=orders.addr, community=community.addr) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def staff_headers(mall) -> dict[str, str]:
    from tests.fixtures.members import ADMIN

    r = await mall.post("/v1/staff:login", json={"username": ADMIN[0], "password": ADMIN[1]})
    assert r.status_code == 200, r.text
    return bearer(r.json()["accessToken"])


def visitor() -> str:
    return uuid.uuid4().hex  # 32 characters: a visitor id for members (8-40) and community (16-64)


def dq(d: date, prefix: str) -> dict[str, int]:
    return {f"{prefix}.year": d.year, f"{prefix}.month": d.month, f"{prefix}.day": d.day}


def range_params(start: date, end: date, **extra) -> dict:
    return {**dq(start, "startDate"), **dq(end, "endDate"), **extra}


class Shopper:
    """One mini-program user driven through the gateway."""

    def __init__(self, mall, orders):
        self.mall, self.orders = mall, orders
        self.visitor = visitor()
        self.token = ""
        self.member = ""
        self.address = ""

    async def arrive(self, scene: str) -> dict:
        r = await self.mall.post("/v1/channelArrivals:record", json={"scene": scene, "visitorId": self.visitor})
        assert r.status_code == 200, r.text
        return r.json()

    async def register(self, scene: str = "") -> None:
        body = {"code": f"fn{uuid.uuid4().hex[:12]}", "visitorId": self.visitor}
        if scene:
            body["channelCode"] = scene  # the scene of the code
        r = await self.mall.post("/v1/members:loginWithWechat", json=body)
        assert r.status_code == 200, r.text
        self.token, self.member = r.json()["accessToken"], r.json()["member"]["name"]

    async def pay(self, sku: str, paid_at: datetime) -> int:
        h = bearer(self.token)
        if not self.address:
            a = await self.mall.post("/v1/members/me/addresses", headers=h, json={
                "recipient": "张三", "phone": "13800138000", "province": "浙江省", "city": "杭州市",
                "detail": "湖滨路 1 号"})
            assert a.status_code == 200, a.text
            self.address = "members/me/addresses/" + a.json()["name"].rsplit("/", 1)[1]
        o = await self.mall.post("/v1/orders", headers={**h, "Idempotency-Key": str(uuid.uuid4())},
                                 json={"lines": [{"sku": sku, "quantity": 1}], "address": self.address})
        assert o.status_code == 200, o.text
        order = o.json()
        p = await self.mall.post(f"/v1/{order['name']}:pay", headers=h, json={})
        assert p.status_code == 200, p.text
        headers, body = self.orders.sim.notification(order["outTradeNo"], success_time=paid_at)
        n = await self.mall.post("/v1/wechatpay/notifications", content=body, headers=headers)
        assert n.status_code == 200, n.text
        return int(order["payableFen"])


def shift_members_clock(monkeypatch, delta: timedelta) -> None:
    """The members service's clock where arrivals and registrations are stamped, moved by ``delta``
    (the scenario's first day is yesterday)."""
    def clock():
        return datetime.now(UTC) + delta
    for module in (channels_module, funnels_module, identity_module):
        monkeypatch.setattr(module, "utcnow", clock)


async def test_funnel_through_the_api_equals_a_scenario_driven_through_the_gateway(mall, members, orders,
                                                                                    monkeypatch):
    staff = await staff_headers(mall)
    codes = {}
    for label, channel_type in (("A", "CHANNEL_TYPE_STORE_QR"), ("B", "CHANNEL_TYPE_PACKAGE_CARD")):
        r = await mall.post("/v1/channelCodes", headers=staff,
                            json={"displayName": f"漏斗{label}{uuid.uuid4().hex[:6]}", "channelType": channel_type})
        assert r.status_code == 200, r.text
        codes[label] = r.json()
    scene = {k: c["scene"] for k, c in codes.items()}
    product = await orders.product(price_fen=2_990, stock=100)
    sku = product.skus[0].name
    funnels = members.app.funnels
    now = datetime.now(UTC)
    yesterday = now - timedelta(days=1)
    d1, d2 = funnels.brand_day(yesterday), funnels.brand_day(now)

    # Day 1 (yesterday): s1 scans A and registers with A's scene; s2 scans B and registers later without
    # a scene (credited to B, its last arrival); s3 scans A and never registers.
    shift_members_clock(monkeypatch, -timedelta(days=1))
    s1, s2, s3, s4, s5 = (Shopper(mall, orders) for _ in range(5))
    assert (await s1.arrive(scene["A"]))["alreadyRecorded"] is False
    await s1.register(scene["A"])
    await s2.arrive(scene["B"])
    await s2.register()
    await s3.arrive(scene["A"])
    monkeypatch.undo()
    # Day 2 (today): s4 scans B and registers with its scene; s5 scans A twice (one arrival) and registers.
    await s4.arrive(scene["B"])
    await s4.register(scene["B"])
    await s5.arrive(scene["A"])
    assert (await s5.arrive(scene["A"]))["alreadyRecorded"] is True
    key = str(uuid.uuid4())
    retried = [await mall.post("/v1/channelArrivals:record", headers={"Idempotency-Key": key},
                               json={"scene": scene["B"], "visitorId": s3.visitor}) for _ in range(2)]
    assert [r.json()["alreadyRecorded"] for r in retried] == [False, False]  # a retry answers as the first call
    assert (await mall.post("/v1/channelArrivals:record", headers={"Idempotency-Key": key},
                            json={"scene": scene["A"], "visitorId": s3.visitor})).status_code == 400
    await s5.register(scene["A"])

    gmv = {}
    gmv["s1-first"] = await s1.pay(sku, yesterday)
    gmv["s2-first"] = await s2.pay(sku, yesterday)
    gmv["s1-repeat"] = await s1.pay(sku, now)
    gmv["s4-first"] = await s4.pay(sku, now)
    gmv["s4-repeat"] = await s4.pay(sku, now)

    a, b = codes["A"]["name"], codes["B"]["name"]
    expected = {
        (d1, a): (2, 1, 1, 0, gmv["s1-first"], 0),  # s1, s3 arrived; s1 registered and paid
        (d1, b): (1, 1, 1, 0, gmv["s2-first"], 0),  # s2 (its scan joined to it at registration)
        (d2, a): (1, 1, 0, 1, 0, gmv["s1-repeat"]),  # s5 arrived twice, registered; s1 paid again
        (d2, b): (2, 1, 1, 1, gmv["s4-first"], gmv["s4-repeat"]),  # s4, and s3 scanning B
    }

    def of(report, keys=(a, b)):
        return {(date(r["date"]["year"], r["date"]["month"], r["date"]["day"]), r["key"]): (
            int(r["arrivals"]), int(r["registrations"]), int(r["firstOrders"]), int(r["repeatOrders"]),
            int(r["firstOrderGmvFen"]), int(r["repeatOrderGmvFen"])) for r in report["rows"] if r["key"] in keys}

    async def report():
        r = await mall.get("/v1/reports/funnel", headers=staff, params=range_params(d1, d2))
        assert r.status_code == 200, r.text
        got = r.json()
        return got if of(got) == expected else None

    try:
        got = await until(report, 60, "the purchase facts of five paid orders")
    except AssertionError:
        r = await mall.get("/v1/reports/funnel", headers=staff, params=range_params(d1, d2))
        raise AssertionError(f"{of(r.json())} != {expected}") from None
    totals = {t["key"]: t for t in got["totals"]}
    assert int(totals[a]["arrivals"]) == 3 and int(totals[a]["registrations"]) == 2  # s1, s3, s5
    assert int(totals[b]["firstOrders"]) == 2 and int(totals[b]["repeatOrders"]) == 1
    assert int(totals[b]["arrivals"]) == 3 and totals[b]["registrationRate"] == round(2 / 3, 4)
    assert totals[a]["firstOrderRate"] == 0.5
    assert int(totals[a]["gmvFen"]) == gmv["s1-first"] + gmv["s1-repeat"]
    assert totals[a]["displayName"] == codes["A"]["displayName"] and got["timeZone"]

    # by channel type and by touchpoint (the code's key, the same counts for these codes)
    by_type = await mall.get("/v1/reports/funnel", headers=staff,
                             params=range_params(d1, d2, dimension="FUNNEL_DIMENSION_CHANNEL_TYPE"))
    assert by_type.status_code == 200, by_type.text
    store_qr = {(r["date"]["day"]): r for r in by_type.json()["rows"] if r["key"] == "CHANNEL_TYPE_STORE_QR"}
    assert int(store_qr[d1.day]["arrivals"]) >= 2 and int(store_qr[d1.day]["registrations"]) >= 1
    by_tp = await mall.get("/v1/reports/funnel", headers=staff,
                           params=range_params(d1, d2, dimension="FUNNEL_DIMENSION_TOUCHPOINT"))
    assert of(by_tp.json()) == expected

    # the CSV export holds the same rows
    exported = await mall.get("/v1/reports/funnel:export", headers=staff, params=range_params(d1, d2))
    assert exported.status_code == 200, exported.text
    assert exported.headers["content-type"].startswith("text/csv")
    lines = list(csv.DictReader(io.StringIO(exported.content.decode("utf-8"))))
    from_csv = {(date.fromisoformat(r["date"]), r["key"]): (
        int(r["arrivals"]), int(r["registrations"]), int(r["first_orders"]), int(r["repeat_orders"]),
        int(r["first_order_gmv_fen"]), int(r["repeat_order_gmv_fen"])) for r in lines if r["key"] in (a, b)}
    assert from_csv == expected
    assert [r["display_name"] for r in lines if r["key"] == a][0] == codes["A"]["displayName"]

    # staff only; bad ranges name the field
    assert (await mall.get("/v1/reports/funnel", headers=bearer(s1.token), params=range_params(d1, d2))
            ).status_code == 403
    assert (await mall.get("/v1/reports/funnel:export", headers=bearer(s1.token), params=range_params(d1, d2))
            ).status_code == 403
    assert (await mall.get("/v1/reports/funnel", params=range_params(d1, d2))).status_code == 401
    for params, field in [(range_params(d2, d1), "end_date"),
                          (range_params(d1, d1 + timedelta(days=366)), "end_date"),
                          (dq(d1, "startDate"), "end_date"),
                          ({**range_params(d1, d2), "startDate.month": 13}, "start_date")]:
        bad = await mall.get("/v1/reports/funnel", headers=staff, params=params)
        assert bad.status_code == 400, bad.text
        assert field in bad.json()["error"]["message"], bad.text
    assert (await mall.get("/v1/reports/funnel", headers=staff, params=range_params(d1, d1 + timedelta(days=365)))
            ).status_code == 200
    unknown = await mall.post("/v1/channelArrivals:record", json={"scene": "nosuchscene", "visitorId": visitor()})
    assert unknown.status_code == 404, unknown.text


async def test_a_share_arrival_converts_for_the_post_and_the_sharer_once(mall, members, orders, community):
    staff = await staff_headers(mall)
    group = await make_group(community)
    article = await create_post(community, group, kind=cpb.POST_KIND_ARTICLE, title="分享有礼", body="……")
    sharer = new_member_id()
    await join(community, group, sharer)
    share = await community.stub.SharePost(cpb.SharePostRequest(name=article.name),
                                           metadata=community.member_md(sharer))
    reader = Shopper(mall, orders)
    viewed = await mall.post(f"/v1/{article.name}:view", json={"visitorId": reader.visitor, "shareToken": share.token})
    assert viewed.status_code == 200, viewed.text
    await reader.register()  # no scene, no code arrival: not credited yet
    linked = await mall.post(f"/v1/visitors/{reader.visitor}:link", headers=bearer(reader.token), json={})
    assert linked.status_code == 200 and linked.json()["linkedViewCount"] == "1", linked.text
    today = members.app.funnels.brand_day(datetime.now(UTC))
    params = range_params(today - timedelta(days=1), today, post=article.name)

    async def conversions(expect_orders: int):
        r = await mall.get("/v1/reports/contentConversions", headers=staff, params=params)
        assert r.status_code == 200, r.text
        got = r.json()
        posts = got["posts"]
        if len(posts) == 1 and posts[0]["newMembers"] == "1" and posts[0]["orders"] == str(expect_orders):
            return got
        return None

    await until(lambda: conversions(0), 60, "the visitor_linked event to reach members")
    product = await orders.product(price_fen=5_000, stock=10)
    paid = await reader.pay(product.skus[0].name, datetime.now(UTC))
    got = await until(lambda: conversions(1), 60, "the order's purchase fact")
    assert got["posts"] == [{"post": article.name, "sharer": "", "newMembers": "1", "orderingMembers": "1",
                             "orders": "1", "gmvFen": str(paid)}]
    assert got["sharers"] == [{"post": article.name, "sharer": f"members/{sharer}", "newMembers": "1",
                               "orderingMembers": "1", "orders": "1", "gmvFen": str(paid)}]

    # Delivered again, under the same event id and under a new one (a republish): nothing more.
    member_id = int(reader.member.split("/")[1])
    again = cev.VisitorLinkedEvent(member=reader.member, visitor_id=reader.visitor, arrivals=[cev.ShareArrival(
        post=article.name, share=share.name, sharer=f"members/{sharer}")])
    again.arrivals[0].view_time.FromDatetime(datetime.now(UTC) - timedelta(minutes=1))
    event = events_pb2.Event(id=str(uuid.uuid4()), type="community.visitor_linked", source="community",
                             subject=reader.member)
    event.time.GetCurrentTime()
    event.data.Pack(again)
    assert not (await deliver(members.app, event)).duplicate
    assert (await deliver(members.app, event)).duplicate
    assert await conversions(1) == got
    touchpoints = await mall.get("/v1/members/me/touchpoints", headers=bearer(reader.token))
    shares = [t for t in touchpoints.json()["touchpoints"] if t["channelType"] == "CHANNEL_TYPE_CONTENT_SHARE"]
    assert [(t["post"], t["sharer"], t["channelCode"]) for t in shares] == [(article.name, f"members/{sharer}", "")]
    me = await members.stub.GetMember(pb.GetMemberRequest(name=f"members/{member_id}"), metadata=members.service_md)
    assert me.name == reader.member

    # the content share row of the funnel counts the registration and the order
    funnel = await mall.get("/v1/reports/funnel", headers=staff,
                            params=range_params(today - timedelta(days=1), today,
                                                dimension="FUNNEL_DIMENSION_TOUCHPOINT"))
    rows = [r for r in funnel.json()["rows"] if r["key"] == article.name]
    assert sum(int(r["registrations"]) for r in rows) == 1 and sum(int(r["firstOrders"]) for r in rows) == 1

    # views and shares are the community service's half of the content report
    views = await mall.get(f"/v1/{article.name}/report", headers=staff)
    assert views.status_code == 200 and views.json()["views"] == "1" and views.json()["shares"] == "1", views.text
    post_csv = await mall.get(f"/v1/{article.name}/report:export", headers=staff)
    assert post_csv.status_code == 200 and post_csv.headers["content-type"].startswith("text/csv"), post_csv.text
    lines = list(csv.DictReader(io.StringIO(post_csv.content.decode("utf-8"))))
    report = views.json()
    assert [(r["share"], r["sharer"], r["views"], r["unique_viewers"], r["members_gained"]) for r in lines] == [
        ("", "", report["views"], report["uniqueViewers"], report["membersGained"]),
        (share.name, f"members/{sharer}", "1", "1", "1")]
    assert (await mall.get(f"/v1/{article.name}/report:export", headers=bearer(reader.token))).status_code == 403

    # CSV = JSON; staff only
    exported = await mall.get("/v1/reports/contentConversions:export", headers=staff, params=params)
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    assert list(csv.reader(io.StringIO(exported.content.decode("utf-8")))) == [
        ["post", "sharer", "new_members", "ordering_members", "orders", "gmv_fen"],
        [article.name, "", "1", "1", "1", str(paid)],
        [article.name, f"members/{sharer}", "1", "1", "1", str(paid)]]
    assert (await mall.get("/v1/reports/contentConversions", headers=bearer(reader.token), params=params)
            ).status_code == 403
    assert (await mall.get("/v1/reports/contentConversions", headers=staff,
                           params={**params, "post": "groups/x"})).status_code == 400


async def test_the_exports_are_documented_as_csv_and_the_reports_as_json(mall):
    doc = (await mall.get("/openapi.json")).json()
    post_export = [p for p in doc["paths"] if "posts" in p and p.endswith(":export")]
    assert len(post_export) == 1, post_export
    for path in ("/v1/reports/funnel:export", "/v1/reports/contentConversions:export", *post_export):
        op = doc["paths"][path]["get"]
        assert list(op["responses"]["200"]["content"]) == ["text/csv"], op["responses"]
        assert op["x-mall-access"]
    report = doc["paths"]["/v1/reports/funnel"]["get"]["responses"]["200"]["content"]
    assert list(report) == ["application/json"]
    page = await mall.get("/docs")
    assert page.status_code == 200 and "ExportFunnelReport" in page.text and "text/csv" in page.text


async def test_a_share_viewed_before_the_attribution_window_is_a_touchpoint_but_not_the_acquisition(members):
    login, md = await members.login(visitor_id=visitor())
    member = login.member.name
    post, sharer = f"groups/9{uuid.uuid4().int % 10**6}/posts/1", f"members/{new_member_id()}"
    days = members.app.settings.attribution_window_days

    def linked(share_id: int, viewed: datetime, on: str = post) -> events_pb2.Event:
        p = cev.VisitorLinkedEvent(member=member, visitor_id=visitor(), arrivals=[cev.ShareArrival(
            post=on, share=f"{on}/shares/{share_id}", sharer=sharer)])
        p.arrivals[0].view_time.FromDatetime(viewed)
        e = events_pb2.Event(id=str(uuid.uuid4()), type="community.visitor_linked", source="community", subject=member)
        e.time.GetCurrentTime()
        e.data.Pack(p)
        return e

    today = members.app.funnels.brand_day(datetime.now(UTC))
    report = pb.GetContentConversionReportRequest(post=post)
    for d, field in ((today - timedelta(days=1), report.start_date), (today, report.end_date)):
        field.year, field.month, field.day = d.year, d.month, d.day
    staff = await members.staff()

    await deliver(members.app, linked(1, datetime.now(UTC) - timedelta(days=days, hours=1)))  # too early
    await deliver(members.app, linked(2, datetime.now(UTC) + timedelta(hours=1)))  # after registering
    tps = await members.stub.ListTouchpoints(pb.ListTouchpointsRequest(parent="members/me"), metadata=md)
    assert sorted(t.post for t in tps.touchpoints) == [post, post]
    assert not (await members.stub.GetContentConversionReport(report, metadata=staff)).posts

    await deliver(members.app, linked(3, datetime.now(UTC) - timedelta(hours=1)))  # within the window: credited
    got = await members.stub.GetContentConversionReport(report, metadata=staff)
    assert [(c.post, c.new_members) for c in got.posts] == [(post, 1)]
    other = post.replace("/posts/1", "/posts/2")
    await deliver(members.app, linked(4, datetime.now(UTC) - timedelta(minutes=30), other))  # credited once
    assert await members.stub.GetContentConversionReport(report, metadata=staff) == got
    report.post = other
    assert not (await members.stub.GetContentConversionReport(report, metadata=staff)).posts
