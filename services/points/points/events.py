"""Events the points service consumes: type -> (payload message, handler).

Each handler runs in the inbox transaction of the event (applied once per event id) and
reaches the domain through the app; an error makes the consumer redeliver it with backoff (e.g.
order.completed arriving before order.paid). No handler calls another service: order.paid
carries the tier's points multiplier snapshotted when the order was priced.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncSession

from mall.community.v1 import community_events_pb2 as cpb
from mall.members.v1 import members_service_pb2 as mpb
from mall.orders.v1 import orders_events_pb2 as opb
from mall.points.v1 import points_service_pb2 as pb
from mallkit.names import parse_id

if TYPE_CHECKING:
    from .app import PointsApp

log = logging.getLogger("points.events")

Handler = Callable[["PointsApp", AsyncSession, Any, Any], Awaitable[None]]


def _member(name: str, field: str) -> int:
    return parse_id(name, "members", field)


def _order(name: str) -> int:
    return parse_id(name, "orders", "order")


async def on_referred(app: PointsApp, s: AsyncSession, event, p: mpb.MemberReferredEvent) -> None:
    await app.tasks.complete_task(s, _member(p.inviter, "inviter"), pb.TASK_KIND_INVITE_FRIEND, p.invitee)


async def on_paid(app: PointsApp, s: AsyncSession, event, p: opb.OrderPaidEvent) -> None:
    multiplier = p.points_multiplier_percent
    if multiplier <= 0:  # an event written before the field existed
        log.info("order.paid %s carries no points multiplier: x1", getattr(event, "id", ""))
        multiplier = 100
    await app.purchases.pend(s, _order(p.order), _member(p.member, "member"), p.paid_amount_fen, multiplier)


async def on_completed(app: PointsApp, s: AsyncSession, event, p: opb.OrderCompletedEvent) -> None:
    await app.purchases.confirm(s, _order(p.order))


async def on_refunded(app: PointsApp, s: AsyncSession, event, p: opb.OrderRefundedEvent) -> None:
    await app.purchases.reverse(s, _order(p.order))


async def on_group_joined(app: PointsApp, s: AsyncSession, event, p: cpb.GroupJoinedEvent) -> None:
    await app.tasks.complete_task(s, _member(p.member, "member"), pb.TASK_KIND_JOIN_GROUP, p.group)


async def on_shared(app: PointsApp, s: AsyncSession, event, p: cpb.ContentSharedEvent) -> None:
    await app.tasks.complete_task(s, _member(p.sharer, "sharer"), pb.TASK_KIND_SHARE_CONTENT, p.post)


async def on_quiz(app: PointsApp, s: AsyncSession, event, p: cpb.QuizAnsweredEvent) -> None:
    reward = max(0, min(p.reward_points, 100_000))
    await app.tasks.complete_task(s, _member(p.member, "member"), pb.TASK_KIND_ANSWER_QUIZ, p.post, reward)


HANDLERS: dict[str, tuple[type[Message], Handler]] = {
    "member.referred": (mpb.MemberReferredEvent, on_referred),
    "order.paid": (opb.OrderPaidEvent, on_paid),
    "order.completed": (opb.OrderCompletedEvent, on_completed),
    "order.refunded": (opb.OrderRefundedEvent, on_refunded),
    "community.group_joined": (cpb.GroupJoinedEvent, on_group_joined),
    "community.content_shared": (cpb.ContentSharedEvent, on_shared),
    "community.quiz_answered": (cpb.QuizAnsweredEvent, on_quiz),
}
