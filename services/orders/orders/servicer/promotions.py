"""Flash sale and group buying RPCs."""

from __future__ import annotations

from datetime import UTC

from mall.orders.v1 import orders_service_pb2 as pb
from mallkit.auth import principal
from mallkit.names import parse_id, parse_ids
from mallkit.validation import Validator

from .base import ServicerBase, optional_address, require_request_id
from .convert import flash_pb, group_deal_pb, group_pb, order_pb


class FlashSaleRpcs(ServicerBase):
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
                  "start_time": f.start_time.ToDatetime(tzinfo=UTC), "end_time": f.end_time.ToDatetime(tzinfo=UTC)}

        async def run(s):
            return flash_pb(await self.flash_sales.create(s, pid, sid, fields), pid)
        return await self.idem.run(request, pb.FlashSale, run)

    async def GetFlashSale(self, request, context):
        fid = parse_id(request.name, "flashSales", "name")
        return flash_pb(*await self._read(lambda s: self.flash_sales.get_with_product(s, fid)))

    async def BuyFlashSale(self, request, context):
        fid = parse_id(request.flash_sale, "flashSales", "flash_sale")
        member_id = int(principal().id)
        v = Validator()
        v.range("quantity", request.quantity, 1, 99)
        v.done()
        address_id = optional_address(request.address)
        require_request_id(request)
        probe = self.flash_sales.admit(fid, request.quantity)  # in memory: no database at all
        try:
            async def run(s):
                return order_pb(*await self.flash_sales.buy(s, fid, member_id, request.quantity, address_id))

            async def take_stock(s):  # after the key: the hot row is held only until the commit
                await self.flash_sales.take_stock(s, fid, request.quantity)
            return await self.idem.run(request, pb.Order, run, required=True, last=take_stock)
        finally:
            if probe:
                self.flash_sales.probed(fid)


class GroupBuyRpcs(ServicerBase):
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
            return group_deal_pb(await self.group_buying.create_deal(s, pid, sid, fields), pid)
        return await self.idem.run(request, pb.GroupDeal, run)

    async def OpenGroup(self, request, context):
        deal_id = parse_id(request.group_deal, "groupDeals", "group_deal")
        member_id = int(principal().id)
        address_id = optional_address(request.address)

        async def run(s):
            o = await self.group_buying.open(s, deal_id, member_id, address_id)
            return await self._order_pb(s, o.id)
        return await self.idem.run(request, pb.Order, run, required=True)

    async def JoinGroup(self, request, context):
        deal_id, group_id = parse_ids(request.group, "groupDeals/{}/groups/{}", "group")
        member_id = int(principal().id)
        address_id = optional_address(request.address)

        async def run(s):
            o = await self.group_buying.join(s, deal_id, group_id, member_id, address_id)
            return await self._order_pb(s, o.id)
        return await self.idem.run(request, pb.Order, run, required=True)

    async def GetGroup(self, request, context):
        deal_id, group_id = parse_ids(request.name, "groupDeals/{}/groups/{}", "name")
        return group_pb(await self._read(lambda s: self.group_buying.group(s, deal_id, group_id)))
