"""Group buying (拼团): a full group proceeds; a group not full by its deadline refunds everyone."""

from __future__ import annotations

import asyncio
from datetime import UTC, timedelta

import grpc
import pytest

from mall.orders.v1 import orders_service_pb2 as pb
from mallkit.errors import error_info, status_of
from orders import jobs
from tests.fixtures.orders import rid


async def _deal(orders, size: int, price_fen: int = 3_000) -> tuple[pb.GroupDeal, pb.Product]:
    product = await orders.product(price_fen=9_000, stock=100)
    deal = pb.GroupDeal(sku=product.skus[0].name, price_fen=price_fen, group_size=size)
    deal.fill_duration.seconds = 3600
    return await orders.stub.CreateGroupDeal(pb.CreateGroupDealRequest(group_deal=deal), metadata=orders.staff_md), product


async def _reason(call) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call
    info = error_info(await status_of(e.value))
    return info.reason if info else e.value.code().name


async def test_full_group_proceeds_and_is_closed_to_more(orders, members):
    deal, _ = await _deal(orders, size=3)
    (_, lead), (_, m2), (_, m3), (_, m4) = [await members.login() for _ in range(4)]
    first = await orders.stub.OpenGroup(pb.OpenGroupRequest(group_deal=deal.name, request_id=rid()), metadata=lead)
    assert first.payable_fen == 3_000 and first.group
    joined = [await orders.stub.JoinGroup(pb.JoinGroupRequest(group=first.group, request_id=rid()), metadata=md)
              for md in (m2, m3)]
    assert await _reason(orders.stub.JoinGroup(pb.JoinGroupRequest(group=first.group, request_id=rid()),
                                               metadata=m4)) == "GROUP_UNAVAILABLE"
    assert await _reason(orders.stub.JoinGroup(pb.JoinGroupRequest(group=first.group, request_id=rid()),
                                               metadata=m2)) == "GROUP_UNAVAILABLE"
    await orders.pay(lead, first)
    assert await _reason(orders.stub.ShipOrder(pb.ShipOrderRequest(name=first.name), metadata=orders.staff_md)) \
        == "GROUP_NOT_FULL"
    for md, o in zip((m2, m3), joined, strict=True):
        await orders.pay(md, o)
    group = await orders.stub.GetGroup(pb.GetGroupRequest(name=first.group))
    assert group.state == pb.GROUP_STATE_FULL and group.paid_count == 3
    shipped = await orders.stub.ShipOrder(pb.ShipOrderRequest(name=first.name), metadata=orders.staff_md)
    assert shipped.state == pb.ORDER_STATE_SHIPPED


async def test_group_not_full_by_the_deadline_refunds_everyone(orders, members):
    deal, product = await _deal(orders, size=4, price_fen=2_200)
    (_, lead), (_, m2), (_, m3) = [await members.login() for _ in range(3)]
    first = await orders.stub.OpenGroup(pb.OpenGroupRequest(group_deal=deal.name, request_id=rid()), metadata=lead)
    second = await orders.stub.JoinGroup(pb.JoinGroupRequest(group=first.group, request_id=rid()), metadata=m2)
    unpaid = await orders.stub.JoinGroup(pb.JoinGroupRequest(group=first.group, request_id=rid()), metadata=m3)
    await orders.pay(lead, first)
    await orders.pay(m2, second)
    group = await orders.stub.GetGroup(pb.GetGroupRequest(name=first.group))
    assert group.state == pb.GROUP_STATE_OPEN and (group.joined_count, group.paid_count) == (3, 2)
    deadline = group.deadline_time.ToDatetime().replace(tzinfo=UTC)
    await asyncio.gather(jobs.fail_expired_groups(orders.app, deadline + timedelta(seconds=1)),
                         jobs.fail_expired_groups(orders.app, deadline + timedelta(seconds=1)))  # two replicas
    group = await orders.stub.GetGroup(pb.GetGroupRequest(name=first.group))
    assert group.state == pb.GROUP_STATE_FAILED
    for md, o in ((lead, first), (m2, second)):
        got = await orders.stub.GetOrder(pb.GetOrderRequest(name=o.name), metadata=md)
        assert got.state == pb.ORDER_STATE_REFUNDED and got.refunded_fen == 2_200
        assert [r["amount"]["refund"] for r in orders.sim.refunds.values() if r["out_trade_no"] == o.out_trade_no] \
            == [2_200]
    cancelled = await orders.stub.GetOrder(pb.GetOrderRequest(name=unpaid.name), metadata=m3)
    assert cancelled.state == pb.ORDER_STATE_CANCELLED and cancelled.cancel_reason == "group_failed"
    for _ in range(400):
        if orders.points.reversals[first.name] and orders.points.reversals[second.name]:
            break
        await asyncio.sleep(0.05)
    assert (orders.points.reversals[first.name], orders.points.reversals[second.name]) == (1, 1)
    assert (await orders.stub.GetProduct(pb.GetProductRequest(name=product.name))).skus[0].stock == 98  # unpaid place freed
    assert await _reason(orders.stub.JoinGroup(pb.JoinGroupRequest(group=first.group, request_id=rid()),
                                               metadata=m3)) == "GROUP_UNAVAILABLE"
