"""Purchase facts from the orders service's events, for RFM and segments.

A paid order adds growth value (one per paid yuan, through :meth:`Tiers.add_growth`)
and records the purchase fact and the member's aggregates; a refund records the
refund and takes back the growth the refunded amount gave (:func:`growth.reverse_order`:
the tier follows down by the tier rules, with history). Both run inside the inbox
transaction of their event (``events.py``), so each event applies once; a second event
about the same order adds nothing, and cannot refund more than was paid; a refund that
arrives before its order's paid event is retried until that one is applied.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import case, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mallkit.db import insert_ignore, utcnow
from mallkit.errors import FailedPrecondition

from . import growth
from .models import MemberPurchase, MemberPurchaseCategory, MemberPurchaseStats
from .portrait import Portrait
from .tiers import Tiers


class Purchases:
    def __init__(self, portrait: Portrait, tiers: Tiers):
        self.portrait = portrait
        self.tiers = tiers

    async def record_paid(self, s: AsyncSession, member_id: int, order: str, paid_fen: int,
                          categories: dict[str, int], pay_time: datetime) -> None:
        """``categories``: amount paid per product category of the order."""
        await self.portrait.member(s, member_id)  # events.py refuses an unknown member before this
        inserted = await s.execute(select(MemberPurchase.id).where(MemberPurchase.order == order))
        if inserted.first() is not None:
            return  # the same order's fact arrived under another event id: nothing to add
        s.add(MemberPurchase(member_id=member_id, order=order, paid_fen=paid_fen, refunded_fen=0,
                             categories=",".join(sorted(categories))[:512], pay_time=pay_time))
        await s.flush()
        growth = paid_fen // 100
        if growth > 0:
            await self.tiers.add_growth(s, member_id, growth, "order", order)
        now = utcnow()
        await insert_ignore(s, MemberPurchaseStats.__table__, [{
            "member_id": member_id, "order_count": 0, "total_paid_fen": 0, "refund_count": 0, "total_refunded_fen": 0,
            "first_order_time": None, "last_order_time": None, "update_time": now}])
        st = MemberPurchaseStats
        await s.execute(update(st).where(st.member_id == member_id).values(
            order_count=st.order_count + 1, total_paid_fen=st.total_paid_fen + paid_fen,
            first_order_time=case((st.first_order_time.is_(None) | (st.first_order_time > pay_time), pay_time),
                                  else_=st.first_order_time),
            last_order_time=case((st.last_order_time.is_(None) | (st.last_order_time < pay_time), pay_time),
                                 else_=st.last_order_time),
            update_time=now))
        pc = MemberPurchaseCategory
        for category, amount in sorted(categories.items()):
            await insert_ignore(s, pc.__table__, [{"member_id": member_id, "category": category[:64], "order_count": 0,
                                                   "amount_fen": 0, "last_order_time": pay_time}])
            await s.execute(update(pc).where(pc.member_id == member_id, pc.category == category[:64]).values(
                order_count=pc.order_count + 1, amount_fen=pc.amount_fen + amount,
                last_order_time=case((pc.last_order_time < pay_time, pay_time), else_=pc.last_order_time)))

    async def record_refund(self, s: AsyncSession, member_id: int, order: str, refund_fen: int,
                            when: datetime) -> None:
        mp = MemberPurchase
        done = await s.execute(update(mp)
                               .where(mp.order == order, mp.member_id == member_id,
                                      mp.refunded_fen + refund_fen <= mp.paid_fen)
                               .values(refunded_fen=mp.refunded_fen + refund_fen, refund_time=when))
        if done.rowcount != 1:  # type: ignore[attr-defined]
            if (await s.execute(select(mp.id).where(mp.order == order))).first() is not None:
                return  # more than was paid: the same refund under another event id, nothing more to take
            # The order's paid event is not applied yet (redeliveries may reorder them): retried with
            # backoff until it is, so the growth it gives is taken back.
            raise FailedPrecondition("the paid event of this order is not applied yet",
                                     reason="ORDER_NOT_APPLIED_YET", metadata={"order": order})
        st = MemberPurchaseStats
        await s.execute(update(st).where(st.member_id == member_id).values(
            refund_count=st.refund_count + 1, total_refunded_fen=st.total_refunded_fen + refund_fen,
            update_time=utcnow()))
        paid, refunded = (await s.execute(select(mp.paid_fen, mp.refunded_fen).where(
            mp.order == order, mp.member_id == member_id))).one()
        await growth.reverse_order(s, self.tiers.outbox, member_id, order, paid, refunded)
