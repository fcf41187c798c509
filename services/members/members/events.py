"""Events the members service consumes: type -> (payload message, handler).

Each handler runs in the inbox transaction of the event (applied once per event
id) and reaches the domain through the app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession

from mall.orders.v1 import orders_events_pb2 as opb

from . import purchases

if TYPE_CHECKING:
    from .app import MembersApp


async def on_order_paid(app: MembersApp, s: AsyncSession, event, p: opb.OrderPaidEvent) -> None:
    await purchases.on_order_paid(app.service, s, event, p)


async def on_order_refunded(app: MembersApp, s: AsyncSession, event, p: opb.OrderRefundedEvent) -> None:
    await purchases.on_order_refunded(app.service, s, event, p)


HANDLERS: dict = {
    "order.paid": (opb.OrderPaidEvent, on_order_paid),
    "order.refunded": (opb.OrderRefundedEvent, on_order_refunded),
}
