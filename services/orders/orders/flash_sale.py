"""Flash sales (秒杀): a SKU at a special price with its own stock, per-member limit and window.

A purchase is refused as cheaply as possible: in memory when this process saw the
sale sold out a moment ago, then after one plain read of ``remaining``; only then
one transaction takes the per-member counter, writes the order and, last, the
hot-row ``remaining >= q`` UPDATE, so its row lock is held only until commit.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mallkit.db import insert_ignore, utcnow
from mallkit.errors import FailedPrecondition, NotFound

from . import errors as reasons
from .addresses import Addresses, snapshot
from .catalog import Catalog
from .models import PENDING_PAYMENT, FlashPurchase, FlashSale, Order, OrderItem, Sku


@dataclass
class FlashInfo:
    """Static data of a flash sale, cached per process (it never changes after creation)."""

    id: int
    sku_id: int
    product_id: int
    category_id: int
    product_display_name: str
    sku_display_name: str
    price_fen: int
    per_member_limit: int
    start_time: datetime
    end_time: datetime
    repurchase_cycle_days: int


class FlashSales:
    def __init__(self, *, catalog: Catalog, addresses: Addresses, pay_timeout: timedelta, soldout_ttl: float = 2.0):
        self.catalog = catalog
        self.addresses = addresses
        self.pay_timeout = pay_timeout
        self.soldout_ttl = soldout_ttl
        self._soldout: dict[int, float] = {}  # flash sale id -> monotonic time it was seen sold out
        self._info: dict[int, FlashInfo] = {}

    async def create(self, s: AsyncSession, product_id: int, sku_id: int, fields: dict) -> FlashSale:
        await self.catalog.sku(s, product_id, sku_id, "flash_sale.sku")
        f = FlashSale(sku_id=sku_id, remaining=fields["total_stock"], create_time=utcnow(), **fields)
        s.add(f)
        await s.flush()
        return f

    async def get(self, s: AsyncSession, sale_id: int) -> FlashSale:
        f = await s.get(FlashSale, sale_id, populate_existing=True)
        if f is None:
            raise NotFound("flash sale not found", reason=reasons.FLASH_SALE_NOT_FOUND,
                           resource=("flashSale", f"flashSales/{sale_id}"), zh="秒杀活动不存在")
        return f

    async def get_with_product(self, s: AsyncSession, sale_id: int) -> tuple[FlashSale, int]:
        """The sale and the product id of its SKU (for its resource name)."""
        f = await self.get(s, sale_id)
        product_id = (await s.execute(select(Sku.product_id).where(Sku.id == f.sku_id))).scalar_one()
        return f, product_id

    def _sold_out(self, sale_id: int) -> FailedPrecondition:
        self._soldout[sale_id] = time.monotonic()
        return FailedPrecondition("flash sale is sold out", reason=reasons.FLASH_SALE_SOLD_OUT, zh="已抢光")

    def check_sold_out_cache(self, sale_id: int) -> None:
        """The cheapest refusal: this process saw the sale sold out a moment ago."""
        seen = self._soldout.get(sale_id)
        if seen is not None and time.monotonic() - seen < self.soldout_ttl:
            raise FailedPrecondition("flash sale is sold out", reason=reasons.FLASH_SALE_SOLD_OUT, zh="已抢光")

    async def precheck(self, s: AsyncSession, sale_id: int) -> FlashInfo:
        """A plain read (no lock) of the remaining stock and, once per process, the static data."""
        self.check_sold_out_cache(sale_id)
        remaining = (await s.execute(select(FlashSale.remaining).where(FlashSale.id == sale_id))).scalar_one_or_none()
        if remaining is None:
            await self.get(s, sale_id)  # raises NOT_FOUND
        if remaining is not None and remaining <= 0:
            raise self._sold_out(sale_id)
        info = self._info.get(sale_id)
        if info is None:
            f = await self.get(s, sale_id)
            p, k = await self.catalog.product_of_sku(s, f.sku_id)
            info = FlashInfo(f.id, k.id, p.id, p.category_id, p.display_name, k.display_name, f.price_fen,
                             f.per_member_limit, f.start_time, f.end_time, p.repurchase_cycle_days)
            self._info[sale_id] = info
        now = utcnow()
        if now < info.start_time:
            raise FailedPrecondition("flash sale has not started", reason=reasons.FLASH_SALE_NOT_STARTED, zh="活动尚未开始")
        if now >= info.end_time:
            raise FailedPrecondition("flash sale has ended", reason=reasons.FLASH_SALE_ENDED, zh="活动已结束")
        return info

    async def buy(self, s: AsyncSession, info: FlashInfo, member_id: int, quantity: int,
                  address_id: int | None) -> Order:
        """Per-member counter, order, then the hot row last (held only until commit)."""
        address = await self.addresses.optional(s, member_id, address_id)
        await insert_ignore(s, FlashPurchase.__table__, [{"flash_sale_id": info.id, "member_id": member_id, "quantity": 0}])
        mine = await s.execute(update(FlashPurchase)
                               .where(FlashPurchase.flash_sale_id == info.id, FlashPurchase.member_id == member_id,
                                      FlashPurchase.quantity + quantity <= info.per_member_limit)
                               .values(quantity=FlashPurchase.quantity + quantity))
        if mine.rowcount != 1:  # type: ignore[attr-defined]
            raise FailedPrecondition("per-member limit of this flash sale reached", reason=reasons.FLASH_SALE_LIMIT_REACHED,
                                     metadata={"limit": info.per_member_limit}, zh="已达到限购数量")
        now = utcnow()
        amount = info.price_fen * quantity
        o = Order(member_id=member_id, state=PENDING_PAYMENT, total_fen=amount, tier_discount_fen=0, coupon_discount_fen=0,
                  payable_fen=amount, address=snapshot(address), flash_sale_id=info.id,
                  out_trade_no=uuid.uuid4().hex, create_time=now, pay_deadline_time=now + self.pay_timeout)
        s.add(o)
        await s.flush()
        s.add(OrderItem(order_id=o.id, sku_id=info.sku_id, product_id=info.product_id, category_id=info.category_id,
                        product_display_name=info.product_display_name, sku_display_name=info.sku_display_name,
                        unit_price_fen=info.price_fen, quantity=quantity, paid_fen=amount,
                        repurchase_cycle_days=info.repurchase_cycle_days))
        await s.flush()
        got = await s.execute(update(FlashSale)
                              .where(FlashSale.id == info.id, FlashSale.remaining >= quantity)
                              .values(remaining=FlashSale.remaining - quantity))
        if got.rowcount != 1:  # type: ignore[attr-defined]
            raise self._sold_out(info.id)
        return o

    async def release(self, s: AsyncSession, sale_id: int, member_id: int, units: int) -> None:
        """A cancelled order's units go back to the sale and to the member's limit."""
        await s.execute(update(FlashSale).where(FlashSale.id == sale_id).values(remaining=FlashSale.remaining + units))
        await s.execute(update(FlashPurchase)
                        .where(FlashPurchase.flash_sale_id == sale_id, FlashPurchase.member_id == member_id)
                        .values(quantity=FlashPurchase.quantity - units))
        self._soldout.pop(sale_id, None)
