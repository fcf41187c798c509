"""Events the orders service consumes: type -> (payload message, handler).

Each handler runs inside the inbox transaction of its event (applied once per
event id) and reaches the domain through the app (``app.coupons``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncSession

from mall.community.v1 import community_events_pb2
from mall.members.v1 import members_service_pb2 as mpb
from mall.orders.v1 import orders_events_pb2 as oev
from mall.points.v1 import points_events_pb2
from mallkit.db import utcnow
from mallkit.errors import MallError
from mallkit.events import refused
from mallkit.names import parse_id

from .models import CouponRefusal

if TYPE_CHECKING:
    from .app import OrdersApp

log = logging.getLogger("orders.events")

Handler = Callable[["OrdersApp", AsyncSession, Any, Any], Awaitable[None]]


def _coupon_handler(source: str, source_ref: Callable[[Any], str]) -> Handler:
    """A coupon granted elsewhere (points redemption, community claim) is issued here; a coupon that
    cannot be issued (limit reached, all given out, unknown template) is refused: the refusal is
    recorded and ``orders.coupon_refused`` written in this same transaction, so the granting service
    gives back what it took. Never raised: a retry would be refused again."""

    async def handle(app: OrdersApp, s: AsyncSession, event, payload) -> None:
        try:
            member_id = parse_id(payload.member, "members", "member")
            template_id = parse_id(payload.coupon_template, "couponTemplates", "coupon_template")
            async with s.begin_nested():
                await app.coupons.issue(s, template_id, member_id, source)
        except MallError as err:
            await refuse_coupon(app, s, event, granted_by=source, source_ref=source_ref(payload),
                                member=payload.member, coupon_template=payload.coupon_template, reason=err.reason)
    return handle


async def refuse_coupon(app: OrdersApp, s: AsyncSession, event, *, granted_by: str, source_ref: str, member: str,
                        coupon_template: str, reason: str, compensate: bool = True) -> None:
    """Record a refused coupon and (``compensate``) publish ``orders.coupon_refused`` with it."""
    now = utcnow()
    compensation = ""
    if compensate:
        refusal = oev.CouponRefusedEvent(granted_by=granted_by, source_ref=source_ref, member=member,
                                         coupon_template=coupon_template, reason=reason, granted_event_id=event.id)
        refusal.refuse_time.FromDatetime(now)
        compensation = await app.platform.outbox.add(s, "orders.coupon_refused", refusal, subject=member)
    s.add(CouponRefusal(granted_event_id=event.id, granted_by=granted_by, source_ref=source_ref[:128],
                        member=member[:64], coupon_template=coupon_template[:64], reason=reason[:64],
                        compensation_event_id=compensation, create_time=now))
    await s.flush()
    refused("orders", event, reason, f"coupon {coupon_template} to {member} granted by {granted_by} {source_ref}"
            + ("; compensation requested" if compensate else "; nothing to compensate"))


async def on_member_registered(app: OrdersApp, s: AsyncSession, event, payload: mpb.MemberRegisteredEvent) -> None:
    """Every welcome coupon template to the new member (once: the inbox). A template at its limit is
    skipped and recorded: a welcome coupon is a gift, nothing was taken from the member, so nothing
    is compensated."""
    member_id = parse_id(payload.member, "members", "member")
    issued, skipped = await app.coupons.issue_welcome(s, member_id)
    for template_id, reason in skipped:
        await refuse_coupon(app, s, event, granted_by="members", source_ref=payload.member, member=payload.member,
                            coupon_template=f"couponTemplates/{template_id}", reason=reason, compensate=False)
    log.info("welcome coupons issued: %d", issued, extra={"event_id": event.id})


HANDLERS: dict[str, tuple[type[Message], Handler]] = {
    "member.registered": (mpb.MemberRegisteredEvent, on_member_registered),
    "points.coupon_redeemed": (points_events_pb2.CouponRedeemedEvent,
                               _coupon_handler("points", lambda p: p.redemption)),
    "community.coupon_claimed": (community_events_pb2.CouponClaimedEvent,
                                 _coupon_handler("community", lambda p: p.post)),
}
