"""The points mall: items, limits, windows, tiers, fulfilment, cancellation, coupon events."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2
from sqlalchemy import select

from mall.events.v1 import events_pb2
from mall.members.v1 import members_service_pb2 as mpb
from mall.points.v1 import points_events_pb2 as epb
from mall.points.v1 import points_service_pb2 as pb
from mallkit.errors import error_info, status_of
from points.models import Item, OutboxEvents
from tests.fixtures.points import fresh_member_id, rid

ADDRESS = pb.ShippingAddress(recipient="王五", phone="13700137000", province="浙江省", city="杭州市", district="西湖区",
                             detail="文一西路 100 号")


async def reason_of(coro) -> str:
    try:
        await coro
    except grpc.aio.AioRpcError as err:
        return error_info(await status_of(err)).reason
    return "OK"


def ts(dt: datetime) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromDatetime(dt)
    return t


async def test_physical_gift_ships_and_is_delivered_and_cancel_returns_points_and_stock_once(points):
    member = fresh_member_id()
    md = points.member_md(member)
    await points.grant(member, 500)
    item = await points.create_item(kind=pb.ITEM_KIND_PHYSICAL, points_price=100, stock=3)
    assert await reason_of(points.stub.RedeemItem(pb.RedeemItemRequest(name=item.name, request_id=rid()),
                                                  metadata=md)) == "SHIPPING_ADDRESS_REQUIRED"
    first = await points.stub.RedeemItem(pb.RedeemItemRequest(name=item.name, quantity=2, shipping_address=ADDRESS,
                                                              request_id=rid()), metadata=md)
    assert (first.points, first.cash_fen, first.state) == (200, 0, pb.REDEMPTION_STATE_PENDING_SHIPMENT)
    assert first.shipping_address.detail == ADDRESS.detail
    second = await points.stub.RedeemItem(pb.RedeemItemRequest(name=item.name, shipping_address=ADDRESS,
                                                               request_id=rid()), metadata=md)
    # Ten concurrent cancels with different request ids: one returns points and stock.
    outcomes = await asyncio.gather(*[reason_of(points.stub.CancelRedemption(
        pb.CancelRedemptionRequest(name=first.name, request_id=rid()), metadata=md)) for _ in range(10)])
    assert sorted(outcomes) == ["OK"] + ["REDEMPTION_STATE"] * 9
    assert (await points.account(member)).available_points == 500 - 100
    async with points.engine.connect() as conn:
        stock = (await conn.execute(select(Item.stock).where(Item.id == int(item.name.split("/")[1])))).scalar_one()
    assert stock == 2
    staff = points.staff_md("operator")
    shipped = await points.stub.ShipRedemption(pb.ShipRedemptionRequest(name=second.name, carrier="顺丰",
                                                                        tracking_number="SF1234567890",
                                                                        request_id=rid()), metadata=staff)
    assert shipped.state == pb.REDEMPTION_STATE_SHIPPED and shipped.tracking_number == "SF1234567890"
    assert await reason_of(points.stub.CancelRedemption(pb.CancelRedemptionRequest(name=second.name),
                                                        metadata=md)) == "REDEMPTION_STATE"
    done = await points.stub.DeliverRedemption(pb.DeliverRedemptionRequest(name=second.name), metadata=staff)
    assert done.state == pb.REDEMPTION_STATE_COMPLETED
    assert await reason_of(points.stub.DeliverRedemption(pb.DeliverRedemptionRequest(name=second.name),
                                                         metadata=staff)) == "REDEMPTION_STATE"
    await points.check()


async def test_per_member_limit_time_window_and_inactive_items(points):
    member = fresh_member_id()
    md = points.member_md(member)
    await points.grant(member, 1000)
    now = datetime.now(UTC)
    limited = await points.create_item(points_price=10, stock=100, per_member_limit=2)
    redeem = lambda item, q=1: points.stub.RedeemItem(pb.RedeemItemRequest(name=item.name, quantity=q,  # noqa: E731
                                                                           request_id=rid()), metadata=md)
    assert await reason_of(redeem(limited, 2)) == "OK"
    assert await reason_of(redeem(limited)) == "REDEMPTION_LIMIT_REACHED"
    later = await points.create_item(points_price=10, stock=5, start_time=ts(now + timedelta(days=1)))
    over = await points.create_item(points_price=10, stock=5, start_time=ts(now - timedelta(days=2)),
                                    end_time=ts(now - timedelta(days=1)))
    assert await reason_of(redeem(later)) == "ITEM_NOT_AVAILABLE"
    assert await reason_of(redeem(over)) == "ITEM_NOT_AVAILABLE"
    listed = await points.stub.ListItems(pb.ListItemsRequest(page_size=100), metadata=md)
    names = {i.name for i in listed.items}
    assert limited.name in names and later.name not in names and over.name not in names
    # Staff withdraw an item: members can no longer see or redeem it; staff still can see it.
    withdrawn = await points.stub.UpdateItem(pb.UpdateItemRequest(
        item=pb.Item(name=limited.name, state=pb.ITEM_STATE_INACTIVE), update_mask=field_mask_pb2.FieldMask(paths=["state"]),
        request_id=rid()), metadata=points.staff_md())
    assert withdrawn.state == pb.ITEM_STATE_INACTIVE and withdrawn.redeemed_count == 2
    assert await reason_of(points.stub.GetItem(pb.GetItemRequest(name=limited.name), metadata=md)) == "ITEM_NOT_FOUND"
    assert await reason_of(redeem(limited)) == "ITEM_NOT_AVAILABLE"
    assert (await points.account(member)).available_points == 980
    await points.check()


async def test_tier_restricted_item_and_coupon_item_published_to_orders(points, members):
    staff = await members.staff()
    tiers = await members.stub.ListTiers(mpb.ListTiersRequest(page_size=100), metadata=staff)
    if not any(t.growth_threshold == 0 for t in tiers.tiers):
        await members.stub.CreateTier(mpb.CreateTierRequest(tier=mpb.Tier(display_name="普通", growth_threshold=0),
                                                            request_id=rid()), metadata=staff)
    vip = await members.stub.CreateTier(mpb.CreateTierRequest(tier=mpb.Tier(
        display_name="VIP", growth_threshold=random.randrange(10_000_000, 99_000_000),
        benefits=mpb.TierBenefits(points_multiplier_percent=200)), request_id=rid()), metadata=staff)
    login, _ = await members.login()
    member = int(login.member.name.split("/")[1])
    await points.grant(member, 1000)
    md = points.member_md(member)
    item = await points.create_item(points_price=100, stock=10, allowed_tiers=[vip.name], kind=pb.ITEM_KIND_COUPON,
                                    coupon_template="couponTemplates/42")
    redeem = pb.RedeemItemRequest(name=item.name, request_id=rid())
    assert await reason_of(points.stub.RedeemItem(redeem, metadata=md)) == "TIER_NOT_ALLOWED"
    await members.stub.AddGrowth(mpb.AddGrowthRequest(member=login.member.name, amount=vip.growth_threshold,
                                                      source="test", request_id=rid()), metadata=members.service_md)
    r = await points.stub.RedeemItem(redeem, metadata=md)  # same request id, now allowed: errors are not stored
    assert r.state == pb.REDEMPTION_STATE_COMPLETED and r.coupon_template == "couponTemplates/42"
    async with points.engine.connect() as conn:
        rows = (await conn.execute(select(OutboxEvents.c.payload).where(
            OutboxEvents.c.event_type == "points.coupon_redeemed"))).scalars().all()
    mine = []
    for payload in rows:
        data = epb.CouponRedeemedEvent()
        events_pb2.Event.FromString(payload).data.Unpack(data)
        if data.redemption == r.name:
            mine.append(data)
    assert len(mine) == 1  # one event, whoever consumes it (orders issues the coupon)
    data = mine[0]
    assert data.member == login.member.name and data.coupon_template == "couponTemplates/42"
    # Coupons are issued at once: they cannot be cancelled for points.
    assert await reason_of(points.stub.CancelRedemption(pb.CancelRedemptionRequest(name=r.name),
                                                        metadata=md)) == "REDEMPTION_STATE"
    await points.check()


async def test_purchase_points_use_the_tier_multiplier_and_internal_rpcs_are_idempotent(points, members):
    staff = await members.staff()
    gold = await members.stub.CreateTier(mpb.CreateTierRequest(tier=mpb.Tier(
        display_name="金卡", growth_threshold=random.randrange(10_000_000, 99_000_000),
        benefits=mpb.TierBenefits(points_multiplier_percent=150)), request_id=rid()), metadata=staff)
    login, _ = await members.login()
    await members.stub.AddGrowth(mpb.AddGrowthRequest(member=login.member.name, amount=gold.growth_threshold,
                                                      source="test", request_id=rid()), metadata=members.service_md)
    member = int(login.member.name.split("/")[1])
    order = f"orders/{fresh_member_id()}"
    svc = points.service_md
    pend = pb.PendPurchasePointsRequest(order=order, member=login.member.name, paid_amount_fen=19_999)
    results = await asyncio.gather(*[points.stub.PendPurchasePoints(pend, metadata=svc) for _ in range(5)])
    expected = 19_999 * points.app.settings.purchase_points_per_yuan * 150 // 10_000
    assert {(r.points, r.multiplier_percent, r.state) for r in results} == {
        (expected, 150, pb.PURCHASE_POINTS_STATE_PENDING)}
    confirm = await asyncio.gather(*[points.stub.ConfirmPurchasePoints(
        pb.ConfirmPurchasePointsRequest(order=order), metadata=svc) for _ in range(5)])
    assert {r.state for r in confirm} == {pb.PURCHASE_POINTS_STATE_CONFIRMED}
    assert (await points.account(member)).available_points == expected
    # A refund after confirmation withdraws what is left of the order's points (here: 10 were spent).
    item = await points.create_item(points_price=10, stock=5)
    await points.stub.RedeemItem(pb.RedeemItemRequest(name=item.name), metadata=points.member_md(member))
    reversed_ = await points.stub.ReversePurchasePoints(pb.ReversePurchasePointsRequest(order=order), metadata=svc)
    assert reversed_.state == pb.PURCHASE_POINTS_STATE_REVERSED and reversed_.reversed_points == expected - 10
    again = await points.stub.ReversePurchasePoints(pb.ReversePurchasePointsRequest(order=order), metadata=svc)
    assert again.reversed_points == expected - 10
    account = await points.account(member)
    assert (account.available_points, account.pending_points) == (0, 0)
    with pytest.raises(grpc.aio.AioRpcError) as e:  # members may not call internal RPCs
        await points.stub.ConfirmPurchasePoints(pb.ConfirmPurchasePointsRequest(order=order),
                                                metadata=points.member_md(member))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    await points.check()


async def test_profile_task_is_claimed_by_the_member_once_the_profile_is_complete(points, members):
    from tests.points.test_events import ensure_task

    await ensure_task(points, pb.TASK_KIND_COMPLETE_PROFILE, 50, pb.TASK_FREQUENCY_ONCE, 1)
    login, mmd = await members.login()
    md = points.member_md(int(login.member.name.split("/")[1]))
    claim = lambda kind=pb.TASK_KIND_COMPLETE_PROFILE: points.stub.CompleteTask(  # noqa: E731
        pb.CompleteTaskRequest(name="members/me/pointsAccount", kind=kind, request_id=rid()), metadata=md)
    assert await reason_of(claim()) == "PROFILE_INCOMPLETE"
    assert await reason_of(claim(pb.TASK_KIND_SHARE_CONTENT)) == "TASK_NOT_CLAIMABLE"
    profile = mpb.Member(name="members/me", nickname="小红", gender=mpb.GENDER_FEMALE, region=mpb.Region(city="杭州市"))
    profile.birthday.year, profile.birthday.month, profile.birthday.day = 1990, 5, 1
    await members.stub.UpdateMember(mpb.UpdateMemberRequest(member=profile), metadata=mmd)
    first = await claim()
    assert (first.points, first.outcome) == (50, "")
    second = await claim()
    assert (second.points, second.outcome) == (0, "ALREADY_REWARDED")
    await points.check()
