"""Order lifecycle: reading orders and every state change that is not a payment.

Each transition is one conditional UPDATE (``... WHERE id AND state = :from``);
zero rows is FAILED_PRECONDITION ``ORDER_STATE_CONFLICT``. Cancelling releases
what the order held: SKU stock (or flash-sale stock and the member's counter),
its place in an open group, and its coupon. The scheduled transitions (reminder,
timeout, completion, failed groups) take ``now`` so tests can move time.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mall.orders.v1 import orders_events_pb2 as events
from mall.orders.v1 import orders_service_pb2 as pb
from mallkit.db import insert_ignore, utcnow
from mallkit.errors import FailedPrecondition, NotFound, PermissionDenied
from mallkit.events import Outbox
from mallkit.pagination import PageTokens
from mallkit.queries import keyset_page

from . import errors as reasons
from .coupons import Coupons
from .flash_sale import FlashSales
from .group_buy import GroupBuying
from .journey import Journey

if TYPE_CHECKING:
    from .bargain import Bargains
from .models import (
    CANCELLED,
    COMPLETED,
    PAID,
    PENDING_PAYMENT,
    REFUND_PENDING,
    REFUND_REQUESTED,
    SHIPPED,
    Order,
    OrderItem,
    Refund,
    Sku,
)


def timestamp(dt: datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(dt)
    return t


def state_name(state: int) -> str:
    """``PENDING_PAYMENT`` for ORDER_STATE_PENDING_PAYMENT ("" for an unknown value)."""
    try:
        return pb.OrderState.Name(state).removeprefix("ORDER_STATE_")
    except ValueError:
        return ""


def state_conflict(order: Order, action: str) -> FailedPrecondition:
    name = state_name(order.state)
    return FailedPrecondition(
        f"cannot {action} an order in state {name or order.state}",
        reason=reasons.ORDER_STATE_CONFLICT, metadata={"state": name, "action": action},
        zh="订单当前状态不允许此操作",
    )


class Lifecycle:
    def __init__(self, *, outbox: Outbox, pages: PageTokens, coupons: Coupons, flash_sales: FlashSales,
                 group_buying: GroupBuying, journey: Journey, after_sales: timedelta, bargains: Bargains | None = None):
        self.outbox = outbox
        self.bargains = bargains
        self.pages = pages
        self.coupons = coupons
        self.flash_sales = flash_sales
        self.group_buying = group_buying
        self.journey = journey
        self.after_sales = after_sales

    # --- reads -----------------------------------------------------------------------------

    async def order(self, s: AsyncSession, order_id: int, *, member_id: int | None = None) -> Order:
        """The order; for a member (``member_id``) only their own: another's or a missing one is NOT_OWNER."""
        o = await s.get(Order, order_id, populate_existing=True)
        if o is None and member_id is not None:  # members learn nothing about other ids
            raise PermissionDenied("members may only access their own orders", reason="NOT_OWNER", zh="无权访问他人的订单")
        if o is None:
            raise NotFound("order not found", reason=reasons.ORDER_NOT_FOUND, resource=("order", f"orders/{order_id}"),
                           zh="订单不存在")
        if member_id is not None and o.member_id != member_id:
            raise PermissionDenied("members may only access their own orders", reason="NOT_OWNER", zh="无权访问他人的订单")
        return o

    async def items_of(self, s: AsyncSession, order_ids: Sequence[int]) -> dict[int, list[OrderItem]]:
        out: dict[int, list[OrderItem]] = {i: [] for i in order_ids}
        if order_ids:
            for it in (await s.execute(select(OrderItem).where(OrderItem.order_id.in_(list(order_ids)))
                                       .order_by(OrderItem.id))).scalars():
                out[it.order_id].append(it)
        return out

    async def with_items(self, s: AsyncSession, order_id: int, *,
                         member_id: int | None = None) -> tuple[Order, list[OrderItem]]:
        o = await self.order(s, order_id, member_id=member_id)
        return o, (await self.items_of(s, [o.id]))[o.id]

    async def list_of(self, s: AsyncSession, member_id: int, size: int, page_token: str,
                      state: int) -> tuple[list[tuple[Order, list[OrderItem]]], str]:
        """A member's orders, newest first, optionally in one state (0: all)."""
        q = select(Order).where(Order.member_id == member_id)
        if state:
            q = q.where(Order.state == state)
        rows, token = await keyset_page(s, q, key=Order.id.desc(), tokens=self.pages, page_size=size,
                                        page_token=page_token, filters=[member_id, state])
        items = await self.items_of(s, [o.id for o in rows])
        return [(o, items[o.id]) for o in rows], token

    # --- transitions -----------------------------------------------------------------------

    async def cancel(self, s: AsyncSession, order_id: int, reason: str, *, member_id: int | None = None,
                     now: datetime | None = None) -> Order:
        """PENDING_PAYMENT -> CANCELLED, releasing stock (or flash-sale stock), group place and coupon."""
        o = await self.order(s, order_id, member_id=member_id)
        now = now or utcnow()
        done = await s.execute(update(Order).where(Order.id == order_id, Order.state == PENDING_PAYMENT)
                               .values(state=CANCELLED, cancel_reason=reason, close_time=now))
        if done.rowcount != 1:  # type: ignore[attr-defined]
            raise state_conflict(await self.order(s, order_id), "cancel")
        items = (await self.items_of(s, [order_id]))[order_id]
        if o.flash_sale_id is not None:
            await self.flash_sales.release(s, o.flash_sale_id, o.member_id, sum(it.quantity for it in items))
        else:
            for it in sorted(items, key=lambda x: x.sku_id):
                await s.execute(update(Sku).where(Sku.id == it.sku_id).values(stock=Sku.stock + it.quantity))
        if o.group_id is not None:
            await self.group_buying.release_place(s, o.group_id, o.member_id)
        if o.bargain_id is not None and self.bargains is not None:
            await self.bargains.release(s, o.bargain_id, order_id)
        if o.coupon_id is not None:
            await self.coupons.release(s, o.coupon_id, order_id)
        return await self.order(s, order_id)

    async def ship(self, s: AsyncSession, order_id: int, tracking: str) -> Order:
        o = await self.order(s, order_id)
        if o.group_id is not None:
            await self.group_buying.check_shippable(s, o.group_id)
        done = await s.execute(update(Order).where(Order.id == order_id, Order.state == PAID)
                               .values(state=SHIPPED, ship_time=utcnow(), tracking_number=tracking))
        if done.rowcount != 1:  # type: ignore[attr-defined]
            raise state_conflict(await self.order(s, order_id), "ship")
        return await self.order(s, order_id)

    async def request_refund(self, s: AsyncSession, order_id: int, member_id: int) -> Order:
        await self.order(s, order_id, member_id=member_id)
        done = await s.execute(update(Order).where(Order.id == order_id, Order.state.in_([PAID, SHIPPED]))
                               .values(state=REFUND_REQUESTED))
        if done.rowcount != 1:  # type: ignore[attr-defined]
            raise state_conflict(await self.order(s, order_id), "request a refund of")
        return await self.order(s, order_id)

    async def approve_refund(self, s: AsyncSession, order_id: int) -> int:
        """Queue the refund of a REFUND_REQUESTED order (one per order); returns the refund id."""
        o = await self.order(s, order_id)
        if o.state != REFUND_REQUESTED:
            raise state_conflict(o, "approve a refund of")
        return await self.queue_refund(s, o, utcnow())

    async def queue_refund(self, s: AsyncSession, o: Order, now: datetime, *, prefix: str = "R",
                           reason: str = "member") -> int:
        """A pending refund of the whole payable amount (once per order and prefix); the payment side sends it."""
        out_refund_no = f"{prefix}{o.out_trade_no}"
        await insert_ignore(s, Refund.__table__, [{
            "order_id": o.id, "out_refund_no": out_refund_no, "amount_fen": o.payable_fen, "reason": reason,
            "state": REFUND_PENDING, "attempts": 0, "create_time": now}])
        return (await s.execute(select(Refund.id).where(Refund.out_refund_no == out_refund_no))).scalar_one()

    # --- scheduled transitions (claims by conditional UPDATE; safe with several replicas) --

    async def overdue(self, s: AsyncSession, now: datetime, limit: int = 100) -> list[int]:
        return list((await s.execute(select(Order.id).where(Order.state == PENDING_PAYMENT, Order.pay_deadline_time <= now)
                                     .order_by(Order.pay_deadline_time).limit(limit))).scalars())

    async def remind_unpaid(self, s: AsyncSession, now: datetime, after: timedelta, limit: int = 100) -> int:
        rows = (await s.execute(select(Order.id, Order.member_id).where(
            Order.state == PENDING_PAYMENT, Order.reminded.is_(False), Order.create_time <= now - after).limit(limit))).all()
        n = 0
        for oid, mid in rows:
            won = await s.execute(update(Order).where(Order.id == oid, Order.reminded.is_(False),
                                                      Order.state == PENDING_PAYMENT).values(reminded=True))
            if won.rowcount == 1:  # type: ignore[attr-defined]
                await self.journey.schedule(s, oid, mid, [("pay_reminder", now)])
                n += 1
        return n

    async def complete_due(self, s: AsyncSession, now: datetime, limit: int = 100) -> int:
        """SHIPPED orders whose after-sales window closed -> COMPLETED, event, journey steps."""
        rows = (await s.execute(select(Order).where(Order.state == SHIPPED, Order.ship_time <= now - self.after_sales)
                                .limit(limit))).scalars().all()
        n = 0
        for o in rows:
            won = await s.execute(update(Order).where(Order.id == o.id, Order.state == SHIPPED)
                                  .values(state=COMPLETED, close_time=now))
            if won.rowcount != 1:  # type: ignore[attr-defined]
                continue
            n += 1
            await self.outbox.add(s, "order.completed", events.OrderCompletedEvent(
                order=f"orders/{o.id}", member=f"members/{o.member_id}", paid_amount_fen=o.payable_fen,
                complete_time=timestamp(now)), subject=f"orders/{o.id}")
            steps = [("window_closed", now)]
            cycles = [it.repurchase_cycle_days for it in (await self.items_of(s, [o.id]))[o.id] if it.repurchase_cycle_days]
            if cycles and o.pay_time:
                steps.append(("repurchase", o.pay_time + timedelta(days=min(cycles))))
            await self.journey.schedule(s, o.id, o.member_id, steps)
        return n

    async def fail_group(self, s: AsyncSession, group_id: int, now: datetime) -> list[int]:
        """A group past its deadline, not full: FAILED; unpaid orders cancelled, paid ones refunded.

        Returns the refund ids to send (none when another replica claimed the group)."""
        orders = await self.group_buying.claim_failed(s, group_id, now)
        refunds: list[int] = []
        for o in orders or []:
            if o.state == PENDING_PAYMENT:
                await self.cancel(s, o.id, "group_failed", now=now)
            elif o.state == PAID:
                moved = await s.execute(update(Order).where(Order.id == o.id, Order.state == PAID)
                                        .values(state=REFUND_REQUESTED))
                if moved.rowcount == 1:  # type: ignore[attr-defined]
                    refunds.append(await self.queue_refund(s, o, now))
        return refunds
