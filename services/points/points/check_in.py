"""Daily check-in: points per brand day, a streak, and bonuses on given days of the streak cycle."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from mall.points.v1 import points_events_pb2 as evpb
from mall.points.v1 import points_service_pb2 as pb
from mallkit.errors import AlreadyExists
from mallkit.events import Outbox

from . import errors as reasons
from .ledger import Ledger
from .models import CheckInDay


@dataclass
class CheckInResult:
    day: date
    streak: int
    points: int
    bonus: int


class CheckIns:
    def __init__(self, ledger: Ledger, *, points: int, streak_cycle: int, streak_bonuses: dict[int, int],
                 outbox: Outbox | None = None):
        self.ledger = ledger
        self.outbox = outbox
        self.points = points
        self.streak_cycle = streak_cycle
        self.streak_bonuses = streak_bonuses

    def streak_bonus(self, streak: int) -> int:
        cycle = self.streak_cycle
        position = ((streak - 1) % cycle) + 1 if cycle else streak
        return self.streak_bonuses.get(position, 0)

    async def check_in(self, s: AsyncSession, member_id: int) -> CheckInResult:
        now = self.ledger.clock()
        today = self.ledger.brand_day(now)
        await self.ledger.lock(s, member_id, now)
        if await s.get(CheckInDay, (member_id, today)) is not None:
            raise AlreadyExists("already checked in today", reason=reasons.ALREADY_CHECKED_IN,
                                metadata={"date": today.isoformat()}, zh="今天已经签到过了")
        prev = await s.get(CheckInDay, (member_id, today - timedelta(days=1)))
        streak = prev.streak + 1 if prev else 1
        bonus = self.streak_bonus(streak)
        points = self.points + bonus
        s.add(CheckInDay(member_id=member_id, day=today, streak=streak, points=points, bonus=bonus, create_time=now))
        if points > 0:
            desc = f"每日签到 连续{streak}天" + (f" 奖励{bonus}" if bonus else "")
            e = await self.ledger.entry(s, member_id, f"checkin:{member_id}:{today.isoformat()}", pb.ENTRY_KIND_EARN,
                                        pb.ENTRY_SOURCE_CHECK_IN, today.isoformat(), points, 0, now, desc)
            await self.ledger.credit(s, e, points, now)
        if self.outbox is not None:
            event = evpb.CheckedInEvent(member=f"members/{member_id}", day=today.isoformat(), streak=streak,
                                        points=points)
            event.check_in_time.FromDatetime(now)
            await self.outbox.add(s, "points.checked_in", event, subject=f"members/{member_id}")
        await s.flush()
        return CheckInResult(today, streak, points, bonus)
