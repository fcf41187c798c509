"""Members' events on the stream: a consumer that was down (or did not exist yet) still gets
each event, and applies it once."""

from __future__ import annotations

import asyncio
import os
import uuid

from sqlalchemy import func, select

from mall.members.v1 import members_service_pb2 as pb
from mallkit.db import create_engine, new_metadata, session_factory
from mallkit.events import Consumer, EventBus, Subscription, define_tables
from members.models import OutboxEvents


async def test_an_event_reaches_a_consumer_that_starts_later_and_is_applied_once(members, tmp_root):
    inviter, _ = await members.login()
    invitee, _ = await members.login(invite_code=inviter.member.invite_code)

    async def published():
        async with members.engine.connect() as conn:
            return (await conn.execute(select(OutboxEvents.c.published_time).where(
                OutboxEvents.c.event_type == "member.referred").order_by(OutboxEvents.c.id.desc()).limit(1))).scalar()

    for _ in range(1200):  # published by the relay only after the server's ack
        if await published() is not None:
            break
        await asyncio.sleep(0.05)
    assert await published() is not None

    # A consumer that did not exist when the event was published (a new service, or one
    # that was down): a new durable consumer starts from the beginning of the stream.
    metadata = new_metadata()
    _, inbox = define_tables(metadata)
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_root / f'standin-{uuid.uuid4().hex[:6]}.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    applied: list[str] = []

    async def on_referred(session, event, payload):
        applied.append(payload.invitee)

    sub = Subscription(f"standin{uuid.uuid4().hex[:8]}", {"member.referred": (pb.MemberReferredEvent, on_referred)})
    bus = EventBus(os.environ["MALL_NATS_URL"], "standin")
    consumer = Consumer(session_factory(engine), inbox, "points", sub, bus)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        for _ in range(1200):
            if invitee.member.name in applied:
                break
            await asyncio.sleep(0.05)
        assert applied.count(invitee.member.name) == 1
        # The same event applied again (a redelivery after a crash before the ack): no second effect.
        async with members.engine.connect() as conn:
            payload = (await conn.execute(select(OutboxEvents.c.payload).where(
                OutboxEvents.c.event_type == "member.referred").order_by(OutboxEvents.c.id.desc()).limit(1))).scalar()
        from mall.events.v1 import events_pb2

        assert await consumer.deliver(events_pb2.Event.FromString(payload)) is True
        assert applied.count(invitee.member.name) == 1
        async with engine.connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(inbox))).scalar() >= 1
    finally:
        stop.set()
        await task
        await bus.close()
        await engine.dispose()
