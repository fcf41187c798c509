"""The order state machine, pricing on the server, timeouts, late payments, refunds and the care journey."""

from __future__ import annotations

import asyncio
from datetime import UTC, timedelta

import grpc
import pytest
from sqlalchemy import select

from mall.members.v1 import members_service_pb2 as mpb
from mall.orders.v1 import orders_service_pb2 as pb
from mallkit.errors import error_info, status_of
from orders import jobs
from orders.models import JourneyStep
from tests.fixtures.orders import rid


async def _reason(call) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call
    info = error_info(await status_of(e.value))
    return info.reason if info else e.value.code().name


async def _get(orders, md, order) -> pb.Order:
    return await orders.stub.GetOrder(pb.GetOrderRequest(name=order.name), metadata=md)


async def _until(predicate, within: float = 20.0) -> bool:
    for _ in range(int(within / 0.05)):
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


async def test_priced_on_the_server_with_the_tier_discount_and_stock_reserved(orders, members):
    staff = await members.staff()
    tiers = (await members.stub.ListTiers(mpb.ListTiersRequest(page_size=100), metadata=staff)).tiers
    vip = next((t for t in tiers if t.growth_threshold == 900_000), None) or await members.stub.CreateTier(
        mpb.CreateTierRequest(tier=mpb.Tier(display_name="订单测试VIP", growth_threshold=900_000,
                                            benefits=mpb.TierBenefits(discount_percent=90))), metadata=staff)
    login, md = await members.login()
    await members.stub.AddGrowth(mpb.AddGrowthRequest(member=login.member.name, amount=900_000, source="activity",
                                                      request_id=rid()), metadata=members.service_md)
    me = await members.stub.GetMember(mpb.GetMemberRequest(name=login.member.name), metadata=members.service_md)
    assert me.tier == vip.name
    product = await orders.product(price_fen=1_999, stock=3)
    o = await orders.order(md, product.skus[0].name, quantity=2)
    assert (o.total_fen, o.tier_discount_fen, o.payable_fen) == (3_998, 400, 3_598)
    assert o.items[0].unit_price_fen == 1_999 and o.items[0].product_display_name == "测试商品"
    assert (await orders.stub.GetProduct(pb.GetProductRequest(name=product.name))).skus[0].stock == 1
    assert await _reason(orders.order(md, product.skus[0].name, quantity=2)) == "OUT_OF_STOCK"
    # The snapshot keeps the price paid even when the catalog changes.
    await orders.stub.UpdateSku(pb.UpdateSkuRequest(name=product.skus[0].name, price_fen=5_000), metadata=orders.staff_md)
    assert (await _get(orders, md, o)).items[0].unit_price_fen == 1_999


async def test_order_paid_carries_the_tier_snapshot_taken_when_priced(orders, members):
    """One member read per purchase: the tier and its points multiplier travel in order.paid."""
    staff = await members.staff()
    tiers = (await members.stub.ListTiers(mpb.ListTiersRequest(page_size=100), metadata=staff)).tiers
    gold = next((t for t in tiers if t.growth_threshold == 950_000), None) or await members.stub.CreateTier(
        mpb.CreateTierRequest(tier=mpb.Tier(display_name="订单积分VIP", growth_threshold=950_000, benefits=mpb.TierBenefits(
            discount_percent=95, points_multiplier_percent=150))), metadata=staff)
    login, md = await members.login()
    await members.stub.AddGrowth(mpb.AddGrowthRequest(member=login.member.name, amount=950_000, source="activity",
                                                      request_id=rid()), metadata=members.service_md)
    plain_login, plain = await members.login()  # the entry tier, if the suite made one (growth 0)
    product = await orders.product(price_fen=2_000, stock=10)
    o = await orders.order(md, product.skus[0].name)
    assert o.tier_discount_fen == 100  # the same read priced the order
    await orders.pay(md, o)
    # Flash sale orders are priced without the tier: their snapshot is taken when the member pays.
    sale = await orders.flash_sale(product.skus[0].name, stock=5, limit=1)
    flash = {}
    for who in (md, plain):
        flash[who] = await orders.stub.BuyFlashSale(pb.BuyFlashSaleRequest(
            flash_sale=sale.name, quantity=1, request_id=rid()), metadata=who)
        await orders.pay(who, flash[who])
    names = [o.name, flash[md].name, flash[plain].name]
    assert await _until(lambda: all(n in orders.points.paid for n in names))
    got = [(orders.points.paid[n].tier, orders.points.paid[n].points_multiplier_percent) for n in names]
    entry = (await members.stub.GetMember(mpb.GetMemberRequest(name=plain_login.member.name),
                                           metadata=members.service_md)).tier
    entry_multiplier = next((t.benefits.points_multiplier_percent or 100 for t in tiers if t.name == entry), 100)
    assert got == [(gold.name, 150), (gold.name, 150), (entry, entry_multiplier)]


