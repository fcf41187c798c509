"""Audience funnel benchmark: a funnel (有数) over 90 days of all channels on a generated data set of N
members in MariaDB, timed against a bare COUNT/GROUP BY over the same rows measured in the same run.

    make bench-funnel N=100000      # load, then print the figures (database dropped afterwards)
    .venv/bin/python bench/audience_funnel.py --members 1000000 --keep

The members, purchase facts and behaviour events are bench/know_members.py's generator (imported,
not copied); on top of it, per member: registration times spread over 540 days, one acquisition
touchpoint on one of 20 channel codes (90% of members credited), 3 anonymous channel arrivals of
devices (a third of them later merged into a member). The measured statements are the service's
own (``members.funnels.Funnels.funnel``), for each dimension.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "gen" / "python", ROOT / "services" / "members", ROOT / "bench"):
    sys.path.insert(0, str(p))

from know_members import chunks, load  # noqa: E402
from sqlalchemy import text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

from mall.members.v1 import members_service_pb2 as pb  # noqa: E402
from mallkit import migrations  # noqa: E402
from mallkit.db import create_engine, session_factory  # noqa: E402
from mallkit.testing import MYSQL_ADMIN_URL  # noqa: E402
from members.app import SERVICE_DIR  # noqa: E402
from members.funnels import Funnels  # noqa: E402

CODES = 20
ZONE = "Asia/Shanghai"


async def load_funnel(url: str, n: int) -> None:
    """The funnel's own rows over the know-the-member data set."""
    engine = create_async_engine(url)
    async with engine.connect() as c:
        await c.execute(text("SET SESSION foreign_key_checks = 0, unique_checks = 0"))
        started = time.perf_counter()
        await c.execute(text(
            "INSERT INTO channel_codes (id, display_name, channel_type, store_id, guide_id, scene, arrival_count, "
            "deleted, create_time) SELECT seq, CONCAT('渠道', seq), 1 + (seq - 1) % 12, NULL, NULL, "
            f"CONCAT('bench', seq), 0, 0, NOW(6) FROM seq_1_to_{CODES}"))
        await c.commit()
        print(f"  loaded {CODES:>11,} channel codes                 {time.perf_counter() - started:7.1f} s", flush=True)
        await chunks(c, n, """
            UPDATE members SET create_time = NOW(6) - INTERVAL ((id * 7) % 540) DAY - INTERVAL (id % 86400) SECOND
            WHERE id > {lo} AND id <= {lo} + {n}""", "registration times")
        await chunks(c, n, f"""
            INSERT INTO touchpoints (id, member_id, channel_code_id, channel_type, scene, first_touch, post,
                share_id, sharer_id, dedupe_key, create_time)
            SELECT m.id, m.id, 1 + m.id % {CODES}, 1 + (m.id % {CODES}) % 12, CONCAT('bench', 1 + m.id % {CODES}),
                1, NULL, NULL, NULL, NULL, m.create_time
            FROM members m WHERE m.id > {{lo}} AND m.id <= {{lo}} + {{n}}""", "acquisition touchpoints")
        await chunks(c, n, """
            UPDATE members SET acquisition_touchpoint_id = id
            WHERE id % 10 <> 0 AND id > {lo} AND id <= {lo} + {n}""", "credited registrations")
        await chunks(c, 3 * n, f"""
            INSERT INTO channel_arrivals (channel_code_id, channel_type, visitor_id, member_id, day, arrive_time)
            SELECT 1 + s.seq % {CODES}, 1 + (s.seq % {CODES}) % 12, CONCAT('bv', s.seq), NULL,
                DATE(NOW(6) - INTERVAL ((s.seq * 11) % 540) DAY),
                NOW(6) - INTERVAL ((s.seq * 11) % 540) DAY
            FROM (SELECT seq + {{lo}} AS seq FROM seq_1_to_{{n}}) s""", "anonymous channel arrivals")
        await chunks(c, n, f"""
            INSERT INTO visitors (visitor_id, member_id, merged_count, create_time, link_time)
            SELECT CONCAT('bv', s.seq), 1 + (s.seq * 7919) % {n}, 0, NOW(6), NOW(6)
            FROM (SELECT seq + {{lo}} AS seq FROM seq_1_to_{{n}}) s""", "visitors merged into members")
        await c.execute(text("ANALYZE TABLE members, touchpoints, channel_arrivals, visitors, member_purchases"))
    await engine.dispose()


