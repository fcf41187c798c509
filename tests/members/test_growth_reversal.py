"""Growth is taken back on refund (issue 8, class 2): buy, grow into a tier, refund -> the growth
back and the tier downgraded by the tier rules with a history entry; the refund delivered again
-> nothing more. Real orders (paid and refunded through the WeChat Pay simulator) and members on
the tests' NATS."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

from sqlalchemy import select

from mall.events.v1 import events_pb2
from mall.members.v1 import members_service_pb2 as mpb
from mall.orders.v1 import orders_events_pb2 as oev
from mall.orders.v1 import orders_service_pb2 as opb
from tests.fixtures import deliver


async def until(predicate: Callable[[], Awaitable[bool]], within: float = 60.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.05)
    return await predicate()


async def test_refund_takes_the_growth_back_and_downgrades_with_history_once(orders, members, tiers):
    from members.models import OutboxEvents as MembersOutbox
    from orders.models import OutboxEvents as OrdersOutbox

    regular, silver = tiers[0], tiers[1000]
    login, md = await members.login()
    name = login.member.name

    async def member() -> mpb.Member:
        return await members.stub.GetMember(mpb.GetMemberRequest(name=name), metadata=members.service_md)

    assert (await member()).tier == regular.name
    product = await orders.product(price_fen=120_000)
    o = await orders.order(md, product.skus[0].name)
    await orders.pay(md, o)
    grown = o.payable_fen // 100
    assert grown >= 1000

    async def is_(tier: mpb.Tier, growth: int) -> bool:
        m = await member()
        return m.tier == tier.name and m.growth_value == growth

    assert await until(lambda: is_(silver, grown))

    await orders.stub.RequestRefund(opb.RequestRefundRequest(name=o.name, reason="不想要了"), metadata=md)
    done = await orders.stub.ApproveRefund(opb.ApproveRefundRequest(name=o.name), metadata=orders.staff_md)
    assert done.state == opb.ORDER_STATE_REFUNDED
    assert await until(lambda: is_(regular, 0))

    async def changes() -> list[mpb.TierChange]:
        return list((await members.stub.ListTierChanges(mpb.ListTierChangesRequest(parent=name, page_size=100),
                                                        metadata=md)).tier_changes)

    history = await changes()
    assert [(c.from_tier, c.to_tier) for c in history[:2]] == [(silver.name, regular.name), (regular.name, silver.name)]
    assert history[0].growth_value == 0 and history[1].growth_value == grown

    async with members.engine.connect() as conn:
        downgrades = [events_pb2.Event.FromString(p) for p in (await conn.execute(
            select(MembersOutbox.c.payload).where(MembersOutbox.c.event_type == "member.tier_downgraded"))).scalars()]
    announced = []
    for e in downgrades:
        p = mpb.MemberTierDowngradedEvent()
        e.data.Unpack(p)
        if p.member == name:
            announced.append((p.from_tier, p.to_tier, p.source_ref))
    assert announced == [(silver.name, regular.name, o.name)]

    # The refund delivered again (same event: the inbox; same refund under another event id: the
    # purchase fact cannot be refunded beyond what was paid) takes nothing more.
    async with orders.engine.connect() as conn:
        payloads = (await conn.execute(select(OrdersOutbox.c.payload).where(
            OrdersOutbox.c.event_type == "order.refunded"))).scalars().all()
    refunded = None
    for raw in payloads:
        e = events_pb2.Event.FromString(raw)
        p = oev.OrderRefundedEvent()
        e.data.Unpack(p)
        if p.order == o.name:
            refunded = (e, p)
    assert refunded is not None
    assert (await deliver(members.app, refunded[0])).duplicate
    copy = events_pb2.Event(id=str(uuid.uuid4()), type="order.refunded", source="orders")
    copy.data.Pack(refunded[1])
    assert not (await deliver(members.app, copy)).duplicate
    assert await is_(regular, 0) and len(await changes()) == len(history)


async def test_a_partial_take_back_keeps_the_tier_the_rest_still_reaches(members, tiers):
    """Growth from several sources: only what the refunded order gave is taken back, and the tier
    follows the rules (still silver while the growth reaches 1000)."""
    login, _ = await members.login()
    name = login.member.name
    event_ids = []

    def paid(order: str, fen: int) -> events_pb2.Event:
        p = oev.OrderPaidEvent(order=order, member=name, paid_amount_fen=fen)
        p.pay_time.GetCurrentTime()
        e = events_pb2.Event(id=str(uuid.uuid4()), type="order.paid", source="orders")
        e.data.Pack(p)
        event_ids.append(e.id)
        return e

    big, small = f"orders/{uuid.uuid4().int % 10**9}", f"orders/{uuid.uuid4().int % 10**9}"
    await deliver(members.app, paid(big, 110_000))  # growth 1100: silver
    await deliver(members.app, paid(small, 30_000))  # growth 1400
    refund = oev.OrderRefundedEvent(order=small, member=name, refund_amount_fen=30_000)
    e = events_pb2.Event(id=str(uuid.uuid4()), type="order.refunded", source="orders")
    e.data.Pack(refund)
    await deliver(members.app, e)
    m = await members.stub.GetMember(mpb.GetMemberRequest(name=name), metadata=members.service_md)
    assert m.growth_value == 1100 and m.tier == tiers[1000].name
    refund = oev.OrderRefundedEvent(order=big, member=name, refund_amount_fen=110_000)
    e = events_pb2.Event(id=str(uuid.uuid4()), type="order.refunded", source="orders")
    e.data.Pack(refund)
    await deliver(members.app, e)
    m = await members.stub.GetMember(mpb.GetMemberRequest(name=name), metadata=members.service_md)
    assert m.growth_value == 0 and m.tier == tiers[0].name
