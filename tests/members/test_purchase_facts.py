"""Purchase facts from the orders service: growth value once per paid order, RFM aggregates, refunds."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from mall.events.v1 import events_pb2
from mall.members.v1 import members_service_pb2 as pb
from mall.orders.v1 import orders_events_pb2 as oev
from members.models import MemberPurchase, MemberPurchaseCategory, MemberPurchaseStats
from tests.fixtures import deliver


def _event(event_type: str, payload, subject: str) -> events_pb2.Event:
    e = events_pb2.Event(id=str(uuid.uuid4()), type=event_type, source="orders", subject=subject)
    e.time.GetCurrentTime()
    e.data.Pack(payload)
    return e


def _paid(member: str, order: str, fen: int, when: datetime, items) -> events_pb2.Event:
    p = oev.OrderPaidEvent(order=order, member=member, paid_amount_fen=fen, items=items)
    p.pay_time.FromDatetime(when)
    return _event("order.paid", p, order)


async def _deliver(members, event):
    return await deliver(members.app, event)


async def test_paid_orders_add_growth_once_and_record_rfm_facts(members):
    login, _ = await members.login()
    name = login.member.name
    mid = int(name.split("/")[1])
    t0 = datetime(2026, 1, 5, 8, tzinfo=UTC)
    first = _paid(name, f"orders/{uuid.uuid4().int % 10**9}", 12_345, t0, [
        oev.PurchasedItem(product="products/1", sku="products/1/skus/1", category="categories/1", quantity=1,
                          amount_fen=10_000),
        oev.PurchasedItem(product="products/2", sku="products/2/skus/3", category="categories/2", quantity=1,
                          amount_fen=2_345)])
    assert not (await _deliver(members, first)).duplicate
    assert (await _deliver(members, first)).duplicate  # redelivered: no second effect
    second = _paid(name, f"orders/{uuid.uuid4().int % 10**9}", 5_050, t0 + timedelta(days=9), [
        oev.PurchasedItem(product="products/1", sku="products/1/skus/1", category="categories/1", quantity=1,
                          amount_fen=5_050)])
    await _deliver(members, second)
    me = await members.stub.GetMember(pb.GetMemberRequest(name=name), metadata=members.service_md)
    assert me.growth_value == 123 + 50  # one growth point per paid yuan, each order once
    async with members.engine.connect() as conn:
        stats = (await conn.execute(select(MemberPurchaseStats).where(MemberPurchaseStats.member_id == mid))).one()
        cats = dict((await conn.execute(select(MemberPurchaseCategory.category, MemberPurchaseCategory.amount_fen)
                                        .where(MemberPurchaseCategory.member_id == mid))).all())
    assert stats.order_count == 2 and stats.total_paid_fen == 17_395
    assert stats.first_order_time == t0 and stats.last_order_time == t0 + timedelta(days=9)
    assert cats == {"categories/1": 15_050, "categories/2": 2_345}


async def test_refund_is_recorded_against_the_purchase(members):
    login, _ = await members.login()
    name = login.member.name
    order = f"orders/{uuid.uuid4().int % 10**9}"
    await _deliver(members, _paid(name, order, 9_900, datetime.now(UTC), [
        oev.PurchasedItem(product="products/1", sku="products/1/skus/1", category="categories/1", quantity=1,
                          amount_fen=9_900)]))
    refund = oev.OrderRefundedEvent(order=order, member=name, refund_amount_fen=9_900)
    refund.refund_time.GetCurrentTime()
    event = _event("order.refunded", refund, order)
    await _deliver(members, event)
    assert (await _deliver(members, event)).duplicate
    async with members.engine.connect() as conn:
        row = (await conn.execute(select(MemberPurchase).where(MemberPurchase.order == order))).one()
        stats = (await conn.execute(select(MemberPurchaseStats).where(
            MemberPurchaseStats.member_id == int(name.split("/")[1])))).one()
    assert row.refunded_fen == 9_900 and row.refund_time is not None
    assert stats.refund_count == 1 and stats.total_refunded_fen == 9_900 and stats.order_count == 1
