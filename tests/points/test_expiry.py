"""Expiry by lots: the oldest lots go first, newer ones stay; the reminder goes out once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from mall.members.v1 import members_service_pb2 as mpb
from mall.points.v1 import points_service_pb2 as pb
from points import jobs
from points.models import Entry, Lot, ReachRequest
from tests.fixtures.points import fresh_member_id, rid


async def test_expiry_takes_the_oldest_lots_first_and_leaves_newer_ones(points):
    member = fresh_member_id()
    t0 = datetime(2031, 1, 10, 4, 0, tzinfo=UTC)
    days = points.app.settings.expiry_days
    for offset, amount in [(0, 100), (30, 50), (200, 70)]:
        with points.clock(t0 + timedelta(days=offset)):
            await points.grant(member, amount)
    item = await points.create_item(points_price=40, stock=100)
    with points.clock(t0 + timedelta(days=201)):
        await points.stub.RedeemItem(pb.RedeemItemRequest(name=item.name, request_id=rid()),
                                     metadata=points.member_md(member))  # spends 40 from the oldest lot
    # One day after the first lot's expiry: only the first lot (60 left of 100) expires.
    with points.clock(t0 + timedelta(days=days + 1)):
        assert await jobs.expire(points.app) >= 60
        account = await points.account(member)
        assert account.available_points == 50 + 70
        assert await jobs.expire(points.app) == 0  # a second pass (another replica) finds nothing for us
    async with points.engine.connect() as conn:
        lots = (await conn.execute(select(Lot.amount, Lot.remaining, Lot.expired).where(Lot.member_id == member)
                                   .order_by(Lot.id))).all()
        assert [tuple(r) for r in lots] == [(100, 0, True), (50, 50, False), (70, 70, False)]
        expired = (await conn.execute(select(Entry.available_delta).where(
            Entry.member_id == member, Entry.kind == pb.ENTRY_KIND_EXPIRE))).scalars().all()
        assert expired == [-60]
    # After the second lot's expiry as well, the newest one still stands.
    with points.clock(t0 + timedelta(days=days + 31)):
        await asyncio.gather(jobs.expire(points.app), jobs.expire(points.app))  # two replicas at once
        assert (await points.account(member)).available_points == 70
    await points.check()


async def test_cancelled_redemption_returns_points_to_their_lots_and_expired_ones_expire_at_once(points):
    member = fresh_member_id()
    t0 = datetime(2032, 2, 1, 4, 0, tzinfo=UTC)
    with points.clock(t0):
        await points.grant(member, 30)
    with points.clock(t0 + timedelta(days=100)):
        await points.grant(member, 30)
    item = await points.create_item(points_price=50, stock=5, kind=pb.ITEM_KIND_PHYSICAL)
    address = pb.ShippingAddress(recipient="李四", phone="13900139000", province="上海市", city="上海市", detail="1 号")
    with points.clock(t0 + timedelta(days=101)):
        r = await points.stub.RedeemItem(pb.RedeemItemRequest(name=item.name, shipping_address=address,
                                                              request_id=rid()), metadata=points.member_md(member))
    with points.clock(t0 + timedelta(days=points.app.settings.expiry_days + 1)):
        await jobs.expire(points.app)  # the first lot (0 left) is marked expired
        await points.stub.CancelRedemption(pb.CancelRedemptionRequest(name=r.name, request_id=rid()),
                                           metadata=points.member_md(member))
        account = await points.account(member)
    assert account.available_points == 30  # the 30 from the expired lot expired again at once; 20 + 10 came back
    await points.check()


async def test_the_expiry_reminder_goes_out_once(points, members):
    login, _ = await members.login()
    member = int(login.member.name.split("/")[1])
    t0 = datetime(2033, 3, 1, 4, 0, tzinfo=UTC)
    settings = points.app.settings
    with points.clock(t0):
        await points.grant(member, 80)
    with points.clock(t0 + timedelta(days=100)):
        await points.grant(member, 20)
    soon = t0 + timedelta(days=settings.expiry_days - settings.expiry_reminder_days + 1)
    with points.clock(soon):
        account = await points.account(member)
        assert account.expiring_soon_points == 80 and account.next_expire_time.ToDatetime(tzinfo=UTC) == (
            t0 + timedelta(days=settings.expiry_days))
        results = await asyncio.gather(*[jobs.remind(points.app) for _ in range(3)])  # three replicas
        assert await jobs.remind(points.app) == 0
    assert sum(results) >= 1
    async with points.engine.connect() as conn:
        queued = (await conn.execute(select(func.count()).select_from(ReachRequest).where(
            ReachRequest.member_id == member, ReachRequest.purpose == "points.expiry_reminder"))).scalar_one()
    assert queued == 1
    await asyncio.gather(jobs.send_reaches(points.app), jobs.send_reaches(points.app))
    await jobs.send_reaches(points.app)
    touches = await members.stub.ListTouches(mpb.ListTouchesRequest(parent=login.member.name),
                                             metadata=members.service_md)
    reminders = [t for t in touches.touches if t.purpose == "points.expiry_reminder"]
    assert len(reminders) == 1 and reminders[0].template_id == settings.reach_template_expiring
