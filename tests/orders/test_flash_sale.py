"""Flash sales (秒杀): never oversold, per-member limits hold, sold-out refusals are cheap."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import grpc
import pytest
from sqlalchemy import event, func, select, update

from mall.orders.v1 import orders_service_pb2 as pb
from mallkit.errors import error_info, status_of
from orders.models import FlashPurchase, FlashSale, Order
from tests.fixtures import directory
from tests.fixtures.orders import rid

pytestmark = pytest.mark.mariadb


async def test_2000_buyers_race_for_100_units(orders):
    product = await orders.product(price_fen=9_900, stock=5)
    sale = await orders.flash_sale(product.skus[0].name, stock=100, price_fen=1_990, limit=1)
    fid = int(sale.name.split("/")[1])
    buyers = directory().new_members(2000)  # real members (tokens of unknown ones are refused)
    attempts = buyers + random.sample(buyers, 300)  # 300 buyers try twice, at the same time
    random.shuffle(attempts)
    mds = {m: orders.member_md(m) for m in buyers}
    gate = asyncio.Semaphore(100)
    outcomes: Counter[str] = Counter()

    async def attempt(member_id: int):
        async with gate:
            try:
                await orders.stub.BuyFlashSale(pb.BuyFlashSaleRequest(flash_sale=sale.name, quantity=1, request_id=rid()),
                                               metadata=mds[member_id])
                outcomes["ok"] += 1
            except grpc.aio.AioRpcError as err:
                info = error_info(await status_of(err))
                outcomes[info.reason if info else err.code().name] += 1

    await asyncio.gather(*[attempt(m) for m in attempts])
    assert outcomes["ok"] == 100, outcomes
    assert set(outcomes) <= {"ok", "FLASH_SALE_SOLD_OUT", "FLASH_SALE_LIMIT_REACHED"}, outcomes
    async with orders.engine.connect() as conn:
        sold = (await conn.execute(select(func.count()).select_from(Order).where(Order.flash_sale_id == fid))).scalar()
        per_member = (await conn.execute(select(Order.member_id, func.count()).where(Order.flash_sale_id == fid)
                                         .group_by(Order.member_id))).all()
        remaining = (await conn.execute(select(FlashSale.remaining).where(FlashSale.id == fid))).scalar()
        counters = (await conn.execute(select(func.max(FlashPurchase.quantity), func.sum(FlashPurchase.quantity))
                                       .where(FlashPurchase.flash_sale_id == fid))).one()
    assert sold == 100
    assert all(n <= 1 for _, n in per_member) and len(per_member) == 100
    assert remaining == 0 == 100 - sold
    assert counters == (1, 100)
    # The SKU's own stock is not the flash sale's: untouched.
    got = await orders.stub.GetProduct(pb.GetProductRequest(name=product.name))
    assert got.skus[0].stock == 5


async def test_limit_window_and_cancel_returns_flash_stock(orders):
    product = await orders.product(price_fen=9_900)
    sale = await orders.flash_sale(product.skus[0].name, stock=3, price_fen=500, limit=2)
    a, b, c = directory().new_members(3)
    md = orders.member_md(a)
    first = await orders.stub.BuyFlashSale(pb.BuyFlashSaleRequest(flash_sale=sale.name, quantity=2, request_id=rid()),
                                           metadata=md)
    assert first.payable_fen == 1000 and first.flash_sale == sale.name
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await orders.stub.BuyFlashSale(pb.BuyFlashSaleRequest(flash_sale=sale.name, quantity=1, request_id=rid()),
                                       metadata=md)
    assert error_info(await status_of(e.value)).reason == "FLASH_SALE_LIMIT_REACHED"
    other = orders.member_md(b)
    await orders.stub.BuyFlashSale(pb.BuyFlashSaleRequest(flash_sale=sale.name, quantity=1, request_id=rid()),
                                   metadata=other)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await orders.stub.BuyFlashSale(pb.BuyFlashSaleRequest(flash_sale=sale.name, quantity=1, request_id=rid()),
                                       metadata=orders.member_md(c))
    assert error_info(await status_of(e.value)).reason == "FLASH_SALE_SOLD_OUT"
    await orders.stub.CancelOrder(pb.CancelOrderRequest(name=first.name), metadata=md)  # 2 units come back
    again = await orders.stub.BuyFlashSale(pb.BuyFlashSaleRequest(flash_sale=sale.name, quantity=2, request_id=rid()),
                                           metadata=md)  # and the member's counter too
    assert again.state == pb.ORDER_STATE_PENDING_PAYMENT
    got = await orders.stub.GetFlashSale(pb.GetFlashSaleRequest(name=sale.name))
    assert got.remaining_stock == 0


class StatementCount:
    """The SQL statements the orders service sends while inside the block (its own engine), but for
    its background loops' (the outbox relay polls its table on its own)."""

    def __init__(self, engine):
        self.engine, self.count, self.seen = engine.sync_engine, 0, []

    def _on(self, conn, cursor, statement, *args):
        if "outbox_events" not in statement:
            self.count += 1
            self.seen.append(statement.split()[0:4])

    def __enter__(self):
        event.listen(self.engine, "before_cursor_execute", self._on)
        return self

    def __exit__(self, *exc):
        event.remove(self.engine, "before_cursor_execute", self._on)


