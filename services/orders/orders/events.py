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
from mall.points.v1 import points_events_pb2
from mallkit.errors import MallError
from mallkit.names import parse_id

if TYPE_CHECKING:
    from .app import OrdersApp

log = logging.getLogger("orders.events")

Handler = Callable[["OrdersApp", AsyncSession, Any, Any], Awaitable[None]]


def _coupon_handler(source: str) -> Handler:
    """A coupon granted elsewhere (points redemption, community claim) is issued here."""

    async def handle(app: OrdersApp, s: AsyncSession, event, payload) -> None:
        try:
            member_id = parse_id(payload.member, "members", "member")
            template_id = parse_id(payload.coupon_template, "couponTemplates", "coupon_template")
            async with s.begin_nested():
                await app.coupons.issue(s, template_id, member_id, source)
        except MallError as err:
            # Recorded as applied (the inbox row commits): retrying would never succeed.
            log.warning("coupon from %s not issued: %s", source, err.reason, extra={"event_id": event.id})
    return handle


async def on_member_registered(app: OrdersApp, s: AsyncSession, event, payload: mpb.MemberRegisteredEvent) -> None:
    """Every welcome coupon template to the new member (once: the inbox)."""
    n = await app.coupons.issue_welcome(s, parse_id(payload.member, "members", "member"))
    log.info("welcome coupons issued: %d", n, extra={"event_id": event.id})


HANDLERS: dict[str, tuple[type[Message], Handler]] = {
    "member.registered": (mpb.MemberRegisteredEvent, on_member_registered),
    "points.coupon_redeemed": (points_events_pb2.CouponRedeemedEvent, _coupon_handler("points")),
    "community.coupon_claimed": (community_events_pb2.CouponClaimedEvent, _coupon_handler("community")),
}
