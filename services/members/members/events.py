"""Events the members service consumes: type -> (payload message, handler).

Each handler runs in the inbox transaction of the event (applied once per event id),
translates the payload and calls the domain through the app; an error (e.g. an order
of a member not known yet) makes the producer's relay retry later.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC
from typing import TYPE_CHECKING, Any

from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncSession

from mall.orders.v1 import orders_events_pb2 as opb
from mallkit.db import utcnow
from mallkit.names import parse_id

if TYPE_CHECKING:
    from .app import MembersApp

Handler = Callable[["MembersApp", AsyncSession, Any, Any], Awaitable[None]]


async def on_order_paid(app: MembersApp, s: AsyncSession, event, p: opb.OrderPaidEvent) -> None:
    member_id = parse_id(p.member, "members", "member")
    pay_time = p.pay_time.ToDatetime(tzinfo=UTC) if p.HasField("pay_time") else utcnow()
    categories: dict[str, int] = {}
    for item in p.items:
        categories[item.category] = categories.get(item.category, 0) + item.amount_fen
    await app.purchases.record_paid(s, member_id, p.order, p.paid_amount_fen, categories, pay_time)


async def on_order_refunded(app: MembersApp, s: AsyncSession, event, p: opb.OrderRefundedEvent) -> None:
    member_id = parse_id(p.member, "members", "member")
    when = p.refund_time.ToDatetime(tzinfo=UTC) if p.HasField("refund_time") else utcnow()
    await app.purchases.record_refund(s, member_id, p.order, p.refund_amount_fen, when)


HANDLERS: dict[str, tuple[type[Message], Handler]] = {
    "order.paid": (opb.OrderPaidEvent, on_order_paid),
    "order.refunded": (opb.OrderRefundedEvent, on_order_refunded),
}
