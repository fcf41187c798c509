"""Know-the-member benchmark: generate members, purchase facts and behaviour events in MariaDB, then
time the set-wise work (RFM recompute, an auto-tag run, a six-condition preview, a materialize).

    make know-data N=1000000        # load only (into database mall_bench_know_<N>, kept)
    make bench-know N=100000        # load, then print the figures (database dropped afterwards)

Per member: 5 paid orders and 10 behaviour events on average (so N=1,000,000 loads 5,000,000
purchase facts and 10,000,000 events). Rows are generated inside MariaDB with INSERT ... SELECT
over its sequence engine (``seq_1_to_<n>``) in chunks, which is what makes 16M rows loadable in
minutes on two cores; the measured statements are the service's own (members.rfm, members.autotags,
members.segments), not benchmark copies.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "gen" / "python", ROOT / "services" / "members"):
    sys.path.insert(0, str(p))

from sqlalchemy import text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

from mallkit import migrations  # noqa: E402
from mallkit.db import create_engine, run_transaction, session_factory  # noqa: E402
from mallkit.pagination import PageTokens  # noqa: E402
from mallkit.testing import MYSQL_ADMIN_URL  # noqa: E402
from members.app import SERVICE_DIR  # noqa: E402
from members.autotags import AutoTags  # noqa: E402
from members.rfm import Rfm, RfmConfig  # noqa: E402
from members.segments import Segments  # noqa: E402

CHUNK = 1_000_000


def cond(field: str, op: str, *values: str, **extra) -> dict:
    return {"condition": {"field": field, "operator": op, "values": list(values), **extra}}


SIX = {"all": [cond("gender", "eq", "GENDER_FEMALE"), cond("age", "between", "25", "45"),
               cond("province", "in", "浙江省", "江苏省"), cond("orders", "ge", "2"),
               cond("days_since_last_order", "le", "180"),
               cond("behavior", "did", kind="BEHAVIOR_KIND_VIEW_PRODUCT", min_count=1, within_days=30)]}
TENTH = {"all": [cond("province", "eq", "浙江省"), cond("gender", "in", "GENDER_MALE", "GENDER_FEMALE")]}
AUTO = {"all": [cond("rfm.segment", "in", "RFM_SEGMENT_IMPORTANT_VALUE", "RFM_SEGMENT_IMPORTANT_RETAIN"),
                cond("behavior", "did", kind="BEHAVIOR_KIND_ADD_TO_CART", min_count=1, within_days=30)]}


async def chunks(conn, total: int, sql: str, label: str) -> None:
    """Run ``sql`` (with {lo} and {n}: rows lo+1..lo+n from seq) over ``total`` rows in chunks."""
    started = time.perf_counter()
    for lo in range(0, total, CHUNK):
        n = min(CHUNK, total - lo)
        await conn.execute(text(sql.format(lo=lo, n=n)))
        await conn.commit()
    print(f"  loaded {total:>11,} {label:<28} {time.perf_counter() - started:7.1f} s", flush=True)


async def load(url: str, n: int) -> None:
    engine = create_async_engine(url)
    async with engine.connect() as c:
        await c.execute(text("SET SESSION foreign_key_checks = 0, unique_checks = 0, "
                             "tmp_table_size = 1073741824, max_heap_table_size = 1073741824"))
        await c.execute(text("INSERT INTO tiers (id, display_name, growth_threshold, points_multiplier_percent, "
                             "discount_percent, flags, create_time) VALUES (1,'银卡',0,100,100,'',NOW(6)),"
                             "(2,'金卡',1000,100,100,'',NOW(6)),(3,'黑卡',10000,100,100,'',NOW(6))"))
        await c.commit()
        await chunks(c, n, """
            INSERT INTO members (id, openid, unionid, nickname, avatar_url, gender, birthday, province, city,
                occupation, phone, phone_consent, invite_code, inviter_id, tier_id, growth_value,
                first_touch_channel_id, first_touch_channel_type, guide_id, store_id, create_time, update_time)
            SELECT s.seq, CONCAT('bench', s.seq), NULL, '', '', s.seq % 3,
                IF(s.seq % 10 = 0, NULL, DATE '1950-01-01' + INTERVAL ((s.seq * 7919) % 25000) DAY),
                ELT(1 + (s.seq * 31) % 5, '浙江省', '江苏省', '上海市', '广东省', '北京市'), '', '', NULL, 0,
                CONCAT('B', s.seq), NULL, 1 + s.seq % 3, 0, NULL, s.seq % 14, NULL, NULL, NOW(6), NOW(6)
            FROM (SELECT seq + {lo} AS seq FROM seq_1_to_{n}) s""", "members")
        await chunks(c, 5 * n, f"""
            INSERT INTO member_purchases (member_id, `order`, paid_fen, refunded_fen, categories, pay_time,
                refund_time)
            SELECT 1 + (s.seq * 2654435761) % {n}, CONCAT('orders/', s.seq), 990 + (s.seq * 37) % 60000,
                IF(s.seq % 20 = 0, 990, 0), CONCAT('categories/', s.seq % 8),
                NOW(6) - INTERVAL ((s.seq * 13) % 540) DAY - INTERVAL (s.seq % 86400) SECOND, NULL
            FROM (SELECT seq + {{lo}} AS seq FROM seq_1_to_{{n}}) s""", "purchase facts")
        started = time.perf_counter()
        await c.execute(text("""
            INSERT INTO member_purchase_stats (member_id, order_count, total_paid_fen, refund_count,
                total_refunded_fen, first_order_time, last_order_time, update_time)
            SELECT member_id, COUNT(*), SUM(paid_fen), SUM(refunded_fen > 0), SUM(refunded_fen), MIN(pay_time),
                MAX(pay_time), NOW(6) FROM member_purchases GROUP BY member_id"""))
        await c.execute(text("""
            INSERT INTO member_purchase_categories (member_id, category, order_count, amount_fen, last_order_time)
            SELECT member_id, categories, COUNT(*), SUM(paid_fen), MAX(pay_time) FROM member_purchases
            GROUP BY member_id, categories"""))
        await c.commit()
        print(f"  aggregated purchase stats and categories       {time.perf_counter() - started:7.1f} s", flush=True)
        await chunks(c, 10 * n, f"""
            INSERT INTO behaviour_events (dedupe_key, member_id, visitor_id, kind, source, target, detail,
                touchpoint, value_fen, occur_ms, receive_time)
            SELECT CONCAT('bench:', s.seq), 1 + (s.seq * 40503) % {n}, NULL, ELT(1 + s.seq % 6, 1, 2, 3, 4, 5, 25),
                'client', CONCAT('products/', s.seq % 500), '', 'pages/item', 0,
                UNIX_TIMESTAMP(NOW(6)) * 1000 - (s.seq * 7919) % (90 * 86400000), NOW(6)
            FROM (SELECT seq + {{lo}} AS seq FROM seq_1_to_{{n}}) s""", "behaviour events")
        await c.execute(text("ANALYZE TABLE members, member_purchases, member_purchase_stats, behaviour_events"))
    await engine.dispose()


async def timed(label: str, fn):
    started = time.perf_counter()
    result = await fn()
    took = time.perf_counter() - started
    print(f"  {label:<52} {took:8.2f} s   {result}", flush=True)
    return result


async def measure(url: str) -> None:
    engine = create_engine(url, pool_size=4, trace=False)
    sessions = session_factory(engine)
    pages = PageTokens("bench")
    segments, rfm = Segments(pages), Rfm(RfmConfig())
    autotags = AutoTags(segments, pages)

    async def recompute():
        return f"{await run_transaction(sessions, rfm.recompute):,} members scored"

    await timed("RFM recompute (set-wise, thresholds)", recompute)
    async with sessions() as s:
        report = await rfm.report(s)
    print("  RFM distribution: " + ", ".join(f"{seg}:{count:,}" for seg, count, _ in report.rows))
    await timed("RFM recompute (quintiles)", lambda: run_transaction(
        sessions, lambda s: Rfm(RfmConfig(method="quintiles")).recompute(s)))
    await run_transaction(sessions, rfm.recompute)

    async def six():
        async with sessions() as s:
            count, sample = await segments.preview(s, SIX, 20)
        return f"{count:,} members, sample of {len(sample)}"

    await timed("preview of a six-condition segment (count + sample)", six)
    await timed("preview of it again (warm)", six)

    async def make_segment(s):
        await segments.create(s, "bench-tenth", "bench", "", TENTH)
        return await segments.materialize(s, "bench-tenth")

    async def materialize():
        snap = await run_transaction(sessions, make_segment)
        return f"{snap.member_count:,} members in version {snap.version}"

    await timed("materialize a segment (~13% of members)", materialize)

    async def tag_rule(s):
        await s.execute(text("INSERT INTO tag_groups (id, display_name, selection, description, create_time) "
                             "VALUES (900, 'bench', 2, '', NOW(6))"))
        await s.execute(text("INSERT INTO tags (id, group_id, display_name, create_time) "
                             "VALUES (900, 900, '高价值加购', NOW(6))"))
        return (await autotags.create(s, "bench", 900, AUTO, False)).id

    rule_id = await run_transaction(sessions, tag_rule)

    async def dry():
        async with sessions() as s:
            return "gain %s, lose %s" % await autotags.dry_run(s, rule_id)

    await timed("auto-tag dry run", dry)
    await timed("auto-tag run (first: applies)", lambda: run_transaction(sessions, lambda s: autotags.apply(s, rule_id)))
    await timed("auto-tag run (again: no change)", lambda: run_transaction(
        sessions, lambda s: autotags.apply(s, rule_id)))
    await engine.dispose()


async def size_server(admin, buffer_pool_mb: int) -> None:
    """Give MariaDB the memory a 1M-member data set needs (the default 128 MB buffer pool makes
    every step disk-bound): the buffer pool and the redo log, both resizable online (10.9+)."""
    async with admin.connect() as c:
        for var, mb in (("innodb_buffer_pool_size", buffer_pool_mb), ("innodb_log_file_size", 1024)):
            now = (await c.execute(text(f"SELECT @@{var}"))).scalar() // 2**20
            if now < mb:
                await c.execute(text(f"SET GLOBAL {var} = {mb * 2**20}"))
            print(f"  MariaDB {var}: {now} MB -> {(await c.execute(text(f'SELECT @@{var}'))).scalar() // 2**20} MB")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, default=100_000)
    ap.add_argument("--load-only", action="store_true", help="load and keep the database")
    ap.add_argument("--keep", action="store_true", help="keep the database after measuring")
    ap.add_argument("--measure-only", action="store_true", help="measure a database loaded by --load-only")
    ap.add_argument("--buffer-pool-mb", type=int, default=0,
                    help="raise MariaDB's innodb_buffer_pool_size to this (SET GLOBAL) before running")
    args = ap.parse_args()
    name = f"mall_bench_know_{args.members}"
    admin = create_async_engine(MYSQL_ADMIN_URL)
    if args.buffer_pool_mb:
        await size_server(admin, args.buffer_pool_mb)
    if args.measure_only:
        url = str(make_url(MYSQL_ADMIN_URL).set(database=name))
        engine = create_engine(url, trace=False)
        started = time.perf_counter()
        await migrations.upgrade(engine, SERVICE_DIR)  # the loaded data gets the migrations written since
        await engine.dispose()
        print(f"  migrations to head {time.perf_counter() - started:.1f} s", flush=True)
        async with create_async_engine(url).begin() as c:  # a re-run starts from the loaded data
            for t in ("segment_snapshot_members", "segment_snapshots", "tag_rule_changes", "member_tags",
                      "tag_rules", "tags", "tag_groups"):
                await c.execute(text(f"DELETE FROM {t}"))
            await c.execute(text("DELETE FROM segments WHERE builtin = 0"))
        print(f"== know the member: measuring {name}", flush=True)
        await measure(url)
        await admin.dispose()
        return
    async with admin.begin() as c:
        await c.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        await c.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"))
    url = str(make_url(MYSQL_ADMIN_URL).set(database=name))
    try:
        engine = create_engine(url, trace=False)
        await migrations.upgrade(engine, SERVICE_DIR)
        await engine.dispose()
        print(f"== know the member: {args.members:,} members, {5 * args.members:,} purchase facts, "
              f"{10 * args.members:,} behaviour events (MariaDB, database {name})", flush=True)
        started = time.perf_counter()
        await load(url, args.members)
        print(f"  load total {time.perf_counter() - started:.1f} s", flush=True)
        if not args.load_only:
            await measure(url)
    finally:
        if not (args.load_only or args.keep):
            async with admin.begin() as c:
                await c.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        await admin.dispose()


if __name__ == "__main__":
    asyncio.run(main())
