"""gRPC servicer of OrdersService: validates requests and translates proto <-> rows.

No SQL and no business rule here: each method checks its input, resolves
resource names (ownership first), opens the transaction (through
``Idempotency.run`` for mutations) and calls use cases of ``service.py``.
Calls to other services (the member's tier, WeChat Pay) happen outside the
transaction.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC as _UTC

import grpc
from google.protobuf import empty_pb2
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mall.members.v1 import members_service_pb2 as mpb
from mall.members.v1 import members_service_pb2_grpc as mpb_grpc
from mall.orders.v1 import orders_service_pb2 as pb
from mall.orders.v1 import orders_service_pb2_grpc as pb_grpc
from mallkit.auth import member_scope, principal
from mallkit.db import run_transaction
from mallkit.errors import FailedPrecondition, InvalidArgument, PermissionDenied, Unavailable
from mallkit.idempotency import Idempotency
from mallkit.names import parse_id, parse_ids
from mallkit.pagination import PageTokens, next_token, page_size
from mallkit.validation import Validator

from . import errors as reasons
from .models import (
    Address,
    Category,
    Coupon,
    CouponTemplate,
    FlashSale,
    GroupBuy,
    GroupDeal,
    Order,
    OrderItem,
    Product,
    Sku,
)
from .service import ACTIVE, Line, OrdersService
from .wechatpay import NotificationRejected, PayApiError, WechatPay

log = logging.getLogger("orders.servicer")

PHONE = re.compile(r"1[3-9][0-9]{9}")
PRODUCT_FIELDS = {"display_name", "description", "status", "repurchase_cycle_days"}


def _ts(field, dt) -> None:
    if dt is not None:
        field.FromDatetime(dt)


def category_pb(c: Category) -> pb.Category:
    return pb.Category(name=f"categories/{c.id}", display_name=c.display_name)


def sku_pb(k: Sku) -> pb.Sku:
    return pb.Sku(name=f"products/{k.product_id}/skus/{k.id}", display_name=k.display_name, price_fen=k.price_fen,
                  stock=k.stock)


def product_pb(p: Product, skus: list[Sku]) -> pb.Product:
    out = pb.Product(name=f"products/{p.id}", display_name=p.display_name, category=f"categories/{p.category_id}",
                     description=p.description, status=p.status, repurchase_cycle_days=p.repurchase_cycle_days,
                     skus=[sku_pb(k) for k in skus])
    _ts(out.create_time, p.create_time)
    return out


def address_pb(a: Address) -> pb.Address:
    return pb.Address(name=f"members/{a.member_id}/addresses/{a.id}", recipient=a.recipient, phone=a.phone,
                      province=a.province, city=a.city, district=a.district, detail=a.detail)


def template_pb(t: CouponTemplate) -> pb.CouponTemplate:
    return pb.CouponTemplate(
        name=f"couponTemplates/{t.id}", display_name=t.display_name, kind=t.kind, amount_off_fen=t.amount_off_fen,
        percent=t.percent, threshold_fen=t.threshold_fen, category=f"categories/{t.category_id}" if t.category_id else "",
        valid_days=t.valid_days, per_member_limit=t.per_member_limit, total_quantity=t.total_quantity,
        issued_count=t.issued_count, claimable=t.claimable, welcome=t.welcome)


def coupon_pb(c: Coupon) -> pb.Coupon:
    out = pb.Coupon(name=f"members/{c.member_id}/coupons/{c.id}", coupon_template=f"couponTemplates/{c.template_id}",
                    state=c.state, order=f"orders/{c.order_id}" if c.order_id else "", source=c.source)
    _ts(out.issue_time, c.issue_time)
    _ts(out.expire_time, c.expire_time)
    return out


def order_pb(o: Order, items: list[OrderItem]) -> pb.Order:
    out = pb.Order(
        name=f"orders/{o.id}", member=f"members/{o.member_id}", state=o.state, total_fen=o.total_fen,
        tier_discount_fen=o.tier_discount_fen, coupon_discount_fen=o.coupon_discount_fen, payable_fen=o.payable_fen,
        coupon=f"members/{o.member_id}/coupons/{o.coupon_id}" if o.coupon_id else "",
        flash_sale=f"flashSales/{o.flash_sale_id}" if o.flash_sale_id else "", out_trade_no=o.out_trade_no,
        cancel_reason=o.cancel_reason, refunded_fen=o.refunded_fen,
        group=f"groupDeals/{o.group_deal_id}/groups/{o.group_id}" if o.group_id else "",
        items=[pb.OrderItem(sku=f"products/{it.product_id}/skus/{it.sku_id}", product=f"products/{it.product_id}",
                            category=f"categories/{it.category_id}", product_display_name=it.product_display_name,
                            sku_display_name=it.sku_display_name, unit_price_fen=it.unit_price_fen,
                            quantity=it.quantity, paid_fen=it.paid_fen) for it in items],
    )
    if o.address:
        out.address.CopyFrom(pb.Address(**json.loads(o.address)))
    for f, v in (("create_time", o.create_time), ("pay_deadline_time", o.pay_deadline_time), ("pay_time", o.pay_time),
                 ("ship_time", o.ship_time), ("close_time", o.close_time)):
        _ts(getattr(out, f), v)
    return out


def flash_pb(f: FlashSale, product_id: int) -> pb.FlashSale:
    out = pb.FlashSale(name=f"flashSales/{f.id}", sku=f"products/{product_id}/skus/{f.sku_id}", price_fen=f.price_fen,
                       total_stock=f.total_stock, remaining_stock=f.remaining, per_member_limit=f.per_member_limit)
    _ts(out.start_time, f.start_time)
    _ts(out.end_time, f.end_time)
    return out


def group_deal_pb(d: GroupDeal, product_id: int) -> pb.GroupDeal:
    out = pb.GroupDeal(name=f"groupDeals/{d.id}", sku=f"products/{product_id}/skus/{d.sku_id}", price_fen=d.price_fen,
                       group_size=d.group_size)
    out.fill_duration.seconds = d.fill_seconds
    return out


def group_pb(g: GroupBuy) -> pb.Group:
    out = pb.Group(name=f"groupDeals/{g.deal_id}/groups/{g.id}", leader=f"members/{g.leader_id}", state=g.state,
                   group_size=g.group_size, joined_count=g.joined_count, paid_count=g.paid_count)
    _ts(out.deadline_time, g.deadline_time)
    return out


class TierDiscounts:
    """The member's tier discount from the members service (tiers cached briefly)."""

    def __init__(self, channel: Callable[[], grpc.aio.Channel], ttl: float = 30.0):
        self._channel = channel
        self.ttl = ttl
        self._tiers: dict[str, int] = {}
        self._loaded = 0.0

    async def percent(self, member_id: int) -> int:
        stub = mpb_grpc.MembersServiceStub(self._channel())
        try:
            m = await stub.GetMember(mpb.GetMemberRequest(name=f"members/{member_id}"))
            if not m.tier:
                return 100
            if m.tier not in self._tiers or time.monotonic() - self._loaded > self.ttl:
                tiers: dict[str, int] = {}
                token = ""
                while True:
                    page = await stub.ListTiers(mpb.ListTiersRequest(page_size=100, page_token=token))
                    tiers.update({t.name: t.benefits.discount_percent or 100 for t in page.tiers})
                    token = page.next_page_token
                    if not token:
                        break
                self._tiers, self._loaded = tiers, time.monotonic()
        except grpc.aio.AioRpcError as err:
            raise Unavailable("members service unavailable", reason=reasons.MEMBER_UNAVAILABLE,
                              metadata={"code": err.code().name}) from None
        return max(50, min(100, self._tiers.get(m.tier, 100)))

    async def payer_openid(self, member_id: int) -> str:
        """The member's openid for WeChat Pay (members keeps identities; never sent to clients)."""
        stub = mpb_grpc.MembersServiceStub(self._channel())
        try:
            identity = await stub.GetMemberIdentity(mpb.GetMemberIdentityRequest(member=f"members/{member_id}"))
        except grpc.aio.AioRpcError as err:
            raise Unavailable("members service unavailable", reason=reasons.MEMBER_UNAVAILABLE,
                              metadata={"code": err.code().name}) from None
        return identity.openid


