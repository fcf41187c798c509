"""Events the members service consumes: type -> (payload message, handler).

Each handler runs in the inbox transaction of the event (applied once per event id),
translates the payload and calls the domain through the app; an order event of a
member this service does not know is refused (recorded, never retried), an error (a
refund before its paid event) is redelivered with backoff.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC
from typing import TYPE_CHECKING, Any

from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncSession

from mall.community.v1 import community_events_pb2 as cpb
from mall.members.v1 import members_service_pb2 as pb
from mall.orders.v1 import orders_events_pb2 as opb
from mall.points.v1 import points_events_pb2 as ppb
from mallkit.db import utcnow
from mallkit.errors import MallError
from mallkit.events import refused
from mallkit.names import parse_id, parse_ids

from .funnels import ShareArrival
from .models import Member

if TYPE_CHECKING:
    from .app import MembersApp

log = logging.getLogger("members.events")

Handler = Callable[["MembersApp", AsyncSession, Any, Any], Awaitable[None]]


async def known(s: AsyncSession, event, member: str, order: str) -> bool:
    """An order event of a member this service does not know can never apply (members exist
    before they can order): recorded (a WARNING line, ``mall_events_refused_total``) and
    skipped, never retried."""
    if await s.get(Member, parse_id(member, "members", "member")) is not None:
        return True
    refused("members", event, "MEMBER_NOT_FOUND", f"{order} of unknown {member}")
    return False


async def on_order_paid(app: MembersApp, s: AsyncSession, event, p: opb.OrderPaidEvent) -> None:
    if not await known(s, event, p.member, p.order):
        return
    member_id = parse_id(p.member, "members", "member")
    pay_time = p.pay_time.ToDatetime(tzinfo=UTC) if p.HasField("pay_time") else utcnow()
    categories: dict[str, int] = {}
    for item in p.items:
        categories[item.category] = categories.get(item.category, 0) + item.amount_fen
    await app.purchases.record_paid(s, member_id, p.order, p.paid_amount_fen, categories, pay_time)


async def on_order_refunded(app: MembersApp, s: AsyncSession, event, p: opb.OrderRefundedEvent) -> None:
    if not await known(s, event, p.member, p.order):
        return
    member_id = parse_id(p.member, "members", "member")
    when = p.refund_time.ToDatetime(tzinfo=UTC) if p.HasField("refund_time") else utcnow()
    await app.purchases.record_refund(s, member_id, p.order, p.refund_amount_fen, when)


async def on_bargain_helped(app: MembersApp, s: AsyncSession, event, p: opb.BargainHelpedEvent) -> None:
    """A helper arrived through a bargain's share: a touchpoint under the activity's share channel code."""
    if not p.share_scene:
        return
    channel = await app.channels.by_scene(s, p.share_scene)
    if channel is None:
        log.info("bargain share scene matches no channel code; no touchpoint")
        return
    await app.channels.create_touchpoint(s, parse_id(p.helper, "members", "helper"), p.share_scene)


async def on_visitor_linked(app: MembersApp, s: AsyncSession, event, p: cpb.VisitorLinkedEvent) -> None:
    """A visitor who had arrived through shares joined a member: one content share touchpoint per
    share (once, also when reported again under another event id), maybe crediting the registration."""
    member_id = parse_id(p.member, "members", "member")
    if await s.get(Member, member_id) is None:
        refused("members", event, "MEMBER_NOT_FOUND", f"visitor linked to unknown {p.member}")
        return
    arrivals = []
    for a in p.arrivals:
        try:
            share_id = parse_ids(a.share, "groups/{}/posts/{}/shares/{}", "share")[2]
            arrivals.append(ShareArrival(post=a.post, share_id=share_id, sharer_id=parse_id(a.sharer, "members", "sharer"),
                                         view_time=a.view_time.ToDatetime(tzinfo=UTC)))
        except MallError:
            refused("members", event, "INVALID_SHARE", f"{a.share[:80]} {a.sharer[:40]}")
    await app.funnels.record_share_arrivals(s, member_id, arrivals)


HANDLERS: dict[str, tuple[type[Message], Handler]] = {
    "community.visitor_linked": (cpb.VisitorLinkedEvent, on_visitor_linked),
    "order.paid": (opb.OrderPaidEvent, on_order_paid),
    "order.refunded": (opb.OrderRefundedEvent, on_order_refunded),
    "order.bargain_helped": (opb.BargainHelpedEvent, on_bargain_helped),
}


# --- behaviour (the members-behaviour consumer: every service's facts as behaviour events) -------


def _when(p: Any, field: str, event) -> Any:
    if p.HasField(field):
        return getattr(p, field).ToDatetime(tzinfo=UTC)
    return event.time.ToDatetime(tzinfo=UTC) if event.HasField("time") else utcnow()


def _member(name: str, field: str = "member") -> int:
    return parse_id(name, "members", field)


def behaviour(kind: int, member: Callable[[Any], str], time_field: str, target: Callable[[Any], str],
              value: Callable[[Any], int] = lambda p: 0) -> Handler:
    """A handler storing one behaviour event of ``kind`` for the payload's member."""

    async def handle(app: MembersApp, s: AsyncSession, event, p) -> None:
        await app.behaviour.record_server(s, source=event.source, event_id=event.id, kind=kind,
                                          member_id=_member(member(p)), when=_when(p, time_field, event),
                                          target=target(p), value_fen=value(p))

    return handle


