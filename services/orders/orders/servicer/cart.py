"""Cart and address RPCs (a member's own, ownership checked before any lookup)."""

from __future__ import annotations

import re

from google.protobuf import empty_pb2

from mall.orders.v1 import orders_service_pb2 as pb
from mallkit.auth import member_scope
from mallkit.db import run_transaction
from mallkit.names import parse_ids
from mallkit.pagination import page_size
from mallkit.validation import Validator

from .base import ServicerBase, member_child
from .convert import address_pb

PHONE = re.compile(r"1[3-9][0-9]{9}")


class CartRpcs(ServicerBase):
    async def AddCartItem(self, request, context):
        member_id = member_scope(request.parent, "parent")
        pid, sid = parse_ids(request.sku, "products/{}/skus/{}", "sku")
        v = Validator()
        v.range("quantity", request.quantity, 1, 99)
        v.done()

        async def run(s):
            c = await self.cart.add_item(s, member_id, pid, sid, request.quantity)
            return pb.CartItem(name=f"members/{member_id}/cartItems/{c.id}", sku=request.sku, quantity=c.quantity)
        return await self.idem.run(request, pb.CartItem, run)

    async def ListCartItems(self, request, context):
        member_id = member_scope(request.parent, "parent")
        size = page_size(request.page_size)
        rows, token = await self._read(lambda s: self.cart.list_items(s, member_id, size, request.page_token))
        return pb.ListCartItemsResponse(cart_items=[
            pb.CartItem(name=f"members/{member_id}/cartItems/{c.id}", sku=f"products/{pid}/skus/{c.sku_id}",
                        quantity=c.quantity) for c, pid in rows], next_page_token=token)

    async def DeleteCartItem(self, request, context):
        member_id, item_id = member_child(request.name, "cartItems")
        await run_transaction(self.sessions, lambda s: self.cart.delete_item(s, member_id, item_id))
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
            return address_pb(await self.addresses.create(s, member_id, fields))
        return await self.idem.run(request, pb.Address, run)

    async def ListAddresses(self, request, context):
        member_id = member_scope(request.parent, "parent")
        size = page_size(request.page_size)
        rows, token = await self._read(lambda s: self.addresses.list_of(s, member_id, size, request.page_token))
        return pb.ListAddressesResponse(addresses=[address_pb(a) for a in rows], next_page_token=token)

    async def DeleteAddress(self, request, context):
        member_id, address_id = member_child(request.name, "addresses")
        await run_transaction(self.sessions, lambda s: self.addresses.delete(s, member_id, address_id))
        return empty_pb2.Empty()
