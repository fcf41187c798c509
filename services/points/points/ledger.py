"""The points ledger: accounts, entries and lots, the primitives every other sub-domain uses.

Every use case of the points service runs inside the single transaction its
caller opened (``session``). The rules that keep the ledger right:

* Every change of a member's points that reads them first takes the lock of
  the member's account row (:meth:`Ledger.lock`, or the conditional UPDATE of
  :meth:`Ledger.take`), so the changes of one member are serialized and
  everything read afterwards in the transaction is stable. A grant that only
  appends (:meth:`Ledger.append_credit`) takes it last, with the balance change.
* Every change is one ledger entry with a unique ``idempotency_key``, looked
  up under that lock: an effect already applied is not applied again.
* Balances change by conditional UPDATE (``available >= :n``), stock too
  (``stock >= :q``); zero rows means insufficient / sold out, and the whole
  transaction is rolled back by the error raised.
* Available points live in lots; every entry that changes ``available``
  records its per-lot moves, spending takes the lots that expire first.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from mall.points.v1 import points_service_pb2 as pb
from mallkit.db import insert_ignore, insert_ignore_statement, utcnow
from mallkit.errors import FailedPrecondition

from . import errors as reasons
from .models import Account, Entry, Lot, LotMove

# Statements of the grant path, built once (Core on the tables: no unit of work, cached compilation).
_accounts = Account.__table__
INSERT_ENTRY = insert(Entry.__table__)
INSERT_LOT = insert(Lot.__table__)
INSERT_LOT_MOVE = insert(LotMove.__table__)
TAKE_AVAILABLE = (update(_accounts)
                  .where(_accounts.c.member_id == bindparam("member"), _accounts.c.available >= bindparam("amount"))
                  .values(available=_accounts.c.available - bindparam("amount")))
_lots = Lot.__table__
LOTS_TO_SPEND = (select(_lots.c.id, _lots.c.remaining)
                 .where(_lots.c.member_id == bindparam("member"), _lots.c.remaining > 0)
                 .order_by(_lots.c.expire_time, _lots.c.id))
SPEND_FROM_LOT = update(_lots).where(_lots.c.id == bindparam("lot")).values(remaining=_lots.c.remaining - bindparam("take"))
ADD_AVAILABLE = (update(_accounts).where(_accounts.c.member_id == bindparam("member"))
                 .values(available=_accounts.c.available + bindparam("amount"), update_time=bindparam("now")))


class AlreadyApplied(Exception):
    """The ledger already holds the entry of this idempotency key."""

    def __init__(self, entry: Entry):
        super().__init__(entry.idempotency_key)
        self.entry = entry


class Ledger:
    def __init__(self, *, brand_timezone: str, expiry_policy: str, expiry_days: int,
                 clock: Callable[[], datetime] = utcnow):
        self.tz = ZoneInfo(brand_timezone)
        self.expiry_policy = expiry_policy
        self.expiry_days = expiry_days
        #: "Now" of every use case and job; tests replace it to cross day boundaries.
        self.clock = clock

    # --- calendar ------------------------------------------------------------------------------

    def brand_day(self, when: datetime) -> date:
        return when.astimezone(self.tz).date()

    def expire_time_for(self, earn: datetime) -> datetime:
        if self.expiry_policy == "days":
            return earn + timedelta(days=self.expiry_days)
        year = earn.astimezone(self.tz).year
        return datetime(year + 2, 1, 1, tzinfo=self.tz).astimezone(UTC)  # end of the following year

    # --- primitives ----------------------------------------------------------------------------

    async def lock(self, s: AsyncSession, member_id: int, now: datetime) -> None:
        """Lock the member's account row (creating it on first use)."""
        locked = await s.execute(update(Account).where(Account.member_id == member_id).values(update_time=now))
        if locked.rowcount == 1:
            return
        await insert_ignore(s, Account.__table__, [{"member_id": member_id, "available": 0, "pending": 0,
                                                    "create_time": now, "update_time": now}])
        await s.execute(update(Account).where(Account.member_id == member_id).values(update_time=now))

    async def applied(self, s: AsyncSession, key: str) -> Entry | None:
        return (await s.execute(select(Entry).where(Entry.idempotency_key == key))).scalar_one_or_none()

    async def entry(self, s: AsyncSession, member_id: int, key: str, kind: int, source: int, source_ref: str,
                    available: int, pending: int, now: datetime, description: str = "", operator: str = "",
                    fresh: bool = False) -> Entry:
        """Append an entry (the account is locked); AlreadyApplied if its key is in the ledger.

        ``fresh``: the key names a row this transaction just created (or a state it just
        claimed), so it cannot be in the ledger yet; the unique key still guards it."""
        if not fresh:
            found = await self.applied(s, key)
            if found is not None:
                raise AlreadyApplied(found)
        e = Entry(member_id=member_id, kind=kind, source=source, source_ref=source_ref, available_delta=available,
                  pending_delta=pending, description=description[:200], operator=operator, idempotency_key=key,
                  create_time=now)
        s.add(e)
        await s.flush()
        return e

    async def credit(self, s: AsyncSession, e: Entry, amount: int, now: datetime) -> Lot:
        """Available points in a new lot."""
        await s.execute(update(Account).where(Account.member_id == e.member_id)
                        .values(available=Account.available + amount))
        lot = Lot(member_id=e.member_id, entry_id=e.id, amount=amount, remaining=amount, earn_time=now,
                  expire_time=self.expire_time_for(now), expired=False)
        s.add(lot)
        await s.flush()
        s.add(LotMove(entry_id=e.id, lot_id=lot.id, delta=amount))
        return lot

    async def take(self, s: AsyncSession, member_id: int, amount: int) -> None:
        """Lower the available balance, or INSUFFICIENT_POINTS (the account is locked)."""
        taken = await (await s.connection()).execute(TAKE_AVAILABLE, {"member": member_id, "amount": amount})
        if taken.rowcount != 1:
            raise FailedPrecondition("not enough points", reason=reasons.INSUFFICIENT_POINTS,
                                     metadata={"required": amount}, zh="积分不足")

    async def consume_lots(self, s: AsyncSession, e: Entry, amount: int) -> None:
        await self.consume_lots_of(s, e.member_id, e.id, amount)

    async def consume_lots_of(self, s: AsyncSession, member_id: int, entry_id: int, amount: int) -> None:
        """Take points from the member's lots, those expiring first first (the account is locked)."""
        conn = await s.connection()
        lots = (await conn.execute(LOTS_TO_SPEND, {"member": member_id})).all()
        left, moves = amount, []
        for lot_id, remaining in lots:
            if left == 0:
                break
            take = min(left, remaining)
            await conn.execute(SPEND_FROM_LOT, {"lot": lot_id, "take": take})
            moves.append({"entry_id": entry_id, "lot_id": lot_id, "delta": -take})
            left -= take
        if left:  # the balance said yes but the lots disagree: refuse rather than corrupt
            raise AssertionError(f"lots of member {member_id} hold less than the balance")
        if moves:
            await conn.execute(INSERT_LOT_MOVE, moves)

    async def append_entry(self, s: AsyncSession, values: dict) -> int:
        """Append an entry whose key is fresh (it names a row this transaction just created); its id."""
        return (await (await s.connection()).execute(INSERT_ENTRY, values)).inserted_primary_key[0]

    async def debit(self, s: AsyncSession, e: Entry, amount: int) -> None:
        await self.take(s, e.member_id, amount)
        await self.consume_lots(s, e, amount)

    async def append_credit(self, s: AsyncSession, member_id: int, key: str, kind: int, source: int, source_ref: str,
                            amount: int, now: datetime, description: str = "") -> int:
        """A grant that only appends: the entry (``key`` fresh: it names a row this transaction
        just created), its lot and lot move, then **last** the account's available balance
        (created on first use), so the account row is locked only until the commit. Nothing
        is read: no lock is needed before (a concurrent change of the member's points waits on
        the account row at its own turn). Returns the entry id."""
        conn = await s.connection()
        entry_id = (await conn.execute(INSERT_ENTRY, {
            "member_id": member_id, "kind": kind, "source": source, "source_ref": source_ref,
            "available_delta": amount, "pending_delta": 0, "description": description[:200], "operator": "",
            "idempotency_key": key, "create_time": now})).inserted_primary_key[0]
        lot_id = (await conn.execute(INSERT_LOT, {
            "member_id": member_id, "entry_id": entry_id, "amount": amount, "remaining": amount, "earn_time": now,
            "expire_time": self.expire_time_for(now), "expired": False})).inserted_primary_key[0]
        await conn.execute(INSERT_LOT_MOVE, {"entry_id": entry_id, "lot_id": lot_id, "delta": amount})
        await self.add_available(conn, member_id, amount, now)
        return entry_id

    async def add_available(self, conn: AsyncConnection, member_id: int, amount: int, now: datetime) -> None:
        """``available += amount`` on the member's account, creating it on first use."""
        params = {"member": member_id, "amount": amount, "now": now}
        if (await conn.execute(ADD_AVAILABLE, params)).rowcount == 1:
            return
        created = await conn.execute(insert_ignore_statement(conn.dialect.name, _accounts), {
            "member_id": member_id, "available": amount, "pending": 0, "create_time": now, "update_time": now})
        if created.rowcount != 1:  # created meanwhile by a concurrent first change
            await conn.execute(ADD_AVAILABLE, params)

    # --- use cases -----------------------------------------------------------------------------

    async def earn(self, s: AsyncSession, member_id: int, amount: int, *, key: str, source: int, source_ref: str = "",
                   description: str = "", kind: int = pb.ENTRY_KIND_EARN, operator: str = "") -> Entry:
        """Grant available points once per key (returns the existing entry on a repeat)."""
        now = self.clock()
        await self.lock(s, member_id, now)
        try:
            e = await self.entry(s, member_id, key, kind, source, source_ref, amount, 0, now, description, operator)
        except AlreadyApplied as done:
            return done.entry
        await self.credit(s, e, amount, now)
        return e

    async def spend(self, s: AsyncSession, member_id: int, amount: int, *, key: str, source: int, source_ref: str = "",
                    description: str = "", kind: int = pb.ENTRY_KIND_SPEND, operator: str = "") -> Entry:
        now = self.clock()
        await self.lock(s, member_id, now)
        try:
            e = await self.entry(s, member_id, key, kind, source, source_ref, -amount, 0, now, description, operator)
        except AlreadyApplied as done:
            return done.entry
        await self.debit(s, e, amount)
        return e

    async def adjust(self, s: AsyncSession, member_id: int, points: int, reason: str, operator: str, key: str) -> Entry:
        if points > 0:
            return await self.earn(s, member_id, points, key=key, source=pb.ENTRY_SOURCE_OPERATOR, description=reason,
                                   kind=pb.ENTRY_KIND_ADJUST, operator=operator)
        return await self.spend(s, member_id, -points, key=key, source=pb.ENTRY_SOURCE_OPERATOR, description=reason,
                                kind=pb.ENTRY_KIND_ADJUST, operator=operator)
