"""Benchmark: flash-sale attempts through the gateway vs the bare conditional stock UPDATE.

Starts the orders service and the gateway as separate processes (MariaDB when it
answers on 127.0.0.1:3306, else SQLite), creates a flash sale of ``--stock`` units,
then drives ``--attempts`` BuyFlashSale calls through HTTP (one distinct member
each, ``--concurrency`` at once: the first ``--stock`` win, the rest are refused
as sold out) and, in the same run, the same number of bare
``UPDATE flash_sales SET remaining = remaining - 1 WHERE id = ? AND remaining >= 1``
statements straight through the database driver (autocommit) with the same
concurrency. Prints attempts/s, p50 and p99 of each and the ratios. Bounded: a
fixed count per path, all on 127.0.0.1.

    make bench            # or: .venv/bin/python bench/orders_flash_sale.py --attempts 1000 --stock 250 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parent))
import probe  # noqa: E402
from harness import TRACING_MODES, drive, free_port, start_members, tracing_env, wait_http, wait_port  # noqa: E402
from loadgen import HttpLoad, drive_calls  # noqa: E402

from mall.orders.v1 import orders_service_pb2 as pb  # noqa: E402
from mall.orders.v1 import orders_service_pb2_grpc as pb_grpc  # noqa: E402
from mallkit.auth import MEMBER, STAFF, Principal, TokenCodec  # noqa: E402
from mallkit.settings import DEV_TOKEN_SECRET  # noqa: E402
from mallkit.testing import MYSQL_ADMIN_URL, mysql_available  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attempts", type=int, default=1000)
    parser.add_argument("--stock", type=int, default=250)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--tracing", choices=TRACING_MODES, default="production", help="production: 1 in 10 sampled (k8s)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="mall-bench-"))
    db_name = f"mall_bench_orders_{uuid.uuid4().hex[:6]}"
    if await mysql_available():
        admin = create_async_engine(MYSQL_ADMIN_URL)
        async with admin.begin() as conn:
            await conn.execute(text(f"CREATE DATABASE `{db_name}` CHARACTER SET utf8mb4"))
        url = MYSQL_ADMIN_URL.rstrip("/") + f"/{db_name}"
        backend = "MariaDB"
    else:
        admin = None
        url = f"sqlite+aiosqlite:///{tmp / 'orders.db'}"
        backend = "SQLite"
    grpc_port, http_port = free_port(), free_port()
    env = {
        **os.environ, "MALL_ENV": "development", "MALL_LOG_LEVEL": "WARNING", "MALL_TOKEN_SECRET": DEV_TOKEN_SECRET,
        "MALL_ORDERS_ADDR": f"127.0.0.1:{grpc_port}", "ORDERS_PORT": str(grpc_port), "ORDERS_DATABASE_URL": url,
        "ORDERS_RELAY_ENABLED": "false", "MALL_NATS_URL": "nats://127.0.0.1:1", "ORDERS_JOBS_ENABLED": "false", "GATEWAY_PORT": str(http_port),
        "GATEWAY_SERVICES": "orders", "GATEWAY_RATE_PER_IP": "0", "GATEWAY_RATE_PER_MEMBER": "0",
        **tracing_env(args.tracing),
    }
    py = sys.executable
    # members answers whether each buyer and staff/1 exist (every service checks a token's account)
    members = start_members(env, tmp, range(10_000_000, 10_000_000 + 900 + 2 * args.attempts))
    await wait_port(int(env["MEMBERS_PORT"]), members)
    subprocess.run([py, "-m", "orders", "migrate"], env=env, check=True, cwd=ROOT)
    orders_proc = probe.start(subprocess.Popen, "orders", env, tmp, cwd=ROOT, stdout=subprocess.DEVNULL)
    gateway_proc = subprocess.Popen([py, "-m", "gateway"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    procs = [members, orders_proc, gateway_proc]
    codec = TokenCodec(DEV_TOKEN_SECRET)
    staff = {"Authorization": f"Bearer {codec.issue(Principal(STAFF, 'staff/1', frozenset({'admin'})))[0]}"}
    try:
        await wait_http(f"http://127.0.0.1:{http_port}/healthz")
        limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", limits=limits, timeout=30) as http:
            for _ in range(100):
                if (await http.get("/healthz")).status_code == 200:
                    break
                await asyncio.sleep(0.1)
            cat = (await http.post("/v1/categories", json={"displayName": "秒杀"}, headers=staff)).json()
            product = (await http.post("/v1/products", json={"displayName": "秒杀商品", "category": cat["name"], "skus": [
                {"displayName": "默认", "priceFen": 9900, "stock": 10}]}, headers=staff)).json()
            now = datetime.now(UTC)
            window = {"startTime": (now - timedelta(minutes=1)).isoformat(), "endTime": (now + timedelta(hours=1)).isoformat()}
            sales = []
            profiled = min(args.attempts, 300)
            for stock in (args.stock, args.stock, args.stock, profiled):  # warm-up, gateway, gRPC, profile
                r = await http.post("/v1/flashSales", json={"sku": product["skus"][0]["name"], "priceFen": 990,
                                                            "totalStock": stock, "perMemberLimit": 1, **window},
                                    headers=staff)
                assert r.status_code == 200, r.text
                sales.append(r.json()["name"])
        members = iter(range(10_000_000, 20_000_000))
        print(f"orders flash sale, {args.attempts} attempts for {args.stock} units x {args.concurrency} concurrent, "
              f"database: {backend}, tracing: {args.tracing}, load generator: bench/loadgen.py (asyncio HTTP/1.1 keep-alive; gRPC aio)")

        def member_token() -> str:
            return f"Bearer {codec.issue(Principal(MEMBER, f'members/{next(members)}'))[0]}"

        async with HttpLoad("127.0.0.1", http_port, args.concurrency) as load:
            def buys(sale: str, n: int) -> list[bytes]:  # encoded before the clock starts: one member each
                return [load.encode("POST", f"/v1/{sale}:buy", {"Authorization": member_token(),
                                                                "Idempotency-Key": str(uuid.uuid4())},
                                    {"quantity": 1}) for _ in range(n)]

            await load.run_raw(buys(sales[0], min(args.attempts, 300)), expect=(200, 400))  # warm-up
            raws = buys(sales[1], args.attempts)
            gw_before, orders_before = probe.cpu_only(gateway_proc), probe.snapshot(orders_proc)
            res = await load.run_raw(raws, expect=(200, 400))
            gw_after, orders_after = probe.cpu_only(gateway_proc), probe.snapshot(orders_proc)
            gw = res.print("HTTP POST flashSales/*:buy (gateway)")
            print(f"    outcomes by HTTP status: {dict(sorted(res.statuses.items()))} (200 = bought, 400 = sold out)")
            probe.report("  per attempt (mixed)", orders_before, orders_after, args.attempts, "orders")
            probe.report("  per attempt (mixed)", gw_before, gw_after, args.attempts, "gateway")

        # The same attempts straight over gRPC (no gateway), to show where the time goes.
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
        stub = pb_grpc.OrdersServiceStub(channel)
        grpc_outcomes: Counter[str] = Counter()

        def attempts_grpc(sale: str, n: int, tokens: list[str] | None = None) -> list:
            async def attempt(md) -> None:
                try:
                    await stub.BuyFlashSale(pb.BuyFlashSaleRequest(flash_sale=sale, quantity=1, request_id=str(uuid.uuid4())),
                                            metadata=md, timeout=30)
                    grpc_outcomes["OK"] += 1
                except grpc.aio.AioRpcError as err:
                    grpc_outcomes[err.code().name] += 1
            tokens = tokens or [member_token() for _ in range(n)]
            return [lambda md=(("authorization", token),): attempt(md) for token in tokens[:n]]

        direct = drive_calls(attempts_grpc(sales[2], args.attempts), 0, args.concurrency)
        direct = (await direct).print("gRPC BuyFlashSale (no gateway)")
        print(f"    outcomes: {dict(sorted(grpc_outcomes.items()))}")

        # The cost of a sale and of a refusal, apart: a sale with as many units as attempts, then as
        # many attempts again once it is sold out, by new members, then by the same members again
        # (those who lost tapping again: their accounts are known to this process).
        grpc_outcomes = Counter()
        retry_tokens = [member_token() for _ in range(profiled)]
        wins, refusals = attempts_grpc(sales[3], profiled), attempts_grpc(sales[3], profiled, retry_tokens)
        again = attempts_grpc(sales[3], profiled, retry_tokens)
        before = probe.snapshot(orders_proc)
        with probe.Spy(orders_proc, "orders-flash-sale"):
            await drive_calls(wins, 0, args.concurrency)
        middle = probe.snapshot(orders_proc)
        with probe.Spy(orders_proc, "orders-flash-refusal"):
            await drive_calls(refusals, 0, args.concurrency)
        after = probe.snapshot(orders_proc)
        await drive_calls(again, 0, args.concurrency)
        last = probe.snapshot(orders_proc)
        print(f"  cost per request, gRPC, {profiled} each (outcomes {dict(sorted(grpc_outcomes.items()))}):")
        sale_cost = probe.report("  a sale (units left)", before, middle, profiled, "orders")
        refusal_cost = probe.report("  a refusal (sold out), new member", middle, after, profiled, "orders")
        retry_cost = probe.report("  a refusal (sold out), member retrying", after, last, profiled, "orders")
        for name, cost in (("new member", refusal_cost), ("member retrying", retry_cost)):
            print(f"    a refusal ({name}) costs x{cost['cpu_ms'] / sale_cost['cpu_ms']:.2f} the CPU of a sale "
                  f"(x{sale_cost['cpu_ms'] / max(cost['cpu_ms'], 1e-9):.1f} cheaper)")
        await channel.close()

        # The baseline: the same conditional UPDATE the service runs, straight through the driver.
        engine = create_async_engine(url, pool_size=args.concurrency, max_overflow=0, isolation_level="AUTOCOMMIT")
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO flash_sales (sku_id, price_fen, total_stock, remaining, per_member_limit,"
                                    " start_time, end_time, create_time) SELECT sku_id, price_fen, :n, :n, 1, start_time,"
                                    " end_time, create_time FROM flash_sales ORDER BY id LIMIT 1"), {"n": args.stock})
            bench_id = (await conn.execute(text("SELECT MAX(id) FROM flash_sales"))).scalar()
        stmt = text("UPDATE flash_sales SET remaining = remaining - 1 WHERE id = :id AND remaining >= 1")

        async def bare() -> None:
            async with engine.connect() as conn:
                await conn.execute(stmt, {"id": bench_id})

        await drive(bare, min(args.attempts, 300), args.concurrency)
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE flash_sales SET remaining = :n WHERE id = :id"), {"n": args.stock, "id": bench_id})
        raw = (await drive_calls(bare, args.attempts, args.concurrency)).print("bare conditional UPDATE (driver)")
        async with engine.connect() as conn:
            left = (await conn.execute(text("SELECT remaining FROM flash_sales WHERE id = :id"), {"id": bench_id})).scalar()
        await engine.dispose()
        print(f"    bare UPDATE left {left} units (never below 0)")
        print(f"  ratio gateway/bare UPDATE: throughput x{gw['rate'] / raw['rate']:.2f}, "
              f"p50 x{gw['p50'] / raw['p50']:.2f}, p99 x{gw['p99'] / raw['p99']:.2f}")
        print(f"  ratio gRPC/bare UPDATE: throughput x{direct['rate'] / raw['rate']:.2f}, "
              f"p50 x{direct['p50'] / raw['p50']:.2f}, p99 x{direct['p99'] / raw['p99']:.2f}")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        if admin is not None:
            async with admin.begin() as conn:
                await conn.execute(text(f"DROP DATABASE IF EXISTS `{db_name}`"))
            await admin.dispose()


if __name__ == "__main__":
    asyncio.run(main())
