"""Audience-targeting benchmark: issue a coupon to a segment of N members (a coupon campaign), against
a raw ``INSERT ... SELECT`` of the same coupon rows measured in the same run.

    make bench-targeting                 # N = 100,000, all in the segment
    make bench-targeting N=1000000 SEGMENT=100000   # a 100,000-member segment of 1M members
    .venv/bin/python bench/audience_targeting.py --members 1000000 --segment 100000

MariaDB only (127.0.0.1:3306, MALL_TEST_MYSQL_URL): two databases, ``mall_bench_target_m_<N>``
(members) and ``mall_bench_target_o_<N>`` (orders), dropped afterwards unless ``--keep``. N members
are generated inside MariaDB (``seq_1_to_<n>``), a segment of all of them is materialized with the
members service's own code, then the members and orders services run in this process (real gRPC
servers on 127.0.0.1, a nats-server of their own) and the orders campaign job issues the coupon:
it pages the snapshot over gRPC (``ListSegmentMembers``, ``--page-size`` members a page) and
issues each page in one transaction (recipients' key, per-member limit, total quantity, coupons).
The baseline is the bare set-wise write of the same coupon rows, one ``INSERT ... SELECT`` from a
table of the member ids, with no paging, no limits and no exactly-once bookkeeping.
Both services share this process's event loop (and the machine's cores with MariaDB): the
figure is the whole path, conservative.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "gen" / "python", ROOT / "services" / "members", ROOT / "services" / "orders"):
    sys.path.insert(0, str(p))

from sqlalchemy import text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

from mall.orders.v1 import orders_service_pb2 as opb  # noqa: E402
from mallkit import migrations  # noqa: E402
from mallkit.db import create_engine, run_transaction, session_factory, utcnow  # noqa: E402
from mallkit.pagination import PageTokens  # noqa: E402
from mallkit.settings import PlatformSettings  # noqa: E402
from mallkit.testing import MYSQL_ADMIN_URL, NatsServer, mysql_available  # noqa: E402

CHUNK = 1_000_000
RULE = {"condition": {"field": "city", "operator": "eq", "values": ["bench-target"]}}


async def load_members(url: str, n: int, every: int) -> None:
    """N members; every ``every``-th one in the target city (the segment)."""
    engine = create_async_engine(url)
    async with engine.connect() as c:
        for lo in range(0, n, CHUNK):
            await c.execute(text(f"""
                INSERT INTO members (id, openid, nickname, avatar_url, gender, province, city, occupation,
                    phone_consent, invite_code, growth_value, first_touch_channel_type, create_time, update_time)
                SELECT s.seq, CONCAT('bench', s.seq), '', '', 0, '', IF(s.seq % {every} = 0, 'bench-target', 'bench-other'),
                    '', 0, CONCAT('B', s.seq), 0, 0,
                    NOW(6), NOW(6)
                FROM (SELECT seq + {lo} AS seq FROM seq_1_to_{min(CHUNK, n - lo)}) s"""))
            await c.commit()
    await engine.dispose()


async def materialize(url: str) -> int:
    from members.segments import Segments

    engine = create_engine(url, pool_size=2, trace=False)
    segments = Segments(PageTokens("bench"))

    async def make(s):
        await segments.create(s, "bench-target", "bench", "", RULE)
        return await segments.materialize(s, "bench-target")

    started = time.perf_counter()
    snap = await run_transaction(session_factory(engine), make)
    print(f"  materialize the segment                 {time.perf_counter() - started:8.2f} s   "
          f"{snap.member_count:,} members", flush=True)
    await engine.dispose()
    return snap.member_count


async def measure(members_url: str, orders_url: str, n: int, every: int, page_size: int, folder: Path) -> None:
    from members.app import build as build_members
    from members.config import MembersSettings
    from orders.app import build as build_orders
    from orders.config import OrdersSettings

    nats = NatsServer(folder / "nats")
    await nats.start()
    platform = dict(env="test", nats_url=nats.url)
    members = build_members(MembersSettings(port=0, database_url=members_url, drain_seconds=0, relay_enabled=False,
                                            platform=PlatformSettings(**platform)))
    await members.start()
    orders = build_orders(OrdersSettings(
        port=0, database_url=orders_url, jobs_enabled=False, relay_enabled=False, drain_seconds=0,
        campaign_page_size=page_size,
        platform=PlatformSettings(**platform, members_addr=f"127.0.0.1:{members.port}")))
    await orders.start()
    try:
        fields = dict(display_name="人群券", kind=opb.COUPON_KIND_AMOUNT_OFF, amount_off_fen=500, valid_days=7,
                      per_member_limit=1, total_quantity=n, claimable=False, welcome=False)
        t = await run_transaction(orders.sessions, lambda s: orders.coupons.create_template(s, fields))
        version, count = await orders.campaigns.resolve("bench-target", 0)
        c = await run_transaction(orders.sessions, lambda s: orders.campaigns.create(
            s, t.id, "bench-target", version, count, utcnow()))
        started = time.perf_counter()
        pages = await orders.campaigns.run_campaign(c.id, utcnow())
        took = time.perf_counter() - started
        async with orders.sessions() as s:
            done = await orders.campaigns.campaign(s, c.id)
        assert done.issued_count == n, (done.issued_count, n)
        print(f"  coupon campaign ({pages} pages of {page_size})     {took:8.2f} s   {n / took:,.0f} coupons/s", flush=True)

        base = await run_transaction(orders.sessions, lambda s: orders.coupons.create_template(s, fields))
        async with orders.engine.connect() as conn:
            await conn.execute(text("CREATE TABLE bench_ids (member_id BIGINT PRIMARY KEY)"))
            await conn.execute(text(f"INSERT INTO bench_ids SELECT seq * {every} FROM seq_1_to_{n}"))
            await conn.commit()
            started = time.perf_counter()
            await conn.execute(text(
                "INSERT INTO coupons (template_id, member_id, state, source, issue_time, expire_time) "
                f"SELECT {base.id}, member_id, 1, 'baseline', NOW(6), NOW(6) + INTERVAL 7 DAY FROM bench_ids"))
            await conn.commit()
            raw = time.perf_counter() - started
        print(f"  baseline: one INSERT ... SELECT          {raw:8.2f} s   {n / raw:,.0f} rows/s", flush=True)
        print(f"  ratio campaign / baseline                {took / raw:8.1f} x", flush=True)
    finally:
        await orders.stop(grace=1)
        await members.stop(grace=1)
        await nats.stop()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, default=100_000, help="members in the database")
    ap.add_argument("--segment", type=int, default=0, help="members in the segment (default: all; e.g. 100000 of 1M)")
    ap.add_argument("--page-size", type=int, default=1000)
    ap.add_argument("--keep", action="store_true", help="keep the databases")
    args = ap.parse_args()
    if not await mysql_available():
        print("audience_targeting: needs MariaDB/MySQL at MALL_TEST_MYSQL_URL (none answered); skipped")
        return
    from members.app import SERVICE_DIR as MEMBERS_DIR
    from orders.app import SERVICE_DIR as ORDERS_DIR

    segment = args.segment or args.members
    every = max(1, args.members // segment)
    segment = args.members // every
    names = {"m": f"mall_bench_target_m_{args.members}", "o": f"mall_bench_target_o_{args.members}"}
    urls = {k: str(make_url(MYSQL_ADMIN_URL).set(database=v)) for k, v in names.items()}
    admin = create_async_engine(MYSQL_ADMIN_URL)
    async with admin.begin() as c:
        for name in names.values():
            await c.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
            await c.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"))
    try:
        for key, folder in (("m", MEMBERS_DIR), ("o", ORDERS_DIR)):
            engine = create_engine(urls[key], trace=False)
            await migrations.upgrade(engine, folder)
            await engine.dispose()
        print(f"== audience targeting: a coupon to a segment of {segment:,} of {args.members:,} members (MariaDB)",
              flush=True)
        started = time.perf_counter()
        await load_members(urls["m"], args.members, every)
        print(f"  load members                            {time.perf_counter() - started:8.2f} s", flush=True)
        await materialize(urls["m"])
        with tempfile.TemporaryDirectory(prefix="bench-targeting-") as d:
            await measure(urls["m"], urls["o"], segment, every, args.page_size, Path(d))
    finally:
        if not args.keep:
            async with admin.begin() as c:
                for name in names.values():
                    await c.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        await admin.dispose()


if __name__ == "__main__":
    asyncio.run(main())
