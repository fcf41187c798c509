"""Events the community service consumes: type -> (payload message, handler).

A handler is ``async def handler(app, session, event, payload) -> None`` and runs in the
inbox transaction of the event (applied once per event id), reaching the domain through
the app (e.g. ``app.coupon_drops``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncSession

from mall.orders.v1 import orders_events_pb2 as opb
from mallkit.errors import MallError
from mallkit.events import refused
from mallkit.names import parse_id, parse_ids

if TYPE_CHECKING:
    from .app import CommunityApp

log = logging.getLogger("community.events")

Handler = Callable[[Any, Any, Any, Any], Awaitable[None]]


async def on_coupon_refused(app: CommunityApp, s: AsyncSession, event, p: opb.CouponRefusedEvent) -> None:
    """The compensation of a coupon drop claim whose coupon the orders service could not issue: the
    claim is given back (the member may claim again, the drop's count restored), once."""
    if p.granted_by != "community":
        return  # another service's grant (a points-mall redemption): not ours to compensate
    try:
        _, post_id = parse_ids(p.source_ref, "groups/{}/posts/{}", "source_ref")
        member_id = parse_id(p.member, "members", "member")
    except MallError:
        refused("community", event, "INVALID_SOURCE_REF", f"{p.source_ref[:80]} {p.member[:40]}")
        return
    if not await app.coupon_drops.give_back(s, post_id, member_id):
        refused("community", event, "CLAIM_NOT_FOUND", f"no claim of {p.member} on {p.source_ref}")
        return
    log.info("claim of %s on %s given back (%s)", p.member, p.source_ref, p.reason, extra={"event_id": event.id})


HANDLERS: dict[str, tuple[type[Message], Handler]] = {
    "orders.coupon_refused": (opb.CouponRefusedEvent, on_coupon_refused),
}
