"""Payment: WeChat Pay prepay, payment notifications (exactly once) and refunds.

A verified notification is applied once: the conditional UPDATE
PENDING_PAYMENT -> PAID is the arbiter across replicas; within a process,
repeats are answered from a bounded set of applied ids or a one-column read,
and deliveries arriving together share one transaction. A payment for an order
cancelled meanwhile is refunded, never fulfilled. Refunds are claimed with a
lease and sent until WeChat Pay answers SUCCESS (idempotent on out_refund_no);
a verified refund notification (REFUND.SUCCESS) completes the refund at once,
applied once by the conditional UPDATE PENDING -> SUCCEEDED, and the polling
stays as the fallback when a notification never arrives.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mall.orders.v1 import orders_events_pb2 as events
from mallkit import jobs
from mallkit.db import run_transaction, utcnow
from mallkit.errors import FailedPrecondition, NotFound, PermissionDenied, Unavailable
from mallkit.events import Outbox
from mallkit.wechatpay import NotificationRejected, PaidTransaction, PayApiError, RefundNotice, WechatPay

from . import errors as reasons
from .group_buy import GroupBuying
from .journey import Journey
from .lifecycle import Lifecycle, state_conflict, timestamp
from .members_client import MembersClient
from .models import (
    CANCELLED,
    PAID,
    PENDING_PAYMENT,
    REFUND_PENDING,
    REFUND_REQUESTED,
    REFUND_SUCCEEDED,
    REFUNDED,
    Order,
    PaymentNotification,
    Refund,
)

log = logging.getLogger("orders.payment")


class Payment:
    def __init__(self, *, sessions: async_sessionmaker[AsyncSession], outbox: Outbox, pay: WechatPay,
                 members: MembersClient, lifecycle: Lifecycle, group_buying: GroupBuying, journey: Journey,
                 care_after: timedelta):
        self.sessions = sessions
        self.outbox = outbox
        self.pay = pay
        self.members = members
        self.lifecycle = lifecycle
        self.group_buying = group_buying
        self.journey = journey
        self.care_after = care_after
        self._background: set[asyncio.Task] = set()
        self._inflight: dict[str, asyncio.Future[str]] = {}
        self._applied: dict[str, None] = {}  # notification ids applied by this process (insertion-ordered LRU)

    # --- prepay ----------------------------------------------------------------------------

    async def prepay(self, order_id: int, member_id: int) -> dict[str, str]:
        """The ``wx.requestPayment`` parameters of the member's unpaid order (the prepay id is kept and reused).

        Orders priced without the member's tier (flash sale, group buy) take their tier snapshot here."""
        async with self.sessions() as s:
            o = await self.lifecycle.order(s, order_id, member_id=member_id)
        if o.state != PENDING_PAYMENT:
            raise state_conflict(o, "pay")
        openid = o.openid or await self.members.payer_openid(member_id)
        tier = await self.members.tier(member_id) if not o.points_multiplier_percent else None
        try:
            prepay_id = o.prepay_id or await self.pay.jsapi_prepay(
                out_trade_no=o.out_trade_no, description=f"订单 {o.id}", total_fen=o.payable_fen, openid=openid)
        except PayApiError:
            raise Unavailable("WeChat Pay is unavailable", reason=reasons.PAYMENT_UNAVAILABLE,
                              zh="支付暂不可用,请稍后再试") from None
        if not o.prepay_id or tier is not None:
            values: dict = {"prepay_id": prepay_id, "openid": openid}
            if tier is not None:
                values.update(tier=tier.tier, points_multiplier_percent=tier.points_multiplier_percent)

            async def record(s: AsyncSession) -> None:
                await s.execute(update(Order).where(Order.id == order_id).values(**values))
            await run_transaction(self.sessions, record)
        return self.pay.request_payment_params(prepay_id)

    # --- notifications ---------------------------------------------------------------------

    async def handle_notification(self, *, timestamp: str, nonce: str, signature: str, serial: str, body: str) -> str:
        """Verify and apply one notification; returns the answer's message ("" when it paid the order)."""
        try:
            tx = self.pay.verify_notification(timestamp=timestamp, nonce=nonce, signature=signature, serial=serial,
                                              body=body)
        except NotificationRejected as exc:
            log.warning("payment notification rejected: %s", exc.reason)
            raise PermissionDenied("notification rejected", reason=exc.reason, zh="通知验证失败") from None
        if isinstance(tx, RefundNotice):
            return await self.handle_refund_notice(tx)
        # Fast paths for repeats (WeChat Pay retries until it sees 2xx): a notification this process
        # applied, or an order already carrying this transaction: acknowledged without a write.
        if tx.notification_id in self._applied:
            return "duplicate"
        async with self.sessions() as s:
            seen = await self.payment_state(s, tx.out_trade_no)
        if seen is not None and seen[0] == tx.transaction_id and seen[1] == tx.total_fen:
            self._remember(tx.notification_id)
            return "duplicate"
        # Deliveries of one notification arriving together in this process share one transaction;
        # across replicas the conditional UPDATE in apply_payment is the arbiter.
        leader = self._inflight.get(tx.notification_id)
        if leader is not None:
            outcome = await asyncio.shield(leader)
            return "duplicate" if outcome == "paid" else outcome
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._inflight[tx.notification_id] = future
        try:
            outcome, refund_id = await run_transaction(self.sessions, lambda s: self.apply_payment(s, tx))
            future.set_result(outcome)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no warning when nobody else waited
            raise
        finally:
            del self._inflight[tx.notification_id]
        self._remember(tx.notification_id)
        if refund_id is not None:
            self._kick_refund(refund_id)
        return "" if outcome == "paid" else outcome

    def _remember(self, notification_id: str) -> None:
        self._applied[notification_id] = None
        while len(self._applied) > 10_000:  # bounded: oldest first
            self._applied.pop(next(iter(self._applied)))

    async def payment_state(self, s: AsyncSession, out_trade_no: str) -> tuple[str | None, int] | None:
        """(transaction id, payable) of the order of an out_trade_no: one plain read, no lock."""
        row = (await s.execute(select(Order.transaction_id, Order.payable_fen)
                               .where(Order.out_trade_no == out_trade_no))).first()
        return (row[0], row[1]) if row else None

    async def apply_payment(self, s: AsyncSession, tx: PaidTransaction) -> tuple[str, int | None]:
        """Apply a verified notification once. Returns (outcome, refund id to process now or None).

        The conditional UPDATE PENDING_PAYMENT -> PAID is the arbiter: of any
        number of concurrent deliveries one changes the row; the others find it
        PAID with the same transaction id and are acknowledged.
        """
        o = (await s.execute(select(Order).where(Order.out_trade_no == tx.out_trade_no))).scalar_one_or_none()
        if o is None:
            raise NotFound("no order for out_trade_no", reason=reasons.ORDER_NOT_FOUND, zh="订单不存在")
        if tx.total_fen != o.payable_fen:
            raise FailedPrecondition("paid amount differs from the order's", reason=reasons.AMOUNT_MISMATCH,
                                     metadata={"expected_fen": o.payable_fen, "paid_fen": tx.total_fen}, zh="支付金额不符")
        if tx.trade_state != "SUCCESS":
            return "ignored", None
        now = utcnow()
        pay_time = _parse_time(tx.success_time) or now
        paid = await s.execute(update(Order)
                               .where(Order.id == o.id, Order.out_trade_no == tx.out_trade_no, Order.state == PENDING_PAYMENT)
                               .values(state=PAID, transaction_id=tx.transaction_id, pay_time=pay_time))
        refund_id = None
        if paid.rowcount == 1:  # type: ignore[attr-defined]
            outcome = "paid"
            await self._paid(s, o, pay_time, now)
        else:
            cur = await self.lifecycle.order(s, o.id)
            if cur.state == CANCELLED and cur.transaction_id is None:
                outcome = "late_refund"
                await s.execute(update(Order).where(Order.id == o.id, Order.transaction_id.is_(None))
                                .values(transaction_id=tx.transaction_id, refunded_fen=o.payable_fen))
                refund_id = await self.lifecycle.queue_refund(s, o, now, prefix="L", reason="late_payment")
            else:
                outcome = "duplicate"
        if outcome != "duplicate":
            s.add(PaymentNotification(notification_id=tx.notification_id[:64], order_id=o.id,
                                      transaction_id=tx.transaction_id, outcome=outcome, receive_time=now))
            await s.flush()
        return outcome, refund_id

    async def _paid(self, s: AsyncSession, o: Order, pay_time: datetime, now: datetime) -> None:
        """What a payment sets off: order.paid (with the tier snapshot), the group's count, journey steps."""
        items = (await self.lifecycle.items_of(s, [o.id]))[o.id]
        event = events.OrderPaidEvent(
            order=f"orders/{o.id}", member=f"members/{o.member_id}", paid_amount_fen=o.payable_fen,
            pay_time=timestamp(pay_time), tier=o.tier, points_multiplier_percent=o.points_multiplier_percent, items=[
                events.PurchasedItem(product=f"products/{it.product_id}", sku=f"products/{it.product_id}/skus/{it.sku_id}",
                                     category=f"categories/{it.category_id}", quantity=it.quantity, amount_fen=it.paid_fen)
                for it in items])
        await self.outbox.add(s, "order.paid", event, subject=f"orders/{o.id}")
        if o.group_id is not None:
            await self.group_buying.count_paid(s, o.group_id)
        await self.journey.schedule(s, o.id, o.member_id, [("payment_success", now), ("care", pay_time + self.care_after)])

    # --- refunds ---------------------------------------------------------------------------

    async def handle_refund_notice(self, notice: RefundNotice) -> str:
        """Apply a verified refund notification once ("" when it completed the refund)."""
        if notice.notification_id in self._applied:
            return "duplicate"
        if notice.refund_status != "SUCCESS":
            log.warning("refund %s reported %s; left to the polling", notice.out_refund_no, notice.refund_status)
            return "ignored"
        outcome = await run_transaction(self.sessions, lambda s: self.apply_refund_notice(s, notice))
        self._remember(notice.notification_id)
        return "" if outcome == "refunded" else outcome

    async def apply_refund_notice(self, s: AsyncSession, notice: RefundNotice) -> str:
        r = (await s.execute(select(Refund).where(Refund.out_refund_no == notice.out_refund_no))).scalar_one_or_none()
        if r is None:
            raise NotFound("no refund for out_refund_no", reason=reasons.ORDER_NOT_FOUND, zh="退款不存在")
        o = await self.lifecycle.order(s, r.order_id)
        if notice.out_trade_no != o.out_trade_no or notice.refund_fen != r.amount_fen:
            raise FailedPrecondition("refund notice differs from the refund", reason=reasons.AMOUNT_MISMATCH,
                                     metadata={"expected_fen": r.amount_fen, "refund_fen": notice.refund_fen},
                                     zh="退款金额不符")
        if not await self.refund_succeeded(s, r.id):
            return "duplicate"
        s.add(PaymentNotification(notification_id=notice.notification_id[:64], order_id=o.id,
                                  transaction_id=notice.refund_id[:32], outcome="refunded", receive_time=utcnow()))
        await s.flush()
        return "refunded"

    def _kick_refund(self, refund_id: int) -> None:
        """Send a refund right after the commit that queued it (the refunds job retries otherwise)."""
        task = asyncio.get_running_loop().create_task(self.process_refund(refund_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def due_refunds(self, s: AsyncSession, limit: int = 50) -> list[int]:
        return list((await s.execute(select(Refund.id).where(Refund.state == REFUND_PENDING).order_by(Refund.id)
                                     .limit(limit))).scalars())

    async def _details(self, s: AsyncSession, refund_id: int) -> tuple[Refund, Order]:
        r = await s.get(Refund, refund_id, populate_existing=True)
        assert r is not None
        return r, await self.lifecycle.order(s, r.order_id)

    async def _claim(self, s: AsyncSession, refund_id: int) -> tuple[str, int, str, int] | None:
        if not await jobs.claim(s, Refund.__table__, refund_id, timedelta(seconds=30)):
            return None
        r, o = await self._details(s, refund_id)
        return None if r.state != REFUND_PENDING else (r.out_refund_no, r.amount_fen, o.out_trade_no, o.payable_fen)

    async def refund_succeeded(self, s: AsyncSession, refund_id: int) -> bool:
        """PENDING -> SUCCEEDED once (polling or notification, whichever comes first); True when this call did it."""
        now = utcnow()
        done = await s.execute(update(Refund).where(Refund.id == refund_id, Refund.state == REFUND_PENDING)
                               .values(state=REFUND_SUCCEEDED, success_time=now, lease_until=None))
        if done.rowcount != 1:  # type: ignore[attr-defined]
            return False
        r, o = await self._details(s, refund_id)
        if r.reason != "member":
            return True  # a late payment: the order stays CANCELLED, it was never fulfilled
        moved = await s.execute(update(Order).where(Order.id == o.id, Order.state == REFUND_REQUESTED)
                                .values(state=REFUNDED, refunded_fen=r.amount_fen, close_time=now))
        if moved.rowcount == 1:  # type: ignore[attr-defined]
            await self.outbox.add(s, "order.refunded", events.OrderRefundedEvent(
                order=f"orders/{o.id}", member=f"members/{o.member_id}", refund_amount_fen=r.amount_fen,
                refund_time=timestamp(now)), subject=f"orders/{o.id}")
        return True

    async def process_refund(self, refund_id: int) -> bool:
        """Claim one pending refund (lease), ask WeChat Pay, record success. True when refunded."""
        got = await run_transaction(self.sessions, lambda s: self._claim(s, refund_id))
        if got is None:
            return False
        out_refund_no, amount, out_trade_no, total = got
        try:
            status = await self.pay.refund(out_trade_no=out_trade_no, out_refund_no=out_refund_no, refund_fen=amount,
                                           total_fen=total)
        except PayApiError:
            log.warning("refund %s failed; retried after the lease", out_refund_no)
            return False
        if status != "SUCCESS":
            return False  # PROCESSING: asked again after the lease (idempotent on out_refund_no)
        await run_transaction(self.sessions, lambda s: self.refund_succeeded(s, refund_id))
        return True

    async def process_refunds(self) -> int:
        ids = await run_transaction(self.sessions, lambda s: self.due_refunds(s))
        return sum([await self.process_refund(rid) for rid in ids])


def _parse_time(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if value else None
    except ValueError:
        return None
