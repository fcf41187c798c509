"""Composition root: the platform (mallkit.platform) -> sub-domains -> servicer -> server.

Nothing is created at import time; tests build the app with their own
settings (database, ports) and call ``start``/``stop``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from mall.community.v1 import community_service_pb2 as pb
from mall.community.v1 import community_service_pb2_grpc as pb_grpc
from mallkit.db import utcnow
from mallkit.events import Outbox
from mallkit.pagination import PageTokens
from mallkit.platform import Platform, ServiceApp, Servicer, Tables

from . import events
from . import jobs as _jobs
from .activity import Activities
from .broadcasts import Broadcasts
from .config import CommunitySettings
from .content import Content
from .coupon_drops import CouponDrops
from .directory import MembersDirectory
from .errors import DOMAIN
from .groups import Groups
from .memberships import Memberships
from .models import IdempotencyKeys, InboxEvents, OutboxEvents
from .quick_replies import QuickReplies
from .quizzes import Quizzes
from .servicer import CommunityServicer
from .sharing import Sharing, ViewLog
from .targeting import Targeting

SERVICE_DIR = Path(__file__).resolve().parent.parent  # holds alembic.ini and migrations/
TABLES = Tables(outbox=OutboxEvents, inbox=InboxEvents, idempotency=IdempotencyKeys)


@dataclass
class CommunityApp(ServiceApp):
    platform: Platform
    groups: Groups
    memberships: Memberships
    activity: Activities
    content: Content
    sharing: Sharing
    quizzes: Quizzes
    coupon_drops: CouponDrops
    broadcasts: Broadcasts
    quick_replies: QuickReplies
    clock: Callable[[], datetime] = utcnow
    servicer: CommunityServicer | None = None
    targeting: Targeting | None = None
    view_log: ViewLog | None = None

    @property
    def outbox(self) -> Outbox:
        return self.platform.outbox

    async def close(self) -> None:
        if self.view_log is not None:  # after the batch writers drained (ServiceApp.stop)
            await self.view_log.close()

    def set_clock(self, clock: Callable[[], datetime]) -> None:
        """Move "now" (tests): what the RPCs and the jobs believe the time is."""
        self.clock = clock
        if self.servicer is not None:
            self.servicer.clock = clock


def domain(settings: CommunitySettings, outbox: Outbox, pages: PageTokens) -> dict:
    """The sub-domain objects of the service, by name (also used by the demo seed)."""
    groups = Groups(pages, default_capacity=settings.default_capacity)
    activity = Activities(pages, outbox)
    content = Content(groups, activity, pages, brand_timezone=settings.platform.brand_timezone,
                      cache_seconds=settings.view_cache_seconds)
    return {
        "groups": groups,
        "memberships": Memberships(groups, outbox, pages),
        "activity": activity,
        "content": content,
        "sharing": Sharing(outbox, cache_seconds=settings.view_cache_seconds),
        "quizzes": Quizzes(activity, outbox),
        "coupon_drops": CouponDrops(outbox),
        "broadcasts": Broadcasts(groups, pages, brand_timezone=settings.platform.brand_timezone,
                                 daily_cap=settings.broadcast_daily_cap),
        "quick_replies": QuickReplies(pages),
    }


def build(settings: CommunitySettings, engine: AsyncEngine | None = None, *, clock: Callable[[], datetime] = utcnow,
          jobs: bool = True) -> CommunityApp:
    platform = Platform.create("community", settings, tables=TABLES, engine=engine)
    parts = domain(settings, platform.outbox, platform.tokens)
    app = CommunityApp(platform, clock=clock, **parts)
    app.targeting = Targeting(sessions=platform.sessions, members=platform.members,
                              brand_timezone=settings.platform.brand_timezone, daily_cap=settings.broadcast_daily_cap,
                              page_size=settings.broadcast_page_size,
                              lease=timedelta(seconds=settings.broadcast_lease_seconds),
                              reach_concurrency=settings.broadcast_reach_concurrency)
    app.view_log = ViewLog(platform.engine, platform.sessions, parts["sharing"])
    views = platform.batch_writer("views", app.view_log, max_rows=settings.view_batch_rows,
                                  max_delay=settings.view_batch_delay_seconds, max_queue=settings.view_queue_size)
    app.servicer = CommunityServicer(**parts, sessions=platform.sessions, idempotency=platform.idempotency,
                                     views=views, view_ack_commit=settings.view_ack == "commit",
                                     view_cache_seconds=settings.view_cache_seconds,
                                     directory=MembersDirectory(platform.members),
                                     activity_window_days=settings.activity_window_days, clock=clock)
    platform.serve(app, domain=DOMAIN, handlers=events.HANDLERS, jobs=_jobs.schedule(app) if jobs else (),
                   servicers=[Servicer(pb.DESCRIPTOR.services_by_name["CommunityService"],
                                       pb_grpc.add_CommunityServiceServicer_to_server, app.servicer)])
    return app
