"""Composition root: settings -> engine -> sub-domains -> servicer -> server.

Nothing is created at import time; tests build the app with their own
settings (database, ports) and call ``start``/``stop``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from mall.events.v1 import events_pb2, events_pb2_grpc
from mall.members.v1 import members_service_pb2 as pb
from mall.members.v1 import members_service_pb2_grpc as pb_grpc
from mallkit.auth import TokenCodec
from mallkit.clients import Peers
from mallkit.db import create_engine, ping, session_factory
from mallkit.idempotency import Idempotency
from mallkit.outbox import EventSink, GrpcEventDelivery, Outbox, OutboxRelay
from mallkit.pagination import PageTokens
from mallkit.server import ServiceApp, ServiceHost

from . import jobs
from .channels import Channels
from .config import MembersSettings
from .errors import DOMAIN
from .events import HANDLERS
from .identity import Identity
from .models import IdempotencyKeys, InboxEvents, OutboxEvents
from .portrait import Portrait
from .purchases import Purchases
from .reach import Reach
from .servicer import MembersServicer
from .staff import Staffing
from .tags import Tags
from .tiers import Tiers
from .wechat import WechatClient

SERVICE_DIR = Path(__file__).resolve().parent.parent  # holds alembic.ini and migrations/


@dataclass
class MembersApp(ServiceApp):
    settings: MembersSettings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    host: ServiceHost
    relay: OutboxRelay
    wechat: WechatClient
    peers: Peers
    identity: Identity
    portrait: Portrait
    channels: Channels
    tiers: Tiers
    tags: Tags
    staffing: Staffing
    reach: Reach
    purchases: Purchases
    owns_engine: bool = field(default=True)

    async def close(self) -> None:
        await self.wechat.close()


def domain(settings: MembersSettings, outbox: Outbox, pages: PageTokens, wechat: WechatClient | None = None,
           sessions: async_sessionmaker[AsyncSession] | None = None) -> dict:
    """The sub-domain objects of the service, by name (also used by the demo seed, without WeChat)."""
    portrait = Portrait(pages)
    staffing = Staffing(pages)
    tags = Tags(portrait, pages)
    tiers = Tiers(portrait, outbox, pages)
    channels = Channels(portrait, tags, staffing, pages)
    return {
        "identity": Identity(portrait, tiers, channels, outbox, wechat, sessions),
        "portrait": portrait,
        "channels": channels,
        "tiers": tiers,
        "tags": tags,
        "staffing": staffing,
        "reach": Reach(portrait, wechat, pages, brand_timezone=settings.platform.brand_timezone,  # type: ignore[arg-type]
                       daily_cap=settings.reach_daily_cap),
        "purchases": Purchases(portrait, tiers),
    }


def build(settings: MembersSettings, engine: AsyncEngine | None = None) -> MembersApp:
    owns_engine = engine is None
    engine = engine or create_engine(settings.database_url, pool_size=settings.db_pool_size)
    sessions = session_factory(engine)
    secret = settings.platform.token_secret.get_secret_value()
    codec = TokenCodec(secret)
    wechat = WechatClient(settings.wechat_base_url, settings.wechat_appid, settings.wechat_secret.get_secret_value(),
                          timeout=settings.wechat_timeout_seconds)
    outbox = Outbox(OutboxEvents, "members", settings.event_routes)
    parts = domain(settings, outbox, PageTokens(secret), wechat, sessions)
    servicer = MembersServicer(**{k: v for k, v in parts.items() if k != "purchases"}, sessions=sessions,
                               idempotency=Idempotency(sessions, IdempotencyKeys), codec=codec, wechat=wechat)
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
    )
    app = MembersApp(settings, engine, sessions, host, relay, wechat, peers, owns_engine=owns_engine, **parts)
    host.background = [run_relay, *jobs.background(app)]
    host.add(pb_grpc.add_MembersServiceServicer_to_server, servicer)
    handlers = {kind: (message, functools.partial(handler, app)) for kind, (message, handler) in HANDLERS.items()}
    host.add(events_pb2_grpc.add_EventSinkServiceServicer_to_server, EventSink(sessions, InboxEvents, handlers))
    return app
