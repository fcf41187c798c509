"""Smoke: catalog, order, pay via the simulator's signed notification, events to points."""

from __future__ import annotations

import asyncio

from mall.orders.v1 import orders_service_pb2 as pb


async def test_order_paid_once_and_event_delivered(orders, members):
    login, md = await members.login()
    product = await orders.product(price_fen=12345)
    order = await orders.order(md, product.skus[0].name, quantity=2)
    assert order.state == pb.ORDER_STATE_PENDING_PAYMENT and order.payable_fen == 24690
    params = await orders.prepay(md, order)
    assert params.package.startswith("prepay_id=") and params.sign_type == "RSA"
    reply = await orders.notify(*orders.sim.notification(order.out_trade_no))
    assert reply.code == "SUCCESS"
    got = await orders.stub.GetOrder(pb.GetOrderRequest(name=order.name), metadata=md)
    assert got.state == pb.ORDER_STATE_PAID
    for _ in range(200):
        if orders.points.pends[order.name]:
            break
        await asyncio.sleep(0.05)
    assert orders.points.pends[order.name] == 1
