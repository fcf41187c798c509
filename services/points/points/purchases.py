"""Purchase points: pending when an order is paid, available when it completes (after the
after-sales period), reversed when it is refunded; once per order whatever the event order."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from mall.points.v1 import points_service_pb2 as pb
from mallkit.errors import FailedPrecondition, NotFound

from . import errors as reasons
from .ledger import Ledger
from .models import Account, Lot, LotMove, PurchasePoints
from .reach import Reach


class Purchases:
    def __init__(self, ledger: Ledger, reach: Reach, *, points_per_yuan: int, reach_template: str):
        self.ledger = ledger
        self.reach = reach
        self.points_per_yuan = points_per_yuan
        self.reach_template = reach_template

    def purchase_points(self, paid_fen: int, multiplier_percent: int) -> int:
        return paid_fen * self.points_per_yuan * multiplier_percent // 10_000

    async def get(self, s: AsyncSession, order_id: int) -> PurchasePoints:
        p = await s.get(PurchasePoints, order_id, populate_existing=True)
        if p is None:
            raise NotFound("no purchase points for this order", reason=reasons.ORDER_POINTS_NOT_FOUND,
                           resource=("order", f"orders/{order_id}"), zh="订单积分不存在")
        return p

    async def pend(self, s: AsyncSession, order_id: int, member_id: int, paid_fen: int,
                   multiplier_percent: int) -> PurchasePoints:
        now = self.ledger.clock()
        await self.ledger.lock(s, member_id, now)
        existing = await s.get(PurchasePoints, order_id)
        if existing is not None:
            if existing.member_id != member_id:
                raise FailedPrecondition("order belongs to another member", reason=reasons.ORDER_MEMBER_MISMATCH,
                                         metadata={"order": f"orders/{order_id}"})
            return existing
        points = self.purchase_points(paid_fen, multiplier_percent)
        p = PurchasePoints(order_id=order_id, member_id=member_id, paid_amount_fen=paid_fen,
                           multiplier_percent=multiplier_percent, points=points, reversed_points=0,
                           state=pb.PURCHASE_POINTS_STATE_PENDING, create_time=now, update_time=now)
        s.add(p)
        await s.flush()
        if points:
            await self.ledger.entry(s, member_id, f"order:{order_id}:pend", pb.ENTRY_KIND_EARN, pb.ENTRY_SOURCE_ORDER,
                                    f"orders/{order_id}", 0, points, now, "购物积分(售后期后到账)")
            await s.execute(update(Account).where(Account.member_id == member_id)
                            .values(pending=Account.pending + points))
        return p

    async def confirm(self, s: AsyncSession, order_id: int) -> PurchasePoints:
        now = self.ledger.clock()
        p = await self.get(s, order_id)
        await self.ledger.lock(s, p.member_id, now)
        p = await self.get(s, order_id)  # re-read under the lock
        if p.state != pb.PURCHASE_POINTS_STATE_PENDING:
            return p
        await s.execute(update(PurchasePoints).where(PurchasePoints.order_id == order_id)
                        .values(state=pb.PURCHASE_POINTS_STATE_CONFIRMED, update_time=now))
        if p.points:
            e = await self.ledger.entry(s, p.member_id, f"order:{order_id}:confirm", pb.ENTRY_KIND_CONFIRM,
                                        pb.ENTRY_SOURCE_ORDER, f"orders/{order_id}", p.points, -p.points, now,
                                        "购物积分到账")
            moved = await s.execute(update(Account).where(Account.member_id == p.member_id,
                                                          Account.pending >= p.points)
                                    .values(pending=Account.pending - p.points))
            if moved.rowcount != 1:
                raise AssertionError("pending balance below an order's pending points")
            lot = await self.ledger.credit(s, e, p.points, now)
            await s.execute(update(PurchasePoints).where(PurchasePoints.order_id == order_id).values(lot_id=lot.id))
            await self.reach.queue(
                s, p.member_id, f"points-confirm-{order_id}", self.reach_template,
                "points.purchase_confirmed", {"thing1": "购物积分已到账", "number2": str(p.points)},
                "pages/points/index")
        return await self.get(s, order_id)

    async def reverse(self, s: AsyncSession, order_id: int) -> PurchasePoints:
        now = self.ledger.clock()
        p = await self.get(s, order_id)
        await self.ledger.lock(s, p.member_id, now)
        p = await self.get(s, order_id)
        if p.state == pb.PURCHASE_POINTS_STATE_REVERSED:
            return p
        reversed_points = 0
        key, ref = f"order:{order_id}:reverse", f"orders/{order_id}"
        if p.state == pb.PURCHASE_POINTS_STATE_PENDING and p.points:
            await self.ledger.entry(s, p.member_id, key, pb.ENTRY_KIND_REVERSE, pb.ENTRY_SOURCE_ORDER, ref, 0,
                                    -p.points, now, "订单退款 积分撤回")
            moved = await s.execute(update(Account).where(Account.member_id == p.member_id,
                                                          Account.pending >= p.points)
                                    .values(pending=Account.pending - p.points))
            if moved.rowcount != 1:
                raise AssertionError("pending balance below an order's pending points")
            reversed_points = p.points
        elif p.state == pb.PURCHASE_POINTS_STATE_CONFIRMED and p.lot_id is not None:
            lot = await s.get(Lot, p.lot_id, populate_existing=True)
            take = min(p.points, lot.remaining) if lot else 0
            if take:  # only what is left of the order's own lot: points already spent stay spent
                e = await self.ledger.entry(s, p.member_id, key, pb.ENTRY_KIND_REVERSE, pb.ENTRY_SOURCE_ORDER, ref,
                                            -take, 0, now, "订单退款 积分撤回")
                await s.execute(update(Account).where(Account.member_id == p.member_id, Account.available >= take)
                                .values(available=Account.available - take))
                await s.execute(update(Lot).where(Lot.id == p.lot_id).values(remaining=Lot.remaining - take))
                s.add(LotMove(entry_id=e.id, lot_id=p.lot_id, delta=-take))
            reversed_points = take
        await s.execute(update(PurchasePoints).where(PurchasePoints.order_id == order_id)
                        .values(state=pb.PURCHASE_POINTS_STATE_REVERSED, reversed_points=reversed_points,
                                update_time=now))
        await s.flush()
        return await self.get(s, order_id)