async def test_illegal_transitions_are_refused(orders, members):
    login, md = await members.login()
    product = await orders.product(price_fen=1_000)
    o = await orders.order(md, product.skus[0].name)
    assert await _reason(orders.stub.ShipOrder(pb.ShipOrderRequest(name=o.name), metadata=orders.staff_md)) \
        == "ORDER_STATE_CONFLICT"
    assert await _reason(orders.stub.RequestRefund(pb.RequestRefundRequest(name=o.name), metadata=md)) \
        == "ORDER_STATE_CONFLICT"
    await orders.pay(md, o)
    assert await _reason(orders.stub.CancelOrder(pb.CancelOrderRequest(name=o.name), metadata=md)) \
        == "ORDER_STATE_CONFLICT"
    assert await _reason(orders.stub.PayOrder(pb.PayOrderRequest(name=o.name), metadata=md)) == "ORDER_STATE_CONFLICT"
    shipped = await orders.stub.ShipOrder(pb.ShipOrderRequest(name=o.name, tracking_number="SF123"),
                                          metadata=orders.staff_md)
    assert shipped.state == pb.ORDER_STATE_SHIPPED
    assert await _reason(orders.stub.ShipOrder(pb.ShipOrderRequest(name=o.name), metadata=orders.staff_md)) \
        == "ORDER_STATE_CONFLICT"
    # A member may not ship.
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await orders.stub.ShipOrder(pb.ShipOrderRequest(name=o.name), metadata=md)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_refund_flow_refunds_through_wechat_pay_and_reverses_points(orders, members):
    login, md = await members.login()
    product = await orders.product(price_fen=8_800)
    o = await orders.order(md, product.skus[0].name)
    await orders.pay(md, o)
    asked = await orders.stub.RequestRefund(pb.RequestRefundRequest(name=o.name, reason="不想要了"), metadata=md)
    assert asked.state == pb.ORDER_STATE_REFUND_REQUESTED
    done = await orders.stub.ApproveRefund(pb.ApproveRefundRequest(name=o.name), metadata=orders.staff_md)
    assert done.state == pb.ORDER_STATE_REFUNDED and done.refunded_fen == 8_800
    assert any(r["out_trade_no"] == o.out_trade_no and r["amount"]["refund"] == 8_800 for r in orders.sim.refunds.values())
    assert await _until(lambda: orders.points.reversals[o.name] == 1 and orders.points.pends[o.name] == 1)


