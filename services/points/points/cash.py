"""Points + cash (积分+现金): the cash part of a redemption paid through WeChat Pay v3 (JSAPI).

The points service is a merchant of its own at WeChat Pay (``POINTS_WECHATPAY_*``,
the protocol client of :mod:`mallkit.wechatpay`, notifications on
``POST /v1/wechatpay/points/notifications``): the redemption holds points and
stock in PENDING_PAYMENT; the verified payment notification moves it on once
(the conditional ``PENDING_PAYMENT -> COMPLETED | PENDING_SHIPMENT`` UPDATE is
the arbiter across deliveries and replicas) and only then is a coupon issued.
An unpaid redemption expires at ``pay_deadline_time`` (the conditional
``PENDING_PAYMENT -> EXPIRED`` transition returns points and stock once); a
payment arriving after that is refunded, once (``out_refund_no`` = "L" +
``out_trade_no``), confirmed by the refund notification or by the refunds job.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mall.points.v1 import points_service_pb2 as pb
from mallkit import jobs
from mallkit.db import run_transaction
from mallkit.errors import FailedPrecondition, NotFound, PermissionDenied, Unavailable
from mallkit.members import MembersClient
from mallkit.wechatpay import NotificationRejected, PaidTransaction, PayApiError, RefundNotice, WechatPay

from . import errors as reasons
from .mall import Mall
from .models import CashNotification, Redemption

log = logging.getLogger("points.cash")

PENDING_PAYMENT, EXPIRED = pb.REDEMPTION_STATE_PENDING_PAYMENT, pb.REDEMPTION_STATE_EXPIRED
REFUND_NONE, REFUND_DUE, REFUND_DONE = 0, 1, 2


class CashPayments:
    def __init__(self, *, sessions: async_sessionmaker[AsyncSession], pay: WechatPay, mall: Mall,
                 members: MembersClient, pay_timeout: timedelta):
        self.sessions = sessions
        self.pay = pay
        self.mall = mall
        self.members = members
        self.pay_timeout = pay_timeout

    def now(self) -> datetime:
        return self.mall.ledger.clock()

    def hold(self) -> dict:
        """The trade number and payment deadline of a new points + cash redemption (written with it)."""
        return {"out_trade_no": "P" + uuid.uuid4().hex[:31], "pay_deadline_time": self.now() + self.pay_timeout}

    # --- prepay --------------------------------------------------------------------------------

    async def prepay(self, member_id: int, redemption_id: int) -> dict[str, str]:
        async with self.sessions() as s:
            r = await self.mall.redemption(s, member_id, redemption_id)
        if r.state != PENDING_PAYMENT:
            raise FailedPrecondition("the redemption is not awaiting payment", reason=reasons.REDEMPTION_STATE,
                                     metadata={"state": pb.RedemptionState.Name(r.state)}, zh="当前状态不允许支付")
        assert r.out_trade_no is not None and r.pay_deadline_time is not None
        if r.pay_deadline_time <= self.now():
            raise FailedPrecondition("the payment deadline has passed", reason=reasons.REDEMPTION_PAYMENT_EXPIRED,
                                     zh="支付已超时")
        try:
            prepay_id = r.prepay_id or await self.pay.jsapi_prepay(
                out_trade_no=r.out_trade_no, description=f"积分兑换 {r.item_display_name}", total_fen=r.cash_fen,
                openid=(await self.members.identity(member_id)).openid)
        except PayApiError:
            raise Unavailable("WeChat Pay is unavailable", reason=reasons.PAYMENT_UNAVAILABLE,
                              zh="支付暂不可用,请稍后再试") from None
        if not r.prepay_id:
            async def record(s: AsyncSession) -> None:
                await s.execute(update(Redemption).where(Redemption.id == r.id).values(prepay_id=prepay_id))
            await run_transaction(self.sessions, record)
        return self.pay.request_payment_params(prepay_id)

    # --- notifications -------------------------------------------------------------------------

    async def handle_notification(self, *, timestamp: str, nonce: str, signature: str, serial: str, body: str) -> str:
        """Verify and apply one notification; "" when it changed something, else why it was only acknowledged."""
        try:
            tx = self.pay.verify_notification(timestamp=timestamp, nonce=nonce, signature=signature, serial=serial,
                                              body=body)
        except NotificationRejected as exc:
            log.warning("points payment notification rejected: %s", exc.reason)
            raise PermissionDenied("notification rejected", reason=exc.reason, zh="通知验证失败") from None
        if isinstance(tx, RefundNotice):
            if tx.refund_status != "SUCCESS":
                return "ignored"  # the refunds job asks again
            outcome = await run_transaction(self.sessions, lambda s: self.apply_refund_notice(s, tx))
        else:
            outcome = await run_transaction(self.sessions, lambda s: self.apply_payment(s, tx))
        return "" if outcome in ("paid", "late_refund", "refunded") else outcome

    async def _by_trade_no(self, s: AsyncSession, out_trade_no: str) -> Redemption:
        r = (await s.execute(select(Redemption).where(Redemption.out_trade_no == out_trade_no))).scalar_one_or_none()
        if r is None:
            raise NotFound("no redemption for out_trade_no", reason=reasons.REDEMPTION_NOT_FOUND, zh="兑换记录不存在")
        return r

    async def apply_payment(self, s: AsyncSession, tx: PaidTransaction) -> str:
        r = await self._by_trade_no(s, tx.out_trade_no)
        if tx.total_fen != r.cash_fen:
            raise FailedPrecondition("paid amount differs from the redemption's cash part",
                                     reason=reasons.AMOUNT_MISMATCH,
                                     metadata={"expected_fen": r.cash_fen, "paid_fen": tx.total_fen}, zh="支付金额不符")
        if tx.trade_state != "SUCCESS":
            return "ignored"
        now = self.now()
        after = (pb.REDEMPTION_STATE_PENDING_SHIPMENT if r.item_kind == pb.ITEM_KIND_PHYSICAL
                 else pb.REDEMPTION_STATE_COMPLETED)
        paid = await s.execute(update(Redemption).where(Redemption.id == r.id, Redemption.state == PENDING_PAYMENT)
                               .values(state=after, transaction_id=tx.transaction_id, pay_time=now, update_time=now))
        if paid.rowcount == 1:  # type: ignore[attr-defined]
            outcome = "paid"
            if r.item_kind == pb.ITEM_KIND_COUPON:
                await self.mall.coupon_redeemed(s, r, now)
        else:
            late = await s.execute(update(Redemption).where(
                Redemption.id == r.id, Redemption.state == EXPIRED, Redemption.transaction_id.is_(None))
                .values(transaction_id=tx.transaction_id, refund_state=REFUND_DUE, update_time=now))
            outcome = "late_refund" if late.rowcount == 1 else "duplicate"  # type: ignore[attr-defined]
        if outcome != "duplicate":
            s.add(CashNotification(notification_id=tx.notification_id[:64], redemption_id=r.id, outcome=outcome,
                                   receive_time=now))
            await s.flush()
        return outcome

    async def apply_refund_notice(self, s: AsyncSession, notice: RefundNotice) -> str:
        r = await self._by_trade_no(s, notice.out_trade_no)
        if notice.refund_fen != r.cash_fen:
            raise FailedPrecondition("refund notice differs from the refund", reason=reasons.AMOUNT_MISMATCH,
                                     metadata={"expected_fen": r.cash_fen, "refund_fen": notice.refund_fen},
                                     zh="退款金额不符")
        done = await s.execute(update(Redemption).where(Redemption.id == r.id, Redemption.refund_state == REFUND_DUE)
                               .values(refund_state=REFUND_DONE, lease_until=None))
        if done.rowcount != 1:  # type: ignore[attr-defined]
            return "duplicate"
        s.add(CashNotification(notification_id=notice.notification_id[:64], redemption_id=r.id, outcome="refunded",
                               receive_time=self.now()))
        await s.flush()
        return "refunded"

    # --- jobs ------------------------------------------------------------------------------------

    async def expire_unpaid(self, now: datetime | None = None, limit: int = 100) -> int:
        """Unpaid points + cash redemptions past their deadline: EXPIRED, points and stock back, once each."""
        now = now or self.now()
        async with self.sessions() as s:
            due = (await s.execute(select(Redemption.id, Redemption.member_id).where(
                Redemption.state == PENDING_PAYMENT, Redemption.pay_deadline_time <= now).limit(limit))).all()
        n = 0
        for rid, member_id in due:
            try:
                await run_transaction(self.sessions, lambda s, rid=rid, mid=member_id: self.mall.cancel_redemption(
                    s, mid, rid, from_state=PENDING_PAYMENT, to_state=EXPIRED))
                n += 1
            except FailedPrecondition:
                pass  # paid meanwhile, or another replica expired it
        return n

    async def process_refunds(self, limit: int = 50) -> int:
        """Refunds of late payments, sent until WeChat Pay answers SUCCESS (idempotent on out_refund_no)."""
        async with self.sessions() as s:
            ids = list((await s.execute(select(Redemption.id).where(Redemption.refund_state == REFUND_DUE)
                                        .limit(limit))).scalars())
        done = 0
        for rid in ids:
            async def claim(s: AsyncSession, rid=rid) -> Redemption | None:
                if not await jobs.claim(s, Redemption.__table__, rid, timedelta(seconds=30)):
                    return None
                return await s.get(Redemption, rid, populate_existing=True)
            r = await run_transaction(self.sessions, claim)
            if r is None or r.refund_state != REFUND_DUE or r.out_trade_no is None:
                continue
            try:
                status = await self.pay.refund(out_trade_no=r.out_trade_no, out_refund_no=f"L{r.out_trade_no}",
                                               refund_fen=r.cash_fen, total_fen=r.cash_fen)
            except PayApiError:
                log.warning("refund of redemption %s failed; retried after the lease", rid)
                continue
            if status == "SUCCESS":
                async def succeeded(s: AsyncSession, rid=rid) -> None:
                    await s.execute(update(Redemption).where(Redemption.id == rid, Redemption.refund_state == REFUND_DUE)
                                    .values(refund_state=REFUND_DONE, lease_until=None))
                await run_transaction(self.sessions, succeeded)
                done += 1
        return done
