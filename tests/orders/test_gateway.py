"""Through the gateway: members see and act only on their own orders, cart and addresses; bad input is a clear 4xx."""

from __future__ import annotations

import uuid


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


async def login(gw) -> tuple[str, dict]:
    r = await gw.post("/v1/members:loginWithWechat", json={"code": f"g{uuid.uuid4().hex[:10]}#{uuid.uuid4().hex[:6]}"})
    assert r.status_code == 200, r.text
    return r.json()["member"]["name"], bearer(r.json()["accessToken"])


def fields(resp) -> list[str]:
    return [v["field"] for d in resp.json()["error"]["details"] if d["@type"].endswith("BadRequest")
            for v in d["fieldViolations"]]


def reason(resp) -> str:
    return next(d["reason"] for d in resp.json()["error"]["details"] if d["@type"].endswith("ErrorInfo"))


async def test_member_flow_and_ownership_through_the_gateway(orders_gateway, orders):
    gw = orders_gateway
    product = await orders.product(price_fen=2_500, stock=50)
    sku = product.skus[0].name
    listed = await gw.get("/v1/products", params={"category": product.category})
    assert listed.status_code == 200 and listed.json()["products"][0]["name"] == product.name
    alice, a = await login(gw)
    bob, b = await login(gw)
    r = await gw.post("/v1/members/me/cartItems", json={"sku": sku, "quantity": 2}, headers=a)
    assert r.status_code == 200, r.text
    cart_item = r.json()["name"]
    addr = await gw.post("/v1/members/me/addresses", json={"recipient": "王五", "phone": "13900139000", "province": "浙江省",
                                                          "city": "杭州市", "detail": "西湖区 1 号"}, headers=a)
    assert addr.status_code == 200, addr.text
    address = addr.json()["name"].replace(alice, "members/me")
    made = await gw.post("/v1/orders", json={"lines": [{"sku": sku, "quantity": 2}], "address": address,
                                             "fromCart": True, "unitPriceFen": 1},
                         headers={**a, "Idempotency-Key": str(uuid.uuid4())})
    assert made.status_code == 400 and fields(made) == ["unitPriceFen"], made.text  # no such thing as a client price
    key = str(uuid.uuid4())
    made = await gw.post("/v1/orders", json={"lines": [{"sku": sku, "quantity": 2}], "address": address, "fromCart": True},
                         headers={**a, "Idempotency-Key": key})
    assert made.status_code == 200, made.text
    order = made.json()
    assert order["payableFen"] == "5000" and order["state"] == "ORDER_STATE_PENDING_PAYMENT"
    again = await gw.post("/v1/orders", json={"lines": [{"sku": sku, "quantity": 2}], "address": address, "fromCart": True},
                          headers={**a, "Idempotency-Key": key})
    assert again.json()["name"] == order["name"]  # a retried request has one effect
    cart = await gw.get("/v1/members/me/cartItems", headers=a)
    assert cart.json().get("cartItems", []) == []
    pay = await gw.post(f"/v1/{order['name']}:pay", json={}, headers=a)
    assert pay.status_code == 200 and pay.json()["package"].startswith("prepay_id=") and pay.json()["paySign"]
    # Bob can see and touch none of it.
    assert (await gw.get(f"/v1/{order['name']}", headers=b)).status_code == 403
    assert (await gw.post(f"/v1/{order['name']}:cancel", json={}, headers=b)).status_code == 403
    assert (await gw.post(f"/v1/{order['name']}:pay", json={}, headers=b)).status_code == 403
    assert (await gw.get(f"/v1/{alice}/orders", headers=b)).status_code == 403
    assert (await gw.get(f"/v1/{alice}/addresses", headers=b)).status_code == 403
    assert (await gw.delete(f"/v1/{addr.json()['name']}", headers=b)).status_code == 403
    assert (await gw.delete(f"/v1/{cart_item}", headers=b)).status_code == 403
    assert (await gw.get("/v1/members/me/orders", headers=b)).json().get("orders", []) == []
    stolen = await gw.post("/v1/orders", json={"lines": [{"sku": sku, "quantity": 1}], "address": addr.json()["name"]},
                           headers={**b, "Idempotency-Key": str(uuid.uuid4())})
    assert stolen.status_code == 403
    mine = await gw.get("/v1/members/me/orders", headers=a)
    assert [o["name"] for o in mine.json()["orders"]] == [order["name"]]
    # Staff routes need staff; anonymous callers need a session.
    assert (await gw.post("/v1/products", json={"displayName": "x"}, headers=a)).status_code == 403
    assert (await gw.get("/v1/members/me/orders")).status_code == 401
    cancelled = await gw.post(f"/v1/{order['name']}:cancel", json={}, headers=a)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "ORDER_STATE_CANCELLED"
    twice = await gw.post(f"/v1/{order['name']}:cancel", json={}, headers=a)
    assert twice.status_code == 400 and reason(twice) == "ORDER_STATE_CONFLICT"


async def test_bad_input_gets_clear_4xx(orders_gateway, orders):
    gw = orders_gateway
    _, a = await login(gw)
    product = await orders.product(price_fen=100)
    sku = product.skus[0].name
    cases = [
        (await gw.post("/v1/orders", json={"lines": [], "address": "members/me/addresses/1"},
                       headers={**a, "Idempotency-Key": str(uuid.uuid4())}), 400, "lines"),
        (await gw.post("/v1/orders", json={"lines": [{"sku": sku, "quantity": 0}], "address": "members/me/addresses/1"},
                       headers={**a, "Idempotency-Key": str(uuid.uuid4())}), 400, "lines[0].quantity"),
        (await gw.post("/v1/orders", json={"lines": [{"sku": "products/1'; DROP TABLE orders;--", "quantity": 1}],
                                           "address": "members/me/addresses/1"},
                       headers={**a, "Idempotency-Key": str(uuid.uuid4())}), 400, "lines[0].sku"),
        (await gw.post("/v1/orders", json={"lines": [{"sku": sku, "quantity": 1}], "address": "members/me/addresses/1"},
                       headers=a), 400, "request_id"),
        (await gw.post("/v1/orders", json={"lines": [{"sku": sku, "quantity": "many"}]}, headers=a), 400, None),
        (await gw.post("/v1/members/me/addresses", json={"recipient": "<script>", "phone": "123", "province": "",
                                                         "city": "杭州", "detail": "x"}, headers=a), 400, "address.phone"),
        (await gw.get("/v1/members/me/orders", params={"state": "NOT_A_STATE"}, headers=a), 400, None),
        (await gw.get("/v1/orders/abc", headers=a), 400, "name"),
        (await gw.get("/v1/orders/99999999", headers=a), 403, None),  # never reveals which ids exist
        (await gw.post("/v1/members/me/cartItems", json={"sku": sku, "quantity": 100}, headers=a), 400, "quantity"),
    ]
    for resp, status, field in cases:
        assert resp.status_code == status, (resp.status_code, resp.text)
        assert "error" in resp.json()
        if field:
            assert field in fields(resp), resp.text