async def _reason_of_buy(orders, sale, member_id: int) -> str:
    try:
        await orders.stub.BuyFlashSale(pb.BuyFlashSaleRequest(flash_sale=sale.name, quantity=1, request_id=rid()),
                                       metadata=orders.member_md(member_id))
        return "ok"
    except grpc.aio.AioRpcError as err:
        return error_info(await status_of(err)).reason


@pytest.fixture
def flash_sales(orders):
    """The service's flash sales, with the sold-out TTL restored after the test."""
    fs = orders.app.flash_sales
    ttl = fs.soldout_ttl
    yield fs
    fs.soldout_ttl = ttl


async def test_sold_out_is_answered_from_memory_and_a_cancellation_here_clears_it(orders, flash_sales):
    flash_sales.soldout_ttl = 600  # nothing in this test may depend on the machine's speed
    product = await orders.product(price_fen=9_900)
    sale = await orders.flash_sale(product.skus[0].name, stock=1, price_fen=500, limit=1)
    a, b, c = directory().new_members(3)
    assert await _reason_of_buy(orders, sale, a) == "ok"
    with StatementCount(orders.app.platform.engine) as first_refusal:
        assert await _reason_of_buy(orders, sale, b) == "FLASH_SALE_SOLD_OUT"  # its UPDATE hit zero rows
    assert first_refusal.count > 0
    principals = orders.app.host.platform_interceptor.principals
    asked = principals.lookups
    with StatementCount(orders.app.platform.engine) as later:
        for m in directory().new_members(20):
            assert await _reason_of_buy(orders, sale, m) == "FLASH_SALE_SOLD_OUT"
    assert later.count == 0, later.seen  # 20 refusals, not one statement
    assert principals.lookups == asked  # nor one call to members: refused before the account check
    # The account check still guards every effect: no account behind the token, no sale.
    assert await _reason_of_buy(orders, sale, 999_999_001) == "FLASH_SALE_SOLD_OUT"  # refused anyway, nothing done
    other = await orders.flash_sale(product.skus[0].name, stock=5, price_fen=500, limit=1)
    assert await _reason_of_buy(orders, other, 999_999_001) == "PRINCIPAL_INACTIVE"
    # The unit comes back (a cancellation in this process): the next buyer gets it at once.
    mine = (await orders.stub.ListOrders(pb.ListOrdersRequest(parent="members/me"), metadata=orders.member_md(a))).orders
    await orders.stub.CancelOrder(pb.CancelOrderRequest(name=mine[0].name), metadata=orders.member_md(a))
    assert await _reason_of_buy(orders, sale, c) == "ok"
    async with orders.engine.connect() as conn:
        remaining = (await conn.execute(select(FlashSale.remaining).where(FlashSale.id == int(sale.name.split("/")[1]))))
        assert remaining.scalar() == 0


async def test_stock_returned_elsewhere_is_sold_again_after_the_ttl(orders, flash_sales):
    """Units returned by another replica (here: straight in the database) are refused from memory until the
    flag is older than the TTL; then one attempt looks again and buys."""
    flash_sales.soldout_ttl = 600
    product = await orders.product(price_fen=9_900)
    sale = await orders.flash_sale(product.skus[0].name, stock=1, price_fen=500, limit=1)
    fid = int(sale.name.split("/")[1])
    a, b = directory().new_members(2)
    assert await _reason_of_buy(orders, sale, a) == "ok"
    assert await _reason_of_buy(orders, sale, b) == "FLASH_SALE_SOLD_OUT"
    async with orders.engine.begin() as conn:  # another replica cancels an order: a unit comes back
        await conn.execute(update(FlashSale).where(FlashSale.id == fid).values(remaining=FlashSale.remaining + 1))
    with StatementCount(orders.app.platform.engine) as stale:
        assert await _reason_of_buy(orders, sale, b) == "FLASH_SALE_SOLD_OUT"  # within the TTL: from memory
    assert stale.count == 0, stale.seen
    flash_sales.soldout_ttl = 0.2
    loop = asyncio.get_running_loop()
    deadline, outcome = loop.time() + 30, ""
    while loop.time() < deadline:
        outcome = await _reason_of_buy(orders, sale, b)
        if outcome != "FLASH_SALE_SOLD_OUT":
            break
        await asyncio.sleep(0.05)
    assert outcome == "ok"
    assert await _reason_of_buy(orders, sale, directory().new_member()) == "FLASH_SALE_SOLD_OUT"
    async with orders.engine.connect() as conn:
        assert (await conn.execute(select(FlashSale.remaining).where(FlashSale.id == fid))).scalar() == 0


