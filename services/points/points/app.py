"""Composition root: settings -> engine -> sub-domains -> servicer -> server.

Nothing is created at import time; tests build the app with their own
settings (database, ports, peers) and call ``start``/``stop``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from mall.events.v1 import events_pb2, events_pb2_grpc
from mall.points.v1 import points_service_pb2 as pb
from mall.points.v1 import points_service_pb2_grpc as pb_grpc
from mallkit.auth import TokenCodec
from mallkit.clients import Peers
from mallkit.db import create_engine, ping, session_factory
from mallkit.idempotency import Idempotency
from mallkit.outbox import EventSink, GrpcEventDelivery, Outbox, OutboxRelay
from mallkit.pagination import PageTokens
from mallkit.server import ServiceApp, ServiceHost

from . import jobs
from .check_in import CheckIns
from .config import PointsSettings
from .errors import DOMAIN
from .events import HANDLERS
from .expiry import Expiry
from .ledger import Ledger
from .mall import Mall
from .members_client import MembersClient
from .models import IdempotencyKeys, InboxEvents, OutboxEvents
from .purchases import Purchases
from .reach import Reach
from .servicer import PointsServicer
from .statements import Statements
from .tasks import Tasks

SERVICE_DIR = Path(__file__).resolve().parent.parent  # holds alembic.ini and migrations/


@dataclass
class PointsApp(ServiceApp):
    settings: PointsSettings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    host: ServiceHost
    relay: OutboxRelay
    peers: Peers
    members: MembersClient
    ledger: Ledger
    statements: Statements
    check_ins: CheckIns
    tasks: Tasks
    mall: Mall
    purchases: Purchases
    expiry: Expiry
    reach: Reach
    owns_engine: bool = field(default=True)

    def set_clock(self, clock: Callable[[], datetime]) -> None:
        """Move "now" (tests): what the use cases and the jobs believe the time is."""
        self.ledger.clock = clock


def domain(settings: PointsSettings, outbox: Outbox, pages: PageTokens) -> dict:
    """The sub-domain objects of the service, by name (also used by the demo seed)."""
    ledger = Ledger(brand_timezone=settings.platform.brand_timezone, expiry_policy=settings.expiry_policy,
                    expiry_days=settings.expiry_days)
    reach = Reach()
    return {
        "ledger": ledger,
        "statements": Statements(ledger, pages, reminder_days=settings.expiry_reminder_days),
        "check_ins": CheckIns(ledger, points=settings.check_in_points, streak_cycle=settings.check_in_streak_cycle,
                              streak_bonuses=settings.check_in_streak_bonuses),
        "tasks": Tasks(ledger, pages),
        "mall": Mall(ledger, outbox, pages),
        "purchases": Purchases(ledger, reach, points_per_yuan=settings.purchase_points_per_yuan,
                               reach_template=settings.reach_template_available),
        "expiry": Expiry(ledger, reach, reminder_days=settings.expiry_reminder_days,
                         reach_template=settings.reach_template_expiring),
        "reach": reach,
    }


def build(settings: PointsSettings, engine: AsyncEngine | None = None, *, background: bool = True) -> PointsApp:
    owns_engine = engine is None
    engine = engine or create_engine(settings.database_url, pool_size=settings.db_pool_size)
    sessions = session_factory(engine)
    secret = settings.platform.token_secret.get_secret_value()
    codec = TokenCodec(secret)
    peers = Peers(settings.platform.addr_of, codec=codec, caller="points", timeout=settings.platform.call_timeout_seconds)
    members = MembersClient(lambda: peers.channel("members"), settings.tier_cache_seconds)
    parts = domain(settings, Outbox(OutboxEvents, "points", settings.event_routes), PageTokens(secret))
    servicer = PointsServicer(ledger=parts["ledger"], statements=parts["statements"], check_ins=parts["check_ins"],
                              tasks=parts["tasks"], mall=parts["mall"], purchases=parts["purchases"], members=members,
                              sessions=sessions, idempotency=Idempotency(sessions, IdempotencyKeys))
    relay = OutboxRelay(sessions, OutboxEvents, GrpcEventDelivery(peers.channel, settings.platform.call_timeout_seconds),
                        max_backoff=settings.outbox_max_backoff_seconds)

    async def run_relay(stop):
        await relay.run(stop, settings.outbox_poll_seconds)

    host = ServiceHost(
        service="points",
        domain=DOMAIN,
        codec=codec,
        descriptors=[pb.DESCRIPTOR.services_by_name["PointsService"],
                     events_pb2.DESCRIPTOR.services_by_name["EventSinkService"]],
        host=settings.host,
        port=settings.port,
        readiness=lambda: ping(engine),
        background=[],
        drain_seconds=settings.drain_seconds,
    )
    app = PointsApp(settings, engine, sessions, host, relay, peers, members, owns_engine=owns_engine, **parts)
    if background:
        host.background = [run_relay, *jobs.background(app)]
    host.add(pb_grpc.add_PointsServiceServicer_to_server, servicer)
    handlers = {kind: (message, functools.partial(handler, app)) for kind, (message, handler) in HANDLERS.items()}
    host.add(events_pb2_grpc.add_EventSinkServiceServicer_to_server, EventSink(sessions, InboxEvents, handlers))
    return app
