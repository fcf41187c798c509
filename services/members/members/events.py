"""Events the members service consumes: type -> (payload message, handler).

Each handler runs in the inbox transaction of the event (applied once per event
id) and reaches the domain through the app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession

from mall.orders.v1 import orders_events_pb2 as opb
from mallkit.events import refused
from mallkit.names import parse_id

from . import purchases
from .models import Member

if TYPE_CHECKING:
    from .app import MembersApp


async def known(s: AsyncSession, event, member: str, order: str) -> bool:
    """An order event of a member this service does not know can never apply (members exist
    before they can order): recorded (a WARNING line, ``mall_events_refused_total``) and
    skipped, never retried."""
    if await s.get(Member, parse_id(member, "members", "member")) is not None:
        return True
    refused("members", event, "MEMBER_NOT_FOUND", f"{order} of unknown {member}")
    return False


async def on_order_paid(app: MembersApp, s: AsyncSession, event, p: opb.OrderPaidEvent) -> None:
    if await known(s, event, p.member, p.order):
        await purchases.on_order_paid(app.service, s, event, p)


async def on_order_refunded(app: MembersApp, s: AsyncSession, event, p: opb.OrderRefundedEvent) -> None:
    if await known(s, event, p.member, p.order):
        await purchases.on_order_refunded(app.service, s, event, p)


HANDLERS: dict = {
    "order.paid": (opb.OrderPaidEvent, on_order_paid),
    "order.refunded": (opb.OrderRefundedEvent, on_order_refunded),
}
