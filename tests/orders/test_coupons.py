"""Coupons: limits, issue by staff and by events, one coupon never used twice, discounts bounded."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from sqlalchemy import func, select

from mall.events.v1 import events_pb2
from mall.orders.v1 import orders_service_pb2 as pb
from mall.points.v1 import points_events_pb2
from mallkit.errors import error_info, status_of
from orders.models import Coupon, Order
from tests.fixtures import deliver
from tests.fixtures.orders import rid


async def _template(orders, **kw) -> pb.CouponTemplate:
    fields = dict(display_name="测试券", kind=pb.COUPON_KIND_AMOUNT_OFF, amount_off_fen=1000, valid_days=7,
                  per_member_limit=1, total_quantity=1000, claimable=True)
    fields.update(kw)
    return await orders.stub.CreateCouponTemplate(pb.CreateCouponTemplateRequest(
        coupon_template=pb.CouponTemplate(**fields)), metadata=orders.staff_md)


async def _reason(call) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call
    info = error_info(await status_of(e.value))
    return info.reason if info else e.value.code().name


def _mine(name: str) -> str:
    parts = name.split("/")
    parts[1] = "me"
    return "/".join(parts)


@pytest.mark.mariadb
async def test_one_coupon_used_by_50_concurrent_orders_goes_to_exactly_one(orders, members):
    login, md = await members.login()
    product = await orders.product(price_fen=5_000, stock=100)
    template = await _template(orders, amount_off_fen=500)
    coupon = await orders.stub.ClaimCoupon(pb.ClaimCouponRequest(parent="members/me", coupon_template=template.name),
                                           metadata=md)
    address = await orders.address(md)

    async def attempt():
        try:
            return await orders.order(md, product.skus[0].name, coupon=_mine(coupon.name), address=address)
        except grpc.aio.AioRpcError as err:
            info = error_info(await status_of(err))
            return info.reason if info else err.code().name

    results = await asyncio.gather(*[attempt() for _ in range(50)])
    placed = [r for r in results if isinstance(r, pb.Order)]
    assert len(placed) == 1 and placed[0].coupon_discount_fen == 500 and placed[0].payable_fen == 4_500
    assert set(r for r in results if not isinstance(r, pb.Order)) == {"COUPON_UNAVAILABLE"}
    cid = int(coupon.name.split("/")[-1])
    async with orders.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(Order).where(Order.coupon_id == cid))).scalar() == 1
    got = await orders.stub.GetProduct(pb.GetProductRequest(name=product.name))
    assert got.skus[0].stock == 99  # the refused orders reserved nothing


async def test_discount_never_exceeds_the_payable_amount(orders, members):
    login, md = await members.login()
    cheap = await orders.product(price_fen=300)
    huge = await _template(orders, amount_off_fen=1_000_000)
    c1 = await orders.stub.ClaimCoupon(pb.ClaimCouponRequest(parent="members/me", coupon_template=huge.name), metadata=md)
    o = await orders.order(md, cheap.skus[0].name, coupon=_mine(c1.name))
    assert o.payable_fen == 1 and o.coupon_discount_fen == 299 and o.total_fen == 300
    assert sum(it.paid_fen for it in o.items) == o.payable_fen
    pct = await _template(orders, kind=pb.COUPON_KIND_PERCENT_OFF, amount_off_fen=0, percent=80, threshold_fen=500)
    c2 = await orders.stub.ClaimCoupon(pb.ClaimCouponRequest(parent="members/me", coupon_template=pct.name), metadata=md)
    assert await _reason(orders.order(md, cheap.skus[0].name, coupon=_mine(c2.name))) == "COUPON_NOT_APPLICABLE"
    o2 = await orders.order(md, cheap.skus[0].name, quantity=3, coupon=_mine(c2.name))
    assert o2.total_fen == 900 and o2.coupon_discount_fen == 180 and o2.payable_fen == 720


async def test_category_limited_coupon_applies_to_its_lines_only(orders, members):
    login, md = await members.login()
    a = await orders.product(price_fen=1_000)
    b = await orders.product(price_fen=2_000)
    t = await _template(orders, kind=pb.COUPON_KIND_PERCENT_OFF, amount_off_fen=0, percent=50, category=a.category)
    c = await orders.stub.ClaimCoupon(pb.ClaimCouponRequest(parent="members/me", coupon_template=t.name), metadata=md)
    address = await orders.address(md)
    o = await orders.stub.CreateOrder(pb.CreateOrderRequest(lines=[
        pb.OrderLine(sku=a.skus[0].name, quantity=1), pb.OrderLine(sku=b.skus[0].name, quantity=1)],
        address=_mine(address.name), coupon=_mine(c.name), request_id=rid()), metadata=md)
    assert o.coupon_discount_fen == 500 and o.payable_fen == 2_500
    assert [it.paid_fen for it in o.items] == [500, 2_000]


async def test_limits_and_cancellation_returns_the_coupon(orders, members):
    login, md = await members.login()
    t = await _template(orders, per_member_limit=1, total_quantity=2)
    c = await orders.stub.ClaimCoupon(pb.ClaimCouponRequest(parent="members/me", coupon_template=t.name), metadata=md)
    assert await _reason(orders.stub.ClaimCoupon(pb.ClaimCouponRequest(
        parent="members/me", coupon_template=t.name), metadata=md)) == "COUPON_LIMIT_REACHED"
    other_login, other = await members.login()
    await orders.stub.ClaimCoupon(pb.ClaimCouponRequest(parent="members/me", coupon_template=t.name), metadata=other)
    _, third = await members.login()
    assert await _reason(orders.stub.ClaimCoupon(pb.ClaimCouponRequest(
        parent="members/me", coupon_template=t.name), metadata=third)) == "COUPON_EXHAUSTED"
    product = await orders.product(price_fen=5_000)
    o = await orders.order(md, product.skus[0].name, coupon=_mine(c.name))
    listed = await orders.stub.ListCoupons(pb.ListCouponsRequest(parent="members/me"), metadata=md)
    assert listed.coupons[0].state == pb.COUPON_STATE_USED and listed.coupons[0].order == o.name
    await orders.stub.CancelOrder(pb.CancelOrderRequest(name=o.name), metadata=md)
    listed = await orders.stub.ListCoupons(pb.ListCouponsRequest(parent="members/me"), metadata=md)
    assert listed.coupons[0].state == pb.COUPON_STATE_AVAILABLE and not listed.coupons[0].order
    # Another member can neither name it nor find it as theirs.
    assert await _reason(orders.order(other, product.skus[0].name, coupon=c.name)) == "NOT_OWNER"
    assert await _reason(orders.order(other, product.skus[0].name, coupon=_mine(c.name))) == "COUPON_NOT_FOUND"


async def test_issue_to_a_list_and_by_points_event_and_internal_rpc(orders, members):
    logins = [await members.login() for _ in range(3)]
    t = await _template(orders, claimable=False, per_member_limit=2)
    assert await _reason(orders.stub.ClaimCoupon(pb.ClaimCouponRequest(
        parent="members/me", coupon_template=t.name), metadata=logins[0][1])) == "COUPON_NOT_CLAIMABLE"
    names = [lg.member.name for lg, _ in logins]
    issued = await orders.stub.IssueCoupons(pb.IssueCouponsRequest(coupon_template=t.name, members=names + names[:1]),
                                            metadata=orders.staff_md)
    assert issued.issued_count == 3 and not issued.skipped_members
    # The points mall redeemed a coupon item: the event issues it once, however often it is delivered.
    payload = points_events_pb2.CouponRedeemedEvent(redemption=f"{names[1]}/redemptions/9", member=names[1],
                                                    coupon_template=t.name)
    event = events_pb2.Event(id=str(uuid.uuid4()), type="points.coupon_redeemed", source="points", subject=names[1])
    event.data.Pack(payload)
    first = await deliver(orders.app, event)
    again = await deliver(orders.app, event)
    assert not first.duplicate and again.duplicate
    mid = int(names[1].split("/")[1])
    async with orders.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(Coupon).where(
            Coupon.member_id == mid, Coupon.source == "points"))).scalar() == 1
    # The internal RPC (community drops), idempotent on request_id; members may not call it.
    key = rid()
    req = pb.IssueCouponRequest(member=names[2], coupon_template=t.name, source="community", request_id=key)
    one = await orders.stub.IssueCoupon(req, metadata=orders.service_md)
    assert (await orders.stub.IssueCoupon(req, metadata=orders.service_md)).name == one.name
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await orders.stub.IssueCoupon(req, metadata=logins[2][1])
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
