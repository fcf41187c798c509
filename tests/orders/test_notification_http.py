"""WeChat Pay through the gateway: the prepay names the member's real openid; the notification's raw body
and Wechatpay-* headers reach the verifier."""

from __future__ import annotations

import json

from mall.members.v1 import members_service_pb2 as mpb
from mall.orders.v1 import orders_service_pb2 as pb


async def test_notification_route_verifies_signed_raw_body_once(orders_gateway, orders, members):
    login, md = await members.login()
    member_md = orders.member_md(int(login.member.name.split("/")[1]))
    product = await orders.product(price_fen=1_990, stock=5)
    order = await orders.order(member_md, product.skus[0].name)
    await orders.prepay(member_md, order)
    identity = await members.stub.GetMemberIdentity(mpb.GetMemberIdentityRequest(member=login.member.name),
                                                    metadata=members.service_md)
    assert identity.openid.startswith("o") and orders.sim.transactions[order.out_trade_no]["openid"] == identity.openid
    headers, body = orders.sim.notification(order.out_trade_no)

    tampered = json.loads(body)
    tampered["resource"]["ciphertext"] = tampered["resource"]["ciphertext"][:-4] + "AAAA"
    bad = await orders_gateway.post("/v1/wechatpay/notifications", content=json.dumps(tampered), headers=headers)
    assert bad.status_code in (400, 403), bad.text
    unsigned = await orders_gateway.post("/v1/wechatpay/notifications", content=body,
                                         headers={**headers, "Wechatpay-Signature": "Zm9yZ2Vk"})
    assert unsigned.status_code == 403, unsigned.text
    assert (await orders.stub.GetOrder(pb.GetOrderRequest(name=order.name), metadata=member_md)).state == \
        pb.ORDER_STATE_PENDING_PAYMENT

    first = await orders_gateway.post("/v1/wechatpay/notifications", content=body, headers=headers)
    assert first.status_code == 200, first.text
    again = await orders_gateway.post("/v1/wechatpay/notifications", content=body, headers=headers)
    assert again.status_code == 200, again.text
    paid = await orders.stub.GetOrder(pb.GetOrderRequest(name=order.name), metadata=member_md)
    assert paid.state == pb.ORDER_STATE_PAID
