"""Use cases of the points service.

Each public coroutine is one use case and runs inside the single transaction
its caller opened (``session``). The rules that keep the ledger right:

* Every change of a member's points first takes the lock of the member's
  account row (:meth:`PointsService._lock`), so the changes of one member are
  serialized and everything read afterwards in the transaction is stable.
* Every change is one ledger entry with a unique ``idempotency_key``, looked
  up under that lock: an effect already applied is not applied again.
* Balances change by conditional UPDATE (``available >= :n``), stock too
  (``stock >= :q``); zero rows means insufficient / sold out, and the whole
  transaction is rolled back by the error raised.
* Available points live in lots; every entry that changes ``available``
  records its per-lot moves, spending takes the lots that expire first.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mall.points.v1 import points_events_pb2 as epb
from mall.points.v1 import points_service_pb2 as pb
from mallkit.db import insert_ignore, utcnow
from mallkit.errors import AlreadyExists, FailedPrecondition, NotFound
from mallkit.outbox import Outbox

from . import errors as reasons
from .config import PointsSettings
from .models import (
    Account,
    CheckInDay,
    Entry,
    Item,
    Lot,
    LotMove,
    MemberItemCount,
    PurchasePoints,
    ReachRequest,
    Redemption,
    Task,
    TaskCompletion,
    TaskCounter,
)

log = logging.getLogger("points.service")

TASK_SOURCES = {pb.TASK_KIND_INVITE_FRIEND: pb.ENTRY_SOURCE_INVITE}


#: ``redeem(tier_id=TIER_UNKNOWN)``: the caller has not looked the member's tier up (yet).
TIER_UNKNOWN = -1


class TierRequired(Exception):
    """The item is reserved to some tiers: look the member's tier up, then call again."""


class AlreadyApplied(Exception):
    """The ledger already holds the entry of this idempotency key."""

    def __init__(self, entry: Entry):
        super().__init__(entry.idempotency_key)
        self.entry = entry


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


@dataclass
class CheckInResult:
    day: date
    streak: int
    points: int
    bonus: int


@dataclass
class TaskResult:
    points: int
    outcome: str
    task_id: int | None


