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
from mallkit.errors import MallError
from mallkit.events import refused
from mallkit.names import parse_id, parse_ids

if TYPE_CHECKING:
    from .app import PointsApp

log = logging.getLogger("points.events")

Handler = Callable[["PointsApp", AsyncSession, Any, Any], Awaitable[None]]


def _member(name: str, field: str) -> int:
    return parse_id(name, "members", field)


def _order(name: str) -> int:
    return parse_id(name, "orders", "order")


def _record(event, result) -> None:
    """A task reward the task's rules refuse (no active task of the kind, the period's cap reached)
    is recorded, not retried; nothing was taken from the member, so nothing is compensated (the
    quiz stays answered, the group joined)."""
    if result.outcome in ("NO_ACTIVE_TASK", "LIMIT_REACHED"):
        refused("points", event, result.outcome, "task reward not granted")


async def on_referred(app: PointsApp, s: AsyncSession, event, p: mpb.MemberReferredEvent) -> None:
    _record(event, await app.tasks.complete_task(s, _member(p.inviter, "inviter"), pb.TASK_KIND_INVITE_FRIEND,
                                                 p.invitee))


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
    _record(event, await app.tasks.complete_task(s, _member(p.member, "member"), pb.TASK_KIND_JOIN_GROUP, p.group))


async def on_shared(app: PointsApp, s: AsyncSession, event, p: cpb.ContentSharedEvent) -> None:
    _record(event, await app.tasks.complete_task(s, _member(p.sharer, "sharer"), pb.TASK_KIND_SHARE_CONTENT,
                                                 p.post))


async def on_quiz(app: PointsApp, s: AsyncSession, event, p: cpb.QuizAnsweredEvent) -> None:
    reward = max(0, min(p.reward_points, 100_000))
    _record(event, await app.tasks.complete_task(s, _member(p.member, "member"), pb.TASK_KIND_ANSWER_QUIZ, p.post,
                                                 reward))


async def on_coupon_refused(app: PointsApp, s: AsyncSession, event, p: opb.CouponRefusedEvent) -> None:
    """The compensation of a points-mall coupon the orders service could not issue: the redemption
    FAILED, its points and stock back, the member told (once, whatever the redeliveries)."""
    if p.granted_by != "points":
        return  # another service's grant (a community coupon drop): not ours to compensate
    try:
        member_id, redemption_id = parse_ids(p.source_ref, "members/{}/redemptions/{}", "source_ref")
    except MallError:
        refused("points", event, "INVALID_SOURCE_REF", p.source_ref[:80])
        return
    if not await app.mall.fail_redemption(s, member_id, redemption_id, p.reason):
        refused("points", event, "REDEMPTION_NOT_COMPLETED", f"{p.source_ref} is not a completed coupon redemption")
        return
    log.info("redemption %s failed (%s): points and stock returned", p.source_ref, p.reason,
             extra={"event_id": event.id})


async def on_reviewed(app: PointsApp, s: AsyncSession, event, p: opb.OrderReviewedEvent) -> None:
    """The review-order task: rewarded once per order, however many of its items are reviewed."""
    await app.tasks.complete_task(s, _member(p.member, "member"), pb.TASK_KIND_REVIEW_ORDER, p.order)


HANDLERS: dict[str, tuple[type[Message], Handler]] = {
    "member.referred": (mpb.MemberReferredEvent, on_referred),
    "order.paid": (opb.OrderPaidEvent, on_paid),
    "order.completed": (opb.OrderCompletedEvent, on_completed),
    "order.refunded": (opb.OrderRefundedEvent, on_refunded),
    "order.reviewed": (opb.OrderReviewedEvent, on_reviewed),
    "community.group_joined": (cpb.GroupJoinedEvent, on_group_joined),
    "community.content_shared": (cpb.ContentSharedEvent, on_shared),
    "community.quiz_answered": (cpb.QuizAnsweredEvent, on_quiz),
    "orders.coupon_refused": (opb.CouponRefusedEvent, on_coupon_refused),
}
