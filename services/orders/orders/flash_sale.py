"""Flash sales (秒杀): a SKU at a special price with its own stock, per-member limit and window.

A purchase is refused as cheaply as possible, and a sale is one short transaction:

* in memory, no database: this process saw the sale sold out (its conditional UPDATE hit
  zero rows for this quantity or less) less than ``soldout_ttl`` seconds ago, or the
  sale's window (cached per process: it never changes) is closed. Once the flag is older
  than the TTL, one attempt at a time goes to the database to look again (the others are
  still refused meanwhile): it buys (stock came back: the flag is cleared) or renews the
  flag. A cancellation in this process clears the flag at once; in another replica it is
  seen within the TTL plus one attempt.
* one transaction, Core statements, nothing re-read: the per-member counter (one
  insert-ignore for a first purchase), the order and its line, the idempotency key with
  the response built in memory, and **last** the hot-row ``remaining >= q`` UPDATE, so
  its row lock is held only until the commit.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import SimpleNamespace

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mallkit.db import DriverStatement, insert_ignore_statement, transaction_connection, utcnow
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


@dataclass
class SoldOut:
    """This process saw ``remaining < quantity`` at monotonic time ``since``."""

    quantity: int
    since: float


# The purchase's statements, built once and run on the driver's connection (mallkit.db.DriverStatement:
# SQL compiled once, no per-statement SQLAlchemy execution machinery; Core on SQLite and in sampled traces).
_purchases, _sales = FlashPurchase.__table__, FlashSale.__table__
ORDER_KEYS = ("member_id", "state", "total_fen", "tier_discount_fen", "coupon_discount_fen", "payable_fen", "coupon_id",
              "address", "flash_sale_id", "group_deal_id", "group_id", "bargain_activity_id", "bargain_id", "out_trade_no",
              "cancel_reason", "refunded_fen", "create_time", "pay_deadline_time", "pay_time", "ship_time", "close_time")
ITEM_KEYS = ("order_id", "sku_id", "product_id", "category_id", "product_display_name", "sku_display_name",
             "unit_price_fen", "quantity", "paid_fen", "repurchase_cycle_days")
INSERT_ORDER = DriverStatement(insert(Order.__table__), ORDER_KEYS)
INSERT_ITEM = DriverStatement(insert(OrderItem.__table__), ITEM_KEYS)
FIRST_PURCHASE = DriverStatement(lambda dialect: insert_ignore_statement(dialect, _purchases),
                                 ("flash_sale_id", "member_id", "quantity"))
COUNT_AGAIN = DriverStatement(
    update(_purchases)
    .where(_purchases.c.flash_sale_id == bindparam("sale"), _purchases.c.member_id == bindparam("member"),
           _purchases.c.quantity + bindparam("qty") <= bindparam("limit"))
    .values(quantity=_purchases.c.quantity + bindparam("qty")))
TAKE_STOCK = DriverStatement(update(_sales).where(_sales.c.id == bindparam("sale"), _sales.c.remaining >= bindparam("qty"))
                             .values(remaining=_sales.c.remaining - bindparam("qty")))


def limit_reached(info: FlashInfo) -> FailedPrecondition:
    return FailedPrecondition("per-member limit of this flash sale reached", reason=reasons.FLASH_SALE_LIMIT_REACHED,
                              metadata={"limit": info.per_member_limit}, zh="已达到限购数量")


def sold_out_error() -> FailedPrecondition:
    return FailedPrecondition("flash sale is sold out", reason=reasons.FLASH_SALE_SOLD_OUT, zh="已抢光")


class FlashSales:
    def __init__(self, *, catalog: Catalog, addresses: Addresses, pay_timeout: timedelta, soldout_ttl: float = 1.0):
        self.catalog = catalog
        self.addresses = addresses
        self.pay_timeout = pay_timeout
        self.soldout_ttl = soldout_ttl
        self._soldout: dict[int, SoldOut] = {}  # flash sale id -> what this process saw refused
        self._probing: set[int] = set()  # sales whose expired flag one attempt is checking now
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

    # --- the refusals answered from memory -----------------------------------------------------

    def admit(self, sale_id: int, quantity: int) -> bool:
        """Refuse from memory (sold out seen a moment ago, window closed) or let the attempt through.

        True when this attempt is the one looking again at an expired sold-out flag: the
        caller then calls :meth:`probed` when it is done, whatever the outcome."""
        info = self._info.get(sale_id)
        if info is not None:
            self._check_window(info)
        flag = self._soldout.get(sale_id)
        if flag is None or quantity < flag.quantity:
            return False
        if sale_id in self._probing or time.monotonic() - flag.since < self.soldout_ttl:
            raise sold_out_error()
        self._probing.add(sale_id)
        return True

    def refuse_from_memory(self, sale_id: int, quantity: int) -> None:
        """What :meth:`admit` refuses, without taking the look-again slot: raises for a closed
        window (of a sale this process knows) or a fresh sold-out flag (or one being looked at
        again), else returns. The platform runs it before the account check of the buyer
        (``ServiceHost.precheck``): a refusal then costs a new member no call to members."""
        info = self._info.get(sale_id)
        if info is not None:
            self._check_window(info)
        flag = self._soldout.get(sale_id)
        if flag is not None and quantity >= flag.quantity and (
                sale_id in self._probing or time.monotonic() - flag.since < self.soldout_ttl):
            raise sold_out_error()

    def precheck(self, request) -> None:
        """:meth:`refuse_from_memory` for a BuyFlashSale request (a malformed one is left to the handler)."""
        prefix, _, raw = request.flash_sale.partition("/")
        if prefix == "flashSales" and raw.isascii() and raw.isdigit() and 1 <= request.quantity <= 99:
            self.refuse_from_memory(int(raw), request.quantity)

    def probed(self, sale_id: int) -> None:
        self._probing.discard(sale_id)

    def _saw_sold_out(self, sale_id: int, quantity: int) -> FailedPrecondition:
        flag = self._soldout.get(sale_id)
        self._soldout[sale_id] = SoldOut(min(quantity, flag.quantity) if flag else quantity, time.monotonic())
        return sold_out_error()

    @staticmethod
    def _check_window(info: FlashInfo) -> None:
        now = utcnow()
        if now < info.start_time:
            raise FailedPrecondition("flash sale has not started", reason=reasons.FLASH_SALE_NOT_STARTED, zh="活动尚未开始")
        if now >= info.end_time:
            raise FailedPrecondition("flash sale has ended", reason=reasons.FLASH_SALE_ENDED, zh="活动已结束")

    async def info(self, s: AsyncSession, sale_id: int) -> FlashInfo:
        """The static data of a sale (read once per process, inside the buyer's transaction)."""
        info = self._info.get(sale_id)
        if info is None:
            f = await self.get(s, sale_id)
            p, k = await self.catalog.product_of_sku(s, f.sku_id)
            info = FlashInfo(f.id, k.id, p.id, p.category_id, p.display_name, k.display_name, f.price_fen,
                             f.per_member_limit, f.start_time, f.end_time, p.repurchase_cycle_days)
            self._info[sale_id] = info
        return info

    # --- the purchase --------------------------------------------------------------------------

    async def buy(self, s: AsyncSession, sale_id: int, member_id: int, quantity: int,
                  address_id: int | None) -> tuple[SimpleNamespace, list[SimpleNamespace]]:
        """Per-member counter, then the order and its line (driver statements; the rows are returned
        as built, never re-read: plain objects with the attributes of Order and OrderItem, no ORM
        instance state). The caller runs :meth:`take_stock` last."""
        info = await self.info(s, sale_id)
        self._check_window(info)
        address = await self.addresses.optional(s, member_id, address_id)
        if quantity > info.per_member_limit:
            raise limit_reached(info)
        conn = await transaction_connection(s)
        first, _ = await FIRST_PURCHASE.run(conn, {"flash_sale_id": info.id, "member_id": member_id, "quantity": quantity})
        if first != 1:  # bought in this sale before: within the limit, or refused
            mine, _ = await COUNT_AGAIN.run(conn, {"sale": info.id, "member": member_id, "qty": quantity,
                                                   "limit": info.per_member_limit})
            if mine != 1:
                raise limit_reached(info)
        now = utcnow()
        amount = info.price_fen * quantity
        order = dict(member_id=member_id, state=PENDING_PAYMENT, total_fen=amount, tier_discount_fen=0,
                     coupon_discount_fen=0, payable_fen=amount, coupon_id=None, address=snapshot(address),
                     flash_sale_id=info.id, group_deal_id=None, group_id=None, bargain_activity_id=None, bargain_id=None,
                     out_trade_no=uuid.uuid4().hex, cancel_reason="", refunded_fen=0, create_time=now,
                     pay_deadline_time=now + self.pay_timeout, pay_time=None, ship_time=None, close_time=None)
        _, order_id = await INSERT_ORDER.run(conn, order)
        item = dict(order_id=order_id, sku_id=info.sku_id, product_id=info.product_id, category_id=info.category_id,
                    product_display_name=info.product_display_name, sku_display_name=info.sku_display_name,
                    unit_price_fen=info.price_fen, quantity=quantity, paid_fen=amount,
                    repurchase_cycle_days=info.repurchase_cycle_days)
        await INSERT_ITEM.run(conn, item)
        return SimpleNamespace(id=order_id, **order), [SimpleNamespace(**item)]  # read like Order, OrderItem

    async def take_stock(self, s: AsyncSession, sale_id: int, quantity: int) -> None:
        """The hot-row conditional UPDATE, the last statement of the purchase; zero rows: sold out."""
        got, _ = await TAKE_STOCK.run(await transaction_connection(s), {"sale": sale_id, "qty": quantity})
        if got != 1:
            raise self._saw_sold_out(sale_id, quantity)
        self._soldout.pop(sale_id, None)  # units were left: whatever this process remembered is stale

    async def release(self, s: AsyncSession, sale_id: int, member_id: int, units: int) -> None:
        """A cancelled order's units go back to the sale and to the member's limit."""
        await s.execute(update(FlashSale).where(FlashSale.id == sale_id).values(remaining=FlashSale.remaining + units))
        await s.execute(update(FlashPurchase)
                        .where(FlashPurchase.flash_sale_id == sale_id, FlashPurchase.member_id == member_id)
                        .values(quantity=FlashPurchase.quantity - units))
        self._soldout.pop(sale_id, None)
