"""Composition root: settings -> engine -> service -> servicer -> server.

Nothing is created at import time; tests build the app with their own
settings (database, ports, peers) and call ``start``/``stop``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from mall.community.v1 import community_events_pb2 as cpb
from mall.events.v1 import events_pb2, events_pb2_grpc
from mall.members.v1 import members_service_pb2 as mpb
from mall.orders.v1 import orders_events_pb2 as opb
from mall.points.v1 import points_service_pb2 as pb
from mall.points.v1 import points_service_pb2_grpc as pb_grpc
from mallkit.auth import TokenCodec
from mallkit.clients import Peers
from mallkit.db import create_engine, ping, session_factory
from mallkit.idempotency import Idempotency
from mallkit.names import parse_id
from mallkit.outbox import EventSink, GrpcEventDelivery, Outbox, OutboxRelay
from mallkit.pagination import PageTokens
from mallkit.principals import PrincipalCheck, members_lookup
from mallkit.server import ServiceApp, ServiceHost

from .config import PointsSettings
from .errors import DOMAIN
from .jobs import Jobs
from .members_client import MembersClient
from .models import IdempotencyKeys, InboxEvents, OutboxEvents
from .service import PointsService
from .servicer import PointsServicer

SERVICE_DIR = Path(__file__).resolve().parent.parent  # holds alembic.ini and migrations/


def event_handlers(service: PointsService, members: MembersClient) -> dict:
    """Events this service consumes: type -> (payload message, handler). Each handler runs in
    the inbox transaction of the event (applied once per event id); an error makes the
    producer's relay retry later (e.g. order.completed arriving before order.paid)."""

    def member(name: str, field: str) -> int:
        return parse_id(name, "members", field)

    async def on_referred(s: AsyncSession, event, p: mpb.MemberReferredEvent) -> None:
        await service.complete_task(s, member(p.inviter, "inviter"), pb.TASK_KIND_INVITE_FRIEND, p.invitee)

    async def on_paid(s: AsyncSession, event, p: opb.OrderPaidEvent) -> None:
        member_id = member(p.member, "member")
        _, multiplier = await members.tier_and_multiplier(member_id)
        await service.pend_purchase(s, parse_id(p.order, "orders", "order"), member_id, p.paid_amount_fen, multiplier)

    async def on_completed(s: AsyncSession, event, p: opb.OrderCompletedEvent) -> None:
        await service.confirm_purchase(s, parse_id(p.order, "orders", "order"))

    async def on_refunded(s: AsyncSession, event, p: opb.OrderRefundedEvent) -> None:
        await service.reverse_purchase(s, parse_id(p.order, "orders", "order"))

    async def on_group_joined(s: AsyncSession, event, p: cpb.GroupJoinedEvent) -> None:
        await service.complete_task(s, member(p.member, "member"), pb.TASK_KIND_JOIN_GROUP, p.group)

    async def on_shared(s: AsyncSession, event, p: cpb.ContentSharedEvent) -> None:
        await service.complete_task(s, member(p.sharer, "sharer"), pb.TASK_KIND_SHARE_CONTENT, p.post)

    async def on_quiz(s: AsyncSession, event, p: cpb.QuizAnsweredEvent) -> None:
        reward = max(0, min(p.reward_points, 100_000))
        await service.complete_task(s, member(p.member, "member"), pb.TASK_KIND_ANSWER_QUIZ, p.post, reward)

    return {
        "member.referred": (mpb.MemberReferredEvent, on_referred),
        "order.paid": (opb.OrderPaidEvent, on_paid),
        "order.completed": (opb.OrderCompletedEvent, on_completed),
        "order.refunded": (opb.OrderRefundedEvent, on_refunded),
        "community.group_joined": (cpb.GroupJoinedEvent, on_group_joined),
        "community.content_shared": (cpb.ContentSharedEvent, on_shared),
        "community.quiz_answered": (cpb.QuizAnsweredEvent, on_quiz),
    }


@dataclass
class PointsApp(ServiceApp):
    settings: PointsSettings
    engine: AsyncEngine
    host: ServiceHost
    relay: OutboxRelay
    peers: Peers
    service: PointsService
    jobs: Jobs
    members: MembersClient
    owns_engine: bool = field(default=True)


def build(settings: PointsSettings, engine: AsyncEngine | None = None, *, background: bool = True) -> PointsApp:
    owns_engine = engine is None
    engine = engine or create_engine(settings.database_url, pool_size=settings.db_pool_size)
    sessions = session_factory(engine)
    secret = settings.platform.token_secret.get_secret_value()
    codec = TokenCodec(secret)
    peers = Peers(settings.platform.addr_of, codec=codec, caller="points", timeout=settings.platform.call_timeout_seconds)
    members = MembersClient(lambda: peers.channel("members"), settings.tier_cache_seconds)
    outbox = Outbox(OutboxEvents, "points", settings.event_routes)
    service = PointsService(settings, outbox)
    servicer = PointsServicer(service, sessions, Idempotency(sessions, IdempotencyKeys), PageTokens(secret), members)
    relay = OutboxRelay(sessions, OutboxEvents, GrpcEventDelivery(peers.channel, settings.platform.call_timeout_seconds),
                        max_backoff=settings.outbox_max_backoff_seconds)
    jobs = Jobs(service, sessions, members)

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
        background=[run_relay, *jobs.background(settings.expiry_job_seconds, settings.reach_job_seconds)]
        if background else [],
        drain_seconds=settings.drain_seconds,
        principals=PrincipalCheck(members_lookup(lambda: peers.channel("members"), settings.platform.call_timeout_seconds),
                                  ttl=settings.platform.principal_cache_seconds),
    )
    host.add(pb_grpc.add_PointsServiceServicer_to_server, servicer)
    host.add(events_pb2_grpc.add_EventSinkServiceServicer_to_server,
             EventSink(sessions, InboxEvents, event_handlers(service, members)))
    return PointsApp(settings, engine, host, relay, peers, service, jobs, members, owns_engine)