BEHAVIOUR_HANDLERS: dict[str, tuple[type[Message], Handler]] = {
    "order.paid": (opb.OrderPaidEvent, behaviour(pb.BEHAVIOR_KIND_ORDER_PAID, lambda p: p.member, "pay_time",
                                                 lambda p: p.order, lambda p: p.paid_amount_fen)),
    "order.refunded": (opb.OrderRefundedEvent, behaviour(pb.BEHAVIOR_KIND_ORDER_REFUNDED, lambda p: p.member, "refund_time",
                                                         lambda p: p.order, lambda p: p.refund_amount_fen)),
    "order.completed": (opb.OrderCompletedEvent, behaviour(pb.BEHAVIOR_KIND_ORDER_COMPLETED, lambda p: p.member, "complete_time",
                                                           lambda p: p.order, lambda p: p.paid_amount_fen)),
    "points.checked_in": (ppb.CheckedInEvent, behaviour(pb.BEHAVIOR_KIND_CHECK_IN, lambda p: p.member, "check_in_time",
                                                        lambda p: p.day)),
    "points.coupon_redeemed": (ppb.CouponRedeemedEvent, behaviour(pb.BEHAVIOR_KIND_REDEEMED, lambda p: p.member, "redeem_time",
                                                                  lambda p: p.coupon_template)),
    "community.group_joined": (cpb.GroupJoinedEvent, behaviour(pb.BEHAVIOR_KIND_GROUP_JOINED, lambda p: p.member, "join_time",
                                                               lambda p: p.group)),
    "community.group_left": (cpb.GroupLeftEvent, behaviour(pb.BEHAVIOR_KIND_GROUP_LEFT, lambda p: p.member, "leave_time",
                                                           lambda p: p.group)),
    "community.content_shared": (cpb.ContentSharedEvent, behaviour(pb.BEHAVIOR_KIND_CONTENT_SHARED, lambda p: p.sharer,
                                                                   "share_time", lambda p: p.post)),
    "community.member_posted": (cpb.MemberPostedEvent, behaviour(pb.BEHAVIOR_KIND_POSTED, lambda p: p.member,
                                                                 "post_time", lambda p: p.post)),
    "community.quiz_answered": (cpb.QuizAnsweredEvent, behaviour(pb.BEHAVIOR_KIND_QUIZ_ANSWERED, lambda p: p.member, "answer_time",
                                                                 lambda p: p.post)),
    "community.coupon_claimed": (cpb.CouponClaimedEvent, behaviour(pb.BEHAVIOR_KIND_COUPON_CLAIMED, lambda p: p.member,
                                                                   "claim_time", lambda p: p.coupon_template)),
    "member.registered": (pb.MemberRegisteredEvent, behaviour(pb.BEHAVIOR_KIND_REGISTERED, lambda p: p.member, "create_time",
                                                              lambda p: p.inviter)),
    "member.referred": (pb.MemberReferredEvent, behaviour(pb.BEHAVIOR_KIND_REFERRED, lambda p: p.inviter, "create_time",
                                                          lambda p: p.invitee)),
}
