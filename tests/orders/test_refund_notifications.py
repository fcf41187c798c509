"""WeChat Pay v3 refund notifications (退款结果通知): verified, decrypted, applied once; polling stays the fallback."""

from __future__ import annotations

import asyncio
import base64
import time

import grpc
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from sqlalchemy import func, select, update

from mall.events.v1 import events_pb2
from mall.orders.v1 import orders_service_pb2 as pb
from mallkit.errors import error_info, status_of
from orders.models import REFUND_PENDING, REFUND_SUCCEEDED, OutboxEvents, PaymentNotification, Refund

pytestmark = pytest.mark.mariadb


async def _reason(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call
    info = error_info(await status_of(e.value))
    return e.value.code(), info.reason if info else ""


async def _until(predicate, within: float = 30.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.05)
    return await predicate()


async def _refunded_events(orders, order_name: str) -> int:
    async with orders.engine.connect() as conn:
        rows = (await conn.execute(select(OutboxEvents.c.payload)
                                   .where(OutboxEvents.c.event_type == "order.refunded"))).scalars().all()
    return sum(events_pb2.Event.FromString(p).subject == order_name for p in rows)


async def _refund_state(orders, out_refund_no: str) -> int:
    async with orders.engine.connect() as conn:
        return (await conn.execute(select(Refund.state).where(Refund.out_refund_no == out_refund_no))).scalar_one()


async def _approved_but_processing(orders, members, price_fen: int):
    """A paid order whose approved refund WeChat Pay answers PROCESSING (it settles later)."""
    login, md = await members.login()
    product = await orders.product(price_fen=price_fen)
    o = await orders.order(md, product.skus[0].name)
    await orders.pay(md, o)
    orders.sim.settle_later.add(o.out_trade_no)
    await orders.stub.RequestRefund(pb.RequestRefundRequest(name=o.name, reason="不想要了"), metadata=md)
    approved = await orders.stub.ApproveRefund(pb.ApproveRefundRequest(name=o.name), metadata=orders.staff_md)
    assert approved.state == pb.ORDER_STATE_REFUND_REQUESTED  # PROCESSING: not refunded yet
    return md, o, f"R{o.out_trade_no}"


async def test_refund_notification_replayed_20_times_refunds_once_and_forged_ones_change_nothing(orders, members):
    md, o, out_refund_no = await _approved_but_processing(orders, members, 6_600)
    sim = orders.sim
    assert sim.refunds[out_refund_no]["notify_url"] == orders.app.settings.wechatpay_notify_url
    headers, body = sim.refund_notification(out_refund_no)

    # Forged or altered notifications: refused, nothing changes.
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    h2, b2 = sim.refund_notification(out_refund_no)
    forged_sig = base64.b64encode(other_key.sign(
        f"{h2['Wechatpay-Timestamp']}\n{h2['Wechatpay-Nonce']}\n{b2}\n".encode(), padding.PKCS1v15(),
        hashes.SHA256())).decode()
    bad = [
        (sim.refund_notification(out_refund_no, tamper=True), grpc.StatusCode.PERMISSION_DENIED,
         "NOTIFICATION_SIGNATURE_INVALID"),
        (({**h2, "Wechatpay-Signature": forged_sig}, b2), grpc.StatusCode.PERMISSION_DENIED,
         "NOTIFICATION_SIGNATURE_INVALID"),
        (sim.refund_notification(out_refund_no, timestamp=int(time.time()) - 3600), grpc.StatusCode.PERMISSION_DENIED,
         "NOTIFICATION_STALE"),
        (sim.refund_notification(out_refund_no, amount=1), grpc.StatusCode.FAILED_PRECONDITION, "AMOUNT_MISMATCH"),
    ]
    for (h, b), code, reason in bad:
        assert await _reason(orders.notify(h, b)) == (code, reason)
    # A genuine REFUND.ABNORMAL is acknowledged and left to the polling.
    assert (await orders.notify(*sim.refund_notification(out_refund_no, status="ABNORMAL"))).message == "ignored"
    got = await orders.stub.GetOrder(pb.GetOrderRequest(name=o.name), metadata=md)
    assert got.state == pb.ORDER_STATE_REFUND_REQUESTED and got.refunded_fen == 0
    assert await _refund_state(orders, out_refund_no) == REFUND_PENDING
    assert await _refunded_events(orders, o.name) == 0

    # The genuine one, delivered 20 times, 10 at once, to two replicas' worth of concurrency.
    answers = await asyncio.gather(*[orders.notify(headers, body) for _ in range(10)])
    answers += [await orders.notify(headers, body) for _ in range(10)]
    assert all(a.code == "SUCCESS" for a in answers)
    assert sum(a.message == "" for a in answers) == 1  # applied by exactly one delivery
    got = await orders.stub.GetOrder(pb.GetOrderRequest(name=o.name), metadata=md)
    assert got.state == pb.ORDER_STATE_REFUNDED and got.refunded_fen == 6_600
    assert await _refund_state(orders, out_refund_no) == REFUND_SUCCEEDED
    assert await _refunded_events(orders, o.name) == 1
    async with orders.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(PaymentNotification).where(
            PaymentNotification.outcome == "refunded",
            PaymentNotification.order_id == int(o.name.split("/")[1])))).scalar_one() == 1
    # The polling that follows finds nothing left to do; points are reversed once.
    assert await orders.app.payment.process_refunds() == 0
    assert await _until(lambda: _true(orders.points.reversals[o.name] == 1))
    assert len([r for r in sim.refunds.values() if r["out_trade_no"] == o.out_trade_no]) == 1


async def _true(value: bool) -> bool:
    return value


async def test_polling_completes_a_refund_whose_notification_never_arrives(orders, members):
    md, o, out_refund_no = await _approved_but_processing(orders, members, 4_400)
    orders.sim.settle(out_refund_no)  # settles at WeChat Pay; its notification never reaches the merchant
    async with orders.engine.begin() as conn:  # the lease of the first attempt runs out
        await conn.execute(update(Refund).where(Refund.out_refund_no == out_refund_no).values(lease_until=None))
    assert await orders.app.payment.process_refunds() >= 1

    async def refunded() -> bool:
        got = await orders.stub.GetOrder(pb.GetOrderRequest(name=o.name), metadata=md)
        return got.state == pb.ORDER_STATE_REFUNDED
    assert await _until(refunded)
    assert await _refunded_events(orders, o.name) == 1
    # A notification arriving late after all changes nothing.
    late = await orders.notify(*orders.sim.refund_notification(out_refund_no))
    assert late.message == "duplicate"
    assert await _refunded_events(orders, o.name) == 1
