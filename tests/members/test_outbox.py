"""The outbox: an event survives its subscriber being down and is applied once after it returns."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select

from mall.events.v1 import events_pb2, events_pb2_grpc
from mall.members.v1 import members_service_pb2 as pb
from mallkit.auth import TokenCodec
from mallkit.db import create_engine, new_metadata, session_factory
from mallkit.outbox import EventSink, define_tables
from mallkit.server import ServiceHost
from members.models import OutboxEvents


class PointsStandIn:
    """A consumer built like a real service: EventSink on its own database, real gRPC server."""

    def __init__(self, url: str, port: int, secret: str):
        self.metadata = new_metadata()
        _, self.inbox = define_tables(self.metadata)
        self.url = url
        self.port = port
        self.secret = secret
        self.applied: list[str] = []

    async def start(self):
        self.engine = create_engine(self.url)
        async with self.engine.begin() as conn:
            await conn.run_sync(self.metadata.create_all)

        async def on_referred(session, event, payload):
            self.applied.append(payload.invitee)

        sink = EventSink(session_factory(self.engine), self.inbox, {"member.referred": (pb.MemberReferredEvent, on_referred)})
        self.host = ServiceHost(service="points", domain="points.mall", codec=TokenCodec(self.secret),
                                descriptors=[events_pb2.DESCRIPTOR.services_by_name["EventSinkService"]], port=self.port)
        self.host.add(events_pb2_grpc.add_EventSinkServiceServicer_to_server, sink)
        await self.host.start()

    async def stop(self):
        await self.host.stop(0)
        await self.engine.dispose()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_event_survives_subscriber_down_and_is_applied_exactly_once(members, tmp_root):
    port = _free_port()
    settings = members.app.settings
    saved = settings.platform.points_addr
    settings.platform.points_addr = f"127.0.0.1:{port}"  # the relay's channel opens lazily, after this
    await members.app.peers.close()
    inviter, _ = await members.login()
    invitee, _ = await members.login(invite_code=inviter.member.invite_code)

    async def state():
        async with members.engine.connect() as conn:
            row = (await conn.execute(
                select(OutboxEvents.c.attempts, OutboxEvents.c.delivered_time).where(
                    OutboxEvents.c.event_type == "member.referred").order_by(OutboxEvents.c.id.desc()).limit(1))).one()
        return row

    for _ in range(600):  # the subscriber is down: the relay fails and schedules retries
        attempts, delivered = await state()
        if attempts >= 1:
            break
        await asyncio.sleep(0.05)
    assert attempts >= 1 and delivered is None

    consumer = PointsStandIn(f"sqlite+aiosqlite:///{tmp_root / 'points-standin.db'}", port,
                             settings.platform.token_secret.get_secret_value())
    await consumer.start()
    try:
        for _ in range(1200):
            if (await state())[1] is not None:
                break
            await asyncio.sleep(0.05)
        assert (await state())[1] is not None
        assert consumer.applied.count(invitee.member.name) == 1
        # A redelivery of the same event (relay crashed before marking it) has no second effect.
        async with members.engine.connect() as conn:
            payload = (await conn.execute(select(OutboxEvents.c.payload).where(
                OutboxEvents.c.event_type == "member.referred").order_by(OutboxEvents.c.id.desc()).limit(1))).scalar()
        stub = events_pb2_grpc.EventSinkServiceStub(members.app.peers.channel("points"))
        again = await stub.DeliverEvent(events_pb2.DeliverEventRequest(event=events_pb2.Event.FromString(payload)))
        assert again.duplicate and consumer.applied.count(invitee.member.name) == 1
        async with consumer.engine.connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(consumer.inbox))).scalar() >= 1
    finally:
        await consumer.stop()
        settings.platform.points_addr = saved
        await members.app.peers.close()
