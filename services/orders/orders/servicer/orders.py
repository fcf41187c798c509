"""Order RPCs: checkout, reads, state changes, payment and refunds."""

from __future__ import annotations

from mall.orders.v1 import orders_service_pb2 as pb
from mallkit.auth import member_scope, principal
from mallkit.errors import InvalidArgument
from mallkit.names import parse_id, parse_ids
from mallkit.pagination import page_size
from mallkit.validation import Validator

from ..checkout import Line
from .base import ServicerBase, member_child, require_request_id
from .convert import order_pb


class OrderRpcs(ServicerBase):
    async def CreateOrder(self, request, context):
        member_id = int(principal().id)
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
        _, address_id = member_child(request.address, "addresses", "address")
        coupon_id = member_child(request.coupon, "coupons", "coupon")[1] if request.coupon else None
        require_request_id(request)
        tier = await self.checkout.tier(member_id)  # the one member read, outside the transaction

        async def run(s):
            o = await self.checkout.create_order(s, member_id, lines, address_id, coupon_id, tier, request.from_cart)
            return await self._order_pb(s, o.id)
        return await self.idem.run(request, pb.Order, run, required=True)

    async def GetOrder(self, request, context):
        oid = parse_id(request.name, "orders", "name")
        owner = self._owner()
        return await self._read(lambda s: self._order_of(s, oid, owner))

    async def _order_of(self, s, order_id: int, owner: int | None) -> pb.Order:
        return order_pb(*await self.lifecycle.with_items(s, order_id, member_id=owner))

    async def ListOrders(self, request, context):
        member_id = member_scope(request.parent, "parent")
        v = Validator()
        v.enum("state", request.state, pb.OrderState)
        v.done()
        size = page_size(request.page_size)
        rows, token = await self._read(lambda s: self.lifecycle.list_of(s, member_id, size, request.page_token,
                                                                        request.state))
        return pb.ListOrdersResponse(orders=[order_pb(o, items) for o, items in rows], next_page_token=token)

    async def CancelOrder(self, request, context):
        oid = parse_id(request.name, "orders", "name")
        owner = self._owner()
        reason = "member" if owner is not None else "staff"

        async def run(s):
            o = await self.lifecycle.cancel(s, oid, reason, member_id=owner)
            return await self._order_pb(s, o.id)
        return await self.idem.run(request, pb.Order, run)

    async def PayOrder(self, request, context):
        oid = parse_id(request.name, "orders", "name")
        params = await self.payment.prepay(oid, int(principal().id))
        return pb.PayOrderResponse(order=f"orders/{oid}", app_id=params["appId"], time_stamp=params["timeStamp"],
                                   nonce_str=params["nonceStr"], package=params["package"],
                                   sign_type=params["signType"], pay_sign=params["paySign"])

    async def ShipOrder(self, request, context):
        oid = parse_id(request.name, "orders", "name")
        v = Validator()
        v.text("tracking_number", request.tracking_number, max_len=64)
        v.done()

        async def run(s):
            await self.lifecycle.ship(s, oid, request.tracking_number)
            return await self._order_pb(s, oid)
        return await self.idem.run(request, pb.Order, run)

    async def RequestRefund(self, request, context):
        oid = parse_id(request.name, "orders", "name")
        member_id = int(principal().id)
        v = Validator()
        v.text("reason", request.reason, max_len=128)
        v.done()

        async def run(s):
            await self.lifecycle.request_refund(s, oid, member_id)
            return await self._order_pb(s, oid)
        return await self.idem.run(request, pb.Order, run)

    async def ApproveRefund(self, request, context):
        oid = parse_id(request.name, "orders", "name")
        refund: list[int] = []

        async def run(s):
            refund.append(await self.lifecycle.approve_refund(s, oid))
            return await self._order_pb(s, oid)
        out = await self.idem.run(request, pb.Order, run)
        if refund:  # sent right after the commit: WeChat Pay answers fast; the refunds job retries otherwise
            await self.payment.process_refund(refund[0])
            out = await self._read(lambda s: self._order_pb(s, oid))
        return out

    async def HandlePaymentNotification(self, request, context):
        message = await self.payment.handle_notification(
            timestamp=request.wechatpay_timestamp, nonce=request.wechatpay_nonce,
            signature=request.wechatpay_signature, serial=request.wechatpay_serial, body=request.body)
        return pb.HandlePaymentNotificationResponse(code="SUCCESS", message=message)
