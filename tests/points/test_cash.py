"""Points + cash: the cash part paid through WeChat Pay completes the redemption once; unpaid, it expires once."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import grpc
import pytest
from sqlalchemy import func, select

from mall.points.v1 import points_service_pb2 as pb
from mallkit.db import utcnow
from mallkit.errors import error_info, status_of
from points.models import CashNotification, Entry, Item

pytestmark = pytest.mark.mariadb


def rid() -> str:
    return str(uuid.uuid4())


async def _reason(call) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call
    info = error_info(await status_of(e.value))
    return info.reason if info else e.value.code().name


def _notify_request(headers: dict[str, str], body: str) -> pb.HandleWechatPayNotificationRequest:
    return pb.HandleWechatPayNotificationRequest(
        wechatpay_timestamp=headers["Wechatpay-Timestamp"], wechatpay_nonce=headers["Wechatpay-Nonce"],
        wechatpay_signature=headers["Wechatpay-Signature"], wechatpay_serial=headers["Wechatpay-Serial"], body=body)


async def _stock(points, item: pb.Item) -> int:
    async with points.engine.connect() as conn:
        return (await conn.execute(select(Item.stock).where(Item.id == int(item.name.split("/")[1])))).scalar_one()


async def _entries(points, member_id: int) -> list[int]:
    async with points.engine.connect() as conn:
        return list((await conn.execute(select(Entry.available_delta).where(
            Entry.member_id == member_id, Entry.source == pb.ENTRY_SOURCE_REDEMPTION).order_by(Entry.id))).scalars())


async def _member(points, members) -> tuple[int, tuple]:
    login, _ = await members.login()  # a real member: the prepay needs their openid
    member_id = int(login.member.name.split("/")[1])
    await points.grant(member_id, 1_000)
    return member_id, points.member_md(member_id)


async def test_cash_part_paid_with_the_notification_replayed_20_times_completes_once(points, members, wechatpay_sim):
    member_id, md = await _member(points, members)
    item = await points.create_item(points_price=100, cash_price_fen=990, stock=5)
    r = await points.stub.RedeemItem(pb.RedeemItemRequest(name=item.name, request_id=rid()), metadata=md)
    assert (r.state, r.points, r.cash_fen) == (pb.REDEMPTION_STATE_PENDING_PAYMENT, 100, 990)
    assert r.out_trade_no and r.pay_deadline_time.seconds > 0
    assert (await points.account(member_id)).available_points == 900 and await _stock(points, item) == 4

    # The member opens the payment twice: one prepay, reused.
    prepays = wechatpay_sim.prepays
    first = await points.stub.PayRedemption(pb.PayRedemptionRequest(name=r.name), metadata=md)
    again = await points.stub.PayRedemption(pb.PayRedemptionRequest(name=r.name), metadata=md)
    assert first.package == again.package and first.package.startswith("prepay_id=") and first.pay_sign
    assert wechatpay_sim.prepays == prepays + 1
    assert wechatpay_sim.transactions[r.out_trade_no]["notify_url"] == points.app.settings.wechatpay_notify_url

    # Forged, tampered or short-paid notifications change nothing.
    h, b = wechatpay_sim.notification(r.out_trade_no)
    other = wechatpay_sim.notification(r.out_trade_no)[0]["Wechatpay-Signature"]
    assert await _reason(points.stub.HandleWechatPayNotification(_notify_request(
        {**h, "Wechatpay-Signature": other}, b))) == "NOTIFICATION_SIGNATURE_INVALID"
    assert await _reason(points.stub.HandleWechatPayNotification(_notify_request(
        *wechatpay_sim.notification(r.out_trade_no, tamper=True)))) == "NOTIFICATION_SIGNATURE_INVALID"
    assert await _reason(points.stub.HandleWechatPayNotification(_notify_request(
        *wechatpay_sim.notification(r.out_trade_no, amount=1)))) == "AMOUNT_MISMATCH"
    got = await points.stub.GetRedemption(pb.GetRedemptionRequest(name=r.name), metadata=md)
    assert got.state == pb.REDEMPTION_STATE_PENDING_PAYMENT

    # Paid: the notification delivered 20 times (10 at once), and a second notification of the same payment.
    answers = await asyncio.gather(*[points.stub.HandleWechatPayNotification(_notify_request(h, b)) for _ in range(10)])
    answers += [await points.stub.HandleWechatPayNotification(_notify_request(h, b)) for _ in range(10)]
    answers.append(await points.stub.HandleWechatPayNotification(_notify_request(
        *wechatpay_sim.notification(r.out_trade_no))))
    assert all(a.code == "SUCCESS" for a in answers)
    assert sum(a.message == "" for a in answers) == 1
    got = await points.stub.GetRedemption(pb.GetRedemptionRequest(name=r.name), metadata=md)
    assert got.state == pb.REDEMPTION_STATE_COMPLETED and got.pay_time.seconds > 0
    assert (await points.account(member_id)).available_points == 900 and await _stock(points, item) == 4
    assert await _entries(points, member_id) == [-100]
    async with points.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(CashNotification).where(
            CashNotification.redemption_id == int(r.name.split("/")[-1])))).scalar_one() == 1
    # Paid means no expiry: the job leaves it alone, and it cannot be paid again.
    assert await points.app.cash.expire_unpaid(utcnow() + timedelta(days=1)) == 0
    assert await _reason(points.stub.PayRedemption(pb.PayRedemptionRequest(name=r.name), metadata=md)) \
        == "REDEMPTION_STATE"
    await points.check()


async def test_unpaid_redemption_expires_once_returning_points_and_stock_and_a_late_payment_is_refunded(
        points, members, wechatpay_sim):
    member_id, md = await _member(points, members)
    item = await points.create_item(points_price=300, cash_price_fen=1_500, stock=2, per_member_limit=1)
    r = await points.stub.RedeemItem(pb.RedeemItemRequest(name=item.name, request_id=rid()), metadata=md)
    await points.stub.PayRedemption(pb.PayRedemptionRequest(name=r.name), metadata=md)  # opened, never paid
    assert (await points.account(member_id)).available_points == 700 and await _stock(points, item) == 1
    # Not yet due: nothing expires.
    assert await points.app.cash.expire_unpaid(utcnow()) == 0
    later = utcnow() + timedelta(seconds=points.app.settings.cash_pay_timeout_seconds + 1)
    expired = await asyncio.gather(*[points.app.cash.expire_unpaid(later) for _ in range(5)])
    assert sum(expired) == 1
    assert await points.app.cash.expire_unpaid(later) == 0
    got = await points.stub.GetRedemption(pb.GetRedemptionRequest(name=r.name), metadata=md)
    assert got.state == pb.REDEMPTION_STATE_EXPIRED
    assert (await points.account(member_id)).available_points == 1_000 and await _stock(points, item) == 2
    assert await _entries(points, member_id) == [-300, 300]
    assert await _reason(points.stub.PayRedemption(pb.PayRedemptionRequest(name=r.name), metadata=md)) \
        == "REDEMPTION_STATE"
    # The per-member count came back too: the member may redeem the item again.
    again = await points.stub.RedeemItem(pb.RedeemItemRequest(name=item.name, request_id=rid()), metadata=md)
    assert again.state == pb.REDEMPTION_STATE_PENDING_PAYMENT

    # The buyer paid anyway, after the deadline: refunded once, the redemption stays EXPIRED.
    h, b = wechatpay_sim.notification(r.out_trade_no)
    answers = await asyncio.gather(*[points.stub.HandleWechatPayNotification(_notify_request(h, b)) for _ in range(5)])
    assert sorted(a.message for a in answers) == ["", "duplicate", "duplicate", "duplicate", "duplicate"]
    assert await points.app.cash.process_refunds() == 1
    assert await points.app.cash.process_refunds() == 0
    refunds = [x for x in wechatpay_sim.refunds.values() if x["out_trade_no"] == r.out_trade_no]
    assert [x["amount"]["refund"] for x in refunds] == [1_500]
    # Its refund notification, replayed, changes nothing more.
    notice = wechatpay_sim.refund_notification(f"L{r.out_trade_no}")
    assert (await points.stub.HandleWechatPayNotification(_notify_request(*notice))).message == "duplicate"
    got = await points.stub.GetRedemption(pb.GetRedemptionRequest(name=r.name), metadata=md)
    assert got.state == pb.REDEMPTION_STATE_EXPIRED
    assert (await points.account(member_id)).available_points == 700  # the second redemption holds its points
    await points.check()


async def test_a_paid_physical_redemption_cancelled_returns_points_stock_and_its_cash_once(points, members,
                                                                                           wechatpay_sim):
    member_id, md = await _member(points, members)
    item = await points.create_item(kind=pb.ITEM_KIND_PHYSICAL, points_price=200, cash_price_fen=2_990, stock=3)
    address = pb.ShippingAddress(recipient="王五", phone="13700137000", province="浙江省", city="杭州市",
                                 detail="文一西路 100 号")
    r = await points.stub.RedeemItem(pb.RedeemItemRequest(name=item.name, shipping_address=address, request_id=rid()),
                                     metadata=md)
    await points.stub.PayRedemption(pb.PayRedemptionRequest(name=r.name), metadata=md)
    assert (await points.stub.HandleWechatPayNotification(_notify_request(
        *wechatpay_sim.notification(r.out_trade_no)))).message == ""
    paid = await points.stub.GetRedemption(pb.GetRedemptionRequest(name=r.name), metadata=md)
    assert paid.state == pb.REDEMPTION_STATE_PENDING_SHIPMENT
    outcomes = await asyncio.gather(*[points.stub.CancelRedemption(pb.CancelRedemptionRequest(
        name=r.name, request_id=rid()), metadata=md) for _ in range(5)], return_exceptions=True)
    assert sum(not isinstance(o, Exception) for o in outcomes) == 1
    assert (await points.account(member_id)).available_points == 1_000 and await _stock(points, item) == 3
    done = await asyncio.gather(*[points.app.cash.process_refunds() for _ in range(3)])
    assert sum(done) == 1
    refunds = [x for x in wechatpay_sim.refunds.values() if x["out_trade_no"] == r.out_trade_no]
    assert [x["amount"]["refund"] for x in refunds] == [2_990]
    await points.check()
