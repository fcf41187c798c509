"""Bargaining (砍价): a member starts a bargain on an activity, helpers cut its price, the member buys.

The cuts are planned on the server when the bargain starts (even, or random
between 1 fen and twice the mean left) and sum exactly to start - floor; the
k-th helper takes the k-th cut. A cut is one transaction: the conditional
``helper_count < helpers_needed`` UPDATE takes the next place (and the row
lock, so the sequence number read next is this helper's), the price falls by
that cut under a ``current - cut >= floor`` guard, and the helper's row (unique
per helper and per sequence number) makes a second cut by the same helper roll
the whole transaction back. The purchase is the conditional ACTIVE -> BOUGHT
UPDATE before the deadline, at the price then reached; an order cancelled
unpaid gives the bargain back to its owner while it lasts.
"""

from __future__ import annotations

import json
import secrets
import uuid
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from mall.orders.v1 import orders_events_pb2 as events
from mall.orders.v1 import orders_service_pb2 as pb
from mallkit.db import insert_ignore, is_duplicate_key, utcnow
from mallkit.errors import FailedPrecondition, NotFound, PermissionDenied
from mallkit.events import Outbox
from mallkit.queries import get_or_not_found

from . import errors as reasons
from .addresses import Addresses, snapshot
from .catalog import Catalog
from .lifecycle import timestamp
from .models import (
    BARGAIN_ACTIVE,
    BARGAIN_BOUGHT,
    PENDING_PAYMENT,
    Bargain,
    BargainActivity,
    BargainHelp,
    BargainStart,
    Order,
    OrderItem,
    Sku,
)

_random = secrets.SystemRandom()


