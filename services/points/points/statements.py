"""Statements: a member's points account (balances, expiring soon, check-in streak) and ledger entries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from mallkit.pagination import PageTokens
from mallkit.queries import keyset_page

from .ledger import Ledger
from .models import Account, CheckInDay, Entry, Lot


@dataclass
class AccountView:
    member_id: int
    available: int
    pending: int
    expiring_soon: int
    next_expire_time: datetime | None
    streak: int
    last_check_in: date | None
    checked_in_today: bool


class Statements:
    def __init__(self, ledger: Ledger, pages: PageTokens, *, reminder_days: int):
        self.ledger = ledger
        self.pages = pages
        self.reminder_days = reminder_days

    async def account(self, s: AsyncSession, member_id: int) -> AccountView:
        now = self.ledger.clock()
        row = (await s.execute(select(Account.available, Account.pending).where(Account.member_id == member_id))).first()
        available, pending = (row.available, row.pending) if row else (0, 0)
        horizon = now + timedelta(days=self.reminder_days)
        soon = (await s.execute(
            select(func.coalesce(func.sum(Lot.remaining), 0), func.min(Lot.expire_time))
            .where(Lot.member_id == member_id, Lot.remaining > 0, Lot.expire_time <= horizon)
        )).one()
        last = (await s.execute(select(CheckInDay.day, CheckInDay.streak).where(CheckInDay.member_id == member_id)
                                .order_by(CheckInDay.day.desc()).limit(1))).first()
        today = self.ledger.brand_day(now)
        streak = 0
        if last and last.day >= today - timedelta(days=1):
            streak = last.streak
        next_expire = soon[1]
        if isinstance(next_expire, str):
            next_expire = datetime.fromisoformat(next_expire)
        if next_expire is not None and next_expire.tzinfo is None:
            next_expire = next_expire.replace(tzinfo=UTC)
        return AccountView(member_id, available, pending, int(soon[0]), next_expire if soon[0] else None, streak,
                           last.day if last else None, bool(last and last.day == today))

    async def list_entries(self, s: AsyncSession, member_id: int, size: int, token: str) -> tuple[list[Entry], str]:
        """The member's entries, newest first, and the next page's token."""
        return await keyset_page(s, select(Entry).where(Entry.member_id == member_id), key=Entry.id.desc(),
                                 tokens=self.pages, page_size=size, page_token=token, filters=[member_id])