async def timed(label: str, fn) -> float:
    started = time.perf_counter()
    result = await fn()
    took = time.perf_counter() - started
    print(f"  {label:<58} {took:8.2f} s   {result}", flush=True)
    return took


async def measure(url: str) -> None:
    engine = create_engine(url, pool_size=4, trace=False)
    sessions = session_factory(engine)
    funnels = Funnels(None, brand_timezone=ZONE, window_days=7)  # type: ignore[arg-type]  # no recording here
    end = funnels.brand_day(datetime.now(UTC))
    start = end - timedelta(days=89)
    lo, hi, _ = funnels.bounds(start, end)
    params = {"lo": lo.replace(tzinfo=None), "hi": hi.replace(tzinfo=None), "start": start, "end": end}

    async def baseline():
        rows = 0
        async with sessions() as s:
            for sql in (
                "SELECT day, channel_code_id, COUNT(*) FROM channel_arrivals WHERE day BETWEEN :start AND :end "
                "GROUP BY day, channel_code_id",
                "SELECT DATE(create_time), channel_code_id, COUNT(*) FROM touchpoints "
                "WHERE create_time >= :lo AND create_time < :hi GROUP BY 1, 2",
                "SELECT DATE(create_time), COUNT(*) FROM members WHERE create_time >= :lo AND create_time < :hi "
                "GROUP BY 1",
                "SELECT DATE(pay_time), COUNT(*), SUM(paid_fen) FROM member_purchases "
                "WHERE pay_time >= :lo AND pay_time < :hi GROUP BY 1",
            ):
                rows += len((await s.execute(text(sql), params)).all())
        return f"{rows:,} groups (bare COUNT/GROUP BY of arrivals, touchpoints, members, purchases)"

    def funnel(dimension: int):
        async def run():
            async with sessions() as s:
                f = await funnels.funnel(s, start, end, dimension)
            t = f.totals
            return (f"{len(f.rows):,} rows; arrivals {sum(r.arrivals for r in t):,}, registrations "
                    f"{sum(r.registrations for r in t):,}, first orders {sum(r.first_orders for r in t):,}, "
                    f"repeat orders {sum(r.repeat_orders for r in t):,}")
        return run

    base = await timed(f"baseline over the same rows ({start} .. {end})", baseline)
    base = min(base, await timed("baseline again (warm)", baseline))
    for name, dimension in (("channel code", pb.FUNNEL_DIMENSION_CHANNEL_CODE),
                            ("channel type", pb.FUNNEL_DIMENSION_CHANNEL_TYPE),
                            ("touchpoint", pb.FUNNEL_DIMENSION_TOUCHPOINT)):
        took = await timed(f"funnel, 90 days, all channels, per {name}", funnel(dimension))
        print(f"  {'':<58} {took / base:8.1f} x the baseline", flush=True)
    await engine.dispose()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, default=100_000)
    ap.add_argument("--keep", action="store_true", help="keep the database after measuring")
    ap.add_argument("--measure-only", action="store_true", help="measure a database kept by --keep")
    args = ap.parse_args()
    name = f"mall_bench_funnel_{args.members}"
    url = str(make_url(MYSQL_ADMIN_URL).set(database=name))
    admin = create_async_engine(MYSQL_ADMIN_URL)
    if args.measure_only:
        print(f"== audience funnel: measuring {name}", flush=True)
        await measure(url)
        await admin.dispose()
        return
    async with admin.begin() as c:
        await c.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        await c.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"))
    try:
        engine = create_engine(url, trace=False)
        await migrations.upgrade(engine, SERVICE_DIR)
        await engine.dispose()
        print(f"== audience funnel: {args.members:,} members, {5 * args.members:,} purchase facts, "
              f"{3 * args.members:,} channel arrivals (MariaDB, database {name})", flush=True)
        started = time.perf_counter()
        await load(url, args.members)
        await load_funnel(url, args.members)
        print(f"  load total {time.perf_counter() - started:.1f} s", flush=True)
        await measure(url)
    finally:
        if not args.keep:
            async with admin.begin() as c:
                await c.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        await admin.dispose()


if __name__ == "__main__":
    asyncio.run(main())
