"""Composition root: settings -> engine -> sub-domains -> servicer -> server.

Nothing is created at import time; tests build the app with their own
settings (database, ports) and call ``start``/``stop``.
"""

from __future__ import annotations

import functools
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
from mallkit.db import create_engine, ping, session_factory, utcnow
from mallkit.idempotency import Idempotency
from mallkit.outbox import EventSink, GrpcEventDelivery, Outbox, OutboxRelay
from mallkit.pagination import PageTokens
from mallkit.server import ServiceApp, ServiceHost

from . import jobs as _jobs
from .activity import Activities
from .broadcasts import Broadcasts
from .config import CommunitySettings
from .content import Content
from .coupon_drops import CouponDrops
from .directory import MembersDirectory
from .errors import DOMAIN
from .events import HANDLERS
from .groups import Groups
from .memberships import Memberships
from .models import IdempotencyKeys, InboxEvents, OutboxEvents
from .quick_replies import QuickReplies
from .quizzes import Quizzes
from .servicer import CommunityServicer
from .sharing import Sharing

SERVICE_DIR = Path(__file__).resolve().parent.parent  # holds alembic.ini and migrations/


@dataclass
class CommunityApp(ServiceApp):
    settings: CommunitySettings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    host: ServiceHost
    relay: OutboxRelay
    peers: Peers
    outbox: Outbox
    groups: Groups
    memberships: Memberships
    activity: Activities
    content: Content
    sharing: Sharing
    quizzes: Quizzes
    coupon_drops: CouponDrops
    broadcasts: Broadcasts
    quick_replies: QuickReplies
    servicer: CommunityServicer
    clock: Callable[[], datetime] = utcnow
    owns_engine: bool = field(default=True)

    def set_clock(self, clock: Callable[[], datetime]) -> None:
        """Move "now" (tests): what the RPCs and the jobs believe the time is."""
        self.clock = clock
        self.servicer.clock = clock


def domain(settings: CommunitySettings, outbox: Outbox, pages: PageTokens) -> dict:
    """The sub-domain objects of the service, by name (also used by the demo seed)."""
    groups = Groups(pages, default_capacity=settings.default_capacity)
    activity = Activities(pages)
    content = Content(groups, activity, pages)
    return {
        "groups": groups,
        "memberships": Memberships(groups, outbox, pages),
        "activity": activity,
        "content": content,
        "sharing": Sharing(outbox),
        "quizzes": Quizzes(activity, outbox),
        "coupon_drops": CouponDrops(outbox),
        "broadcasts": Broadcasts(groups, pages, brand_timezone=settings.platform.brand_timezone,
                                 daily_cap=settings.broadcast_daily_cap),
        "quick_replies": QuickReplies(pages),
    }


def build(settings: CommunitySettings, engine: AsyncEngine | None = None, *, clock: Callable[[], datetime] = utcnow,
          jobs: bool = True) -> CommunityApp:
    owns_engine = engine is None
    engine = engine or create_engine(settings.database_url, pool_size=settings.db_pool_size)
    sessions = session_factory(engine)
    secret = settings.platform.token_secret.get_secret_value()
    codec = TokenCodec(secret)
    outbox = Outbox(OutboxEvents, "community", settings.event_routes)
    parts = domain(settings, outbox, PageTokens(secret))
    peers = Peers(settings.platform.addr_of, codec=codec, caller="community",
                  timeout=settings.platform.call_timeout_seconds)
    servicer = CommunityServicer(**parts, sessions=sessions, idempotency=Idempotency(sessions, IdempotencyKeys),
                                 directory=MembersDirectory(peers), activity_window_days=settings.activity_window_days,
                                 clock=clock, max_transactions=settings.db_pool_size)
    relay = OutboxRelay(sessions, OutboxEvents, GrpcEventDelivery(peers.channel, settings.platform.call_timeout_seconds),
                        max_backoff=settings.outbox_max_backoff_seconds)

    async def run_relay(stop):
        await relay.run(stop, settings.outbox_poll_seconds)

    host = ServiceHost(
        service="community",
        domain=DOMAIN,
        codec=codec,
        descriptors=[pb.DESCRIPTOR.services_by_name["CommunityService"],
                     events_pb2.DESCRIPTOR.services_by_name["EventSinkService"]],
        host=settings.host,
        port=settings.port,
        readiness=lambda: ping(engine),
        background=[run_relay],
        drain_seconds=settings.drain_seconds,
    )
    app = CommunityApp(settings, engine, sessions, host, relay, peers, outbox, servicer=servicer, clock=clock,
                       owns_engine=owns_engine, **parts)
    if jobs:
        host.background = [run_relay, *_jobs.background(app)]
    host.add(pb_grpc.add_CommunityServiceServicer_to_server, servicer)
    handlers = {kind: (message, functools.partial(handler, app)) for kind, (message, handler) in HANDLERS.items()}
    host.add(events_pb2_grpc.add_EventSinkServiceServicer_to_server, EventSink(sessions, InboxEvents, handlers))
    return app