class PointsService:
    def __init__(self, settings: PointsSettings, outbox: Outbox, clock: Callable[[], datetime] = utcnow):
        self.settings = settings
        self.outbox = outbox
        self.tz = ZoneInfo(settings.platform.brand_timezone)
        #: "Now" of every use case and job; tests replace it to cross day boundaries.
        self.clock = clock

    # --- calendar ------------------------------------------------------------------------------

    def brand_day(self, when: datetime) -> date:
        return when.astimezone(self.tz).date()

    def expire_time_for(self, earn: datetime) -> datetime:
        if self.settings.expiry_policy == "days":
            return earn + timedelta(days=self.settings.expiry_days)
        year = earn.astimezone(self.tz).year
        return datetime(year + 2, 1, 1, tzinfo=self.tz).astimezone(UTC)  # end of the following year

    def period_of(self, frequency: int, when: datetime) -> str:
        day = self.brand_day(when)
        if frequency == pb.TASK_FREQUENCY_DAILY:
            return day.isoformat()
        if frequency == pb.TASK_FREQUENCY_WEEKLY:
            y, w, _ = day.isocalendar()
            return f"{y}-W{w:02d}"
        return "life"

    # --- ledger primitives ---------------------------------------------------------------------

    async def _lock(self, s: AsyncSession, member_id: int, now: datetime) -> None:
        """Lock the member's account row (creating it on first use)."""
        locked = await s.execute(update(Account).where(Account.member_id == member_id).values(update_time=now))
        if locked.rowcount == 1:
            return
        await insert_ignore(s, Account.__table__, [{"member_id": member_id, "available": 0, "pending": 0,
                                                    "create_time": now, "update_time": now}])
        await s.execute(update(Account).where(Account.member_id == member_id).values(update_time=now))

    async def _applied(self, s: AsyncSession, key: str) -> Entry | None:
        return (await s.execute(select(Entry).where(Entry.idempotency_key == key))).scalar_one_or_none()

    async def _entry(self, s: AsyncSession, member_id: int, key: str, kind: int, source: int, source_ref: str,
                     available: int, pending: int, now: datetime, description: str = "", operator: str = "",
                     fresh: bool = False) -> Entry:
        """Append an entry (the account is locked); AlreadyApplied if its key is in the ledger.

        ``fresh``: the key names a row this transaction just created (or a state it just
        claimed), so it cannot be in the ledger yet; the unique key still guards it."""
        if not fresh:
            found = await self._applied(s, key)
            if found is not None:
                raise AlreadyApplied(found)
        e = Entry(member_id=member_id, kind=kind, source=source, source_ref=source_ref, available_delta=available,
                  pending_delta=pending, description=description[:200], operator=operator, idempotency_key=key,
                  create_time=now)
        s.add(e)
        await s.flush()
        return e

    async def _credit(self, s: AsyncSession, e: Entry, amount: int, now: datetime) -> Lot:
        """Available points in a new lot."""
        await s.execute(update(Account).where(Account.member_id == e.member_id)
                        .values(available=Account.available + amount))
        lot = Lot(member_id=e.member_id, entry_id=e.id, amount=amount, remaining=amount, earn_time=now,
                  expire_time=self.expire_time_for(now), expired=False)
        s.add(lot)
        await s.flush()
        s.add(LotMove(entry_id=e.id, lot_id=lot.id, delta=amount))
        return lot

    async def _take(self, s: AsyncSession, member_id: int, amount: int) -> None:
        """Lower the available balance, or INSUFFICIENT_POINTS (the account is locked)."""
        taken = await s.execute(update(Account).where(Account.member_id == member_id, Account.available >= amount)
                                .values(available=Account.available - amount))
        if taken.rowcount != 1:
            raise FailedPrecondition("not enough points", reason=reasons.INSUFFICIENT_POINTS,
                                     metadata={"required": amount}, zh="积分不足")

    async def _consume_lots(self, s: AsyncSession, e: Entry, amount: int) -> None:
        """Take points from the member's lots, those expiring first first."""
        lots = (await s.execute(select(Lot.id, Lot.remaining).where(Lot.member_id == e.member_id, Lot.remaining > 0)
                                .order_by(Lot.expire_time, Lot.id))).all()
        left = amount
        for lot_id, remaining in lots:
            if left == 0:
                break
            take = min(left, remaining)
            await s.execute(update(Lot).where(Lot.id == lot_id).values(remaining=Lot.remaining - take))
            s.add(LotMove(entry_id=e.id, lot_id=lot_id, delta=-take))
            left -= take
        if left:  # the balance said yes but the lots disagree: refuse rather than corrupt
            raise AssertionError(f"lots of member {e.member_id} hold less than the balance")
        await s.flush()

    async def _debit(self, s: AsyncSession, e: Entry, amount: int) -> None:
        await self._take(s, e.member_id, amount)
        await self._consume_lots(s, e, amount)

    async def earn(self, s: AsyncSession, member_id: int, amount: int, *, key: str, source: int, source_ref: str = "",
                   description: str = "", kind: int = pb.ENTRY_KIND_EARN, operator: str = "") -> Entry:
        """Grant available points once per key (returns the existing entry on a repeat)."""
        now = self.clock()
        await self._lock(s, member_id, now)
        try:
            e = await self._entry(s, member_id, key, kind, source, source_ref, amount, 0, now, description, operator)
        except AlreadyApplied as done:
            return done.entry
        await self._credit(s, e, amount, now)
        return e

    async def spend(self, s: AsyncSession, member_id: int, amount: int, *, key: str, source: int, source_ref: str = "",
                    description: str = "", kind: int = pb.ENTRY_KIND_SPEND, operator: str = "") -> Entry:
        now = self.clock()
        await self._lock(s, member_id, now)
        try:
            e = await self._entry(s, member_id, key, kind, source, source_ref, -amount, 0, now, description, operator)
        except AlreadyApplied as done:
            return done.entry
        await self._debit(s, e, amount)
        return e

    async def adjust(self, s: AsyncSession, member_id: int, points: int, reason: str, operator: str, key: str) -> Entry:
        if points > 0:
            return await self.earn(s, member_id, points, key=key, source=pb.ENTRY_SOURCE_OPERATOR, description=reason,
                                   kind=pb.ENTRY_KIND_ADJUST, operator=operator)
        return await self.spend(s, member_id, -points, key=key, source=pb.ENTRY_SOURCE_OPERATOR, description=reason,
                                kind=pb.ENTRY_KIND_ADJUST, operator=operator)

    # --- statements ----------------------------------------------------------------------------

    async def account(self, s: AsyncSession, member_id: int) -> AccountView:
        now = self.clock()
        row = (await s.execute(select(Account.available, Account.pending).where(Account.member_id == member_id))).first()
        available, pending = (row.available, row.pending) if row else (0, 0)
        horizon = now + timedelta(days=self.settings.expiry_reminder_days)
        soon = (await s.execute(
            select(func.coalesce(func.sum(Lot.remaining), 0), func.min(Lot.expire_time))
            .where(Lot.member_id == member_id, Lot.remaining > 0, Lot.expire_time <= horizon)
        )).one()
        last = (await s.execute(select(CheckInDay.day, CheckInDay.streak).where(CheckInDay.member_id == member_id)
                                .order_by(CheckInDay.day.desc()).limit(1))).first()
        today = self.brand_day(now)
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

    async def list_entries(self, s: AsyncSession, member_id: int, size: int, before_id: int | None) -> list[Entry]:
        q = select(Entry).where(Entry.member_id == member_id).order_by(Entry.id.desc()).limit(size + 1)
        if before_id is not None:
            q = q.where(Entry.id < before_id)
        return list((await s.execute(q)).scalars().all())

    # --- check-in ------------------------------------------------------------------------------

    def streak_bonus(self, streak: int) -> int:
        cycle = self.settings.check_in_streak_cycle
        position = ((streak - 1) % cycle) + 1 if cycle else streak
        return self.settings.check_in_streak_bonuses.get(position, 0)

    async def check_in(self, s: AsyncSession, member_id: int) -> CheckInResult:
        now = self.clock()
        today = self.brand_day(now)
        await self._lock(s, member_id, now)
        if await s.get(CheckInDay, (member_id, today)) is not None:
            raise AlreadyExists("already checked in today", reason=reasons.ALREADY_CHECKED_IN,
                                metadata={"date": today.isoformat()}, zh="今天已经签到过了")
        prev = await s.get(CheckInDay, (member_id, today - timedelta(days=1)))
        streak = prev.streak + 1 if prev else 1
        bonus = self.streak_bonus(streak)
        points = self.settings.check_in_points + bonus
        s.add(CheckInDay(member_id=member_id, day=today, streak=streak, points=points, bonus=bonus, create_time=now))
        if points > 0:
            desc = f"每日签到 连续{streak}天" + (f" 奖励{bonus}" if bonus else "")
            e = await self._entry(s, member_id, f"checkin:{member_id}:{today.isoformat()}", pb.ENTRY_KIND_EARN,
                                  pb.ENTRY_SOURCE_CHECK_IN, today.isoformat(), points, 0, now, desc)
            await self._credit(s, e, points, now)
        await s.flush()
        return CheckInResult(today, streak, points, bonus)

    # --- tasks ---------------------------------------------------------------------------------

    async def task(self, s: AsyncSession, task_id: int) -> Task:
        t = await s.get(Task, task_id)
        if t is None:
            raise NotFound("task not found", reason=reasons.TASK_NOT_FOUND, resource=("task", f"tasks/{task_id}"),
                           zh="任务不存在")
        return t

    async def create_task(self, s: AsyncSession, fields: dict) -> Task:
        if (await s.execute(select(Task.id).where(Task.kind == fields["kind"]))).first():
            raise AlreadyExists("a task of this kind exists", reason=reasons.TASK_KIND_TAKEN,
                                metadata={"field": "task.kind"}, zh="该类型的任务已存在")
        now = self.clock()
        t = Task(create_time=now, update_time=now, **fields)
        s.add(t)
        await s.flush()
        return t

    async def update_task(self, s: AsyncSession, task_id: int, changes: dict) -> Task:
        t = await self.task(s, task_id)
        for k, v in changes.items():
            setattr(t, k, v)
        t.update_time = self.clock()
        await s.flush()
        return t

    async def list_tasks(self, s: AsyncSession, size: int, after_id: int | None, active_only: bool) -> list[Task]:
        q = select(Task).order_by(Task.id).limit(size + 1)
        if after_id is not None:
            q = q.where(Task.id > after_id)
        if active_only:
            q = q.where(Task.active.is_(True))
        return list((await s.execute(q)).scalars().all())

    async def complete_task(self, s: AsyncSession, member_id: int, kind: int, source_ref: str,
                            reward_override: int = 0) -> TaskResult:
        """Reward a completion within the task's frequency and cap, once per (period, source_ref)."""
        now = self.clock()
        t = (await s.execute(select(Task).where(Task.kind == kind))).scalar_one_or_none()
        if t is None or not t.active:
            return TaskResult(0, "NO_ACTIVE_TASK", t.id if t else None)
        period = self.period_of(t.frequency, now)
        await self._lock(s, member_id, now)
        done = await s.execute(select(TaskCompletion.id).where(
            TaskCompletion.task_id == t.id, TaskCompletion.member_id == member_id, TaskCompletion.period == period,
            TaskCompletion.source_ref == source_ref))
        if done.first():
            return TaskResult(0, "ALREADY_REWARDED", t.id)
        counted = await s.execute(update(TaskCounter).where(
            TaskCounter.task_id == t.id, TaskCounter.member_id == member_id, TaskCounter.period == period,
            TaskCounter.count < t.limit_per_period).values(count=TaskCounter.count + 1))
        if counted.rowcount != 1:
            if await s.get(TaskCounter, (t.id, member_id, period)) is not None:
                return TaskResult(0, "LIMIT_REACHED", t.id)
            s.add(TaskCounter(task_id=t.id, member_id=member_id, period=period, count=1))
        points = reward_override or t.reward_points
        c = TaskCompletion(task_id=t.id, member_id=member_id, period=period, source_ref=source_ref, points=points,
                           create_time=now)
        s.add(c)
        await s.flush()
        e = await self._entry(s, member_id, f"task:{c.id}", pb.ENTRY_KIND_EARN,
                              TASK_SOURCES.get(kind, pb.ENTRY_SOURCE_TASK), source_ref or f"tasks/{t.id}", points, 0,
                              now, t.display_name, fresh=True)
        await self._credit(s, e, points, now)
        return TaskResult(points, "", t.id)

    # --- purchase points -----------------------------------------------------------------------

    def purchase_points(self, paid_fen: int, multiplier_percent: int) -> int:
        return paid_fen * self.settings.purchase_points_per_yuan * multiplier_percent // 10_000

    async def _purchase(self, s: AsyncSession, order_id: int) -> PurchasePoints:
        p = await s.get(PurchasePoints, order_id, populate_existing=True)
        if p is None:
            raise NotFound("no purchase points for this order", reason=reasons.ORDER_POINTS_NOT_FOUND,
                           resource=("order", f"orders/{order_id}"), zh="订单积分不存在")
        return p

    async def pend_purchase(self, s: AsyncSession, order_id: int, member_id: int, paid_fen: int,
                            multiplier_percent: int) -> PurchasePoints:
        now = self.clock()
        await self._lock(s, member_id, now)
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
            await self._entry(s, member_id, f"order:{order_id}:pend", pb.ENTRY_KIND_EARN, pb.ENTRY_SOURCE_ORDER,
                              f"orders/{order_id}", 0, points, now, "购物积分(售后期后到账)")
            await s.execute(update(Account).where(Account.member_id == member_id)
                            .values(pending=Account.pending + points))
        return p

    async def confirm_purchase(self, s: AsyncSession, order_id: int) -> PurchasePoints:
        now = self.clock()
        p = await self._purchase(s, order_id)
        await self._lock(s, p.member_id, now)
        p = await self._purchase(s, order_id)  # re-read under the lock
        if p.state != pb.PURCHASE_POINTS_STATE_PENDING:
            return p
        await s.execute(update(PurchasePoints).where(PurchasePoints.order_id == order_id)
                        .values(state=pb.PURCHASE_POINTS_STATE_CONFIRMED, update_time=now))
        if p.points:
            e = await self._entry(s, p.member_id, f"order:{order_id}:confirm", pb.ENTRY_KIND_CONFIRM,
                                  pb.ENTRY_SOURCE_ORDER, f"orders/{order_id}", p.points, -p.points, now, "购物积分到账")
            moved = await s.execute(update(Account).where(Account.member_id == p.member_id,
                                                          Account.pending >= p.points)
                                    .values(pending=Account.pending - p.points))
            if moved.rowcount != 1:
                raise AssertionError("pending balance below an order's pending points")
            lot = await self._credit(s, e, p.points, now)
            await s.execute(update(PurchasePoints).where(PurchasePoints.order_id == order_id).values(lot_id=lot.id))
            await self.queue_reach(
                s, p.member_id, f"points-confirm-{order_id}", self.settings.reach_template_available,
                "points.purchase_confirmed", {"thing1": "购物积分已到账", "number2": str(p.points)},
                "pages/points/index")
        return await self._purchase(s, order_id)

    async def reverse_purchase(self, s: AsyncSession, order_id: int) -> PurchasePoints:
        now = self.clock()
        p = await self._purchase(s, order_id)
        await self._lock(s, p.member_id, now)
        p = await self._purchase(s, order_id)
        if p.state == pb.PURCHASE_POINTS_STATE_REVERSED:
            return p
        reversed_points = 0
        key, ref = f"order:{order_id}:reverse", f"orders/{order_id}"
        if p.state == pb.PURCHASE_POINTS_STATE_PENDING and p.points:
            await self._entry(s, p.member_id, key, pb.ENTRY_KIND_REVERSE, pb.ENTRY_SOURCE_ORDER, ref, 0, -p.points, now,
                              "订单退款 积分撤回")
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
                e = await self._entry(s, p.member_id, key, pb.ENTRY_KIND_REVERSE, pb.ENTRY_SOURCE_ORDER, ref, -take, 0,
                                      now, "订单退款 积分撤回")
                await s.execute(update(Account).where(Account.member_id == p.member_id, Account.available >= take)
                                .values(available=Account.available - take))
                await s.execute(update(Lot).where(Lot.id == p.lot_id).values(remaining=Lot.remaining - take))
                s.add(LotMove(entry_id=e.id, lot_id=p.lot_id, delta=-take))
            reversed_points = take
        await s.execute(update(PurchasePoints).where(PurchasePoints.order_id == order_id)
                        .values(state=pb.PURCHASE_POINTS_STATE_REVERSED, reversed_points=reversed_points,
                                update_time=now))
        await s.flush()
        return await self._purchase(s, order_id)

    # --- items ---------------------------------------------------------------------------------

    async def item(self, s: AsyncSession, item_id: int) -> Item:
        it = await s.get(Item, item_id, populate_existing=True)
        if it is None:
            raise NotFound("item not found", reason=reasons.ITEM_NOT_FOUND, resource=("item", f"items/{item_id}"),
                           zh="商品不存在")
        return it

    async def create_item(self, s: AsyncSession, fields: dict) -> Item:
        now = self.clock()
        it = Item(redeemed_count=0, create_time=now, update_time=now, **fields)
        s.add(it)
        await s.flush()
        return it

    async def update_item(self, s: AsyncSession, item_id: int, changes: dict) -> Item:
        it = await self.item(s, item_id)
        for k, v in changes.items():
            setattr(it, k, v)
        it.update_time = self.clock()
        await s.flush()
        return it

    async def list_items(self, s: AsyncSession, size: int, before_id: int | None, kind: int,
                         offered_only: bool) -> list[Item]:
        q = select(Item).order_by(Item.id.desc()).limit(size + 1)
        if before_id is not None:
            q = q.where(Item.id < before_id)
        if kind:
            q = q.where(Item.kind == kind)
        if offered_only:
            now = self.clock()
            q = q.where(Item.state == pb.ITEM_STATE_ACTIVE, (Item.start_time.is_(None)) | (Item.start_time <= now),
                        (Item.end_time.is_(None)) | (Item.end_time > now))
        return list((await s.execute(q)).scalars().all())

    def offered(self, it: Item, now: datetime) -> bool:
        return (it.state == pb.ITEM_STATE_ACTIVE and (it.start_time is None or it.start_time <= now)
                and (it.end_time is None or it.end_time > now))

    # --- redemptions ---------------------------------------------------------------------------

    async def redeem(self, s: AsyncSession, member_id: int, item_id: int, quantity: int, address: dict | None,
                     tier_id: int | None) -> Redemption:
        """Points, per-member count and stock move together, or the transaction rolls back."""
        now = self.clock()
        it = await self.item(s, item_id)
        if not self.offered(it, now):
            raise FailedPrecondition("item is not offered now", reason=reasons.ITEM_NOT_AVAILABLE,
                                     metadata={"item": f"items/{item_id}"}, zh="该商品当前不可兑换")
        allowed = [int(x) for x in it.allowed_tiers.split(",") if x]
        if allowed and tier_id == TIER_UNKNOWN:
            raise TierRequired(item_id)
        if allowed and tier_id not in allowed:
            raise FailedPrecondition("item is reserved to other tiers", reason=reasons.TIER_NOT_ALLOWED,
                                     metadata={"item": f"items/{item_id}"}, zh="您的会员等级不能兑换该商品")
        if it.kind == pb.ITEM_KIND_PHYSICAL and not address:
            raise FailedPrecondition("a physical item needs a shipping address",
                                     reason=reasons.SHIPPING_ADDRESS_REQUIRED,
                                     metadata={"field": "shipping_address"}, zh="请填写收货地址")
        cost = it.points_price * quantity
        state = pb.REDEMPTION_STATE_PENDING_SHIPMENT if it.kind == pb.ITEM_KIND_PHYSICAL else pb.REDEMPTION_STATE_COMPLETED
        # Lock order: the member's account, then the item, then rows referring to the item
        # (their foreign-key checks take shared locks on it, which must come after our own lock).
        await self._take(s, member_id, cost)  # locks the account row (or fails: no points)
        taken = await s.execute(update(Item).where(Item.id == item_id, Item.stock >= quantity,
                                                   Item.state == pb.ITEM_STATE_ACTIVE)
                                .values(stock=Item.stock - quantity, redeemed_count=Item.redeemed_count + quantity))
        if taken.rowcount != 1:
            raise FailedPrecondition("out of stock", reason=reasons.OUT_OF_STOCK,
                                     metadata={"item": f"items/{item_id}"}, zh="商品已兑完")
        r = Redemption(member_id=member_id, item_id=item_id, item_display_name=it.display_name, item_kind=it.kind,
                       quantity=quantity, points=cost, cash_fen=it.cash_price_fen * quantity, state=state,
                       coupon_template=it.coupon_template if it.kind == pb.ITEM_KIND_COUPON else "",
                       create_time=now, update_time=now, **(address or {}))
        s.add(r)
        await s.flush()
        e = await self._entry(s, member_id, f"redeem:{r.id}", pb.ENTRY_KIND_SPEND, pb.ENTRY_SOURCE_REDEMPTION,
                              f"items/{item_id}", -cost, 0, now, f"兑换 {it.display_name} x{quantity}", fresh=True)
        await self._consume_lots(s, e, cost)
        if it.per_member_limit:
            await insert_ignore(s, MemberItemCount.__table__, [{"item_id": item_id, "member_id": member_id,
                                                                "quantity": 0}])
            counted = await s.execute(update(MemberItemCount).where(
                MemberItemCount.item_id == item_id, MemberItemCount.member_id == member_id,
                MemberItemCount.quantity + quantity <= it.per_member_limit)
                .values(quantity=MemberItemCount.quantity + quantity))
            if counted.rowcount != 1:
                raise FailedPrecondition("per-member limit reached", reason=reasons.REDEMPTION_LIMIT_REACHED,
                                         metadata={"limit": it.per_member_limit}, zh="已达到该商品的兑换上限")
        if it.kind == pb.ITEM_KIND_COUPON:
            event = epb.CouponRedeemedEvent(redemption=f"members/{member_id}/redemptions/{r.id}",
                                            member=f"members/{member_id}", coupon_template=it.coupon_template)
            event.redeem_time.FromDatetime(now)
            await self.outbox.add(s, "points.coupon_redeemed", event, subject=f"members/{member_id}")
        return r

    async def redemption(self, s: AsyncSession, member_id: int, redemption_id: int) -> Redemption:
        r = await s.get(Redemption, redemption_id, populate_existing=True)
        if r is None or r.member_id != member_id:
            raise NotFound("redemption not found", reason=reasons.REDEMPTION_NOT_FOUND,
                           resource=("redemption", f"members/{member_id}/redemptions/{redemption_id}"),
                           zh="兑换记录不存在")
        return r

    async def list_redemptions(self, s: AsyncSession, member_id: int | None, size: int, before_id: int | None,
                               state: int) -> list[Redemption]:
        q = select(Redemption).order_by(Redemption.id.desc()).limit(size + 1)
        if member_id is not None:
            q = q.where(Redemption.member_id == member_id)
        if before_id is not None:
            q = q.where(Redemption.id < before_id)
        if state:
            q = q.where(Redemption.state == state)
        return list((await s.execute(q)).scalars().all())

    async def _transition(self, s: AsyncSession, r: Redemption, from_state: int, values: dict) -> None:
        moved = await s.execute(update(Redemption).where(Redemption.id == r.id, Redemption.state == from_state)
                                .values(update_time=self.clock(), **values))
        if moved.rowcount != 1:
            raise FailedPrecondition("redemption is not in a state that allows this", reason=reasons.REDEMPTION_STATE,
                                     metadata={"state": pb.RedemptionState.Name(r.state)}, zh="当前状态不允许此操作")

    async def cancel_redemption(self, s: AsyncSession, member_id: int, redemption_id: int) -> Redemption:
        """Points back to the lots they came from, stock and count back; once."""
        now = self.clock()
        await self._lock(s, member_id, now)
        r = await self.redemption(s, member_id, redemption_id)
        await self._transition(s, r, pb.REDEMPTION_STATE_PENDING_SHIPMENT, {"state": pb.REDEMPTION_STATE_CANCELLED})
        spent = await self._applied(s, f"redeem:{r.id}")
        e = await self._entry(s, member_id, f"cancel:{r.id}", pb.ENTRY_KIND_REVERSE, pb.ENTRY_SOURCE_REDEMPTION,
                              f"items/{r.item_id}", r.points, 0, now, f"取消兑换 {r.item_display_name}", fresh=True)
        await s.execute(update(Account).where(Account.member_id == member_id)
                        .values(available=Account.available + r.points))
        moves = [(lot_id, delta, expired or expire_time <= now) for lot_id, delta, expired, expire_time in (
            await s.execute(select(LotMove.lot_id, LotMove.delta, Lot.expired, Lot.expire_time)
                            .join(Lot, Lot.id == LotMove.lot_id).where(LotMove.entry_id == spent.id))).all()
        ] if spent else []
        expired_back = 0
        for lot_id, delta, expired in moves:
            await s.execute(update(Lot).where(Lot.id == lot_id).values(remaining=Lot.remaining - delta))
            s.add(LotMove(entry_id=e.id, lot_id=lot_id, delta=-delta))
            if expired:
                expired_back += -delta
        if expired_back:  # points returned to lots past their expiry expire again at once
            x = await self._entry(s, member_id, f"cancel-expire:{r.id}", pb.ENTRY_KIND_EXPIRE, pb.ENTRY_SOURCE_EXPIRY,
                                  f"items/{r.item_id}", -expired_back, 0, now, "退回的积分已过期")
            await s.execute(update(Account).where(Account.member_id == member_id)
                            .values(available=Account.available - expired_back))
            for lot_id, delta, expired in moves:
                if expired:
                    await s.execute(update(Lot).where(Lot.id == lot_id).values(remaining=Lot.remaining + delta))
                    s.add(LotMove(entry_id=x.id, lot_id=lot_id, delta=delta))
        await s.execute(update(Item).where(Item.id == r.item_id)
                        .values(stock=Item.stock + r.quantity, redeemed_count=Item.redeemed_count - r.quantity))
        await s.execute(update(MemberItemCount).where(MemberItemCount.item_id == r.item_id,
                                                      MemberItemCount.member_id == member_id)
                        .values(quantity=MemberItemCount.quantity - r.quantity))
        await s.flush()
        return await self.redemption(s, member_id, redemption_id)

    async def ship_redemption(self, s: AsyncSession, member_id: int, redemption_id: int, carrier: str,
                              tracking: str) -> Redemption:
        r = await self.redemption(s, member_id, redemption_id)
        await self._transition(s, r, pb.REDEMPTION_STATE_PENDING_SHIPMENT,
                               {"state": pb.REDEMPTION_STATE_SHIPPED, "carrier": carrier, "tracking_number": tracking})
        return await self.redemption(s, member_id, redemption_id)

    async def deliver_redemption(self, s: AsyncSession, member_id: int, redemption_id: int) -> Redemption:
        r = await self.redemption(s, member_id, redemption_id)
        await self._transition(s, r, pb.REDEMPTION_STATE_SHIPPED, {"state": pb.REDEMPTION_STATE_COMPLETED})
        return await self.redemption(s, member_id, redemption_id)

    # --- expiry --------------------------------------------------------------------------------

    async def due_lots(self, s: AsyncSession, now: datetime, batch: int) -> list[tuple[int, int]]:
        rows = await s.execute(select(Lot.id, Lot.member_id).where(Lot.expire_time <= now, Lot.remaining > 0,
                                                                    Lot.expired.is_(False))
                               .order_by(Lot.expire_time, Lot.id).limit(batch))
        return [tuple(r) for r in rows.all()]

    async def expire_lot(self, s: AsyncSession, lot_id: int, member_id: int, now: datetime) -> int:
        """Expire what is left of one lot; 0 if another replica (or nothing) got there first."""
        await self._lock(s, member_id, now)
        lot = await s.get(Lot, lot_id, populate_existing=True)
        if lot is None or lot.expired or lot.expire_time > now:
            return 0
        amount = lot.remaining
        await s.execute(update(Lot).where(Lot.id == lot_id, Lot.expired.is_(False)).values(remaining=0, expired=True))
        if amount == 0:
            return 0
        try:
            e = await self._entry(s, member_id, f"expire:{lot_id}", pb.ENTRY_KIND_EXPIRE, pb.ENTRY_SOURCE_EXPIRY,
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
        horizon = now + timedelta(days=self.settings.expiry_reminder_days)
        rows = await s.execute(select(Lot.member_id).where(
            Lot.remaining > 0, Lot.expired.is_(False), Lot.reminded_time.is_(None), Lot.expire_time <= horizon,
            Lot.expire_time > now).group_by(Lot.member_id).limit(batch))
        return list(rows.scalars().all())

    async def remind_member(self, s: AsyncSession, member_id: int, now: datetime) -> int:
        """Claim the member's unreminded lots expiring soon and queue one reminder for them."""
        horizon = now + timedelta(days=self.settings.expiry_reminder_days)
        cond = (Lot.member_id == member_id, Lot.remaining > 0, Lot.expired.is_(False), Lot.reminded_time.is_(None),
                Lot.expire_time <= horizon, Lot.expire_time > now)
        await self._lock(s, member_id, now)
        lots = (await s.execute(select(Lot.id, Lot.remaining, Lot.expire_time).where(*cond))).all()
        if not lots:
            return 0
        claimed = await s.execute(update(Lot).where(Lot.id.in_([lot.id for lot in lots]), Lot.reminded_time.is_(None))
                                  .values(reminded_time=now))
        if claimed.rowcount != len(lots):
            raise AssertionError("reminder claim raced under the account lock")
        amount = sum(lot.remaining for lot in lots)
        first = min(lot.expire_time for lot in lots)
        await self.queue_reach(
            s, member_id, f"points-expiry-{member_id}-{min(lot.id for lot in lots)}",
            self.settings.reach_template_expiring, "points.expiry_reminder",
            {"number1": str(amount), "date2": self.brand_day(first).isoformat()}, "pages/points/index")
        return amount

    # --- reach ---------------------------------------------------------------------------------

    async def queue_reach(self, s: AsyncSession, member_id: int, key: str, template_id: str, purpose: str,
                          data: dict[str, str], page: str) -> None:
        now = utcnow()  # delivery runs on the wall clock, whatever the business clock says
        await insert_ignore(s, ReachRequest.__table__, [{
            "request_key": key[:64], "member_id": member_id, "template_id": template_id, "purpose": purpose,
            "page": page, "data": json.dumps(data, ensure_ascii=False), "attempts": 0, "next_attempt_time": now,
            "lease_until": None, "sent_time": None, "last_error": "", "create_time": now}])

    async def due_reaches(self, s: AsyncSession, now: datetime, batch: int) -> list[int]:
        rows = await s.execute(select(ReachRequest.id).where(ReachRequest.sent_time.is_(None),
                                                             ReachRequest.next_attempt_time <= now)
                               .order_by(ReachRequest.next_attempt_time, ReachRequest.id).limit(batch))
        return list(rows.scalars().all())