class OrdersServicer(pb_grpc.OrdersServiceServicer):
    def __init__(self, service: OrdersService, sessions: async_sessionmaker[AsyncSession], idem: Idempotency,
                 tokens: PageTokens, pay: WechatPay, tiers: TierDiscounts,
                 on_refund: Callable[[int], Awaitable[None]] | None = None):
        self.service = service
        self.sessions = sessions
        self.idem = idem
        self.tokens = tokens
        self.pay = pay
        self.tiers = tiers
        self.on_refund = on_refund
        self._background: set[asyncio.Task] = set()
        self._inflight: dict[str, asyncio.Future[str]] = {}
        self._applied: dict[str, None] = {}  # notification ids applied by this process (insertion-ordered LRU)

    async def _read(self, fn):
        async with self.sessions() as s:
            return await fn(s)

    def _kick_refund(self, refund_id: int | None) -> None:
        if refund_id is not None and self.on_refund is not None:
            task = asyncio.get_running_loop().create_task(self.on_refund(refund_id))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    # --- catalog ---------------------------------------------------------------------------

    async def CreateCategory(self, request, context):
        v = Validator()
        v.text("category.display_name", request.category.display_name, max_len=32, required=True)
        v.done()

        async def run(s):
            return category_pb(await self.service.create_category(s, request.category.display_name))
        return await self.idem.run(request, pb.Category, run)

    async def ListCategories(self, request, context):
        size = page_size(request.page_size)
        last = self.tokens.decode(request.page_token)
        rows = await self._read(lambda s: self.service.list_categories(s, size, last[0] if last else None))
        rows, token = next_token(self.tokens, rows, size, lambda c: [c.id])
        return pb.ListCategoriesResponse(categories=[category_pb(c) for c in rows], next_page_token=token)

    def _validate_sku(self, v: Validator, field: str, k: pb.Sku) -> None:
        v.text(f"{field}.display_name", k.display_name, max_len=64, required=True)
        v.range(f"{field}.price_fen", k.price_fen, 1, 100_000_000)
        v.range(f"{field}.stock", k.stock, 0, 10_000_000)

    async def CreateProduct(self, request, context):
        p = request.product
        v = Validator()
        v.text("product.display_name", p.display_name, max_len=64, required=True)
        v.text("product.description", p.description, max_len=1000)
        v.enum("product.status", p.status, pb.ProductStatus)
        v.range("product.repurchase_cycle_days", p.repurchase_cycle_days, 0, 3650)
        if v.check(1 <= len(p.skus) <= 20, "product.skus", "must hold 1 to 20 SKUs"):
            for i, k in enumerate(p.skus):
                self._validate_sku(v, f"product.skus[{i}]", k)
        v.done()
        category_id = parse_id(p.category, "categories", "product.category")

        async def run(s):
            row, skus = await self.service.create_product(
                s, {"category_id": category_id, "display_name": p.display_name, "description": p.description,
                    "status": p.status or ACTIVE, "repurchase_cycle_days": p.repurchase_cycle_days},
                [{"display_name": k.display_name, "price_fen": k.price_fen, "stock": k.stock} for k in p.skus])
            return product_pb(row, skus)
        return await self.idem.run(request, pb.Product, run)

    @staticmethod
    def _is_staff() -> bool:
        p = principal() if _has_principal() else None
        return bool(p and (p.is_staff or p.is_service))

    async def GetProduct(self, request, context):
        pid = parse_id(request.name, "products", "name")
        row, skus = await self._read(lambda s: self.service.product(s, pid, active_only=not self._is_staff()))
        return product_pb(row, skus)

    async def ListProducts(self, request, context):
        v = Validator()
        v.enum("status", request.status, pb.ProductStatus)
        v.done()
        category_id = parse_id(request.category, "categories", "category") if request.category else None
        status = request.status if self._is_staff() else ACTIVE
        size = page_size(request.page_size)
        filters = [category_id, status]
        last = self.tokens.decode(request.page_token, filters)

        async def read(s):
            rows = await self.service.list_products(s, size=size, before_id=last[0] if last else None,
                                                    category_id=category_id, status=status)
            skus = await self.service.skus_of(s, [r.id for r in rows[:size]])
            return rows, skus
        rows, skus = await self._read(read)
        rows, token = next_token(self.tokens, rows, size, lambda p: [p.id], filters)
        return pb.ListProductsResponse(
            products=[product_pb(p, [k for k in skus if k.product_id == p.id]) for p in rows], next_page_token=token)

    async def UpdateProduct(self, request, context):
        p = request.product
        pid = parse_id(p.name, "products", "product.name")
        paths = list(request.update_mask.paths) or [f for f in PRODUCT_FIELDS if f != "status" or p.status]
        v = Validator()
        for path in paths:
            v.check(path in PRODUCT_FIELDS, "update_mask", f"cannot update {path!r}")
        if "display_name" in paths:
            v.text("product.display_name", p.display_name, max_len=64, required=True)
        if "description" in paths:
            v.text("product.description", p.description, max_len=1000)
        if "status" in paths:
            v.enum("product.status", p.status, pb.ProductStatus, required=True)
        if "repurchase_cycle_days" in paths:
            v.range("product.repurchase_cycle_days", p.repurchase_cycle_days, 0, 3650)
        v.done()
        changes = {f: getattr(p, f) for f in paths if f in PRODUCT_FIELDS}

        async def run(s):
            row, skus = await self.service.update_product(s, pid, changes)
            return product_pb(row, skus)
        return await self.idem.run(request, pb.Product, run)

    async def UpdateSku(self, request, context):
        pid, sid = parse_ids(request.name, "products/{}/skus/{}", "name")
        v = Validator()
        v.range("price_fen", request.price_fen, 0, 100_000_000)
        v.range("add_stock", request.add_stock, 0, 10_000_000)
        v.done()

        async def run(s):
            return sku_pb(await self.service.update_sku(s, pid, sid, request.price_fen, request.add_stock))
        return await self.idem.run(request, pb.Sku, run)

    # --- cart and addresses ----------------------------------------------------------------

    async def AddCartItem(self, request, context):
        member_id = member_scope(request.parent, "parent")
        pid, sid = parse_ids(request.sku, "products/{}/skus/{}", "sku")
        v = Validator()
        v.range("quantity", request.quantity, 1, 99)
        v.done()

        async def run(s):
            c = await self.service.add_cart_item(s, member_id, pid, sid, request.quantity)
            return pb.CartItem(name=f"members/{member_id}/cartItems/{c.id}", sku=request.sku, quantity=c.quantity)
        return await self.idem.run(request, pb.CartItem, run)

    async def ListCartItems(self, request, context):
        member_id = member_scope(request.parent, "parent")
        size = page_size(request.page_size)
        last = self.tokens.decode(request.page_token, [member_id])
        rows = await self._read(lambda s: self.service.list_cart_items(s, member_id, size, last[0] if last else None))
        rows, token = next_token(self.tokens, rows, size, lambda r: [r[0].id], [member_id])
        return pb.ListCartItemsResponse(cart_items=[
            pb.CartItem(name=f"members/{member_id}/cartItems/{c.id}", sku=f"products/{pid}/skus/{c.sku_id}",
                        quantity=c.quantity) for c, pid in rows], next_page_token=token)

    async def DeleteCartItem(self, request, context):
        member_id, item_id = _member_child(request.name, "cartItems")
        await run_transaction(self.sessions, lambda s: self.service.delete_cart_item(s, member_id, item_id))
        return empty_pb2.Empty()

    async def CreateAddress(self, request, context):
        member_id = member_scope(request.parent, "parent")
        a = request.address
        v = Validator()
        v.text("address.recipient", a.recipient, max_len=32, required=True)
        v.pattern("address.phone", a.phone, PHONE, "must be an 11-digit mobile number", required=True)
        v.text("address.province", a.province, max_len=32, required=True)
        v.text("address.city", a.city, max_len=32, required=True)
        v.text("address.district", a.district, max_len=32)
        v.text("address.detail", a.detail, max_len=128, required=True)
        v.done()
        fields = {f: getattr(a, f) for f in ("recipient", "phone", "province", "city", "district", "detail")}

        async def run(s):
            return address_pb(await self.service.create_address(s, member_id, fields))
        return await self.idem.run(request, pb.Address, run)

    async def ListAddresses(self, request, context):
        member_id = member_scope(request.parent, "parent")
        size = page_size(request.page_size)
        last = self.tokens.decode(request.page_token, [member_id])
        rows = await self._read(lambda s: self.service.list_addresses(s, member_id, size, last[0] if last else None))
        rows, token = next_token(self.tokens, rows, size, lambda a: [a.id], [member_id])
        return pb.ListAddressesResponse(addresses=[address_pb(a) for a in rows], next_page_token=token)

    async def DeleteAddress(self, request, context):
        member_id, address_id = _member_child(request.name, "addresses")
        await run_transaction(self.sessions, lambda s: self.service.delete_address(s, member_id, address_id))
        return empty_pb2.Empty()

    # --- coupons ---------------------------------------------------------------------------

    async def CreateCouponTemplate(self, request, context):
        t = request.coupon_template
        v = Validator()
        v.text("coupon_template.display_name", t.display_name, max_len=32, required=True)
        if v.enum("coupon_template.kind", t.kind, pb.CouponKind, required=True):
            if t.kind == pb.COUPON_KIND_AMOUNT_OFF:
                v.range("coupon_template.amount_off_fen", t.amount_off_fen, 1, 100_000_000)
            else:
                v.range("coupon_template.percent", t.percent, 1, 99)
        v.range("coupon_template.threshold_fen", t.threshold_fen, 0, 100_000_000)
        v.range("coupon_template.valid_days", t.valid_days, 1, 365)
        v.range("coupon_template.per_member_limit", t.per_member_limit, 1, 100)
        v.range("coupon_template.total_quantity", t.total_quantity, 1, 100_000_000)
        v.done()
        category_id = parse_id(t.category, "categories", "coupon_template.category") if t.category else None
        fields = {"display_name": t.display_name, "kind": t.kind,
                  "amount_off_fen": t.amount_off_fen if t.kind == pb.COUPON_KIND_AMOUNT_OFF else 0,
                  "percent": t.percent if t.kind == pb.COUPON_KIND_PERCENT_OFF else 0, "threshold_fen": t.threshold_fen,
                  "category_id": category_id, "valid_days": t.valid_days, "per_member_limit": t.per_member_limit,
                  "total_quantity": t.total_quantity, "claimable": t.claimable, "welcome": t.welcome}

        async def run(s):
            return template_pb(await self.service.create_coupon_template(s, fields))
        return await self.idem.run(request, pb.CouponTemplate, run)

    async def ListCouponTemplates(self, request, context):
        size = page_size(request.page_size)
        last = self.tokens.decode(request.page_token)
        rows = await self._read(lambda s: self.service.list_coupon_templates(s, size, last[0] if last else None))
        rows, token = next_token(self.tokens, rows, size, lambda t: [t.id])
        return pb.ListCouponTemplatesResponse(coupon_templates=[template_pb(t) for t in rows], next_page_token=token)

    async def ClaimCoupon(self, request, context):
        member_id = member_scope(request.parent, "parent")
        tid = parse_id(request.coupon_template, "couponTemplates", "coupon_template")

        async def run(s):
            return coupon_pb(await self.service.issue_coupon(s, tid, member_id, "claim", claim=True))
        return await self.idem.run(request, pb.Coupon, run)

    async def IssueCoupons(self, request, context):
        tid = parse_id(request.coupon_template, "couponTemplates", "coupon_template")
        v = Validator()
        v.check(1 <= len(request.members) <= 1000, "members", "must list 1 to 1000 members")
        v.done()
        ids = [parse_id(m, "members", f"members[{i}]") for i, m in enumerate(request.members)]

        async def run(s):
            await self.service.coupon_template(s, tid)
            issued, skipped = 0, []
            for mid in dict.fromkeys(ids):
                try:
                    async with s.begin_nested():
                        await self.service.issue_coupon(s, tid, mid, "staff")
                    issued += 1
                except FailedPrecondition:
                    skipped.append(f"members/{mid}")
            return pb.IssueCouponsResponse(issued_count=issued, skipped_members=skipped)
        return await self.idem.run(request, pb.IssueCouponsResponse, run)

    async def IssueCoupon(self, request, context):
        member_id = parse_id(request.member, "members", "member")
        tid = parse_id(request.coupon_template, "couponTemplates", "coupon_template")
        v = Validator()
        v.text("source", request.source, max_len=16, required=True)
        v.done()

        async def run(s):
            return coupon_pb(await self.service.issue_coupon(s, tid, member_id, request.source))
        return await self.idem.run(request, pb.Coupon, run, required=True)

    async def ListCoupons(self, request, context):
        member_id = member_scope(request.parent, "parent")
        size = page_size(request.page_size)
        last = self.tokens.decode(request.page_token, [member_id])
        rows = await self._read(lambda s: self.service.list_coupons(s, member_id, size, last[0] if last else None))
        rows, token = next_token(self.tokens, rows, size, lambda c: [c.id], [member_id])
        return pb.ListCouponsResponse(coupons=[coupon_pb(c) for c in rows], next_page_token=token)

    # --- orders ----------------------------------------------------------------------------

    async def _order_pb(self, s, order_id: int) -> pb.Order:
        o = await self.service.order(s, order_id)
        return order_pb(o, (await self.service.items_of(s, [o.id]))[o.id])

    def _owner(self) -> int | None:
        """The member id to enforce ownership for, None for staff and services."""
        p = principal()
        return int(p.id) if p.is_member else None

    async def CreateOrder(self, request, context):
        p = principal()
        member_id = int(p.id)
        v = Validator()
        if v.check(1 <= len(request.lines) <= 20, "lines", "must hold 1 to 20 lines"):
            for i, ln in enumerate(request.lines):
                v.range(f"lines[{i}].quantity", ln.quantity, 1, 99)
        v.done()
        lines, seen = [], set()
        for i, ln in enumerate(request.lines):
            _, sid = parse_ids(ln.sku, "products/{}/skus/{}", f"lines[{i}].sku")
            if sid in seen:
                raise InvalidArgument.field(f"lines[{i}].sku", "appears more than once")
            seen.add(sid)
            lines.append(Line(sid, ln.quantity))
        _, address_id = _member_child(request.address, "addresses", "address")
        coupon_id = None
        if request.coupon:
            _, coupon_id = _member_child(request.coupon, "coupons", "coupon")
        if not request.request_id:
            raise InvalidArgument.field("request_id", "is required for this method")
        percent = await self.tiers.percent(member_id)  # outside the transaction

        async def run(s):
            o = await self.service.create_order(s, member_id, lines, address_id, coupon_id, percent, request.from_cart)
            return await self._order_pb(s, o.id)
        return await self.idem.run(request, pb.Order, run, required=True)

    async def GetOrder(self, request, context):
        oid = parse_id(request.name, "orders", "name")
        owner = self._owner()

        async def read(s):
            await self.service.order(s, oid, member_id=owner)
            return await self._order_pb(s, oid)
        return await self._read(read)

    async def ListOrders(self, request, context):
        member_id = member_scope(request.parent, "parent")
        v = Validator()
        v.enum("state", request.state, pb.OrderState)
        v.done()
        size = page_size(request.page_size)
        filters = [member_id, request.state]
        last = self.tokens.decode(request.page_token, filters)

        async def read(s):
            rows = await self.service.list_orders(s, member_id, size, last[0] if last else None, request.state or None)
            return rows, await self.service.items_of(s, [o.id for o in rows])
        rows, items = await self._read(read)
        rows, token = next_token(self.tokens, rows, size, lambda o: [o.id], filters)
        return pb.ListOrdersResponse(orders=[order_pb(o, items[o.id]) for o in rows], next_page_token=token)

    async def CancelOrder(self, request, context):
        oid = parse_id(request.name, "orders", "name")
        owner = self._owner()
        reason = "member" if owner is not None else "staff"

        async def run(s):
            o = await self.service.cancel_order(s, oid, reason, member_id=owner)
            return await self._order_pb(s, o.id)
        return await self.idem.run(request, pb.Order, run)

    async def PayOrder(self, request, context):
        oid = parse_id(request.name, "orders", "name")
        member_id = int(principal().id)

        async def read(s):
            return await self.service.order(s, oid, member_id=member_id)
        o = await self._read(read)
        if o.state != pb.ORDER_STATE_PENDING_PAYMENT:
            from .service import state_conflict

            raise state_conflict(o, "pay")
        openid = o.openid or await self.tiers.payer_openid(member_id)
        try:
            prepay_id = o.prepay_id or await self.pay.jsapi_prepay(
                out_trade_no=o.out_trade_no, description=f"订单 {o.id}", total_fen=o.payable_fen, openid=openid)
        except PayApiError:
            raise Unavailable("WeChat Pay is unavailable", reason=reasons.PAYMENT_UNAVAILABLE,
                              zh="支付暂不可用,请稍后再试") from None
        if not o.prepay_id:
            await run_transaction(self.sessions, lambda s: self.service.set_prepay(s, oid, prepay_id, openid))
        params = self.pay.request_payment_params(prepay_id)
        return pb.PayOrderResponse(order=f"orders/{oid}", app_id=params["appId"], time_stamp=params["timeStamp"],
                                   nonce_str=params["nonceStr"], package=params["package"],
                                   sign_type=params["signType"], pay_sign=params["paySign"])

    async def ShipOrder(self, request, context):
        oid = parse_id(request.name, "orders", "name")
        v = Validator()
        v.text("tracking_number", request.tracking_number, max_len=64)
        v.done()

        async def run(s):
            await self.service.ship_order(s, oid, request.tracking_number)
            return await self._order_pb(s, oid)
        return await self.idem.run(request, pb.Order, run)

    async def RequestRefund(self, request, context):
        oid = parse_id(request.name, "orders", "name")
        member_id = int(principal().id)
        v = Validator()
        v.text("reason", request.reason, max_len=128)
        v.done()

        async def run(s):
            await self.service.request_refund(s, oid, member_id)
            return await self._order_pb(s, oid)
        return await self.idem.run(request, pb.Order, run)

    async def ApproveRefund(self, request, context):
        oid = parse_id(request.name, "orders", "name")
        refund: list[int] = []

        async def run(s):
            _, rid = await self.service.approve_refund(s, oid)
            refund.append(rid)
            return await self._order_pb(s, oid)
        out = await self.idem.run(request, pb.Order, run)
        if refund and self.on_refund is not None:
            await self.on_refund(refund[0])  # WeChat Pay answers fast; the job retries otherwise
            out = await self._read(lambda s: self._order_pb(s, oid))
        return out

    async def HandlePaymentNotification(self, request, context):
        try:
            tx = self.pay.verify_notification(
                timestamp=request.wechatpay_timestamp, nonce=request.wechatpay_nonce,
                signature=request.wechatpay_signature, serial=request.wechatpay_serial, body=request.body)
        except NotificationRejected as exc:
            log.warning("payment notification rejected: %s", exc.reason)
            raise PermissionDenied("notification rejected", reason=exc.reason, zh="通知验证失败") from None
        # Fast paths for repeats (WeChat Pay retries until it sees 2xx): a notification this process
        # applied, or an order already carrying this transaction: acknowledged without a write.
        if tx.notification_id in self._applied:
            return pb.HandlePaymentNotificationResponse(code="SUCCESS", message="duplicate")
        seen = await self._read(lambda s: self.service.payment_state(s, tx.out_trade_no))
        if seen is not None and seen[0] == tx.transaction_id and seen[1] == tx.total_fen:
            self._remember(tx.notification_id)
            return pb.HandlePaymentNotificationResponse(code="SUCCESS", message="duplicate")
        # Deliveries of one notification arriving together in this process share one transaction;
        # across replicas the conditional UPDATE in apply_payment is the arbiter.
        leader = self._inflight.get(tx.notification_id)
        if leader is not None:
            outcome = await asyncio.shield(leader)
            return pb.HandlePaymentNotificationResponse(code="SUCCESS", message="duplicate" if outcome == "paid" else outcome)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._inflight[tx.notification_id] = future
        try:
            outcome, refund_id = await run_transaction(self.sessions, lambda s: self.service.apply_payment(s, tx))
            future.set_result(outcome)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no warning when nobody else waited
            raise
        finally:
            del self._inflight[tx.notification_id]
        self._remember(tx.notification_id)
        self._kick_refund(refund_id)
        return pb.HandlePaymentNotificationResponse(code="SUCCESS", message="" if outcome == "paid" else outcome)

    def _remember(self, notification_id: str) -> None:
        self._applied[notification_id] = None
        while len(self._applied) > 10_000:  # bounded: oldest first
            self._applied.pop(next(iter(self._applied)))

    # --- flash sales -----------------------------------------------------------------------

    async def CreateFlashSale(self, request, context):
        f = request.flash_sale
        pid, sid = parse_ids(f.sku, "products/{}/skus/{}", "flash_sale.sku")
        v = Validator()
        v.range("flash_sale.price_fen", f.price_fen, 1, 100_000_000)
        v.range("flash_sale.total_stock", f.total_stock, 1, 1_000_000)
        v.range("flash_sale.per_member_limit", f.per_member_limit, 1, 99)
        v.check(f.HasField("start_time"), "flash_sale.start_time", "is required")
        v.check(f.HasField("end_time") and f.end_time.ToDatetime() > f.start_time.ToDatetime(), "flash_sale.end_time",
                "must be after start_time")
        v.done()
        fields = {"price_fen": f.price_fen, "total_stock": f.total_stock, "per_member_limit": f.per_member_limit,
                  "start_time": f.start_time.ToDatetime(tzinfo=_UTC), "end_time": f.end_time.ToDatetime(tzinfo=_UTC)}

        async def run(s):
            return flash_pb(await self.service.create_flash_sale(s, pid, sid, fields), pid)
        return await self.idem.run(request, pb.FlashSale, run)

    async def GetFlashSale(self, request, context):
        fid = parse_id(request.name, "flashSales", "name")

        async def read(s):
            f = await self.service.flash_sale(s, fid)
            k = await s.get(Sku, f.sku_id)
            return flash_pb(f, k.product_id)
        return await self._read(read)

    async def BuyFlashSale(self, request, context):
        fid = parse_id(request.flash_sale, "flashSales", "flash_sale")
        member_id = int(principal().id)
        v = Validator()
        v.range("quantity", request.quantity, 1, 99)
        v.done()
        address_id = _member_child(request.address, "addresses", "address")[1] if request.address else None
        if not request.request_id:
            raise InvalidArgument.field("request_id", "is required for this method")
        self.service.check_sold_out_cache(fid)  # in memory: no database at all
        info = await self._read(lambda s: self.service.flash_precheck(s, fid))  # one plain read, no lock

        async def run(s):
            o = await self.service.buy_flash_sale(s, info, member_id, request.quantity, address_id)
            return await self._order_pb(s, o.id)
        return await self.idem.run(request, pb.Order, run, required=True)

    # --- group buying ----------------------------------------------------------------------

    async def CreateGroupDeal(self, request, context):
        d = request.group_deal
        pid, sid = parse_ids(d.sku, "products/{}/skus/{}", "group_deal.sku")
        v = Validator()
        v.range("group_deal.price_fen", d.price_fen, 1, 100_000_000)
        v.range("group_deal.group_size", d.group_size, 2, 100)
        v.check(d.fill_duration.nanos == 0 and 60 <= d.fill_duration.seconds <= 7 * 86400, "group_deal.fill_duration",
                "must be whole seconds between 1 minute and 7 days")
        v.done()
        fields = {"price_fen": d.price_fen, "group_size": d.group_size, "fill_seconds": d.fill_duration.seconds}

        async def run(s):
            return group_deal_pb(await self.service.create_group_deal(s, pid, sid, fields), pid)
        return await self.idem.run(request, pb.GroupDeal, run)

    async def OpenGroup(self, request, context):
        deal_id = parse_id(request.group_deal, "groupDeals", "group_deal")
        member_id = int(principal().id)
        address_id = _optional_address(request.address)

        async def run(s):
            o = await self.service.open_group(s, deal_id, member_id, address_id)
            return await self._order_pb(s, o.id)
        return await self.idem.run(request, pb.Order, run, required=True)

    async def JoinGroup(self, request, context):
        deal_id, group_id = parse_ids(request.group, "groupDeals/{}/groups/{}", "group")
        member_id = int(principal().id)
        address_id = _optional_address(request.address)

        async def run(s):
            o = await self.service.join_group(s, deal_id, group_id, member_id, address_id)
            return await self._order_pb(s, o.id)
        return await self.idem.run(request, pb.Order, run, required=True)

    async def GetGroup(self, request, context):
        deal_id, group_id = parse_ids(request.name, "groupDeals/{}/groups/{}", "name")
        return group_pb(await self._read(lambda s: self.service.group(s, deal_id, group_id)))


def _optional_address(name: str) -> int | None:
    return _member_child(name, "addresses", "address")[1] if name else None


def _has_principal() -> bool:
    from mallkit.auth import current_principal

    return current_principal.get() is not None


def _member_child(name: str, collection: str, field: str = "name") -> tuple[int, int]:
    """``members/{m|me}/<collection>/{id}`` -> (member id, id), ownership checked first."""
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "members" or parts[2] != collection:
        raise InvalidArgument.field(field, f"must look like members/me/{collection}/{{id}}")
    member_id = member_scope(f"members/{parts[1]}", field)
    return member_id, parse_id(f"{collection}/{parts[3]}", collection, field)

