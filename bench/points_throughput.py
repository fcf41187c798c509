"""Benchmark: points grants/s and redemptions/s through the points service vs the same writes straight
through the database driver.

Starts the points service as its own process (MariaDB when one answers on
127.0.0.1:3306, else an SQLite file), then, from this process, with the same
number of concurrent workers and the same count:

* grants through the service: CompleteTask (a task reward, as the orders
  service reports a review) over gRPC with a service token;
* redemptions through the service: RedeemItem over gRPC with member tokens;
* the baseline: the same transactions, in the service's order, written with
  SQLAlchemy Core on the driver (aiomysql / aiosqlite), without gRPC,
  validation or tracing: task completion, ledger entry, lot, lot move,
  idempotency key and last the balance for a grant; conditional balance
  update, redemption, ledger entry, first-expiring lot, idempotency key and
  last the stock for a redemption. Statements, round trips and CPU per
  request of the service process are printed under each service figure
  (bench/probe.py).

It prints operations/s, p50 and p99 of each and the ratios, then runs the
ledger checker over everything written (both paths keep the invariant).
Bounded: a fixed count per path, all on 127.0.0.1.

    make bench      # or: .venv/bin/python bench/points_throughput.py --count 1000 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from sqlalchemy import insert, select, text, update
from sqlalchemy.ext.asyncio import create_async_engine

from mall.points.v1 import points_service_pb2 as pb
from mall.points.v1 import points_service_pb2_grpc as pb_grpc
from mallkit.auth import MEMBER, SERVICE, STAFF, Principal, TokenCodec
from mallkit.db import create_engine
from mallkit.settings import DEV_TOKEN_SECRET
from mallkit.testing import MYSQL_ADMIN_URL, mysql_available

sys.path.insert(0, str(Path(__file__).resolve().parent))
import probe  # noqa: E402
from harness import TRACING_MODES, free_port, start_members, tracing_env, wait_port  # noqa: E402
from loadgen import drive_calls  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MEMBERS = 400






class RawDriver:
    """The same writes as the service's grant and redemption, straight through SQLAlchemy Core."""

    def __init__(self, url: str):
        from points import models

        self.m = models
        self.engine = create_engine(url, pool_size=16, trace=False)

    async def grant(self, member_id: int, task_id: int, points: int, ref: str) -> None:
        """The service's order: completion, ledger entry, lot, lot move, idempotency key, and the account last."""
        m, now = self.m, datetime.now(UTC)
        async with self.engine.begin() as c:
            comp = await c.execute(insert(m.TaskCompletion).values(task_id=task_id, member_id=member_id, period="raw",
                                                                   source_ref=ref, points=points, create_time=now))
            entry = await c.execute(insert(m.Entry).values(
                member_id=member_id, kind=pb.ENTRY_KIND_EARN, source=pb.ENTRY_SOURCE_TASK, source_ref=ref,
                available_delta=points, pending_delta=0, description="raw", operator="",
                idempotency_key=f"rawtask:{comp.inserted_primary_key[0]}", create_time=now))
            entry_id = entry.inserted_primary_key[0]
            lot = await c.execute(insert(m.Lot).values(member_id=member_id, entry_id=entry_id, amount=points,
                                                       remaining=points, earn_time=now,
                                                       expire_time=now + timedelta(days=365), expired=False))
            await c.execute(insert(m.LotMove).values(entry_id=entry_id, lot_id=lot.inserted_primary_key[0],
                                                     delta=points))
            await c.execute(insert(m.IdempotencyKeys).values(scope="raw|grant", request_id=uuid.uuid4().hex,
                                                             request_hash="-", create_time=now))
            added = await c.execute(update(m.Account).where(m.Account.member_id == member_id)
                                    .values(available=m.Account.available + points, update_time=now))
            if added.rowcount != 1:
                await c.execute(insert(m.Account).values(member_id=member_id, available=points, pending=0,
                                                         create_time=now, update_time=now))

    async def redeem(self, member_id: int, item_id: int, price: int) -> None:
        """The service's order: the account, redemption, entry, lot, lot move, idempotency key, the stock last."""
        m, now = self.m, datetime.now(UTC)
        async with self.engine.begin() as c:
            taken = await c.execute(update(m.Account).where(m.Account.member_id == member_id,
                                                            m.Account.available >= price)
                                    .values(available=m.Account.available - price, update_time=now))
            if taken.rowcount != 1:
                raise RuntimeError("insufficient points in the baseline")
            r = await c.execute(insert(m.Redemption).values(
                member_id=member_id, item_id=item_id, item_display_name="bench", item_kind=pb.ITEM_KIND_VIRTUAL,
                quantity=1, points=price, cash_fen=0, state=pb.REDEMPTION_STATE_COMPLETED, create_time=now,
                update_time=now))
            entry = await c.execute(insert(m.Entry).values(
                member_id=member_id, kind=pb.ENTRY_KIND_SPEND, source=pb.ENTRY_SOURCE_REDEMPTION,
                source_ref=f"items/{item_id}", available_delta=-price, pending_delta=0, description="raw",
                operator="", idempotency_key=f"rawredeem:{r.inserted_primary_key[0]}", create_time=now))
            lot_id, remaining = (await c.execute(select(m.Lot.id, m.Lot.remaining).where(
                m.Lot.member_id == member_id, m.Lot.remaining > 0).order_by(m.Lot.expire_time, m.Lot.id)
                .limit(1))).one()
            if remaining < price:
                raise RuntimeError("the baseline keeps prices at one lot")
            await c.execute(update(m.Lot).where(m.Lot.id == lot_id).values(remaining=m.Lot.remaining - price))
            await c.execute(insert(m.LotMove).values(entry_id=entry.inserted_primary_key[0], lot_id=lot_id,
                                                     delta=-price))
            await c.execute(insert(m.IdempotencyKeys).values(scope="raw|redeem", request_id=uuid.uuid4().hex,
                                                             request_hash="-", create_time=now))
            stock = await c.execute(update(m.Item).where(m.Item.id == item_id, m.Item.stock >= 1)
                                    .values(stock=m.Item.stock - 1, redeemed_count=m.Item.redeemed_count + 1))
            if stock.rowcount != 1:
                raise RuntimeError("out of stock in the baseline")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="grants and redemptions per path")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tracing", choices=TRACING_MODES, default="production", help="production: 1 in 10 sampled (k8s)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="mall-bench-"))
    db_name = f"mall_bench_points_{uuid.uuid4().hex[:6]}"
    admin = None
    if await mysql_available():
        admin = create_async_engine(MYSQL_ADMIN_URL)
        async with admin.begin() as conn:
            await conn.execute(text(f"CREATE DATABASE `{db_name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"))
        url, backend = MYSQL_ADMIN_URL.rstrip("/") + f"/{db_name}", "MariaDB"
    else:
        url, backend = f"sqlite+aiosqlite:///{tmp / 'points.db'}", "SQLite (no MariaDB answered)"
    port = free_port()
    env = {**os.environ, "MALL_ENV": "development", "MALL_LOG_LEVEL": "WARNING", "MALL_LOG_FORMAT": "text",
           "POINTS_PORT": str(port), "POINTS_DATABASE_URL": url, "POINTS_RELAY_ENABLED": "false", "MALL_NATS_URL": "nats://127.0.0.1:1",
           "POINTS_DB_POOL_SIZE": "16", "POINTS_EXPIRY_JOB_SECONDS": "3600", "POINTS_REACH_JOB_SECONDS": "3600",
           **tracing_env(args.tracing)}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    py = sys.executable
    # members answers whether each member and staff/1 exist (every service checks a token's account)
    members = start_members(env, tmp, range(1, MEMBERS + 1))
    await wait_port(int(env["MEMBERS_PORT"]), members)
    subprocess.run([py, "-m", "points", "migrate"], env=env, check=True, cwd=ROOT)
    proc = probe.start(subprocess.Popen, "points", env, tmp, cwd=ROOT, stdout=subprocess.DEVNULL)
    raw = RawDriver(url)
    try:
        await wait_port(port, proc)
        codec = TokenCodec(os.environ.get("MALL_TOKEN_SECRET", DEV_TOKEN_SECRET))
        md = lambda p: (("authorization", f"Bearer {codec.issue(p, ttl=3600)[0]}"),)  # noqa: E731
        staff, service = md(Principal(STAFF, "staff/1", frozenset({"admin"}))), md(Principal(SERVICE, "service/orders"))
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.PointsServiceStub(channel)
        for _ in range(100):  # readiness follows the database
            try:
                await stub.ListTasks(pb.ListTasksRequest(), metadata=staff, timeout=5)
                break
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.1)
        task = await stub.CreateTask(pb.CreateTaskRequest(task=pb.Task(
            kind=pb.TASK_KIND_REVIEW_ORDER, display_name="评价订单", reward_points=10, frequency=pb.TASK_FREQUENCY_ONCE,
            limit_per_period=1000, active=True)), metadata=staff)
        task_id = int(task.name.split("/")[1])
        item = await stub.CreateItem(pb.CreateItemRequest(item=pb.Item(
            display_name="bench", kind=pb.ITEM_KIND_VIRTUAL, points_price=1, stock=10_000_000,
            state=pb.ITEM_STATE_ACTIVE)), metadata=staff)
        item_id = int(item.name.split("/")[1])
        members_md = {m: md(Principal(MEMBER, f"members/{m}")) for m in range(1, MEMBERS + 1)}
        n, conc = args.count, args.concurrency

        def grants(base: int, via_service: bool):
            for i in range(n):
                member = base + i % MEMBERS
                if via_service:
                    req = pb.CompleteTaskRequest(name=f"members/{member}/pointsAccount", kind=pb.TASK_KIND_REVIEW_ORDER,
                                                 source_ref=f"orders/{base + i}", request_id=uuid.uuid4().hex)
                    yield lambda req=req: stub.CompleteTask(req, metadata=service, timeout=30)
                else:
                    yield lambda member=member, i=i: raw.grant(member, task_id, 10, f"orders/{base + i}")

        def redemptions(base: int, via_service: bool):
            for i in range(n):
                member = base + i % MEMBERS
                if via_service:
                    req = pb.RedeemItemRequest(name=item.name, request_id=uuid.uuid4().hex)
                    yield lambda req=req, member=member: stub.RedeemItem(req, metadata=members_md[member], timeout=30)
                else:
                    yield lambda member=member: raw.redeem(member, item_id, 1)

        print(f"points: {n} grants and {n} redemptions per path, {conc} concurrent workers, database: {backend}, tracing: {args.tracing}",
              flush=True)
        # Warm-up on members of their own (not counted).
        await drive_calls(list(grants(900_000, True)), 0, conc)
        await drive_calls(list(grants(800_000, False)), 0, conc)
        await drive_calls(list(redemptions(900_000, True)), 0, conc)

        async def measured(name: str, calls) -> dict:
            calls = list(calls)
            before = probe.snapshot(proc)
            row = (await drive_calls(calls, 0, conc)).print(name)
            probe.report("  per request", before, probe.snapshot(proc), len(calls), "points")
            return row

        # The service works on members 1..MEMBERS, the raw driver on 100001..; each member's ledger stays whole.
        g_svc = await measured("grants via gRPC CompleteTask", grants(1, True))
        g_raw = (await drive_calls(list(grants(100_001, False)), 0, conc)).print("grants straight through the driver (baseline)")
        r_svc = await measured("redemptions via gRPC RedeemItem", redemptions(1, True))
        r_raw = (await drive_calls(list(redemptions(100_001, False)), 0, conc)).print(
            "redemptions straight through the driver (baseline)")
        print(f"  ratio service/driver: grants x{g_svc['rate'] / g_raw['rate']:.2f} throughput "
              f"(p50 x{g_svc['p50'] / g_raw['p50']:.2f}), redemptions x{r_svc['rate'] / r_raw['rate']:.2f} throughput "
              f"(p50 x{r_svc['p50'] / r_raw['p50']:.2f})", flush=True)
        await channel.close()
        from points.checker import check_ledger

        report = await check_ledger(raw.engine)
        print(f"  ledger check after the run: {report.accounts} accounts, {report.entries} entries, "
              f"{'OK' if report.ok else report.problems[:5]}")
    finally:
        for p in (members, proc):
            p.terminate()
        for p in (members, proc):
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        await raw.engine.dispose()
        if admin is not None:
            async with admin.begin() as conn:
                await conn.execute(text(f"DROP DATABASE IF EXISTS `{db_name}`"))
            await admin.dispose()


if __name__ == "__main__":
    asyncio.run(main())
