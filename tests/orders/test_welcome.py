"""Welcome coupon: members' member.registered event reaches orders through the stream, and issues once."""

from __future__ import annotations

import asyncio

from mall.events.v1 import events_pb2
from mall.members.v1 import members_service_pb2 as mpb
from mall.orders.v1 import orders_service_pb2 as pb
from tests.fixtures import deliver


async def test_registration_issues_the_welcome_coupon_once(orders, members):
    template = await orders.stub.CreateCouponTemplate(pb.CreateCouponTemplateRequest(coupon_template=pb.CouponTemplate(
        display_name="新人券", kind=pb.COUPON_KIND_AMOUNT_OFF, amount_off_fen=500, valid_days=7, per_member_limit=1,
        total_quantity=100_000, welcome=True)), metadata=orders.staff_md)
    login, _ = await members.login()
    member_id = int(login.member.name.split("/")[1])

    async def welcome_coupons():
        listed = await orders.stub.ListCoupons(pb.ListCouponsRequest(parent=login.member.name, page_size=100),
                                               metadata=orders.staff_md)
        return [c for c in listed.coupons if c.coupon_template == template.name]

    for _ in range(200):
        if await welcome_coupons():
            break
        await asyncio.sleep(0.05)
    assert len(await welcome_coupons()) == 1

    # The same event delivered again (a consumer that crashed before its ack) issues nothing more.
    again = mpb.MemberRegisteredEvent(member=login.member.name)
    from sqlalchemy import select

    from members.models import OutboxEvents

    async with members.engine.connect() as conn:
        payloads = (await conn.execute(select(OutboxEvents.c.payload).where(
            OutboxEvents.c.event_type == "member.registered"))).scalars().all()
    event = next(e for e in map(events_pb2.Event.FromString, payloads)
                 if e.data.Unpack(again) and again.member == f"members/{member_id}")
    reply = await deliver(orders.app, event)
    assert reply.duplicate and len(await welcome_coupons()) == 1
