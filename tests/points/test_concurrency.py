"""Redemption under concurrency: points and stock never go below zero, nothing is oversold."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from sqlalchemy import func, select

from mall.points.v1 import points_service_pb2 as pb
from mallkit.errors import error_info, status_of
from points.models import Account, Item, Redemption
from tests.fixtures.points import fresh_member_id, rid

pytestmark = pytest.mark.mariadb


async def _redeem(points, member_id: int, item: str):
    try:
        return await points.stub.RedeemItem(pb.RedeemItemRequest(name=item, request_id=rid()),
                                            metadata=points.member_md(member_id))
    except grpc.aio.AioRpcError as err:
        return error_info(await status_of(err)).reason


async def test_200_concurrent_redemptions_by_one_member_with_points_for_10(points):
    member = fresh_member_id()
    await points.grant(member, 4)
    await points.grant(member, 6)  # two lots
    item = await points.create_item(points_price=1, stock=1000)
    results = await asyncio.gather(*[_redeem(points, member, item.name) for _ in range(200)])
    ok = [r for r in results if isinstance(r, pb.Redemption)]
    assert len(ok) == 10
    assert {r for r in results if isinstance(r, str)} == {"INSUFFICIENT_POINTS"}
    account = await points.account(member)
    assert account.available_points == 0
    async with points.engine.connect() as conn:
        stock = (await conn.execute(select(Item.stock).where(Item.id == int(item.name.split("/")[1])))).scalar_one()
        assert stock == 990
        assert (await conn.execute(select(func.min(Account.available)))).scalar_one() >= 0
    await points.check()


async def test_200_members_racing_for_an_item_with_stock_20(points):
    members = [fresh_member_id() for _ in range(200)]
    await asyncio.gather(*[points.grant(m, 100) for m in members])
    item = await points.create_item(points_price=30, stock=20, kind=pb.ITEM_KIND_PHYSICAL)
    address = pb.ShippingAddress(recipient="张三", phone="13800138000", province="浙江省", city="杭州市",
                                 detail="西湖区文三路 1 号")

    async def redeem(m):
        try:
            return await points.stub.RedeemItem(pb.RedeemItemRequest(name=item.name, shipping_address=address,
                                                                     request_id=rid()),
                                                metadata=points.member_md(m))
        except grpc.aio.AioRpcError as err:
            return error_info(await status_of(err)).reason

    results = await asyncio.gather(*[redeem(m) for m in members])
    winners = [r for r in results if isinstance(r, pb.Redemption)]
    assert len(winners) == 20
    assert {r for r in results if isinstance(r, str)} == {"OUT_OF_STOCK"}
    item_id = int(item.name.split("/")[1])
    async with points.engine.connect() as conn:
        stock, redeemed = (await conn.execute(select(Item.stock, Item.redeemed_count).where(Item.id == item_id))).one()
        assert (stock, redeemed) == (0, 20)
        assert (await conn.execute(select(func.count()).select_from(Redemption)
                                   .where(Redemption.item_id == item_id))).scalar_one() == 20
        balances = (await conn.execute(select(Account.available).where(Account.member_id.in_(members)))).scalars().all()
    assert len(balances) == 200 and sorted(set(balances)) == [70, 100] and balances.count(70) == 20
    await points.check()
