"""Flash sales (秒杀): never oversold, per-member limits hold, sold-out refusals are cheap."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import grpc
import pytest
from sqlalchemy import func, select

from mall.orders.v1 import orders_service_pb2 as pb
from mallkit.errors import error_info, status_of
from orders.models import FlashPurchase, FlashSale, Order
from tests.fixtures import directory
from tests.fixtures.orders import rid

pytestmark = pytest.mark.mariadb


async def test_2000_buyers_race_for_100_units(orders):
    product = await orders.product(price_fen=9_900, stock=5)
    sale = await orders.flash_sale(product.skus[0].name, stock=100, price_fen=1_990, limit=1)
    fid = int(sale.name.split("/")[1])
    buyers = directory().new_members(2000)  # real members (tokens of unknown ones are refused)
    attempts = buyers + random.sample(buyers, 300)  # 300 buyers try twice, at the same time
    random.shuffle(attempts)
    mds = {m: orders.member_md(m) for m in buyers}
    gate = asyncio.Semaphore(100)
    outcomes: Counter[str] = Counter()

    async def attempt(member_id: int):
        async with gate:
            try:
                await orders.stub.BuyFlashSale(pb.BuyFlashSaleRequest(flash_sale=sale.name, quantity=1, request_id=rid()),
                                               metadata=mds[member_id])
                outcomes["ok"] += 1
            except grpc.aio.AioRpcError as err:
                info = error_info(await status_of(err))
                outcomes[info.reason if info else err.code().name] += 1

    await asyncio.gather(*[attempt(m) for m in attempts])
    assert outcomes["ok"] == 100, outcomes
    assert set(outcomes) <= {"ok", "FLASH_SALE_SOLD_OUT", "FLASH_SALE_LIMIT_REACHED"}, outcomes
    async with orders.engine.connect() as conn:
        sold = (await conn.execute(select(func.count()).select_from(Order).where(Order.flash_sale_id == fid))).scalar()
        per_member = (await conn.execute(select(Order.member_id, func.count()).where(Order.flash_sale_id == fid)
                                         .group_by(Order.member_id))).all()
        remaining = (await conn.execute(select(FlashSale.remaining).where(FlashSale.id == fid))).scalar()
        counters = (await conn.execute(select(func.max(FlashPurchase.quantity), func.sum(FlashPurchase.quantity))
                                       .where(FlashPurchase.flash_sale_id == fid))).one()
    assert sold == 100
    assert all(n <= 1 for _, n in per_member) and len(per_member) == 100
    assert remaining == 0 == 100 - sold
    assert counters == (1, 100)
    # The SKU's own stock is not the flash sale's: untouched.
    got = await orders.stub.GetProduct(pb.GetProductRequest(name=product.name))
    assert got.skus[0].stock == 5


async def test_limit_window_and_cancel_returns_flash_stock(orders):
    product = await orders.product(price_fen=9_900)
    sale = await orders.flash_sale(product.skus[0].name, stock=3, price_fen=500, limit=2)
    a, b, c = directory().new_members(3)
    md = orders.member_md(a)
    first = await orders.stub.BuyFlashSale(pb.BuyFlashSaleRequest(flash_sale=sale.name, quantity=2, request_id=rid()),
                                           metadata=md)
    assert first.payable_fen == 1000 and first.flash_sale == sale.name
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await orders.stub.BuyFlashSale(pb.BuyFlashSaleRequest(flash_sale=sale.name, quantity=1, request_id=rid()),
                                       metadata=md)
    assert error_info(await status_of(e.value)).reason == "FLASH_SALE_LIMIT_REACHED"
    other = orders.member_md(b)
    await orders.stub.BuyFlashSale(pb.BuyFlashSaleRequest(flash_sale=sale.name, quantity=1, request_id=rid()),
                                   metadata=other)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await orders.stub.BuyFlashSale(pb.BuyFlashSaleRequest(flash_sale=sale.name, quantity=1, request_id=rid()),
                                       metadata=orders.member_md(c))
    assert error_info(await status_of(e.value)).reason == "FLASH_SALE_SOLD_OUT"
    await orders.stub.CancelOrder(pb.CancelOrderRequest(name=first.name), metadata=md)  # 2 units come back
    again = await orders.stub.BuyFlashSale(pb.BuyFlashSaleRequest(flash_sale=sale.name, quantity=2, request_id=rid()),
                                           metadata=md)  # and the member's counter too
    assert again.state == pb.ORDER_STATE_PENDING_PAYMENT
    got = await orders.stub.GetFlashSale(pb.GetFlashSaleRequest(name=sale.name))
    assert got.remaining_stock == 0
