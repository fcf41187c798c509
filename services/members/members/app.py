"""Composition root: the platform (mallkit.platform) -> sub-domains -> servicer -> server.

Nothing is created at import time; tests build the app with their own
settings (database, ports) and call ``start``/``stop``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from mall.members.v1 import members_service_pb2 as pb
from mall.members.v1 import members_service_pb2_grpc as pb_grpc
from mallkit.clients import Peers
from mallkit.events import Outbox
from mallkit.pagination import PageTokens
from mallkit.platform import Platform, ServiceApp, Servicer, Tables
from mallkit.principals import guarded

from . import events, jobs, principals
from .autotags import AutoTags
from .behaviour import Behaviour
from .channels import Channels
from .config import MembersSettings
from .errors import DOMAIN
from .funnels import Funnels
from .guides import Guides
from .identity import Identity
from .models import BehaviourInbox, IdempotencyKeys, InboxEvents, Member, MemberAttribute, OutboxEvents
from .portrait import Portrait
from .purchases import Purchases
from .reach import Reach
from .rfm import Rfm, RfmConfig
from .segments import Segments
from .servicer import MembersServicer
from .staff import Staffing
from .tags import Tags
from .tiers import Tiers
from .view360 import Member360
from .wechat import WechatClient

SERVICE_DIR = Path(__file__).resolve().parent.parent  # holds alembic.ini and migrations/
TABLES = Tables(outbox=OutboxEvents, inbox=InboxEvents, idempotency=IdempotencyKeys)


@dataclass
class MembersApp(ServiceApp):
    platform: Platform
    wechat: WechatClient
    identity: Identity
    portrait: Portrait
    channels: Channels
    tiers: Tiers
    tags: Tags
    staffing: Staffing
    reach: Reach
    purchases: Purchases
    behaviour: Behaviour
    segments: Segments
    rfm: Rfm
    autotags: AutoTags
    view360: Member360
    funnels: Funnels
    guides: Guides

    async def close(self) -> None:
        await self.wechat.close()


def domain(settings: MembersSettings, outbox: Outbox, pages: PageTokens, wechat: WechatClient | None = None,
           sessions: async_sessionmaker[AsyncSession] | None = None, peers: Peers | None = None) -> dict:
    """The sub-domain objects of the service, by name (also used by the demo seed, without WeChat)."""
    portrait = Portrait(pages)
    staffing = Staffing(pages)
    tags = Tags(portrait, pages)
    tiers = Tiers(portrait, outbox, pages)
    channels = Channels(portrait, tags, staffing, pages)
    behaviour = Behaviour(pages)
    funnels = Funnels(channels, brand_timezone=settings.platform.brand_timezone,
                      window_days=settings.attribution_window_days)
    segments = Segments(pages)
    rfm = Rfm(RfmConfig(method=settings.rfm_method, window_days=settings.rfm_window_days,
                        recency_days=tuple(settings.rfm_recency_days),
                        frequency_orders=tuple(settings.rfm_frequency_orders),
                        monetary_fen=tuple(settings.rfm_monetary_fen), high=settings.rfm_high_score,
                        work_mem_mb=settings.rfm_work_mem_mb))
    reach = Reach(portrait, wechat, pages, brand_timezone=settings.platform.brand_timezone,  # type: ignore[arg-type]
                  daily_cap=settings.reach_daily_cap)
    return {
        "identity": Identity(portrait, tiers, channels, outbox, wechat, sessions, behaviour, funnels),
        "portrait": portrait,
        "channels": channels,
        "tiers": tiers,
        "tags": tags,
        "staffing": staffing,
        "reach": reach,
        "purchases": Purchases(portrait, tiers),
        "behaviour": behaviour,
        "segments": segments,
        "rfm": rfm,
        "autotags": AutoTags(segments, pages),
        "view360": Member360(portrait, tags, behaviour, peers, timeout=settings.member360_peer_timeout_seconds),
        "funnels": funnels,
        "guides": Guides(staffing, segments, reach, pages),
    }


def build(settings: MembersSettings, engine: AsyncEngine | None = None) -> MembersApp:
    platform = Platform.create("members", settings, tables=TABLES, engine=engine)
    wechat = WechatClient(settings.wechat_base_url, settings.wechat_appid, settings.wechat_secret.get_secret_value(),
                          timeout=settings.wechat_timeout_seconds)
    parts = domain(settings, platform.outbox, platform.tokens, wechat, platform.sessions, platform.peers)
    app = MembersApp(platform, wechat, **parts)
    # GetMember (every page) from memory; any committed write of these rows drops them on every replica
    member_cache = platform.read_cache("member", keys=[Member.__table__.c.id, MemberAttribute.__table__.c.member_id],
                                       ttl=settings.member_cache_seconds)
    servicer = MembersServicer(**{k: v for k, v in parts.items() if k != "purchases"}, sessions=platform.sessions,
                               member_cache=member_cache,
                               idempotency=platform.idempotency, codec=platform.codec, wechat=wechat,
                               behaviour_max_age_days=settings.behaviour_max_age_days,
                               behaviour_clock_skew_seconds=settings.behaviour_clock_skew_seconds)
    # Behaviour from every service's stream: a second durable consumer (members-behaviour) with its
    # own inbox, from the beginning of the streams, so history already published is recorded too.
    platform.subscribe(app, events.BEHAVIOUR_HANDLERS, purpose="behaviour", inbox=BehaviourInbox)
    platform.serve(app, domain=DOMAIN, handlers=events.HANDLERS, jobs=jobs.schedule(app),
                   servicers=[Servicer(pb.DESCRIPTOR.services_by_name["MembersService"],
                                       pb_grpc.add_MembersServiceServicer_to_server, servicer)],
                   principal_lookup=guarded(principals.lookup(platform.sessions)))  # its own database
    return app