async def test_unpaid_order_reminded_then_cancelled_and_late_payment_refunded(orders, members):
    login, md = await members.login()
    product = await orders.product(price_fen=2_000, stock=10)
    t = await orders.stub.CreateCouponTemplate(pb.CreateCouponTemplateRequest(coupon_template=pb.CouponTemplate(
        display_name="超时券", kind=pb.COUPON_KIND_AMOUNT_OFF, amount_off_fen=100, valid_days=7, per_member_limit=1,
        total_quantity=10, claimable=True)), metadata=orders.staff_md)
    c = await orders.stub.ClaimCoupon(pb.ClaimCouponRequest(parent="members/me", coupon_template=t.name), metadata=md)
    o = await orders.order(md, product.skus[0].name, quantity=3, coupon=c.name.replace(login.member.name, "members/me"))
    await orders.prepay(md, o)  # the buyer opened the payment sheet, then went away
    created = o.create_time.ToDatetime().replace(tzinfo=UTC)
    app = orders.app
    await jobs.remind_unpaid(app, created + timedelta(seconds=app.settings.pay_reminder_seconds + 1))
    await jobs.remind_unpaid(app, created + timedelta(seconds=app.settings.pay_reminder_seconds + 2))  # once only
    oid = int(o.name.split("/")[1])
    async with orders.engine.connect() as conn:
        steps = (await conn.execute(select(JourneyStep.step).where(JourneyStep.order_id == oid))).scalars().all()
    assert steps == ["pay_reminder"]
    deadline = o.pay_deadline_time.ToDatetime().replace(tzinfo=UTC)
    await jobs.cancel_overdue(app, deadline - timedelta(seconds=1))  # other tests' overdue orders may go, not this one
    assert (await _get(orders, md, o)).state == pb.ORDER_STATE_PENDING_PAYMENT
    assert await jobs.cancel_overdue(app, deadline + timedelta(seconds=1)) >= 1  # this one, at least
    cancelled = await _get(orders, md, o)
    assert cancelled.state == pb.ORDER_STATE_CANCELLED and cancelled.cancel_reason == "timeout"
    assert (await orders.stub.GetProduct(pb.GetProductRequest(name=product.name))).skus[0].stock == 10
    coupons = await orders.stub.ListCoupons(pb.ListCouponsRequest(parent="members/me"), metadata=md)
    assert coupons.coupons[0].state == pb.COUPON_STATE_AVAILABLE
    # The money arrives after the cancellation: refunded, not fulfilled; repeats change nothing.
    headers, body = orders.sim.notification(o.out_trade_no)
    for _ in range(3):
        assert (await orders.notify(headers, body)).code == "SUCCESS"
    assert await _until(lambda: any(r["out_trade_no"] == o.out_trade_no for r in orders.sim.refunds.values()))
    late = await _get(orders, md, o)
    assert late.state == pb.ORDER_STATE_CANCELLED and late.refunded_fen == o.payable_fen
    assert [r["amount"]["refund"] for r in orders.sim.refunds.values() if r["out_trade_no"] == o.out_trade_no] \
        == [o.payable_fen]
    await asyncio.sleep(0.3)
    assert orders.points.pends[o.name] == 0


async def test_care_journey_steps_each_sent_once(orders, members):
    login, md = await members.login()
    product = await orders.product(price_fen=6_600, cycle=20)
    o = await orders.order(md, product.skus[0].name)
    await orders.pay(md, o)
    await orders.stub.ShipOrder(pb.ShipOrderRequest(name=o.name), metadata=orders.staff_md)
    app = orders.app
    shipped = (await _get(orders, md, o)).ship_time.ToDatetime().replace(tzinfo=UTC)
    later = shipped + timedelta(days=app.settings.after_sales_days, seconds=1)
    await jobs.complete_due(app, later)
    await jobs.complete_due(app, later)
    assert (await _get(orders, md, o)).state == pb.ORDER_STATE_COMPLETED
    assert await _until(lambda: orders.points.confirms[o.name] == 1)
    far = shipped + timedelta(days=30)
    await asyncio.gather(jobs.run_journey(app, far), jobs.run_journey(app, far))  # two replicas' passes at once
    while await jobs.run_journey(app, far):  # steps of other tests' orders are due too: drain them
        pass
    await jobs.run_journey(app, far)
    touches = await members.stub.ListTouches(mpb.ListTouchesRequest(parent=login.member.name, page_size=100),
                                             metadata=members.service_md)
    purposes = sorted(t.purpose for t in touches.touches)
    assert purposes == ["orders.care", "orders.payment_success", "orders.repurchase", "orders.window_closed"]
