"""Use cases of the orders service.

Each public coroutine is one use case and runs inside the single transaction
its caller opened (``session``); it raises mallkit errors for every rule it
refuses. Stock, coupon quantities and order states change with conditional
UPDATEs (zero rows: sold out, taken, or an illegal transition), never
read-modify-write. Scheduled work takes ``now`` so tests can move time.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from mall.orders.v1 import orders_events_pb2 as events
from mallkit.db import insert_ignore, is_duplicate_key, utcnow
from mallkit.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from mallkit.outbox import Outbox

from . import errors as reasons
from .models import (
    CANCELLED,
    COMPLETED,
    COUPON_AVAILABLE,
    COUPON_USED,
    GROUP_FAILED,
    GROUP_FULL,
    GROUP_OPEN,
    PAID,
    PENDING_PAYMENT,
    REFUND_PENDING,
    REFUND_REQUESTED,
    REFUND_SUCCEEDED,
    REFUNDED,
    SHIPPED,
    Address,
    CartItem,
    Category,
    Coupon,
    CouponHolding,
    CouponTemplate,
    FlashPurchase,
    FlashSale,
    GroupBuy,
    GroupDeal,
    GroupMember,
    JourneyStep,
    Order,
    OrderItem,
    PaymentNotification,
    Product,
    Refund,
    Sku,
)
from .wechatpay import PaidTransaction

log = logging.getLogger("orders.service")

ACTIVE, INACTIVE = 1, 2
AMOUNT_OFF, PERCENT_OFF = 1, 2
STATE_NAMES = {1: "PENDING_PAYMENT", 2: "PAID", 3: "SHIPPED", 4: "COMPLETED", 5: "CANCELLED", 6: "REFUND_REQUESTED",
               7: "REFUNDED"}


def _ts(dt: datetime):
    from google.protobuf.timestamp_pb2 import Timestamp

    t = Timestamp()
    t.FromDatetime(dt)
    return t


def state_conflict(order: Order, action: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"cannot {action} an order in state {STATE_NAMES.get(order.state, order.state)}",
        reason=reasons.ORDER_STATE_CONFLICT, metadata={"state": STATE_NAMES.get(order.state, ""), "action": action},
        zh="订单当前状态不允许此操作",
    )


@dataclass
class Line:
    sku_id: int
    quantity: int


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


class OrdersService:
    def __init__(self, *, outbox: Outbox, pay_timeout: timedelta, after_sales: timedelta, care_after: timedelta,
                 soldout_ttl: float = 2.0):
        self.outbox = outbox
        self.pay_timeout = pay_timeout
        self.after_sales = after_sales
        self.care_after = care_after
        self.soldout_ttl = soldout_ttl
        self._soldout: dict[int, float] = {}  # flash sale id -> monotonic time it was seen sold out
        self._flash: dict[int, FlashInfo] = {}

    # --- catalog ---------------------------------------------------------------------------

    async def category(self, s: AsyncSession, category_id: int, field: str = "category") -> Category:
        c = await s.get(Category, category_id)
        if c is None:
            raise NotFound("category not found", reason=reasons.CATEGORY_NOT_FOUND,
                           resource=("category", f"categories/{category_id}"), metadata={"field": field}, zh="分类不存在")
        return c

    async def create_category(self, s: AsyncSession, display_name: str) -> Category:
        c = Category(display_name=display_name, create_time=utcnow())
        s.add(c)
        await self._flush_unique(s, "category.display_name")
        return c

    async def _flush_unique(self, s: AsyncSession, field: str) -> None:
        try:
            await s.flush()
        except IntegrityError as exc:
            if is_duplicate_key(exc):
                raise AlreadyExists(f"{field} is already taken", reason=reasons.NAME_TAKEN, metadata={"field": field},
                                    zh="名称已被使用") from None
            raise

    async def list_categories(self, s: AsyncSession, size: int, after_id: int | None) -> list[Category]:
        q = select(Category).order_by(Category.id).limit(size + 1)
        if after_id is not None:
            q = q.where(Category.id > after_id)
        return list((await s.execute(q)).scalars().all())

    async def create_product(self, s: AsyncSession, fields: dict, skus: list[dict]) -> tuple[Product, list[Sku]]:
        await self.category(s, fields["category_id"], "product.category")
        now = utcnow()
        p = Product(**fields, create_time=now, update_time=now)
        s.add(p)
        await s.flush()
        rows = [Sku(product_id=p.id, create_time=now, **k) for k in skus]
        s.add_all(rows)
        await s.flush()
        return p, rows

    async def product(self, s: AsyncSession, product_id: int, *, active_only: bool = False) -> tuple[Product, list[Sku]]:
        p = await s.get(Product, product_id)
        if p is None or (active_only and p.status != ACTIVE):
            raise NotFound("product not found", reason=reasons.PRODUCT_NOT_FOUND,
                           resource=("product", f"products/{product_id}"), zh="商品不存在")
        return p, await self.skus_of(s, [p.id])

    async def skus_of(self, s: AsyncSession, product_ids: list[int]) -> list[Sku]:
        if not product_ids:
            return []
        return list((await s.execute(select(Sku).where(Sku.product_id.in_(product_ids)).order_by(Sku.id))).scalars())

    async def list_products(self, s: AsyncSession, *, size: int, before_id: int | None, category_id: int | None,
                            status: int | None) -> list[Product]:
        q = select(Product).order_by(Product.id.desc()).limit(size + 1)
        if before_id is not None:
            q = q.where(Product.id < before_id)
        if category_id is not None:
            q = q.where(Product.category_id == category_id)
        if status:
            q = q.where(Product.status == status)
        return list((await s.execute(q)).scalars().all())

    async def update_product(self, s: AsyncSession, product_id: int, changes: dict) -> tuple[Product, list[Sku]]:
        p, skus = await self.product(s, product_id)
        for k, v in changes.items():
            setattr(p, k, v)
        p.update_time = utcnow()
        await s.flush()
        return p, skus

    async def sku(self, s: AsyncSession, product_id: int, sku_id: int, field: str = "sku") -> Sku:
        k = await s.get(Sku, sku_id)
        if k is None or k.product_id != product_id:
            raise NotFound("sku not found", reason=reasons.SKU_NOT_FOUND, metadata={"field": field},
                           resource=("sku", f"products/{product_id}/skus/{sku_id}"), zh="商品规格不存在")
        return k

    async def update_sku(self, s: AsyncSession, product_id: int, sku_id: int, price_fen: int, add_stock: int) -> Sku:
        k = await self.sku(s, product_id, sku_id, "name")
        values: dict = {}
        if price_fen:
            values["price_fen"] = price_fen
        if add_stock:
            values["stock"] = Sku.stock + add_stock
        if values:
            await s.execute(update(Sku).where(Sku.id == sku_id).values(**values))
            await s.refresh(k)
        return k

    # --- cart and addresses ----------------------------------------------------------------

    async def add_cart_item(self, s: AsyncSession, member_id: int, product_id: int, sku_id: int, quantity: int) -> CartItem:
        await self.sku(s, product_id, sku_id)
        await insert_ignore(s, CartItem.__table__, [{"member_id": member_id, "sku_id": sku_id, "quantity": 0,
                                                      "create_time": utcnow()}])
        done = await s.execute(update(CartItem).where(CartItem.member_id == member_id, CartItem.sku_id == sku_id,
                                                      CartItem.quantity + quantity <= 99)
                               .values(quantity=CartItem.quantity + quantity))
        if done.rowcount != 1:  # type: ignore[attr-defined]
            raise InvalidArgument.field("quantity", "a cart line holds at most 99 units")
        return (await s.execute(select(CartItem).where(CartItem.member_id == member_id, CartItem.sku_id == sku_id))).scalar_one()

    async def list_cart_items(self, s: AsyncSession, member_id: int, size: int, after_id: int | None) -> list[tuple[CartItem, int]]:
        q = (select(CartItem, Sku.product_id).join(Sku, Sku.id == CartItem.sku_id)
             .where(CartItem.member_id == member_id).order_by(CartItem.id).limit(size + 1))
        if after_id is not None:
            q = q.where(CartItem.id > after_id)
        return [(c, pid) for c, pid in (await s.execute(q)).all()]

    async def delete_cart_item(self, s: AsyncSession, member_id: int, item_id: int) -> None:
        done = await s.execute(delete(CartItem).where(CartItem.id == item_id, CartItem.member_id == member_id))
        if done.rowcount != 1:  # type: ignore[attr-defined]
            raise NotFound("cart item not found", reason=reasons.CART_ITEM_NOT_FOUND, zh="购物车商品不存在")

    async def create_address(self, s: AsyncSession, member_id: int, fields: dict) -> Address:
        a = Address(member_id=member_id, create_time=utcnow(), deleted=False, **fields)
        s.add(a)
        await s.flush()
        return a

    async def address(self, s: AsyncSession, member_id: int, address_id: int, field: str = "address") -> Address:
        a = await s.get(Address, address_id)
        if a is None or a.member_id != member_id or a.deleted:
            raise NotFound("address not found", reason=reasons.ADDRESS_NOT_FOUND, metadata={"field": field},
                           zh="收货地址不存在")
        return a

    async def list_addresses(self, s: AsyncSession, member_id: int, size: int, after_id: int | None) -> list[Address]:
        q = (select(Address).where(Address.member_id == member_id, Address.deleted.is_(False))
             .order_by(Address.id).limit(size + 1))
        if after_id is not None:
            q = q.where(Address.id > after_id)
        return list((await s.execute(q)).scalars().all())

    async def delete_address(self, s: AsyncSession, member_id: int, address_id: int) -> None:
        await self.address(s, member_id, address_id, "name")
        await s.execute(update(Address).where(Address.id == address_id).values(deleted=True))

    # --- coupons ---------------------------------------------------------------------------

    async def create_coupon_template(self, s: AsyncSession, fields: dict) -> CouponTemplate:
        if fields.get("category_id"):
            await self.category(s, fields["category_id"], "coupon_template.category")
        t = CouponTemplate(issued_count=0, create_time=utcnow(), **fields)
        s.add(t)
        await s.flush()
        return t

    async def coupon_template(self, s: AsyncSession, template_id: int, field: str = "coupon_template") -> CouponTemplate:
        t = await s.get(CouponTemplate, template_id)
        if t is None:
            raise NotFound("coupon template not found", reason=reasons.COUPON_TEMPLATE_NOT_FOUND, metadata={"field": field},
                           resource=("couponTemplate", f"couponTemplates/{template_id}"), zh="优惠券不存在")
        return t

    async def list_coupon_templates(self, s: AsyncSession, size: int, before_id: int | None) -> list[CouponTemplate]:
        q = select(CouponTemplate).order_by(CouponTemplate.id.desc()).limit(size + 1)
        if before_id is not None:
            q = q.where(CouponTemplate.id < before_id)
        return list((await s.execute(q)).scalars().all())

    async def issue_coupon(self, s: AsyncSession, template_id: int, member_id: int, source: str,
                           *, claim: bool = False) -> Coupon:
        """One coupon to one member: per-member limit and total quantity by conditional UPDATE."""
        t = await self.coupon_template(s, template_id)
        if claim and not t.claimable:
            raise FailedPrecondition("this coupon cannot be claimed", reason=reasons.COUPON_NOT_CLAIMABLE, zh="该优惠券不可领取")
        await insert_ignore(s, CouponHolding.__table__, [{"template_id": template_id, "member_id": member_id, "count": 0}])
        held = await s.execute(update(CouponHolding)
                               .where(CouponHolding.template_id == template_id, CouponHolding.member_id == member_id,
                                      CouponHolding.count < t.per_member_limit)
                               .values(count=CouponHolding.count + 1))
        if held.rowcount != 1:  # type: ignore[attr-defined]
            raise FailedPrecondition("per-member limit of this coupon reached", reason=reasons.COUPON_LIMIT_REACHED,
                                     zh="已达到领取上限")
        taken = await s.execute(update(CouponTemplate)
                                .where(CouponTemplate.id == template_id, CouponTemplate.issued_count < CouponTemplate.total_quantity)
                                .values(issued_count=CouponTemplate.issued_count + 1))
        if taken.rowcount != 1:  # type: ignore[attr-defined]
            await s.execute(update(CouponHolding)
                            .where(CouponHolding.template_id == template_id, CouponHolding.member_id == member_id)
                            .values(count=CouponHolding.count - 1))
            raise FailedPrecondition("this coupon is all given out", reason=reasons.COUPON_EXHAUSTED, zh="优惠券已领完")
        now = utcnow()
        c = Coupon(template_id=template_id, member_id=member_id, state=COUPON_AVAILABLE, source=source, issue_time=now,
                   expire_time=now + timedelta(days=t.valid_days))
        s.add(c)
        await s.flush()
        return c

    async def issue_welcome_coupons(self, s: AsyncSession, member_id: int) -> int:
        ids = (await s.execute(select(CouponTemplate.id).where(CouponTemplate.welcome.is_(True)))).scalars().all()
        n = 0
        for tid in ids:
            try:
                await self.issue_coupon(s, tid, member_id, "welcome")
                n += 1
            except FailedPrecondition:
                pass
        return n

    async def list_coupons(self, s: AsyncSession, member_id: int, size: int, before_id: int | None) -> list[Coupon]:
        q = select(Coupon).where(Coupon.member_id == member_id).order_by(Coupon.id.desc()).limit(size + 1)
        if before_id is not None:
            q = q.where(Coupon.id < before_id)
        return list((await s.execute(q)).scalars().all())

    # --- orders ----------------------------------------------------------------------------

    async def order(self, s: AsyncSession, order_id: int, *, member_id: int | None = None) -> Order:
        o = await s.get(Order, order_id, populate_existing=True)
        if o is None and member_id is not None:  # members learn nothing about other ids
            raise PermissionDenied("members may only access their own orders", reason="NOT_OWNER", zh="无权访问他人的订单")
        if o is None:
            raise NotFound("order not found", reason=reasons.ORDER_NOT_FOUND, resource=("order", f"orders/{order_id}"),
                           zh="订单不存在")
        if member_id is not None and o.member_id != member_id:
            raise PermissionDenied("members may only access their own orders", reason="NOT_OWNER", zh="无权访问他人的订单")
        return o

    async def items_of(self, s: AsyncSession, order_ids: Sequence[int]) -> dict[int, list[OrderItem]]:
        out: dict[int, list[OrderItem]] = {i: [] for i in order_ids}
        if order_ids:
            for it in (await s.execute(select(OrderItem).where(OrderItem.order_id.in_(list(order_ids)))
                                       .order_by(OrderItem.id))).scalars():
                out[it.order_id].append(it)
        return out

    async def list_orders(self, s: AsyncSession, member_id: int, size: int, before_id: int | None,
                          state: int | None) -> list[Order]:
        q = select(Order).where(Order.member_id == member_id).order_by(Order.id.desc()).limit(size + 1)
        if before_id is not None:
            q = q.where(Order.id < before_id)
        if state:
            q = q.where(Order.state == state)
        return list((await s.execute(q)).scalars().all())

    async def create_order(self, s: AsyncSession, member_id: int, lines: list[Line], address_id: int,
                           coupon_id: int | None, tier_percent: int, from_cart: bool) -> Order:
        """Price on the server, reserve stock, use the coupon: all in this transaction or nothing."""
        address = await self.address(s, member_id, address_id)
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
        # Prices come from the database only; tier discount per line (floor in the member's favour).
        line_totals = [skus[ln.sku_id].price_fen * ln.quantity for ln in lines]
        after_tier = [t * tier_percent // 100 for t in line_totals]
        total, subtotal = sum(line_totals), sum(after_tier)
        coupon, coupon_discount, paid = None, 0, list(after_tier)
        if coupon_id is not None:
            coupon = await s.get(Coupon, coupon_id)
            if coupon is None or coupon.member_id != member_id:
                raise NotFound("coupon not found", reason=reasons.COUPON_NOT_FOUND, metadata={"field": "coupon"},
                               zh="优惠券不存在")
            t = await self.coupon_template(s, coupon.template_id, "coupon")
            eligible_idx = [i for i, ln in enumerate(lines)
                            if t.category_id is None or products[skus[ln.sku_id].product_id].category_id == t.category_id]
            eligible = sum(after_tier[i] for i in eligible_idx)
            if not eligible_idx or eligible < t.threshold_fen:
                raise FailedPrecondition("coupon does not apply to this order", reason=reasons.COUPON_NOT_APPLICABLE,
                                         metadata={"field": "coupon", "threshold_fen": t.threshold_fen},
                                         zh="订单不满足优惠券使用条件")
            raw = t.amount_off_fen if t.kind == AMOUNT_OFF else eligible * (100 - t.percent) // 100
            # Never more than the eligible lines, and the order still costs at least 1 fen.
            coupon_discount = max(0, min(raw, eligible, subtotal - 1))
            remaining = coupon_discount
            for n, i in enumerate(eligible_idx):
                share = remaining if n == len(eligible_idx) - 1 else coupon_discount * after_tier[i] // eligible
                paid[i] -= share
                remaining -= share
        now = utcnow()
        o = Order(member_id=member_id, state=PENDING_PAYMENT, total_fen=total, tier_discount_fen=total - subtotal,
                  coupon_discount_fen=coupon_discount, payable_fen=subtotal - coupon_discount,
                  coupon_id=coupon.id if coupon else None, address=_address_json(address),
                  out_trade_no=uuid.uuid4().hex, create_time=now, pay_deadline_time=now + self.pay_timeout)
        s.add(o)
        await s.flush()
        for i, ln in enumerate(lines):
            k = skus[ln.sku_id]
            p = products[k.product_id]
            s.add(OrderItem(order_id=o.id, sku_id=k.id, product_id=p.id, category_id=p.category_id,
                            product_display_name=p.display_name, sku_display_name=k.display_name,
                            unit_price_fen=k.price_fen, quantity=ln.quantity, paid_fen=paid[i],
                            repurchase_cycle_days=p.repurchase_cycle_days))
        if coupon is not None:
            used = await s.execute(update(Coupon)
                                   .where(Coupon.id == coupon.id, Coupon.member_id == member_id,
                                          Coupon.state == COUPON_AVAILABLE, Coupon.expire_time > now)
                                   .values(state=COUPON_USED, order_id=o.id))
            if used.rowcount != 1:  # type: ignore[attr-defined]
                raise FailedPrecondition("coupon is used or expired", reason=reasons.COUPON_UNAVAILABLE,
                                         metadata={"field": "coupon"}, zh="优惠券已使用或已过期")
        for ln in sorted(lines, key=lambda x: x.sku_id):  # one order of locks: no deadlocks between orders
            got = await s.execute(update(Sku).where(Sku.id == ln.sku_id, Sku.stock >= ln.quantity)
                                  .values(stock=Sku.stock - ln.quantity))
            if got.rowcount != 1:  # type: ignore[attr-defined]
                raise FailedPrecondition("not enough stock", reason=reasons.OUT_OF_STOCK,
                                         metadata={"sku": f"products/{skus[ln.sku_id].product_id}/skus/{ln.sku_id}"},
                                         zh="库存不足")
        if from_cart:
            await s.execute(delete(CartItem).where(CartItem.member_id == member_id,
                                                   CartItem.sku_id.in_([ln.sku_id for ln in lines])))
        await s.flush()
        return o

    async def cancel_order(self, s: AsyncSession, order_id: int, reason: str, *, member_id: int | None = None,
                           now: datetime | None = None) -> Order:
        """PENDING_PAYMENT -> CANCELLED, releasing stock (or flash-sale stock) and the coupon."""
        o = await self.order(s, order_id, member_id=member_id)
        now = now or utcnow()
        done = await s.execute(update(Order).where(Order.id == order_id, Order.state == PENDING_PAYMENT)
                               .values(state=CANCELLED, cancel_reason=reason, close_time=now))
        if done.rowcount != 1:  # type: ignore[attr-defined]
            raise state_conflict(await self.order(s, order_id), "cancel")
        items = (await self.items_of(s, [order_id]))[order_id]
        if o.flash_sale_id is not None:
            units = sum(it.quantity for it in items)
            await s.execute(update(FlashSale).where(FlashSale.id == o.flash_sale_id)
                            .values(remaining=FlashSale.remaining + units))
            await s.execute(update(FlashPurchase)
                            .where(FlashPurchase.flash_sale_id == o.flash_sale_id, FlashPurchase.member_id == o.member_id)
                            .values(quantity=FlashPurchase.quantity - units))
            self._soldout.pop(o.flash_sale_id, None)
        else:
            for it in sorted(items, key=lambda x: x.sku_id):
                await s.execute(update(Sku).where(Sku.id == it.sku_id).values(stock=Sku.stock + it.quantity))
        if o.group_id is not None:  # an unpaid place in an open group becomes free again
            freed = await s.execute(update(GroupBuy).where(GroupBuy.id == o.group_id, GroupBuy.state == GROUP_OPEN)
                                    .values(joined_count=GroupBuy.joined_count - 1))
            if freed.rowcount == 1:  # type: ignore[attr-defined]
                await s.execute(delete(GroupMember).where(GroupMember.group_id == o.group_id,
                                                          GroupMember.member_id == o.member_id))
        if o.coupon_id is not None:
            await s.execute(update(Coupon).where(Coupon.id == o.coupon_id, Coupon.order_id == order_id,
                                                 Coupon.state == COUPON_USED)
                            .values(state=COUPON_AVAILABLE, order_id=None))
        return await self.order(s, order_id)

    async def set_prepay(self, s: AsyncSession, order_id: int, prepay_id: str, openid: str) -> None:
        await s.execute(update(Order).where(Order.id == order_id).values(prepay_id=prepay_id, openid=openid))

    async def ship_order(self, s: AsyncSession, order_id: int, tracking: str) -> Order:
        o = await self.order(s, order_id)
        if o.group_id is not None:
            g = await s.get(GroupBuy, o.group_id)
            if g is None or g.state != GROUP_FULL:
                raise FailedPrecondition("the group is not full yet", reason=reasons.GROUP_NOT_FULL, zh="拼团尚未成功")
        done = await s.execute(update(Order).where(Order.id == order_id, Order.state == PAID)
                               .values(state=SHIPPED, ship_time=utcnow(), tracking_number=tracking))
        if done.rowcount != 1:  # type: ignore[attr-defined]
            raise state_conflict(await self.order(s, order_id), "ship")
        return await self.order(s, order_id)

    async def request_refund(self, s: AsyncSession, order_id: int, member_id: int) -> Order:
        await self.order(s, order_id, member_id=member_id)
        done = await s.execute(update(Order).where(Order.id == order_id, Order.state.in_([PAID, SHIPPED]))
                               .values(state=REFUND_REQUESTED))
        if done.rowcount != 1:  # type: ignore[attr-defined]
            raise state_conflict(await self.order(s, order_id), "request a refund of")
        return await self.order(s, order_id)

    async def approve_refund(self, s: AsyncSession, order_id: int) -> tuple[Order, int]:
        """Queue the refund (one per order); the refund processor calls WeChat Pay."""
        o = await self.order(s, order_id)
        if o.state != REFUND_REQUESTED:
            raise state_conflict(o, "approve a refund of")
        await insert_ignore(s, Refund.__table__, [{
            "order_id": order_id, "out_refund_no": f"R{o.out_trade_no}", "amount_fen": o.payable_fen, "reason": "member",
            "state": REFUND_PENDING, "attempts": 0, "create_time": utcnow()}])
        rid = (await s.execute(select(Refund.id).where(Refund.out_refund_no == f"R{o.out_trade_no}"))).scalar_one()
        return o, rid

    # --- payment ---------------------------------------------------------------------------

    async def apply_payment(self, s: AsyncSession, tx: PaidTransaction) -> tuple[str, int | None]:
        """Apply a verified notification once. Returns (outcome, refund id to process now or None).

        The conditional UPDATE PENDING_PAYMENT -> PAID is the arbiter: of any
        number of concurrent deliveries one changes the row; the others find it
        PAID with the same transaction id and are acknowledged. A payment for an
        order cancelled meanwhile is refunded, never fulfilled.
        """
        o = (await s.execute(select(Order).where(Order.out_trade_no == tx.out_trade_no))).scalar_one_or_none()
        if o is None:
            raise NotFound("no order for out_trade_no", reason=reasons.ORDER_NOT_FOUND, zh="订单不存在")
        if tx.total_fen != o.payable_fen:
            raise FailedPrecondition("paid amount differs from the order's", reason=reasons.AMOUNT_MISMATCH,
                                     metadata={"expected_fen": o.payable_fen, "paid_fen": tx.total_fen}, zh="支付金额不符")
        if tx.trade_state != "SUCCESS":
            return "ignored", None
        now = utcnow()
        pay_time = _parse_time(tx.success_time) or now
        paid = await s.execute(update(Order)
                               .where(Order.id == o.id, Order.out_trade_no == tx.out_trade_no, Order.state == PENDING_PAYMENT)
                               .values(state=PAID, transaction_id=tx.transaction_id, pay_time=pay_time))
        refund_id = None
        if paid.rowcount == 1:  # type: ignore[attr-defined]
            outcome = "paid"
            items = (await self.items_of(s, [o.id]))[o.id]
            event = events.OrderPaidEvent(order=f"orders/{o.id}", member=f"members/{o.member_id}",
                                          paid_amount_fen=o.payable_fen, pay_time=_ts(pay_time), items=[
                events.PurchasedItem(product=f"products/{it.product_id}", sku=f"products/{it.product_id}/skus/{it.sku_id}",
                                     category=f"categories/{it.category_id}", quantity=it.quantity, amount_fen=it.paid_fen)
                for it in items])
            await self.outbox.add(s, "order.paid", event, subject=f"orders/{o.id}")
            if o.group_id is not None:
                await s.execute(update(GroupBuy).where(GroupBuy.id == o.group_id)
                                .values(paid_count=GroupBuy.paid_count + 1))
                await s.execute(update(GroupBuy).where(GroupBuy.id == o.group_id, GroupBuy.state == GROUP_OPEN,
                                                       GroupBuy.paid_count >= GroupBuy.group_size)
                                .values(state=GROUP_FULL))
            steps = [("payment_success", now), ("care", pay_time + self.care_after)]
            await insert_ignore(s, JourneyStep.__table__, [
                {"order_id": o.id, "member_id": o.member_id, "step": st, "due_time": due, "outcome": ""} for st, due in steps])
        else:
            cur = await self.order(s, o.id)
            if cur.state == CANCELLED and cur.transaction_id is None:
                outcome = "late_refund"
                await s.execute(update(Order).where(Order.id == o.id, Order.transaction_id.is_(None))
                                .values(transaction_id=tx.transaction_id, refunded_fen=o.payable_fen))
                await insert_ignore(s, Refund.__table__, [{
                    "order_id": o.id, "out_refund_no": f"L{o.out_trade_no}", "amount_fen": o.payable_fen,
                    "reason": "late_payment", "state": REFUND_PENDING, "attempts": 0, "create_time": now}])
                refund_id = (await s.execute(select(Refund.id).where(Refund.out_refund_no == f"L{o.out_trade_no}"))).scalar_one()
            else:
                outcome = "duplicate"
        if outcome != "duplicate":
            s.add(PaymentNotification(notification_id=tx.notification_id[:64], order_id=o.id,
                                      transaction_id=tx.transaction_id, outcome=outcome, receive_time=now))
            await s.flush()
        return outcome, refund_id

    async def payment_state(self, s: AsyncSession, out_trade_no: str) -> tuple[str | None, int] | None:
        """(transaction id, payable) of the order of an out_trade_no: one plain read, no lock."""
        row = (await s.execute(select(Order.transaction_id, Order.payable_fen)
                               .where(Order.out_trade_no == out_trade_no))).first()
        return (row[0], row[1]) if row else None

    async def due_refunds(self, s: AsyncSession, limit: int = 50) -> list[int]:
        return list((await s.execute(select(Refund.id).where(Refund.state == REFUND_PENDING).order_by(Refund.id)
                                     .limit(limit))).scalars())

    async def refund_details(self, s: AsyncSession, refund_id: int) -> tuple[Refund, Order]:
        r = await s.get(Refund, refund_id, populate_existing=True)
        assert r is not None
        return r, await self.order(s, r.order_id)

    async def refund_succeeded(self, s: AsyncSession, refund_id: int) -> None:
        now = utcnow()
        done = await s.execute(update(Refund).where(Refund.id == refund_id, Refund.state == REFUND_PENDING)
                               .values(state=REFUND_SUCCEEDED, success_time=now, lease_until=None))
        if done.rowcount != 1:  # type: ignore[attr-defined]
            return
        r, o = await self.refund_details(s, refund_id)
        if r.reason != "member":
            return  # a late payment: the order stays CANCELLED, it was never fulfilled
        moved = await s.execute(update(Order).where(Order.id == o.id, Order.state == REFUND_REQUESTED)
                                .values(state=REFUNDED, refunded_fen=r.amount_fen, close_time=now))
        if moved.rowcount == 1:  # type: ignore[attr-defined]
            await self.outbox.add(s, "order.refunded", events.OrderRefundedEvent(
                order=f"orders/{o.id}", member=f"members/{o.member_id}", refund_amount_fen=r.amount_fen,
                refund_time=_ts(now)), subject=f"orders/{o.id}")

    async def refund_failed(self, s: AsyncSession, refund_id: int, now: datetime) -> None:
        await s.execute(update(Refund).where(Refund.id == refund_id)
                        .values(attempts=Refund.attempts + 1, lease_until=now + timedelta(seconds=30)))

    # --- flash sales -----------------------------------------------------------------------

    async def create_flash_sale(self, s: AsyncSession, product_id: int, sku_id: int, fields: dict) -> FlashSale:
        await self.sku(s, product_id, sku_id, "flash_sale.sku")
        f = FlashSale(sku_id=sku_id, remaining=fields["total_stock"], create_time=utcnow(), **fields)
        s.add(f)
        await s.flush()
        return f

    async def flash_sale(self, s: AsyncSession, sale_id: int) -> FlashSale:
        f = await s.get(FlashSale, sale_id, populate_existing=True)
        if f is None:
            raise NotFound("flash sale not found", reason=reasons.FLASH_SALE_NOT_FOUND,
                           resource=("flashSale", f"flashSales/{sale_id}"), zh="秒杀活动不存在")
        return f

    def _sold_out(self, sale_id: int) -> FailedPrecondition:
        self._soldout[sale_id] = time.monotonic()
        return FailedPrecondition("flash sale is sold out", reason=reasons.FLASH_SALE_SOLD_OUT, zh="已抢光")

    def check_sold_out_cache(self, sale_id: int) -> None:
        """The cheapest refusal: this process saw the sale sold out a moment ago."""
        seen = self._soldout.get(sale_id)
        if seen is not None and time.monotonic() - seen < self.soldout_ttl:
            raise FailedPrecondition("flash sale is sold out", reason=reasons.FLASH_SALE_SOLD_OUT, zh="已抢光")

    async def flash_precheck(self, s: AsyncSession, sale_id: int) -> FlashInfo:
        """A plain read (no lock) of the remaining stock and, once per process, the static data."""
        self.check_sold_out_cache(sale_id)
        remaining = (await s.execute(select(FlashSale.remaining).where(FlashSale.id == sale_id))).scalar_one_or_none()
        if remaining is None:
            await self.flash_sale(s, sale_id)  # raises NOT_FOUND
        if remaining is not None and remaining <= 0:
            raise self._sold_out(sale_id)
        info = self._flash.get(sale_id)
        if info is None:
            f = await self.flash_sale(s, sale_id)
            k = await s.get(Sku, f.sku_id)
            p = await s.get(Product, k.product_id) if k else None
            assert k is not None and p is not None
            info = FlashInfo(f.id, k.id, p.id, p.category_id, p.display_name, k.display_name, f.price_fen,
                             f.per_member_limit, f.start_time, f.end_time, p.repurchase_cycle_days)
            self._flash[sale_id] = info
        now = utcnow()
        if now < info.start_time:
            raise FailedPrecondition("flash sale has not started", reason=reasons.FLASH_SALE_NOT_STARTED, zh="活动尚未开始")
        if now >= info.end_time:
            raise FailedPrecondition("flash sale has ended", reason=reasons.FLASH_SALE_ENDED, zh="活动已结束")
        return info

    async def buy_flash_sale(self, s: AsyncSession, info: FlashInfo, member_id: int, quantity: int,
                             address_id: int | None) -> Order:
        """Per-member counter, order, then the hot row last (held only until commit)."""
        address = await self.address(s, member_id, address_id) if address_id else None
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
                  payable_fen=amount, address=_address_json(address) if address else "", flash_sale_id=info.id,
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

    # --- group buying (拼团) ----------------------------------------------------------------

    async def create_group_deal(self, s: AsyncSession, product_id: int, sku_id: int, fields: dict) -> GroupDeal:
        await self.sku(s, product_id, sku_id, "group_deal.sku")
        d = GroupDeal(sku_id=sku_id, create_time=utcnow(), **fields)
        s.add(d)
        await s.flush()
        return d

    async def group_deal(self, s: AsyncSession, deal_id: int) -> GroupDeal:
        d = await s.get(GroupDeal, deal_id)
        if d is None:
            raise NotFound("group deal not found", reason=reasons.GROUP_DEAL_NOT_FOUND,
                           resource=("groupDeal", f"groupDeals/{deal_id}"), zh="拼团活动不存在")
        return d

    async def group(self, s: AsyncSession, deal_id: int, group_id: int) -> GroupBuy:
        g = await s.get(GroupBuy, group_id, populate_existing=True)
        if g is None or g.deal_id != deal_id:
            raise NotFound("group not found", reason=reasons.GROUP_NOT_FOUND,
                           resource=("group", f"groupDeals/{deal_id}/groups/{group_id}"), zh="拼团不存在")
        return g

    async def open_group(self, s: AsyncSession, deal_id: int, member_id: int, address_id: int | None) -> Order:
        d = await self.group_deal(s, deal_id)
        now = utcnow()
        g = GroupBuy(deal_id=deal_id, leader_id=member_id, state=GROUP_OPEN, group_size=d.group_size, joined_count=1,
                     paid_count=0, deadline_time=now + timedelta(seconds=d.fill_seconds), create_time=now)
        s.add(g)
        await s.flush()
        return await self._group_order(s, d, g, member_id, address_id)

    async def join_group(self, s: AsyncSession, deal_id: int, group_id: int, member_id: int,
                         address_id: int | None) -> Order:
        d = await self.group_deal(s, deal_id)
        g = await self.group(s, deal_id, group_id)
        took = await s.execute(update(GroupBuy).where(
            GroupBuy.id == g.id, GroupBuy.state == GROUP_OPEN, GroupBuy.joined_count < GroupBuy.group_size,
            GroupBuy.deadline_time > utcnow()).values(joined_count=GroupBuy.joined_count + 1))
        if took.rowcount != 1:  # type: ignore[attr-defined]
            raise FailedPrecondition("the group cannot be joined (full, failed or past its deadline)",
                                     reason=reasons.GROUP_UNAVAILABLE, zh="该团已满或已结束")
        return await self._group_order(s, d, g, member_id, address_id)

    async def _group_order(self, s: AsyncSession, d: GroupDeal, g: GroupBuy, member_id: int,
                           address_id: int | None) -> Order:
        address = await self.address(s, member_id, address_id) if address_id else None
        k = await s.get(Sku, d.sku_id)
        assert k is not None
        p = await s.get(Product, k.product_id)
        assert p is not None
        now = utcnow()
        o = Order(member_id=member_id, state=PENDING_PAYMENT, total_fen=d.price_fen, tier_discount_fen=0,
                  coupon_discount_fen=0, payable_fen=d.price_fen, address=_address_json(address) if address else "",
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

    async def expired_groups(self, s: AsyncSession, now: datetime, limit: int = 100) -> list[int]:
        return list((await s.execute(select(GroupBuy.id).where(GroupBuy.state == GROUP_OPEN, GroupBuy.deadline_time <= now)
                                     .limit(limit))).scalars())

    async def fail_group(self, s: AsyncSession, group_id: int, now: datetime) -> list[int]:
        """OPEN -> FAILED (the claim); unpaid orders cancelled, paid ones refunded. Returns refund ids."""
        won = await s.execute(update(GroupBuy).where(GroupBuy.id == group_id, GroupBuy.state == GROUP_OPEN,
                                                     GroupBuy.deadline_time <= now).values(state=GROUP_FAILED))
        if won.rowcount != 1:  # type: ignore[attr-defined]
            return []
        refunds = []
        for o in (await s.execute(select(Order).where(Order.group_id == group_id))).scalars().all():
            if o.state == PENDING_PAYMENT:
                await self.cancel_order(s, o.id, "group_failed", now=now)
            elif o.state == PAID:
                moved = await s.execute(update(Order).where(Order.id == o.id, Order.state == PAID)
                                        .values(state=REFUND_REQUESTED))
                if moved.rowcount == 1:  # type: ignore[attr-defined]
                    await insert_ignore(s, Refund.__table__, [{
                        "order_id": o.id, "out_refund_no": f"R{o.out_trade_no}", "amount_fen": o.payable_fen,
                        "reason": "member", "state": REFUND_PENDING, "attempts": 0, "create_time": now}])
                    refunds.append((await s.execute(select(Refund.id).where(
                        Refund.out_refund_no == f"R{o.out_trade_no}"))).scalar_one())
        return refunds

    # --- scheduled work (claims by conditional UPDATE; safe with several replicas) ---------

    async def overdue_orders(self, s: AsyncSession, now: datetime, limit: int = 100) -> list[int]:
        return list((await s.execute(select(Order.id).where(Order.state == PENDING_PAYMENT, Order.pay_deadline_time <= now)
                                     .order_by(Order.pay_deadline_time).limit(limit))).scalars())

    async def remind_unpaid(self, s: AsyncSession, now: datetime, after: timedelta, limit: int = 100) -> int:
        rows = (await s.execute(select(Order.id, Order.member_id).where(
            Order.state == PENDING_PAYMENT, Order.reminded.is_(False), Order.create_time <= now - after).limit(limit))).all()
        n = 0
        for oid, mid in rows:
            won = await s.execute(update(Order).where(Order.id == oid, Order.reminded.is_(False),
                                                      Order.state == PENDING_PAYMENT).values(reminded=True))
            if won.rowcount == 1:  # type: ignore[attr-defined]
                await insert_ignore(s, JourneyStep.__table__, [{"order_id": oid, "member_id": mid, "step": "pay_reminder",
                                                                "due_time": now, "outcome": ""}])
                n += 1
        return n

    async def complete_due(self, s: AsyncSession, now: datetime, limit: int = 100) -> int:
        """SHIPPED orders whose after-sales window closed -> COMPLETED, event, journey steps."""
        rows = (await s.execute(select(Order).where(Order.state == SHIPPED, Order.ship_time <= now - self.after_sales)
                                .limit(limit))).scalars().all()
        n = 0
        for o in rows:
            won = await s.execute(update(Order).where(Order.id == o.id, Order.state == SHIPPED)
                                  .values(state=COMPLETED, close_time=now))
            if won.rowcount != 1:  # type: ignore[attr-defined]
                continue
            n += 1
            await self.outbox.add(s, "order.completed", events.OrderCompletedEvent(
                order=f"orders/{o.id}", member=f"members/{o.member_id}", paid_amount_fen=o.payable_fen,
                complete_time=_ts(now)), subject=f"orders/{o.id}")
            steps = [("window_closed", now)]
            cycles = [it.repurchase_cycle_days for it in (await self.items_of(s, [o.id]))[o.id] if it.repurchase_cycle_days]
            if cycles and o.pay_time:
                steps.append(("repurchase", o.pay_time + timedelta(days=min(cycles))))
            await insert_ignore(s, JourneyStep.__table__, [
                {"order_id": o.id, "member_id": o.member_id, "step": st, "due_time": due, "outcome": ""} for st, due in steps])
        return n

    async def due_steps(self, s: AsyncSession, now: datetime, limit: int = 50) -> list[int]:
        return list((await s.execute(select(JourneyStep.id).where(JourneyStep.sent_time.is_(None), JourneyStep.due_time <= now)
                                     .order_by(JourneyStep.due_time).limit(limit))).scalars())

    async def step(self, s: AsyncSession, step_id: int) -> JourneyStep:
        st = await s.get(JourneyStep, step_id, populate_existing=True)
        assert st is not None
        return st

    async def step_sent(self, s: AsyncSession, step_id: int, outcome: str) -> None:
        await s.execute(update(JourneyStep).where(and_(JourneyStep.id == step_id, JourneyStep.sent_time.is_(None)))
                        .values(sent_time=utcnow(), outcome=outcome[:32], lease_until=None))


def _address_json(a: Address) -> str:
    return json.dumps({"recipient": a.recipient, "phone": a.phone, "province": a.province, "city": a.city,
                       "district": a.district, "detail": a.detail}, ensure_ascii=False)


def _parse_time(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if value else None
    except ValueError:
        return None
