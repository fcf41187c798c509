"""With the real points service consuming the orders stream: paid -> pending purchase points, completed -> available."""

from __future__ import annotations

import asyncio
from datetime import UTC, timedelta

from mall.orders.v1 import orders_service_pb2 as pb
from orders import jobs


async def test_real_points_pend_once_then_confirm(orders, members, points):
    settings = orders.app.settings
    login, md = await members.login()
    mid = int(login.member.name.split("/")[1])
    product = await orders.product(price_fen=12_800)
    o = await orders.order(md, product.skus[0].name)
    await orders.pay(md, o)
    headers, body = orders.sim.notification(o.out_trade_no)
    await asyncio.gather(*[orders.notify(headers, body) for _ in range(5)])
    pending = 0
    for _ in range(400):
        pending = (await points.account(mid)).pending_points
        if pending:
            break
        await asyncio.sleep(0.05)
    assert pending > 0
    await asyncio.sleep(0.3)
    assert (await points.account(mid)).pending_points == pending  # pended once
    await orders.stub.ShipOrder(pb.ShipOrderRequest(name=o.name), metadata=orders.staff_md)
    shipped = (await orders.stub.GetOrder(pb.GetOrderRequest(name=o.name), metadata=md)).ship_time.ToDatetime()
    await jobs.complete_due(orders.app, shipped.replace(tzinfo=UTC) + timedelta(days=settings.after_sales_days, seconds=1))
    account = None
    for _ in range(400):
        account = await points.account(mid)
        if account.available_points:
            break
        await asyncio.sleep(0.05)
    assert account.available_points == pending and account.pending_points == 0
