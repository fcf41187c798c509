"""Expiry: lots past their expiry time expire (once, under the account lock and the lot's
``expired`` guard), and members are reminded once of the lots expiring soon."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mall.points.v1 import points_service_pb2 as pb

from .ledger import AlreadyApplied, Ledger
from .models import Account, Lot, LotMove
from .reach import Reach


class Expiry:
    def __init__(self, ledger: Ledger, reach: Reach, *, reminder_days: int, reach_template: str):
        self.ledger = ledger
        self.reach = reach
        self.reminder_days = reminder_days
        self.reach_template = reach_template

    async def due_lots(self, s: AsyncSession, now: datetime, batch: int) -> list[tuple[int, int]]:
        rows = await s.execute(select(Lot.id, Lot.member_id).where(Lot.expire_time <= now, Lot.remaining > 0,
                                                                   Lot.expired.is_(False))
                               .order_by(Lot.expire_time, Lot.id).limit(batch))
        return [tuple(r) for r in rows.all()]

    async def expire_lot(self, s: AsyncSession, lot_id: int, member_id: int, now: datetime) -> int:
        """Expire what is left of one lot; 0 if another replica (or nothing) got there first."""
        await self.ledger.lock(s, member_id, now)
        lot = await s.get(Lot, lot_id, populate_existing=True)
        if lot is None or lot.expired or lot.expire_time > now:
            return 0
        amount = lot.remaining
        await s.execute(update(Lot).where(Lot.id == lot_id, Lot.expired.is_(False)).values(remaining=0, expired=True))
        if amount == 0:
            return 0
        try:
            e = await self.ledger.entry(s, member_id, f"expire:{lot_id}", pb.ENTRY_KIND_EXPIRE, pb.ENTRY_SOURCE_EXPIRY,
                                        f"lots/{lot_id}", -amount, 0, now, "积分过期")
        except AlreadyApplied:  # cannot happen while `expired` guards the lot; keep the ledger right regardless
            raise AssertionError(f"lot {lot_id} expired twice") from None
        taken = await s.execute(update(Account).where(Account.member_id == member_id, Account.available >= amount)
                                .values(available=Account.available - amount))
        if taken.rowcount != 1:
            raise AssertionError("available balance below a lot's remaining points")
        s.add(LotMove(entry_id=e.id, lot_id=lot_id, delta=-amount))
        await s.flush()
        return amount

    async def members_to_remind(self, s: AsyncSession, now: datetime, batch: int) -> list[int]:
        horizon = now + timedelta(days=self.reminder_days)
        rows = await s.execute(select(Lot.member_id).where(
            Lot.remaining > 0, Lot.expired.is_(False), Lot.reminded_time.is_(None), Lot.expire_time <= horizon,
            Lot.expire_time > now).group_by(Lot.member_id).limit(batch))
        return list(rows.scalars().all())

    async def remind_member(self, s: AsyncSession, member_id: int, now: datetime) -> int:
        """Claim the member's unreminded lots expiring soon and queue one reminder for them."""
        horizon = now + timedelta(days=self.reminder_days)
        cond = (Lot.member_id == member_id, Lot.remaining > 0, Lot.expired.is_(False), Lot.reminded_time.is_(None),
                Lot.expire_time <= horizon, Lot.expire_time > now)
        await self.ledger.lock(s, member_id, now)
        lots = (await s.execute(select(Lot.id, Lot.remaining, Lot.expire_time).where(*cond))).all()
        if not lots:
            return 0
        claimed = await s.execute(update(Lot).where(Lot.id.in_([lot.id for lot in lots]), Lot.reminded_time.is_(None))
                                  .values(reminded_time=now))
        if claimed.rowcount != len(lots):
            raise AssertionError("reminder claim raced under the account lock")
        amount = sum(lot.remaining for lot in lots)
        first = min(lot.expire_time for lot in lots)
        await self.reach.queue(
            s, member_id, f"points-expiry-{member_id}-{min(lot.id for lot in lots)}",
            self.reach_template, "points.expiry_reminder",
            {"number1": str(amount), "date2": self.ledger.brand_day(first).isoformat()}, "pages/points/index")
        return amount
