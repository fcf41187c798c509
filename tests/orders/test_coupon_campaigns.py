"""Coupon campaigns: a coupon template issued to a 5,000-member segment snapshot, each member exactly
once when the job is killed halfway and restarted and when two replicas run it; the staff route over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from mall.orders.v1 import orders_service_pb2 as pb
from mallkit.auth import MEMBER, STAFF, Principal
from mallkit.db import utcnow
from orders.app import build
from orders.models import Coupon, CouponCampaign
from tests.fixtures.members import segment_of
from tests.fixtures.orders import orders_settings, rid

N = 5000
PAGE = 250  # 20 pages


async def _template(orders, **kw) -> pb.CouponTemplate:
    fields = dict(display_name="人群券", kind=pb.COUPON_KIND_AMOUNT_OFF, amount_off_fen=500, valid_days=7,
                  per_member_limit=1, total_quantity=1_000_000)
    fields.update(kw)
    return await orders.stub.CreateCouponTemplate(pb.CreateCouponTemplateRequest(
        coupon_template=pb.CouponTemplate(**fields)), metadata=orders.staff_md)


@contextlib.asynccontextmanager
async def replica(orders, members):
    """Another orders process on the same database (its own pool, members client and job runner)."""
    app = build(orders_settings(orders.url, sim_url=orders.sim.url, members_addr=members.addr,
                                campaign_page_size=PAGE, campaign_lease_seconds=60))
    await app.start()
    try:
        yield app
    finally:
        await app.stop(grace=1)


async def _campaign(orders, campaign_id: int) -> CouponCampaign:
    async with orders.app.sessions() as s:
        return await s.get(CouponCampaign, campaign_id, populate_existing=True)


async def _until(orders, campaign_id: int, pages: int, deadline: float = 120.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while (await _campaign(orders, campaign_id)).pages_done < pages:
        assert loop.time() < end, "the campaign did not advance"
        await asyncio.sleep(0.02)


async def _coupons_per_member(orders, template: str) -> dict[int, int]:
    tid = int(template.split("/")[1])
    async with orders.engine.connect() as conn:
        rows = await conn.execute(select(Coupon.member_id, func.count()).where(Coupon.template_id == tid)
                                  .group_by(Coupon.member_id))
        return dict(rows.tuples().all())


async def _create(orders, template: str, segment: str) -> int:
    c = await orders.stub.CreateCouponCampaign(pb.CreateCouponCampaignRequest(coupon_campaign=pb.CouponCampaign(
        coupon_template=template, segment=f"segments/{segment}"), request_id=rid()), metadata=orders.staff_md)
    assert c.state == pb.COUPON_CAMPAIGN_STATE_RUNNING and c.member_count == N and c.segment_version == 1
    return int(c.name.split("/")[1])


@pytest.mark.mariadb
async def test_a_segment_of_5000_gets_one_coupon_each_when_the_job_is_killed_and_restarted(orders, members):
    segment, ids = await segment_of(members, N)
    t = await _template(orders)
    holders = ids[100:103]  # already hold the coupon: skipped at the per-member limit
    await orders.stub.IssueCoupons(pb.IssueCouponsRequest(coupon_template=t.name,
                                                          members=[f"members/{m}" for m in holders]),
                                   metadata=orders.staff_md)
    cid = await _create(orders, t.name, segment)
    t0 = utcnow()
    async with replica(orders, members) as app:
        run = asyncio.create_task(app.campaigns.run_campaign(cid, t0))
        await _until(orders, cid, 8)
        run.cancel()  # killed halfway, possibly inside a page's transaction
        with contextlib.suppress(asyncio.CancelledError):
            await run
        killed = await _campaign(orders, cid)
        assert killed.state == pb.COUPON_CAMPAIGN_STATE_RUNNING and 8 <= killed.pages_done < N // PAGE
        issued_so_far = sum((await _coupons_per_member(orders, t.name)).values()) - len(holders)
        assert issued_so_far == killed.issued_count  # the committed pages and nothing else
        assert await app.campaigns.run_campaign(cid, t0) == 0  # the dead runner's lease still holds
    async with replica(orders, members) as app:  # restarted, after the lease ran out: the job's pass
        await app.campaigns.run_due(t0 + timedelta(seconds=61))
    assert (await _campaign(orders, cid)).pages_done == N // PAGE  # resumed at the killed runner's last page
    done = await orders.stub.GetCouponCampaign(pb.GetCouponCampaignRequest(name=f"couponCampaigns/{cid}"),
                                               metadata=orders.staff_md)
    assert done.state == pb.COUPON_CAMPAIGN_STATE_COMPLETED and done.pages_done == N // PAGE
    assert (done.issued_count, done.skipped_count) == (N - len(holders), len(holders))
    per_member = await _coupons_per_member(orders, t.name)
    assert set(per_member) == set(ids) and set(per_member.values()) == {1}  # each exactly once
    tpl = (await orders.stub.ListCouponTemplates(pb.ListCouponTemplatesRequest(page_size=100),
                                                 metadata=orders.staff_md)).coupon_templates
    assert next(x for x in tpl if x.name == t.name).issued_count == N


@pytest.mark.mariadb
async def test_two_replicas_running_the_campaign_issue_each_member_once(orders, members):
    segment, ids = await segment_of(members, N)
    t = await _template(orders, total_quantity=N - 10)  # the last 10 members find it exhausted
    cid = await _create(orders, t.name, segment)
    t0 = utcnow()
    async with replica(orders, members) as a, replica(orders, members) as b:
        first = asyncio.create_task(a.campaigns.run_campaign(cid, t0))
        await _until(orders, cid, 2)
        # b's clock is past a's lease: b takes the campaign over while a is still running; a twin of b
        # on the same clock races for it too.
        pages_a, pages_b, pages_b2 = await asyncio.gather(first, b.campaigns.run_campaign(cid, t0 + timedelta(seconds=61)),
                                                          b.campaigns.run_campaign(cid, t0 + timedelta(seconds=61)))
    assert pages_b + pages_b2 > 0 and pages_a < N // PAGE  # b took over and a stopped
    done = await _campaign(orders, cid)
    assert done.state == pb.COUPON_CAMPAIGN_STATE_COMPLETED and done.pages_done == N // PAGE
    assert (done.issued_count, done.skipped_count) == (N - 10, 10)
    per_member = await _coupons_per_member(orders, t.name)
    assert set(per_member) == set(ids[:-10]) and set(per_member.values()) == {1}


def _bearer(orders, principal: Principal) -> dict:
    return {"Authorization": f"Bearer {orders.codec.issue(principal)[0]}"}


async def test_campaign_staff_route_over_http(orders_gateway, orders, members):
    gw = orders_gateway
    staff = _bearer(orders, Principal(STAFF, "staff/1", frozenset({"admin"})))
    segment, ids = await segment_of(members, 30)
    t = await _template(orders)
    bad = await gw.post("/v1/couponCampaigns", json={"couponTemplate": t.name, "segment": "Segments/X"}, headers=staff)
    assert bad.status_code == 400 and "coupon_campaign.segment" in bad.text
    missing = await gw.post("/v1/couponCampaigns", json={"couponTemplate": t.name, "segment": "segments/no-such-seg"},
                            headers=staff)
    assert missing.status_code == 404 and "SEGMENT_SNAPSHOT_NOT_FOUND" in missing.text
    no_tpl = await gw.post("/v1/couponCampaigns", json={"couponTemplate": "couponTemplates/999999999",
                                                        "segment": f"segments/{segment}"}, headers=staff)
    assert no_tpl.status_code == 404 and "COUPON_TEMPLATE_NOT_FOUND" in no_tpl.text
    member = _bearer(orders, Principal(MEMBER, f"members/{ids[0]}"))
    refused = await gw.post("/v1/couponCampaigns", json={"couponTemplate": t.name, "segment": f"segments/{segment}"},
                            headers=member)
    assert refused.status_code == 403
    created = await gw.post("/v1/couponCampaigns", json={"couponTemplate": t.name, "segment": f"segments/{segment}",
                                                         "segmentVersion": 1}, headers=staff)
    assert created.status_code == 200, created.text
    body = created.json()
    assert body["state"] == "COUPON_CAMPAIGN_STATE_RUNNING" and body["memberCount"] == "30"
    assert await orders.app.campaigns.run_campaign(int(body["name"].split("/")[1]), utcnow()) == 1
    got = await gw.get(f"/v1/{body['name']}", headers=staff)
    assert got.status_code == 200 and got.json()["state"] == "COUPON_CAMPAIGN_STATE_COMPLETED"
    assert got.json()["issuedCount"] == "30"
    assert (await gw.get(f"/v1/{body['name']}", headers=member)).status_code == 403
    listed_campaigns = await gw.get("/v1/couponCampaigns", params={"pageSize": 5}, headers=staff)
    assert listed_campaigns.status_code == 200 and listed_campaigns.json()["couponCampaigns"][0]["name"] == body["name"]
    assert (await gw.get("/v1/couponCampaigns", headers=member)).status_code == 403
    listed = await gw.get(f"/v1/members/{ids[0]}/coupons", headers=member)
    assert [c["couponTemplate"] for c in listed.json()["coupons"]] == [t.name]
