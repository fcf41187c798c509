"""Checkout: pricing on the server and order creation from SKUs and quantities.

Per line: list price x quantity, then the member's tier discount (floored in the
member's favour), then the coupon on its eligible lines, spread so that the
lines' ``paid_fen`` sum to ``payable_fen``. Stock is reserved and the coupon taken
by conditional UPDATE in the same transaction, or nothing happens. The member's
tier is read once, before the transaction (:meth:`Checkout.tier`), and kept on
the order with its points multiplier for ``order.paid``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mallkit.db import utcnow
from mallkit.errors import FailedPrecondition, NotFound

from . import errors as reasons
from .addresses import Addresses, snapshot
from .cart import Cart
from .coupons import Coupons
from .members_client import MembersClient, TierSnapshot
from .models import ACTIVE, AMOUNT_OFF, PENDING_PAYMENT, CouponTemplate, Order, OrderItem, Product, Sku


@dataclass
class Line:
    sku_id: int
    quantity: int


@dataclass
class Priced:
    total_fen: int  # list prices
    subtotal_fen: int  # after the tier discount
    coupon_discount_fen: int
    paid_fen: list[int]  # per line, after both discounts

    @property
    def payable_fen(self) -> int:
        return self.subtotal_fen - self.coupon_discount_fen


def price(line_totals: list[int], tier_percent: int, coupon: CouponTemplate | None = None,
          eligible_idx: list[int] | None = None) -> Priced:
    """Tier discount per line (floored), then the coupon on the eligible lines (never all of it: >= 1 fen left)."""
    after_tier = [t * tier_percent // 100 for t in line_totals]
    total, subtotal = sum(line_totals), sum(after_tier)
    paid, discount = list(after_tier), 0
    if coupon is not None:
        idx = eligible_idx or []
        eligible = sum(after_tier[i] for i in idx)
        if not idx or eligible < coupon.threshold_fen:
            raise FailedPrecondition("coupon does not apply to this order", reason=reasons.COUPON_NOT_APPLICABLE,
                                     metadata={"field": "coupon", "threshold_fen": coupon.threshold_fen},
                                     zh="订单不满足优惠券使用条件")
        raw = coupon.amount_off_fen if coupon.kind == AMOUNT_OFF else eligible * (100 - coupon.percent) // 100
        # Never more than the eligible lines, and the order still costs at least 1 fen.
        discount = max(0, min(raw, eligible, subtotal - 1))
        remaining = discount
        for n, i in enumerate(idx):
            share = remaining if n == len(idx) - 1 else discount * after_tier[i] // eligible
            paid[i] -= share
            remaining -= share
    return Priced(total, subtotal, discount, paid)


class Checkout:
    def __init__(self, *, addresses: Addresses, coupons: Coupons, cart: Cart, members: MembersClient,
                 pay_timeout: timedelta):
        self.addresses = addresses
        self.coupons = coupons
        self.cart = cart
        self.members = members
        self.pay_timeout = pay_timeout

    async def tier(self, member_id: int) -> TierSnapshot:
        """The one member read of a purchase (outside the transaction)."""
        return await self.members.tier(member_id)

    async def create_order(self, s: AsyncSession, member_id: int, lines: list[Line], address_id: int,
                           coupon_id: int | None, tier: TierSnapshot, from_cart: bool) -> Order:
        """Price on the server, reserve stock, use the coupon: all in this transaction or nothing."""
        address = await self.addresses.get(s, member_id, address_id)
        skus = {k.id: k for k in (await s.execute(select(Sku).where(Sku.id.in_([ln.sku_id for ln in lines])))).scalars()}
        products = {p.id: p for p in (await s.execute(
            select(Product).where(Product.id.in_({k.product_id for k in skus.values()})))).scalars()}
        for i, ln in enumerate(lines):
            k = skus.get(ln.sku_id)
            if k is None:
                raise NotFound("sku not found", reason=reasons.SKU_NOT_FOUND, metadata={"field": f"lines[{i}].sku"},
                               zh="商品规格不存在")
            if products[k.product_id].status != ACTIVE:
                raise FailedPrecondition("product is not on sale", reason=reasons.PRODUCT_NOT_ON_SALE,
                                         metadata={"field": f"lines[{i}].sku"}, zh="商品已下架")
        line_totals = [skus[ln.sku_id].price_fen * ln.quantity for ln in lines]  # prices from the database only
        coupon = None
        if coupon_id is None:
            priced = price(line_totals, tier.discount_percent)
        else:
            coupon, t = await self.coupons.for_order(s, member_id, coupon_id)
            eligible = [i for i, ln in enumerate(lines)
                        if t.category_id is None or products[skus[ln.sku_id].product_id].category_id == t.category_id]
            priced = price(line_totals, tier.discount_percent, t, eligible)
        now = utcnow()
        o = Order(member_id=member_id, state=PENDING_PAYMENT, total_fen=priced.total_fen,
                  tier_discount_fen=priced.total_fen - priced.subtotal_fen, coupon_discount_fen=priced.coupon_discount_fen,
                  payable_fen=priced.payable_fen, coupon_id=coupon.id if coupon else None, address=snapshot(address),
                  tier=tier.tier, points_multiplier_percent=tier.points_multiplier_percent,
                  out_trade_no=uuid.uuid4().hex, create_time=now, pay_deadline_time=now + self.pay_timeout)
        s.add(o)
        await s.flush()
        for i, ln in enumerate(lines):
            k = skus[ln.sku_id]
            p = products[k.product_id]
            s.add(OrderItem(order_id=o.id, sku_id=k.id, product_id=p.id, category_id=p.category_id,
                            product_display_name=p.display_name, sku_display_name=k.display_name,
                            unit_price_fen=k.price_fen, quantity=ln.quantity, paid_fen=priced.paid_fen[i],
                            repurchase_cycle_days=p.repurchase_cycle_days))
        if coupon is not None:
            await self.coupons.use(s, coupon.id, member_id, o.id, now)
        for ln in sorted(lines, key=lambda x: x.sku_id):  # one order of locks: no deadlocks between orders
            got = await s.execute(update(Sku).where(Sku.id == ln.sku_id, Sku.stock >= ln.quantity)
                                  .values(stock=Sku.stock - ln.quantity))
            if got.rowcount != 1:  # type: ignore[attr-defined]
                raise FailedPrecondition("not enough stock", reason=reasons.OUT_OF_STOCK,
                                         metadata={"sku": f"products/{skus[ln.sku_id].product_id}/skus/{ln.sku_id}"},
                                         zh="库存不足")
        if from_cart:
            await self.cart.remove_skus(s, member_id, [ln.sku_id for ln in lines])
        await s.flush()
        return o