async def test_a_repeated_request_id_replays_one_order_on_the_driver_path(orders, monkeypatch):
    """The sale's statements and its idempotency key go out on the driver connection (mallkit.db.DriverStatement,
    MariaDB): listeners still see each one, a reused key fails on the unique key as an IntegrityError and the
    stored response is replayed; concurrent repeats too. One order, one unit, one counter. (The tests trace
    every request, and a traced statement goes through SQLAlchemy for its span: here every span is taken as
    unsampled, as nine in ten are in production.)"""
    from opentelemetry import trace

    monkeypatch.setattr(trace, "get_current_span", lambda context=None: trace.INVALID_SPAN)
    product = await orders.product(price_fen=9_900)
    sale = await orders.flash_sale(product.skus[0].name, stock=5, price_fen=700, limit=2)
    fid = int(sale.name.split("/")[1])
    member = directory().new_member()
    md, key = orders.member_md(member), rid()
    assert await _reason_of_buy(orders, sale, directory().new_member()) == "ok"  # the sale's data is read once
    req = pb.BuyFlashSaleRequest(flash_sale=sale.name, quantity=1, request_id=key)
    cursors = []
    engine = orders.app.platform.engine.sync_engine

    def on_statement(conn, cursor, statement, *args):
        if "outbox_events" not in statement:  # the relay polls on its own
            cursors.append((cursor, statement.split()[:3]))
    event.listen(engine, "before_cursor_execute", on_statement)
    try:
        with StatementCount(orders.app.platform.engine) as sale_statements:
            first = await orders.stub.BuyFlashSale(req, metadata=md)
    finally:
        event.remove(engine, "before_cursor_execute", on_statement)
    assert len(cursors) == 5 and all(c is None for c, _ in cursors), cursors  # the driver path (no SQLAlchemy cursor)
    verbs = [" ".join(s[:3]).upper() for s in sale_statements.seen]
    assert [v.split()[0] for v in verbs] == ["INSERT", "INSERT", "INSERT", "INSERT", "UPDATE"], verbs
    assert "INSERT IGNORE INTO" in verbs[0] and "idempotency_keys" in " ".join(sale_statements.seen[3]), verbs
    again = await asyncio.gather(*[orders.stub.BuyFlashSale(req, metadata=md) for _ in range(5)])
    assert {a.name for a in again} == {first.name} and all(a == first for a in again)
    assert first.payable_fen == 700 and first.items[0].quantity == 1 and first.flash_sale == sale.name
    with pytest.raises(grpc.aio.AioRpcError) as e:  # the same key with another request
        await orders.stub.BuyFlashSale(pb.BuyFlashSaleRequest(flash_sale=sale.name, quantity=2, request_id=key),
                                       metadata=md)
    assert error_info(await status_of(e.value)).reason == "REQUEST_ID_REUSED"
    async with orders.engine.connect() as conn:
        sold = (await conn.execute(select(func.count()).select_from(Order).where(Order.flash_sale_id == fid))).scalar()
        remaining = (await conn.execute(select(FlashSale.remaining).where(FlashSale.id == fid))).scalar()
        bought = (await conn.execute(select(FlashPurchase.quantity).where(
            FlashPurchase.flash_sale_id == fid, FlashPurchase.member_id == member))).scalar()
    assert (sold, remaining, bought) == (2, 3, 1)  # with the warm-up's
    stored = await orders.stub.GetOrder(pb.GetOrderRequest(name=first.name), metadata=md)
    assert stored.payable_fen == first.payable_fen and stored.items[0].sku == first.items[0].sku
    assert stored.create_time == first.create_time and stored.out_trade_no == first.out_trade_no
