"""No secret, login code, token, session key or payment key reaches a log line, at any level:
a member logs in and pays through the gateway (fake WeChat, WeChat Pay simulator) with DEBUG logging on,
and everything captured (every log record, and stderr/stdout) is scanned for those values."""

from __future__ import annotations

import logging
import uuid
from urllib.parse import quote, quote_plus

import pytest

from mallkit import wechatpay_devkeys as devkeys
from mallkit.telemetry import register_settings_secrets, setup_logging


@pytest.fixture
def debug_logging(members, orders, caplog):
    """The processes' own logging (as `python -m <svc>` sets it up), at DEBUG, then put back."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    register_settings_secrets(members.app.settings)
    register_settings_secrets(orders.app.settings)
    setup_logging("mall", "DEBUG", json_logs=True)
    caplog.set_level(logging.DEBUG)
    yield caplog
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


async def test_login_and_payment_with_debug_logs_leak_nothing(debug_logging, capfd, orders_gateway, members, orders,
                                                              fake_wechat):
    gw = orders_gateway
    code = f"leak{uuid.uuid4().hex[:8]}#{uuid.uuid4().hex[:6]}"
    login = await gw.post("/v1/members:loginWithWechat", json={"code": code})
    assert login.status_code == 200, login.text
    token = login.json()["accessToken"]
    me = {"Authorization": f"Bearer {token}"}
    staff = await gw.post("/v1/staff:login", json={"username": "test-admin", "password": "test-admin-password"})
    staff_token = staff.json()["accessToken"]

    product = await orders.product(price_fen=2_990, stock=5)
    address = await gw.post("/v1/members/me/addresses", headers=me, json={
        "recipient": "张三", "phone": "13800138000", "province": "浙江省", "city": "杭州市", "detail": "湖滨路 1 号"})
    assert address.status_code == 200, address.text
    order = await gw.post("/v1/orders", headers=me, json={
        "lines": [{"sku": product.skus[0].name, "quantity": 1}], "address": "members/me/addresses/" +
        address.json()["name"].rsplit("/", 1)[1], "requestId": str(uuid.uuid4())})
    assert order.status_code == 200, order.text
    pay = await gw.post(f"/v1/{order.json()['name']}:pay", headers=me, json={})
    assert pay.status_code == 200, pay.text
    pay_sign = pay.json()["paySign"]
    headers, body = orders.sim.notification(order.json()["outTradeNo"])
    notified = await gw.post("/v1/wechatpay/notifications", content=body, headers=headers)
    assert notified.status_code == 200, notified.text
    paid = await gw.get(f"/v1/{order.json()['name']}", headers=me)
    assert paid.json()["state"] == "ORDER_STATE_PAID"
    # A bad login too: error paths log more than happy ones.
    assert (await gw.post("/v1/members:loginWithWechat", json={"code": "invalid" + code})).status_code >= 400

    secrets = {
        "token secret": members.app.settings.platform.token_secret.get_secret_value(),
        "WeChat app secret": members.app.settings.wechat_secret.get_secret_value(),
        "login code": code,
        "member token": token,
        "staff token": staff_token,
        "staff password": "test-admin-password",
        "APIv3 key": devkeys.APIV3_KEY,
        "merchant private key": devkeys.MERCHANT_PRIVATE_KEY.strip().splitlines()[1],
        "platform private key": devkeys.PLATFORM_PRIVATE_KEY.strip().splitlines()[1],
        **{f"session key {i}": k for i, k in enumerate(fake_wechat.session_keys)},
        **{f"WeChat access token {i}": t for i, t in enumerate(fake_wechat.tokens)},
        "paySign": pay_sign,
    }
    records = debug_logging.records
    out, err = capfd.readouterr()
    logged = "\n".join([r.getMessage() + "\n" + (r.exc_text or "") for r in records] + [out, err])
    assert len(records) > 10 and any(r.levelno == logging.DEBUG for r in records), "DEBUG logging was not on"
    leaked = sorted(name for name, value in secrets.items()
                    if value and (value in logged or quote(value, safe="") in logged or quote_plus(value) in logged))
    assert not leaked, f"leaked into the logs: {leaked}"
