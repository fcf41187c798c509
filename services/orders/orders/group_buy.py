"""Group buying (拼团): deals, groups filling within a deadline, one place per member.

Places are taken with ``joined_count < group_size`` and counted paid with
``paid_count``; the group becomes FULL when every place is paid, FAILED when the
deadline passes first (the lifecycle then cancels or refunds its orders).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from mallkit.db import is_duplicate_key, utcnow
from mallkit.errors import FailedPrecondition, NotFound
from mallkit.queries import get_or_not_found

from . import errors as reasons
from .addresses import Addresses, snapshot
from .catalog import Catalog
from .models import (
    GROUP_FAILED,
    GROUP_FULL,
    GROUP_OPEN,
    PENDING_PAYMENT,
    GroupBuy,
    GroupDeal,
    GroupMember,
    Order,
    OrderItem,
    Sku,
)


class GroupBuying:
    def __init__(self, *, catalog: Catalog, addresses: Addresses, pay_timeout: timedelta):
        self.catalog = catalog
        self.addresses = addresses
        self.pay_timeout = pay_timeout

    async def create_deal(self, s: AsyncSession, product_id: int, sku_id: int, fields: dict) -> GroupDeal:
        await self.catalog.sku(s, product_id, sku_id, "group_deal.sku")
        d = GroupDeal(sku_id=sku_id, create_time=utcnow(), **fields)
        s.add(d)
        await s.flush()
        return d

    async def deal(self, s: AsyncSession, deal_id: int) -> GroupDeal:
        return await get_or_not_found(s, GroupDeal, deal_id, lambda: NotFound(
            "group deal not found", reason=reasons.GROUP_DEAL_NOT_FOUND,
            resource=("groupDeal", f"groupDeals/{deal_id}"), zh="拼团活动不存在"))

    async def group(self, s: AsyncSession, deal_id: int, group_id: int) -> GroupBuy:
        g = await s.get(GroupBuy, group_id, populate_existing=True)
        if g is None or g.deal_id != deal_id:
            raise NotFound("group not found", reason=reasons.GROUP_NOT_FOUND,
                           resource=("group", f"groupDeals/{deal_id}/groups/{group_id}"), zh="拼团不存在")
        return g

    async def open(self, s: AsyncSession, deal_id: int, member_id: int, address_id: int | None) -> Order:
        """A new group led by the member, who holds its first place, and the leader's order."""
        d = await self.deal(s, deal_id)
        now = utcnow()
        g = GroupBuy(deal_id=deal_id, leader_id=member_id, state=GROUP_OPEN, group_size=d.group_size, joined_count=1,
                     paid_count=0, deadline_time=now + timedelta(seconds=d.fill_seconds), create_time=now)
        s.add(g)
        await s.flush()
        return await self._order(s, d, g, member_id, address_id)

    async def join(self, s: AsyncSession, deal_id: int, group_id: int, member_id: int,
                   address_id: int | None) -> Order:
        d = await self.deal(s, deal_id)
        g = await self.group(s, deal_id, group_id)
        took = await s.execute(update(GroupBuy).where(
            GroupBuy.id == g.id, GroupBuy.state == GROUP_OPEN, GroupBuy.joined_count < GroupBuy.group_size,
            GroupBuy.deadline_time > utcnow()).values(joined_count=GroupBuy.joined_count + 1))
        if took.rowcount != 1:  # type: ignore[attr-defined]
            raise FailedPrecondition("the group cannot be joined (full, failed or past its deadline)",
                                     reason=reasons.GROUP_UNAVAILABLE, zh="该团已满或已结束")
        return await self._order(s, d, g, member_id, address_id)

    async def _order(self, s: AsyncSession, d: GroupDeal, g: GroupBuy, member_id: int,
                     address_id: int | None) -> Order:
        address = await self.addresses.optional(s, member_id, address_id)
        p, k = await self.catalog.product_of_sku(s, d.sku_id)
        now = utcnow()
        o = Order(member_id=member_id, state=PENDING_PAYMENT, total_fen=d.price_fen, tier_discount_fen=0,
                  coupon_discount_fen=0, payable_fen=d.price_fen, address=snapshot(address),
                  group_deal_id=d.id, group_id=g.id, out_trade_no=uuid.uuid4().hex, create_time=now,
                  pay_deadline_time=min(now + self.pay_timeout, g.deadline_time))
        s.add(o)
        await s.flush()
        try:
            async with s.begin_nested():
                s.add(GroupMember(group_id=g.id, member_id=member_id, order_id=o.id))
                await s.flush()
        except IntegrityError as exc:
            if not is_duplicate_key(exc):
                raise
            raise FailedPrecondition("already in this group", reason=reasons.GROUP_ALREADY_JOINED, zh="您已参加该团") from None
        s.add(OrderItem(order_id=o.id, sku_id=k.id, product_id=p.id, category_id=p.category_id,
                        product_display_name=p.display_name, sku_display_name=k.display_name, unit_price_fen=d.price_fen,
                        quantity=1, paid_fen=d.price_fen, repurchase_cycle_days=p.repurchase_cycle_days))
        got = await s.execute(update(Sku).where(Sku.id == k.id, Sku.stock >= 1).values(stock=Sku.stock - 1))
        if got.rowcount != 1:  # type: ignore[attr-defined]
            raise FailedPrecondition("not enough stock", reason=reasons.OUT_OF_STOCK, zh="库存不足")
        await s.flush()
        return o

    # --- seen from the order's lifecycle ---------------------------------------------------

    async def release_place(self, s: AsyncSession, group_id: int, member_id: int) -> None:
        """An unpaid place in an open group becomes free again (its order was cancelled)."""
        freed = await s.execute(update(GroupBuy).where(GroupBuy.id == group_id, GroupBuy.state == GROUP_OPEN)
                                .values(joined_count=GroupBuy.joined_count - 1))
        if freed.rowcount == 1:  # type: ignore[attr-defined]
            await s.execute(delete(GroupMember).where(GroupMember.group_id == group_id, GroupMember.member_id == member_id))

    async def count_paid(self, s: AsyncSession, group_id: int) -> None:
        """One more place paid; the group is FULL once every place is paid."""
        await s.execute(update(GroupBuy).where(GroupBuy.id == group_id).values(paid_count=GroupBuy.paid_count + 1))
        await s.execute(update(GroupBuy).where(GroupBuy.id == group_id, GroupBuy.state == GROUP_OPEN,
                                               GroupBuy.paid_count >= GroupBuy.group_size)
                        .values(state=GROUP_FULL))

    async def check_shippable(self, s: AsyncSession, group_id: int) -> None:
        g = await s.get(GroupBuy, group_id)
        if g is None or g.state != GROUP_FULL:
            raise FailedPrecondition("the group is not full yet", reason=reasons.GROUP_NOT_FULL, zh="拼团尚未成功")

    async def expired(self, s: AsyncSession, now: datetime, limit: int = 100) -> list[int]:
        return list((await s.execute(select(GroupBuy.id).where(GroupBuy.state == GROUP_OPEN, GroupBuy.deadline_time <= now)
                                     .limit(limit))).scalars())

    async def claim_failed(self, s: AsyncSession, group_id: int, now: datetime) -> list[Order] | None:
        """OPEN -> FAILED past the deadline (the claim): the group's orders, or None if another replica won."""
        won = await s.execute(update(GroupBuy).where(GroupBuy.id == group_id, GroupBuy.state == GROUP_OPEN,
                                                     GroupBuy.deadline_time <= now).values(state=GROUP_FAILED))
        if won.rowcount != 1:  # type: ignore[attr-defined]
            return None
        return list((await s.execute(select(Order).where(Order.group_id == group_id))).scalars().all())
