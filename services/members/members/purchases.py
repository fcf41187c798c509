"""Purchase facts from the orders service's events, for RFM and segments.

``order.paid`` adds growth value (one per paid yuan, through
:meth:`MembersService.add_growth`) and records the purchase fact and the
member's aggregates; ``order.refunded`` records the refund and takes back the
growth the refunded amount gave (:func:`growth.take_back`: the tier follows
down, with history). Both run inside the consumer's inbox transaction, so each
event applies once; a second refund event of the same order cannot take more
than was paid; a refund that arrives before its order's paid event is retried
until that one is applied.

An event of a member this service does not know is refused in ``events.py``, not
retried: members are created before they can order, so it can never apply.
"""

from __future__ import annotations

from datetime import UTC

from sqlalchemy import case, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mallkit.db import insert_ignore, utcnow
from mallkit.errors import FailedPrecondition
from mallkit.names import parse_id

from . import growth as growth_
from .models import MemberPurchase, MemberPurchaseCategory, MemberPurchaseStats
from .service import MembersService


async def on_order_paid(service: MembersService, s: AsyncSession, event, payload) -> None:
    member_id = parse_id(payload.member, "members", "member")
    pay_time = payload.pay_time.ToDatetime(tzinfo=UTC) if payload.HasField("pay_time") else utcnow()
    categories: dict[str, int] = {}
    for item in payload.items:
        categories[item.category] = categories.get(item.category, 0) + item.amount_fen
    await service.member(s, member_id)  # events.py refuses an unknown member before this
    inserted = await s.execute(
        select(MemberPurchase.id).where(MemberPurchase.order == payload.order))
    if inserted.first() is not None:
        return  # the same order's fact arrived under another event id: nothing to add
    s.add(MemberPurchase(member_id=member_id, order=payload.order, paid_fen=payload.paid_amount_fen, refunded_fen=0,
                         categories=",".join(sorted(categories))[:512], pay_time=pay_time))
    await s.flush()
    growth = payload.paid_amount_fen // 100
    if growth > 0:
        await service.add_growth(s, member_id, growth, "order", payload.order)
    now = utcnow()
    await insert_ignore(s, MemberPurchaseStats.__table__, [{
        "member_id": member_id, "order_count": 0, "total_paid_fen": 0, "refund_count": 0, "total_refunded_fen": 0,
        "first_order_time": None, "last_order_time": None, "update_time": now}])
    st = MemberPurchaseStats
    await s.execute(update(st).where(st.member_id == member_id).values(
        order_count=st.order_count + 1, total_paid_fen=st.total_paid_fen + payload.paid_amount_fen,
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


async def on_order_refunded(service: MembersService, s: AsyncSession, event, payload) -> None:
    member_id = parse_id(payload.member, "members", "member")
    when = payload.refund_time.ToDatetime(tzinfo=UTC) if payload.HasField("refund_time") else utcnow()
    mp = MemberPurchase
    done = await s.execute(update(mp)
                           .where(mp.order == payload.order, mp.member_id == member_id,
                                  mp.refunded_fen + payload.refund_amount_fen <= mp.paid_fen)
                           .values(refunded_fen=mp.refunded_fen + payload.refund_amount_fen, refund_time=when))
    if done.rowcount != 1:  # type: ignore[attr-defined]
        if (await s.execute(select(mp.id).where(mp.order == payload.order))).first() is not None:
            return  # more than was paid: the same refund under another event id, nothing more to take
        # The order's paid event is not applied yet (redeliveries may reorder them): retried with
        # backoff until it is, so the growth it gives is taken back.
        raise FailedPrecondition("the paid event of this order is not applied yet", reason="ORDER_NOT_APPLIED_YET",
                                 metadata={"order": payload.order})
    st = MemberPurchaseStats
    await s.execute(update(st).where(st.member_id == member_id).values(
        refund_count=st.refund_count + 1, total_refunded_fen=st.total_refunded_fen + payload.refund_amount_fen,
        update_time=utcnow()))
    paid, refunded = (await s.execute(select(mp.paid_fen, mp.refunded_fen).where(
        mp.order == payload.order, mp.member_id == member_id))).one()
    await growth_.reverse_order(s, service.outbox, member_id, payload.order, paid, refunded)