def plan_cuts(distance: int, helpers: int, mode: int) -> list[int]:
    """``helpers`` cuts of at least 1 fen each summing exactly to ``distance`` (>= helpers)."""
    if helpers < 1 or distance < helpers:
        raise ValueError("every cut must be at least 1 fen")
    if mode == pb.BARGAIN_CUT_MODE_RANDOM:
        cuts, left = [], distance
        for n in range(helpers, 1, -1):  # n helpers still to come, this one included
            most = min(left - (n - 1), max(1, 2 * left // n))  # leave at least 1 fen for each after
            cut = _random.randint(1, most)
            cuts.append(cut)
            left -= cut
        cuts.append(left)
        return cuts
    base = distance // helpers
    return [base] * (helpers - 1) + [base + distance % helpers]


def bargain_name(b: Bargain) -> str:
    return f"bargainActivities/{b.activity_id}/bargains/{b.id}"


def display_state(b: Bargain, now: datetime) -> int:
    """The state members see: an ACTIVE bargain past its deadline is EXPIRED (no job needed)."""
    if b.state == BARGAIN_ACTIVE and b.deadline_time <= now:
        return pb.BARGAIN_STATE_EXPIRED
    return b.state


class Bargains:
    def __init__(self, *, catalog: Catalog, addresses: Addresses, outbox: Outbox, pay_timeout: timedelta):
        self.catalog = catalog
        self.addresses = addresses
        self.outbox = outbox
        self.pay_timeout = pay_timeout

    # --- activities (staff) -----------------------------------------------------------------

    async def create_activity(self, s: AsyncSession, product_id: int, sku_id: int, fields: dict) -> BargainActivity:
        await self.catalog.sku(s, product_id, sku_id, "bargain_activity.sku")
        a = BargainActivity(sku_id=sku_id, create_time=utcnow(), **fields)
        s.add(a)
        await s.flush()
        return a

    async def activity(self, s: AsyncSession, activity_id: int) -> BargainActivity:
        return await get_or_not_found(s, BargainActivity, activity_id, lambda: NotFound(
            "bargain activity not found", reason=reasons.BARGAIN_ACTIVITY_NOT_FOUND,
            resource=("bargainActivity", f"bargainActivities/{activity_id}"), zh="砍价活动不存在"))

    async def product_of(self, s: AsyncSession, a: BargainActivity) -> int:
        return (await s.execute(select(Sku.product_id).where(Sku.id == a.sku_id))).scalar_one()

    # --- bargains -------------------------------------------------------------------------------

    async def bargain(self, s: AsyncSession, activity_id: int, bargain_id: int) -> Bargain:
        b = await s.get(Bargain, bargain_id, populate_existing=True)
        if b is None or b.activity_id != activity_id:
            raise NotFound("bargain not found", reason=reasons.BARGAIN_NOT_FOUND,
                           resource=("bargain", f"bargainActivities/{activity_id}/bargains/{bargain_id}"), zh="砍价不存在")
        return b

    async def start(self, s: AsyncSession, activity_id: int, member_id: int, invite_code: str) -> Bargain:
        """A new bargain of the member (within the per-member limit) with its cuts planned now."""
        a = await self.activity(s, activity_id)
        now = utcnow()
        if not a.start_time <= now < a.end_time:
            raise FailedPrecondition("the bargain activity is not running", reason=reasons.BARGAIN_ACTIVITY_CLOSED,
                                     zh="砍价活动未开始或已结束")
        await insert_ignore(s, BargainStart.__table__, [{"activity_id": a.id, "member_id": member_id, "count": 0}])
        counted = await s.execute(update(BargainStart).where(
            BargainStart.activity_id == a.id, BargainStart.member_id == member_id,
            BargainStart.count < a.per_member_limit).values(count=BargainStart.count + 1))
        if counted.rowcount != 1:  # type: ignore[attr-defined]
            raise FailedPrecondition("bargain limit reached for this activity", reason=reasons.BARGAIN_LIMIT_REACHED,
                                     metadata={"limit": a.per_member_limit}, zh="已达发起砍价次数上限")
        cuts = plan_cuts(a.start_price_fen - a.floor_price_fen, a.helpers_needed, a.cut_mode)
        b = Bargain(activity_id=a.id, member_id=member_id, state=BARGAIN_ACTIVE, start_price_fen=a.start_price_fen,
                    floor_price_fen=a.floor_price_fen, current_price_fen=a.start_price_fen, helper_count=0,
                    helpers_needed=a.helpers_needed, cuts=json.dumps(cuts), sharer_invite_code=invite_code[:32],
                    deadline_time=min(now + timedelta(seconds=a.bargain_seconds), a.end_time), create_time=now)
        s.add(b)
        await s.flush()
        return b

    async def help(self, s: AsyncSession, activity_id: int, bargain_id: int, helper_id: int) -> BargainHelp:
        """The helper's one cut: the next planned cut, never past the floor."""
        b = await self.bargain(s, activity_id, bargain_id)
        if b.member_id == helper_id:
            raise FailedPrecondition("members cannot cut their own bargain", reason=reasons.BARGAIN_OWN,
                                     zh="不能为自己砍价")
        if await s.get(BargainHelp, (b.id, helper_id)) is not None:
            raise FailedPrecondition("already helped this bargain", reason=reasons.BARGAIN_ALREADY_HELPED, zh="您已帮砍过")
        now = utcnow()
        took = await s.execute(update(Bargain).where(
            Bargain.id == b.id, Bargain.state == BARGAIN_ACTIVE, Bargain.helper_count < Bargain.helpers_needed,
            Bargain.deadline_time > now).values(helper_count=Bargain.helper_count + 1))
        if took.rowcount != 1:  # type: ignore[attr-defined]
            raise await self._closed(s, b.id, now, floor_reached=True)
        # This transaction holds the row now: the count read is this helper's sequence number.
        seq = (await s.execute(select(Bargain.helper_count).where(Bargain.id == b.id))).scalar_one()
        cut = json.loads(b.cuts)[seq - 1]
        cut_done = await s.execute(update(Bargain).where(
            Bargain.id == b.id, Bargain.current_price_fen - cut >= Bargain.floor_price_fen)
            .values(current_price_fen=Bargain.current_price_fen - cut))
        if cut_done.rowcount != 1:  # type: ignore[attr-defined]  # never: the cuts sum to start - floor
            raise FailedPrecondition("the floor price is reached", reason=reasons.BARGAIN_FLOOR_REACHED, zh="已砍到底价")
        after = (await s.execute(select(Bargain.current_price_fen).where(Bargain.id == b.id))).scalar_one()
        h = BargainHelp(bargain_id=b.id, helper_id=helper_id, sequence=seq, cut_fen=cut, price_after_fen=after,
                        create_time=now)
        try:
            async with s.begin_nested():
                s.add(h)
                await s.flush()
        except IntegrityError as exc:
            if not is_duplicate_key(exc):
                raise
            raise FailedPrecondition("already helped this bargain", reason=reasons.BARGAIN_ALREADY_HELPED,
                                     zh="您已帮砍过") from None
        a = await self.activity(s, b.activity_id)
        await self.outbox.add(s, "order.bargain_helped", events.BargainHelpedEvent(
            bargain=bargain_name(b), sharer=f"members/{b.member_id}", helper=f"members/{helper_id}",
            share_scene=a.share_scene, help_time=timestamp(now)), subject=bargain_name(b))
        return h

    async def _closed(self, s: AsyncSession, bargain_id: int, now: datetime, *, floor_reached: bool = False):
        b = await s.get(Bargain, bargain_id, populate_existing=True)
        assert b is not None
        if b.state == BARGAIN_BOUGHT:
            return FailedPrecondition("the bargain was bought", reason=reasons.BARGAIN_ALREADY_BOUGHT, zh="该砍价已购买")
        if b.deadline_time <= now:
            return FailedPrecondition("the bargain has expired", reason=reasons.BARGAIN_EXPIRED, zh="砍价已过期")
        if floor_reached and b.helper_count >= b.helpers_needed:
            return FailedPrecondition("the floor price is reached", reason=reasons.BARGAIN_FLOOR_REACHED, zh="已砍到底价")
        return FailedPrecondition("the bargain is closed", reason=reasons.BARGAIN_EXPIRED, zh="砍价已结束")

    async def helps(self, s: AsyncSession, bargain_id: int) -> list[BargainHelp]:
        return list((await s.execute(select(BargainHelp).where(BargainHelp.bargain_id == bargain_id)
                                     .order_by(BargainHelp.sequence))).scalars())

    async def buy(self, s: AsyncSession, activity_id: int, bargain_id: int, member_id: int,
                  address_id: int | None) -> Order:
        """The owner's one purchase at the price reached, before the deadline."""
        b = await self.bargain(s, activity_id, bargain_id)
        if b.member_id != member_id:
            raise PermissionDenied("members may only buy their own bargains", reason="NOT_OWNER",
                                   zh="只能购买自己发起的砍价")
        now = utcnow()
        won = await s.execute(update(Bargain).where(
            Bargain.id == b.id, Bargain.state == BARGAIN_ACTIVE, Bargain.deadline_time > now).values(state=BARGAIN_BOUGHT))
        if won.rowcount != 1:  # type: ignore[attr-defined]
            raise await self._closed(s, b.id, now)
        price = (await s.execute(select(Bargain.current_price_fen).where(Bargain.id == b.id))).scalar_one()
        a = await self.activity(s, b.activity_id)
        address = await self.addresses.optional(s, member_id, address_id)
        p, k = await self.catalog.product_of_sku(s, a.sku_id)
        o = Order(member_id=member_id, state=PENDING_PAYMENT, total_fen=price, tier_discount_fen=0,
                  coupon_discount_fen=0, payable_fen=price, address=snapshot(address), bargain_activity_id=a.id,
                  bargain_id=b.id, out_trade_no=uuid.uuid4().hex, create_time=now,
                  pay_deadline_time=now + self.pay_timeout)
        s.add(o)
        await s.flush()
        s.add(OrderItem(order_id=o.id, sku_id=k.id, product_id=p.id, category_id=p.category_id,
                        product_display_name=p.display_name, sku_display_name=k.display_name, unit_price_fen=price,
                        quantity=1, paid_fen=price, repurchase_cycle_days=p.repurchase_cycle_days))
        got = await s.execute(update(Sku).where(Sku.id == k.id, Sku.stock >= 1).values(stock=Sku.stock - 1))
        if got.rowcount != 1:  # type: ignore[attr-defined]
            raise FailedPrecondition("not enough stock", reason=reasons.OUT_OF_STOCK, zh="库存不足")
        await s.execute(update(Bargain).where(Bargain.id == b.id).values(order_id=o.id))
        await s.flush()
        return o

    # --- seen from the order's lifecycle ------------------------------------------------------

    async def release(self, s: AsyncSession, bargain_id: int, order_id: int) -> None:
        """The bargain's order was cancelled unpaid: the owner may buy again while the bargain lasts."""
        await s.execute(update(Bargain).where(Bargain.id == bargain_id, Bargain.state == BARGAIN_BOUGHT,
                                              Bargain.order_id == order_id)
                        .values(state=BARGAIN_ACTIVE, order_id=None))
