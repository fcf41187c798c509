"""`make run`'s launcher starts every process on SQLite with demo data, and Ctrl-C stops them all."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def until(fetch, predicate, what: str, within: float = 90.0):
    """Poll ``fetch()`` until ``predicate`` holds on its answer (a generous deadline: events are relayed)."""
    deadline = time.time() + within
    while True:
        value = fetch()
        if predicate(value):
            return value
        assert time.time() < deadline, f"{what}: still {value!r}"
        time.sleep(0.2)


def demo_member_can_redeem_and_pay(base: str, env: dict, token: str, staff_token: str) -> None:
    """The demo data holds together: Alice can afford a mall item; the coupon item and the community's coupon
    drop name the templates they describe; and the payment step of README's "Try it" works locally."""
    me, staff = {"Authorization": f"Bearer {token}"}, {"Authorization": f"Bearer {staff_token}"}
    templates = {t["name"]: t for t in httpx.get(f"{base}/v1/couponTemplates?pageSize=100", headers=staff,
                                                 timeout=10).json()["couponTemplates"]}
    items = httpx.get(f"{base}/v1/items?pageSize=100", headers=me, timeout=10).json()["items"]
    coupon_item = next(i for i in items if i["kind"] == "ITEM_KIND_COUPON")
    assert templates[coupon_item["couponTemplate"]]["displayName"] == coupon_item["displayName"]
    posts = httpx.get(f"{base}/v1/groups/1/posts?pageSize=100", headers=staff, timeout=10).json()["posts"]
    drop = next(p for p in posts if p["kind"] == "POST_KIND_COUPON_DROP")
    assert templates[drop["coupon"]["couponTemplate"]]["displayName"].split()[-1] in drop["title"], (drop, templates)
    assert templates[drop["coupon"]["couponTemplate"]]["amountOffFen"] == "3000"

    account = httpx.get(f"{base}/v1/members/me/pointsAccount", headers=me, timeout=10).json()
    assert int(account["availablePoints"]) >= int(coupon_item["pointsPrice"]), (account, coupon_item)
    redeemed = httpx.post(f"{base}/v1/{coupon_item['name']}:redeem", headers=me, json={"requestId": str(uuid.uuid4())},
                          timeout=10)
    assert redeemed.status_code == 200, redeemed.text
    until(lambda: httpx.get(f"{base}/v1/members/me/coupons", headers=me, timeout=10).json().get("coupons", []),
          lambda coupons: any(c["couponTemplate"] == coupon_item["couponTemplate"] for c in coupons),
          "the redeemed coupon never reached the member's coupons")

    # The community's coupon drop hands out its template: Alice joins the group and claims it.
    joined = httpx.post(f"{base}/v1/groups/1:join", headers=me, json={}, timeout=10)
    assert joined.status_code == 200, joined.text
    claimed = httpx.post(f"{base}/v1/{drop['name']}:claimCoupon", headers=me, json={}, timeout=10)
    assert claimed.status_code == 200, claimed.text
    until(lambda: httpx.get(f"{base}/v1/members/me/coupons", headers=me, timeout=10).json().get("coupons", []),
          lambda coupons: any(c["couponTemplate"] == drop["coupon"]["couponTemplate"] for c in coupons),
          "the community coupon never reached the member's coupons")

    # Pay locally: prepay through the gateway, then the simulator plays the buyer (POST /__sim/pay).
    product = httpx.get(f"{base}/v1/products", timeout=10).json()["products"][0]
    address = httpx.post(f"{base}/v1/members/me/addresses", headers=me, timeout=10, json={
        "recipient": "爱丽丝", "phone": "13800138000", "province": "浙江省", "city": "杭州市", "detail": "湖滨路 1 号"})
    assert address.status_code == 200, address.text
    order = httpx.post(f"{base}/v1/orders", headers=me, timeout=10, json={
        "lines": [{"sku": product["skus"][0]["name"], "quantity": 1}], "requestId": str(uuid.uuid4()),
        "address": "members/me/addresses/" + address.json()["name"].rsplit("/", 1)[1]}).json()
    assert httpx.post(f"{base}/v1/{order['name']}:pay", headers=me, json={}, timeout=10).status_code == 200
    sim = f"http://127.0.0.1:{env['FAKE_WECHATPAY_PORT']}"
    paid = httpx.post(f"{sim}/__sim/pay", json={"out_trade_no": order["outTradeNo"]}, timeout=30)
    assert paid.json()["merchant_status"] == 200, paid.text
    until(lambda: httpx.get(f"{base}/v1/{order['name']}", headers=me, timeout=10).json()["state"],
          lambda state: state == "ORDER_STATE_PAID", "the order never became PAID")


def test_run_local_starts_everything_and_stops_cleanly(tmp_path):
    env = {**os.environ, "MALL_VAR_DIR": str(tmp_path), "GATEWAY_PORT": str(free_port()),
           "FAKE_WECHAT_PORT": str(free_port()), "FAKE_WECHATPAY_PORT": str(free_port()), "MALL_LOG_LEVEL": "WARNING",
           "NATS_PORT": str(free_port())}
    env.pop("MALL_NATS_URL", None)  # make run starts its own nats-server
    for name in ("MEMBERS", "POINTS", "ORDERS", "COMMUNITY"):
        env[f"{name}_PORT"] = str(free_port())
        env.pop(f"MALL_{name}_ADDR", None)
        env.pop(f"{name}_DATABASE_URL", None)
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "run_local.py")], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        assert any("The mall is running" in line for line in lines), "".join(lines[-40:])
        base = f"http://127.0.0.1:{env['GATEWAY_PORT']}"
        for _ in range(100):
            health = httpx.get(f"{base}/healthz", timeout=5)
            if health.status_code == 200:
                break
            time.sleep(0.1)
        assert health.status_code == 200, health.text
        login = httpx.post(f"{base}/v1/members:loginWithWechat", json={"code": "alice"}, timeout=10)
        assert login.status_code == 200 and login.json()["member"]["nickname"] == "Alice"  # demo data
        staff = httpx.post(f"{base}/v1/staff:login", json={"username": "admin", "password": "admin-demo-password"}, timeout=10)
        assert staff.status_code == 200
        demo_member_can_redeem_and_pay(base, env, login.json()["accessToken"], staff.json()["accessToken"])
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, out[-3000:]
    assert "stopped." in out
    for port_var in ("GATEWAY_PORT", "MEMBERS_PORT"):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", int(env[port_var]))) != 0, f"{port_var} still listening"
