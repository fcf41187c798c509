"""WeChat Pay notifications: verified, decrypted, amount-checked and applied exactly once."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter

import grpc
import pytest
from sqlalchemy import func, select

from mall.events.v1 import events_pb2
from mall.members.v1 import members_service_pb2 as mpb
from mall.orders.v1 import orders_service_pb2 as pb
from mallkit.errors import error_info, status_of
from mallkit.settings import PlatformSettings
from mallkit.testing import service_database
from orders.app import SERVICE_DIR, build
from orders.models import OutboxEvents, PaymentNotification
from tests.fixtures.orders import Orders, PointsStandIn, orders_settings

pytestmark = pytest.mark.mariadb


async def _reason(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call
    info = error_info(await status_of(e.value))
    return e.value.code(), info.reason if info else ""


def _subject(payload: bytes) -> str:
    return events_pb2.Event.FromString(payload).subject


async def _wait_for_progress(count, target: int, stall: float = 30.0) -> int:
    """Poll ``count()`` until it reaches ``target``; give up only when it made no progress for ``stall``
    seconds (the bound scales with the work: a loaded machine is slower, not stuck). Returns the last count."""
    last, since = await count(), time.monotonic()
    while last < target:
        if time.monotonic() - since > stall:
            break
        await asyncio.sleep(0.05)
        now = await count()
        if now > last:
            last, since = now, time.monotonic()
    return last


async def _orders_for(orders, members, n_members: int, per_member: int, price_fen: int):
    product = await orders.product(price_fen=price_fen, stock=10_000)
    sku = product.skus[0].name
    created = []

    async def one_member():
        login, md = await members.login()
        address = await orders.address(md)
        mine = [await orders.order(md, sku, address=address) for _ in range(per_member)]
        created.extend((login, md, o) for o in mine)

    await asyncio.gather(*[one_member() for _ in range(n_members)])
    return created


async def test_each_notification_delivered_20_times_5_at_once_pays_once(orders, members):
    t0 = time.monotonic()
    created = await _orders_for(orders, members, n_members=20, per_member=10, price_fen=1_990)
    print(f"orders {time.monotonic() - t0:.1f}s")
    assert len(created) == 200
    t0 = time.monotonic()
    gate = asyncio.Semaphore(20)

    async def prepay(md, o):
        async with gate:
            await orders.prepay(md, o)
    await asyncio.gather(*[prepay(md, o) for _, md, o in created])
    print(f"prepay {time.monotonic() - t0:.1f}s")
    t0 = time.monotonic()
    # A second replica on the same database: deliveries of one notification race across processes too.
    replica = build(orders_settings(orders.url, sim_url=orders.sim.url, members_addr=members.addr, relay_enabled=False))
    await replica.start()
    other = Orders(replica, orders.engine, orders.url, orders.sim, orders.points)
    gate = asyncio.Semaphore(8)  # orders in flight; each with 5 concurrent deliveries

    async def deliver(order):
        headers, body = orders.sim.notification(order.out_trade_no)
        async with gate:
            for _ in range(4):  # 4 waves x 5 at once = 20 deliveries of the very same notification
                replies = await asyncio.gather(*[(orders if i % 2 else other).notify(headers, body) for i in range(5)])
                assert all(r.code == "SUCCESS" for r in replies)

    try:
        await asyncio.gather(*[deliver(o) for _, _, o in created])
    finally:
        await other.channel.close()
        await replica.stop(grace=0)
    print(f"deliveries {time.monotonic() - t0:.1f}s")
    names = [o.name for _, _, o in created]
    got = await asyncio.gather(*[orders.stub.GetOrder(pb.GetOrderRequest(name=n), metadata=orders.staff_md) for n in names])
    assert all(o.state == pb.ORDER_STATE_PAID for o in got)
    ids = [int(n.split("/")[1]) for n in names]
    async with orders.engine.connect() as conn:
        events = Counter(_subject(p) for p in (await conn.execute(
            select(OutboxEvents.c.payload).where(OutboxEvents.c.event_type == "order.paid"))).scalars())
        applied = (await conn.execute(select(func.count()).select_from(PaymentNotification)
                                      .where(PaymentNotification.order_id.in_(ids)))).scalar()
    events = Counter({n: events[n] for n in names})
    assert events == Counter({n: 1 for n in names})  # one event per order
    assert applied == 200

    async def pended():
        return sum(orders.points.pends[n] >= 1 for n in names)

    assert await _wait_for_progress(pended, len(names)) == len(names)
    assert all(orders.points.pends[n] == 1 for n in names)  # points pended once (the inbox drops redeliveries)
    # Growth value (members' consumer of the same event): 19 yuan per order, 10 orders per member, once each.
    seen = {login.member.name for login, _, _ in created}
    for name in list(seen)[:3]:
        async def growth(name=name):
            m = await members.stub.GetMember(mpb.GetMemberRequest(name=name), metadata=members.service_md)
            return m.growth_value
        assert await _wait_for_progress(growth, 190) == 190


async def test_bad_signature_stale_timestamp_wrong_amount_change_nothing(orders, members):
    (login, md, order), = await _orders_for(orders, members, n_members=1, per_member=1, price_fen=5_000)
    await orders.prepay(md, order)
    sim = orders.sim
    bad = [
        (sim.notification(order.out_trade_no, tamper=True), grpc.StatusCode.PERMISSION_DENIED,
         "NOTIFICATION_SIGNATURE_INVALID"),
        (sim.notification(order.out_trade_no, timestamp=int(time.time()) - 3600), grpc.StatusCode.PERMISSION_DENIED,
         "NOTIFICATION_STALE"),
        (sim.notification(order.out_trade_no, amount=1), grpc.StatusCode.FAILED_PRECONDITION, "AMOUNT_MISMATCH"),
    ]
    headers, body = sim.notification(order.out_trade_no)
    bad.append((({**headers, "Wechatpay-Serial": "SOMEONE_ELSE"}, body), grpc.StatusCode.PERMISSION_DENIED,
                "NOTIFICATION_SERIAL_UNKNOWN"))
    forged = dict(headers, **{"Wechatpay-Signature": sim.notification(order.out_trade_no)[0]["Wechatpay-Signature"]})
    bad.append(((forged, body), grpc.StatusCode.PERMISSION_DENIED, "NOTIFICATION_SIGNATURE_INVALID"))
    for (h, b), code, reason in bad:
        assert await _reason(orders.notify(h, b)) == (code, reason)
    got = await orders.stub.GetOrder(pb.GetOrderRequest(name=order.name), metadata=md)
    assert got.state == pb.ORDER_STATE_PENDING_PAYMENT and got.pay_time.seconds == 0
    async with orders.engine.connect() as conn:
        payloads = (await conn.execute(select(OutboxEvents.c.payload))).scalars().all()
    assert order.name not in {_subject(p) for p in payloads}
    # The genuine notification still works afterwards.
    assert (await orders.notify(headers, body)).code == "SUCCESS"
    assert (await orders.stub.GetOrder(pb.GetOrderRequest(name=order.name), metadata=md)).state == pb.ORDER_STATE_PAID


async def test_killed_after_payments_before_relay_every_paid_order_pends_once(orders, members, backend, tmp_root):
    # An orders instance on its own database publishes in its own event namespace (its order ids
    # would collide with the shared instance's), read by a stand-in of the points consumer.
    namespace = f"kill{uuid.uuid4().hex[:8]}"
    consumer = PointsStandIn(f"sqlite+aiosqlite:///{tmp_root / 'points-kill.db'}", namespace)
    await consumer.start()
    try:
        async with service_database("orders_kill", backend, tmp_root, SERVICE_DIR) as (url, engine):
            def settings(**kw):
                return orders_settings(url, sim_url=orders.sim.url, members_addr=members.addr, **kw,
                                       platform=PlatformSettings(env="test", members_addr=members.addr,
                                                                 event_namespace=namespace))

            first = build(settings(relay_enabled=False))
            await first.start()
            try:
                o1 = Orders(first, engine, url, orders.sim, consumer)
                created = await _orders_for(o1, members, n_members=5, per_member=6, price_fen=2_500)
                await asyncio.gather(*[o1.pay(md, o) for _, md, o in created])
                await o1.channel.close()
            finally:
                await first.stop(grace=0)  # "killed": nothing was relayed
            names = [o.name for _, _, o in created]
            async with engine.connect() as conn:
                unpublished = (await conn.execute(select(func.count()).select_from(OutboxEvents).where(
                    OutboxEvents.c.published_time.is_(None), OutboxEvents.c.event_type == "order.paid"))).scalar()
            assert unpublished == len(names) and not consumer.pends  # one row per event, none published yet

            second = build(settings())  # restarted with the relay on
            await second.start()
            try:
                async def pended():
                    return sum(consumer.pends[n] >= 1 for n in names)

                assert await _wait_for_progress(pended, len(names)) == len(names)
                assert {n: consumer.pends[n] for n in names} == {n: 1 for n in names}
            finally:
                await second.stop(grace=0)
    finally:
        await consumer.stop()
