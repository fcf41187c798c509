"""Benchmark: content-view records/s through the gateway vs the same INSERT straight through the driver.

Starts the community service and the gateway as separate processes
(MariaDB when it answers on 127.0.0.1:3306, else SQLite), creates a group, an
article and a member's share through the gateway, then records views of the
article by anonymous visitors arriving through the share link
(``POST /v1/{post}:view``: the hot path of a shared article) and, in the same
run, inserts the same view rows with the bare database driver (aiomysql /
aiosqlite, one autocommitted INSERT each). Load generator: ``bench/loadgen.py``
(raw asyncio HTTP/1.1 keep-alive; its own CPU per request is printed, so it is
visibly not the bottleneck). Prints records/s, p50 and p99 of every path, the
CPU ms per view of the community and gateway processes (from /proc), the
ratios, and checks every acknowledged view is in the database once.

    make bench            # or: .venv/bin/python bench/community_views.py --requests 3000 --concurrency 16
    COMMUNITY_VIEW_ACK=accept .venv/bin/python bench/community_views.py   # answer once queued
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path

import grpc
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from mall.community.v1 import community_service_pb2 as pb
from mall.community.v1 import community_service_pb2_grpc as pb_grpc
from mallkit.auth import MEMBER, STAFF, Principal, TokenCodec
from mallkit.settings import PlatformSettings
from mallkit.testing import MYSQL_ADMIN_URL, mysql_available

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import TRACING_MODES, free_port, start_members, tracing_env, wait_http, wait_port  # noqa: E402
from loadgen import HttpLoad, drive_calls  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_processes(env: dict) -> list[subprocess.Popen]:
    py = sys.executable
    subprocess.run([py, "-m", "community", "migrate"], env=env, check=True, cwd=ROOT)
    return [
        subprocess.Popen([py, "-m", "community"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL),
        subprocess.Popen([py, "-m", "gateway"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL),
    ]


INSERT = "INSERT INTO views (post_id, member_id, visitor_id, share_id, anonymous, create_time) VALUES ({})"


async def raw_inserter(url: str, concurrency: int):
    """``insert(post_id, share_id)`` over the bare driver, and a closer."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        import aiosqlite

        conn = await aiosqlite.connect(u.database, isolation_level=None)
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA busy_timeout=30000")
        lock = asyncio.Lock()
        sql = INSERT.format("?, NULL, ?, ?, 1, ?")

        async def insert(post_id: int, share_id: int) -> None:
            async with lock:  # one connection, one writer (as the service's SQLite engine)
                await conn.execute(sql, (post_id, "v" + uuid.uuid4().hex, share_id,
                                         datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")))

        return insert, conn.close
    import aiomysql

    pool = await aiomysql.create_pool(host=u.host or "127.0.0.1", port=u.port or 3306, user=u.username or "root",
                                      password=u.password or "", db=u.database, autocommit=True,
                                      minsize=concurrency, maxsize=concurrency, charset="utf8mb4")
    sql = INSERT.format("%s, NULL, %s, %s, 1, %s")

    async def insert(post_id: int, share_id: int) -> None:
        async with pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(sql, (post_id, "v" + uuid.uuid4().hex, share_id, datetime.now(UTC).replace(tzinfo=None)))

    async def close() -> None:
        pool.close()
        await pool.wait_closed()

    return insert, close


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tracing", choices=TRACING_MODES, default="production", help="production: 1 in 10 sampled (k8s)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="mall-bench-"))
    db_name = f"mall_bench_community_{uuid.uuid4().hex[:6]}"
    if await mysql_available():
        admin = create_async_engine(MYSQL_ADMIN_URL)
        async with admin.begin() as conn:
            await conn.execute(text(f"CREATE DATABASE `{db_name}` CHARACTER SET utf8mb4"))
        url = MYSQL_ADMIN_URL.rstrip("/") + f"/{db_name}"
        backend = "MariaDB"
    else:
        admin = None
        url = f"sqlite+aiosqlite:///{tmp / 'community.db'}"
        backend = "SQLite"
    grpc_port, http_port = free_port(), free_port()
    env = {
        **os.environ,
        "MALL_ENV": "development",
        "MALL_LOG_LEVEL": "WARNING",
        "MALL_COMMUNITY_ADDR": f"127.0.0.1:{grpc_port}",
        "COMMUNITY_PORT": str(grpc_port),
        "COMMUNITY_DATABASE_URL": url,
        "COMMUNITY_RELAY_ENABLED": "false", "MALL_NATS_URL": "nats://127.0.0.1:1",
        "GATEWAY_PORT": str(http_port),
        "GATEWAY_SERVICES": "community",
        "GATEWAY_RATE_PER_IP": "0",
        "GATEWAY_RATE_PER_MEMBER": "0",
        **tracing_env(args.tracing),
    }
    # members answers whether members/1 and staff/1 exist (every service checks a token's account)
    # and whether staff/3, the group's owner, is an active guide
    members = await asyncio.to_thread(start_members, env, tmp, [1], (1,), (3,))
    await wait_port(int(env["MEMBERS_PORT"]), members)
    procs = [members, *await asyncio.to_thread(start_processes, env)]
    codec = TokenCodec(PlatformSettings(env="development").token_secret.get_secret_value())
    staff = {"Authorization": f"Bearer {codec.issue(Principal(STAFF, 'staff/1', frozenset({'admin'})))[0]}"}
    member = {"Authorization": f"Bearer {codec.issue(Principal(MEMBER, 'members/1'))[0]}"}
    close = None
    try:
        await wait_http(f"http://127.0.0.1:{http_port}/healthz")
        load = HttpLoad("127.0.0.1", http_port, concurrency=args.concurrency)
        for _ in range(100):  # health follows the database: wait until community is SERVING
            if (await load.request("GET", "/healthz"))[0] == 200:
                break
            await asyncio.sleep(0.1)

        async def call(method: str, path: str, body: dict, headers: dict) -> dict:
            status, raw = await load.request(method, path, {**headers, "Content-Type": "application/json"}, body)
            if status != 200:
                raise SystemExit(f"{method} {path}: {status} {raw[:300]!r}")
            return json.loads(raw)

        group = await call("POST", "/v1/groups", {"displayName": "bench", "type": "GROUP_TYPE_GENERAL",
                                                  "owner": "staff/3"}, staff)
        post = await call("POST", f"/v1/{group['name']}/posts", {"kind": "POST_KIND_ARTICLE", "title": "bench"}, staff)
        await call("POST", f"/v1/{group['name']}:join", {}, member)
        share = await call("POST", f"/v1/{post['name']}:share", {}, member)
        post_id = int(post["name"].rsplit("/", 1)[1])
        share_id = int(share["name"].rsplit("/", 1)[1])
        insert, close = await raw_inserter(url, args.concurrency)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
        stub = pb_grpc.CommunityServiceStub(channel)

        def driver_calls(n: int):
            return (lambda: insert(post_id, share_id) for _ in range(n))

        def grpc_calls(n: int):
            return (lambda: stub.ViewPost(pb.ViewPostRequest(name=post["name"], visitor_id="v" + uuid.uuid4().hex,
                                                             share_token=share["token"]), timeout=30)
                    for _ in range(n))

        def gateway_requests(n: int):
            path = f"/v1/{post['name']}:view"
            return [load.encode("POST", path, {"Content-Type": "application/json"},
                                {"visitorId": "v" + uuid.uuid4().hex, "shareToken": share["token"]}) for _ in range(n)]

        community_pid, gateway_pid = procs[1].pid, procs[2].pid

        async def measured(name: str, run) -> dict:
            c0, g0 = cpu_seconds(community_pid), cpu_seconds(gateway_pid)
            result = await run()
            c1, g1 = cpu_seconds(community_pid), cpu_seconds(gateway_pid)
            row = result.print(name)
            n = max(1, result.requests)
            row.update(community_ms=(c1 - c0) * 1000 / n, gateway_ms=(g1 - g0) * 1000 / n)
            if result.errors:
                raise SystemExit(f"{name}: {result.errors} errors {result.statuses}")
            return row

        ack = os.environ.get("COMMUNITY_VIEW_ACK", "commit")
        print(f"community content views, {args.requests} records x {args.concurrency} concurrent, "
              f"database: {backend}, tracing: {args.tracing}, load generator: bench/loadgen.py, COMMUNITY_VIEW_ACK={ack}")
        await drive_calls(driver_calls(100), 100, args.concurrency)  # warm up every path
        await drive_calls(grpc_calls(100), 100, args.concurrency)
        await load.run_raw(gateway_requests(100))
        n = args.requests
        base = await measured("driver INSERT views (baseline)", lambda: drive_calls(driver_calls(n), n, args.concurrency))
        rpc = await measured("gRPC ViewPost (service)", lambda: drive_calls(grpc_calls(n), n, args.concurrency))
        raws = gateway_requests(n)
        gw = await measured("HTTP POST :view (gateway)", lambda: load.run_raw(raws))
        print(f"  CPU per view: community {rpc['community_ms']:.2f} ms (gRPC), {gw['community_ms']:.2f} ms (via gateway); "
              f"gateway {gw['gateway_ms']:.2f} ms")
        print(f"  ratio gateway/driver: throughput x{gw['rate'] / base['rate']:.3f} "
              f"(driver is {base['rate'] / gw['rate']:.1f}x faster), p50 x{gw['p50'] / base['p50']:.1f}, "
              f"p99 x{gw['p99'] / base['p99']:.1f}")
        print(f"  ratio gRPC/driver: throughput x{rpc['rate'] / base['rate']:.3f}; "
              f"gateway/gRPC: throughput x{gw['rate'] / rpc['rate']:.2f}")
        await channel.close()
        await load.close()
        counter = create_async_engine(url)
        expected = 3 * (n + 100)  # the driver's rows, then the service's of gRPC and of the gateway
        for _ in range(200):  # accepted views land within the batch delay
            async with counter.connect() as conn:
                views = (await conn.execute(text("SELECT COUNT(*) FROM views WHERE post_id = :p"),
                                            {"p": post_id})).scalar_one()
            if views >= expected:
                break
            await asyncio.sleep(0.05)
        await counter.dispose()
        print(f"  views in the database: {views} of {expected} (driver rows + views acknowledged by the service)")
    finally:
        if close is not None:
            await close()
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
