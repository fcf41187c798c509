"""Composition root: settings -> engine -> service -> servicer -> server.

Nothing is created at import time; tests build the app with their own
settings (database, ports) and call ``start``/``stop``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from mall.community.v1 import community_service_pb2 as pb
from mall.community.v1 import community_service_pb2_grpc as pb_grpc
from mall.events.v1 import events_pb2, events_pb2_grpc
from mallkit.auth import TokenCodec
from mallkit.clients import Peers
from mallkit.db import create_engine, ping, run_transaction, session_factory, utcnow
from mallkit.idempotency import Idempotency
from mallkit.jobs import periodic
from mallkit.outbox import EventSink, GrpcEventDelivery, Outbox, OutboxRelay
from mallkit.pagination import PageTokens
from mallkit.principals import PrincipalCheck, members_lookup
from mallkit.server import ServiceApp, ServiceHost

from .config import CommunitySettings
from .directory import MembersDirectory
from .errors import DOMAIN
from .models import IdempotencyKeys, InboxEvents, OutboxEvents
from .service import CommunityService
from .servicer import CommunityServicer

SERVICE_DIR = Path(__file__).resolve().parent.parent  # holds alembic.ini and migrations/

#: Events this service consumes: type -> (payload message, handler). None yet.
EVENT_HANDLERS: dict = {}


@dataclass
class CommunityApp(ServiceApp):
    settings: CommunitySettings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    host: ServiceHost
    relay: OutboxRelay
    peers: Peers
    service: CommunityService
    servicer: CommunityServicer
    owns_engine: bool = field(default=True)

    def set_clock(self, clock: Callable[[], datetime]) -> None:
        """Move "now" (tests): what the RPCs and the jobs believe the time is."""
        self.servicer.clock = clock

    async def publish_due_posts(self) -> list[int]:
        """One pass of the scheduled-publishing job; returns the posts this replica published."""
        now = self.servicer.clock()
        return await run_transaction(self.sessions, lambda s: self.service.publish_due(s, now))

    async def close_ended_groups(self) -> int:
        now = self.servicer.clock()
        return await run_transaction(self.sessions, lambda s: self.service.close_ended_groups(s, now))


def build(settings: CommunitySettings, engine: AsyncEngine | None = None, *, clock: Callable[[], datetime] = utcnow,
          jobs: bool = True) -> CommunityApp:
    owns_engine = engine is None
    engine = engine or create_engine(settings.database_url, pool_size=settings.db_pool_size)
    sessions = session_factory(engine)
    secret = settings.platform.token_secret.get_secret_value()
    codec = TokenCodec(secret)
    outbox = Outbox(OutboxEvents, "community", settings.event_routes)
    service = CommunityService(outbox=outbox, brand_timezone=settings.platform.brand_timezone,
                               default_capacity=settings.default_capacity,
                               broadcast_daily_cap=settings.broadcast_daily_cap)
    peers = Peers(settings.platform.addr_of, codec=codec, caller="community",
                  timeout=settings.platform.call_timeout_seconds)
    servicer = CommunityServicer(service, sessions, Idempotency(sessions, IdempotencyKeys), PageTokens(secret),
                                 MembersDirectory(peers), activity_window_days=settings.activity_window_days,
                                 clock=clock, max_transactions=settings.db_pool_size)
    relay = OutboxRelay(sessions, OutboxEvents, GrpcEventDelivery(peers.channel, settings.platform.call_timeout_seconds),
                        max_backoff=settings.outbox_max_backoff_seconds)

    async def run_relay(stop):
        await relay.run(stop, settings.outbox_poll_seconds)

    background = [run_relay]
    host = ServiceHost(
        service="community",
        domain=DOMAIN,
        codec=codec,
        descriptors=[pb.DESCRIPTOR.services_by_name["CommunityService"],
                     events_pb2.DESCRIPTOR.services_by_name["EventSinkService"]],
        host=settings.host,
        port=settings.port,
        readiness=lambda: ping(engine),
        background=background,
        drain_seconds=settings.drain_seconds,
        principals=PrincipalCheck(members_lookup(lambda: peers.channel("members"), settings.platform.call_timeout_seconds),
                                  ttl=settings.platform.principal_cache_seconds),
    )
    app = CommunityApp(settings, engine, sessions, host, relay, peers, service, servicer, owns_engine)
    if jobs:
        background.append(periodic("publish_due_posts", settings.publish_interval_seconds, app.publish_due_posts))
        background.append(periodic("close_ended_groups", settings.close_interval_seconds, app.close_ended_groups))
    host.background = background
    host.add(pb_grpc.add_CommunityServiceServicer_to_server, servicer)
    host.add(events_pb2_grpc.add_EventSinkServiceServicer_to_server, EventSink(sessions, InboxEvents, EVENT_HANDLERS))
    return app
