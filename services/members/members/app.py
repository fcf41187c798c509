"""Composition root: settings -> engine -> service -> servicer -> server.

Nothing is created at import time; tests build the app with their own
settings (database, ports) and call ``start``/``stop``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from mall.events.v1 import events_pb2, events_pb2_grpc
from mall.members.v1 import members_service_pb2 as pb
from mall.members.v1 import members_service_pb2_grpc as pb_grpc
from mall.orders.v1 import orders_events_pb2
from mallkit.auth import TokenCodec
from mallkit.clients import Peers
from mallkit.db import create_engine, ping, session_factory
from mallkit.idempotency import Idempotency
from mallkit.outbox import EventSink, GrpcEventDelivery, Outbox, OutboxRelay
from mallkit.pagination import PageTokens
from mallkit.principals import PrincipalCheck, guarded
from mallkit.server import ServiceApp, ServiceHost

from . import principals, purchases
from .config import MembersSettings
from .errors import DOMAIN
from .models import IdempotencyKeys, InboxEvents, OutboxEvents
from .service import MembersService
from .servicer import MembersServicer
from .wechat import WechatClient

SERVICE_DIR = Path(__file__).resolve().parent.parent  # holds alembic.ini and migrations/

#: Events this service consumes: type -> (payload message, handler(service, session, event, payload)).
EVENT_HANDLERS: dict = {
    "order.paid": (orders_events_pb2.OrderPaidEvent, purchases.on_order_paid),
    "order.refunded": (orders_events_pb2.OrderRefundedEvent, purchases.on_order_refunded),
}


@dataclass
class MembersApp(ServiceApp):
    settings: MembersSettings
    engine: AsyncEngine
    host: ServiceHost
    relay: OutboxRelay
    wechat: WechatClient
    peers: Peers
    service: MembersService
    owns_engine: bool = field(default=True)

    async def close(self) -> None:
        await self.wechat.close()


def build(settings: MembersSettings, engine: AsyncEngine | None = None) -> MembersApp:
    owns_engine = engine is None
    engine = engine or create_engine(settings.database_url, pool_size=settings.db_pool_size)
    sessions = session_factory(engine)
    secret = settings.platform.token_secret.get_secret_value()
    codec = TokenCodec(secret)
    wechat = WechatClient(settings.wechat_base_url, settings.wechat_appid, settings.wechat_secret.get_secret_value(),
                          timeout=settings.wechat_timeout_seconds)
    outbox = Outbox(OutboxEvents, "members", settings.event_routes)
    service = MembersService(wechat=wechat, outbox=outbox, brand_timezone=settings.platform.brand_timezone,
                             reach_daily_cap=settings.reach_daily_cap)
    servicer = MembersServicer(service, sessions, Idempotency(sessions, IdempotencyKeys), codec, PageTokens(secret), wechat)
    peers = Peers(settings.platform.addr_of, codec=codec, caller="members", timeout=settings.platform.call_timeout_seconds)
    relay = OutboxRelay(sessions, OutboxEvents, GrpcEventDelivery(peers.channel, settings.platform.call_timeout_seconds),
                        max_backoff=settings.outbox_max_backoff_seconds)

    async def run_relay(stop):
        await relay.run(stop, settings.outbox_poll_seconds)

    host = ServiceHost(
        service="members",
        domain=DOMAIN,
        codec=codec,
        descriptors=[pb.DESCRIPTOR.services_by_name["MembersService"],
                     events_pb2.DESCRIPTOR.services_by_name["EventSinkService"]],
        host=settings.host,
        port=settings.port,
        readiness=lambda: ping(engine),
        background=[run_relay],
        drain_seconds=settings.drain_seconds,
        principals=PrincipalCheck(guarded(principals.lookup(sessions)), ttl=settings.platform.principal_cache_seconds),
    )
    host.add(pb_grpc.add_MembersServiceServicer_to_server, servicer)
    handlers = {t: (p, functools.partial(h, service)) for t, (p, h) in EVENT_HANDLERS.items()}
    host.add(events_pb2_grpc.add_EventSinkServiceServicer_to_server, EventSink(sessions, InboxEvents, handlers))
    return MembersApp(settings, engine, host, relay, wechat, peers, service, owns_engine)
