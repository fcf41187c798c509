"""Benchmark: GET /v1/members/me through the gateway vs bare gRPC GetMember vs a raw driver read.

Starts the fake WeChat, the members service and the gateway as separate
processes (MariaDB when it answers on 127.0.0.1:3306, else SQLite), signs one
member in, then drives three paths from this process with the same number of
concurrent workers and the same number of requests:

1. the raw driver (aiomysql, a pool as wide as the concurrency): the primary-key
   ``SELECT`` of that member's row (the floor: what the stack's driver does bare);
2. bare gRPC ``GetMember(name="members/me")`` straight to the members service, which answers
   from its member cache (``mallkit.readcache``, invalidations on the bench's own nats-server)
   after the first read; ``--member-cache-seconds 0`` reads the database on every call;
3. HTTP ``GET /v1/members/me`` through the gateway.

The load generator is ``bench/loadgen.py`` (asyncio streams, HTTP/1.1 keep-alive;
gRPC through one ``grpc.aio`` channel), which prints its own CPU per request.
Prints requests/s, p50 and p99 of each and the ratios (goals: gateway >= 0.6x gRPC,
gRPC >= 0.35x raw driver). Bounded: a fixed count per path, all on 127.0.0.1.

    make bench            # or: .venv/bin/python bench/members_me.py --requests 3000 --concurrency 16
    # --tracing production|on|off: one request in ten sampled (k8s/base), every one, or no SDK (bench/harness.py)
    # --workers N: GATEWAY_WORKERS and MEMBERS_WORKERS
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import grpc
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from mall.members.v1 import members_service_pb2 as pb
from mallkit.testing import MYSQL_ADMIN_URL, NatsServer, mysql_available

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import TRACING_MODES, free_port, tracing_env, wait_http  # noqa: E402
from loadgen import HttpLoad, Result, drive_calls, grpc_unary  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


async def raw_driver_read(url: str, member_id: int, requests: int, concurrency: int) -> Result | None:
    """The primary-key read of the member row through aiomysql itself (None on SQLite)."""
    u = make_url(url)
    if u.get_backend_name() != "mysql":
        return None
    import aiomysql

    pool = await aiomysql.create_pool(host=u.host or "127.0.0.1", port=u.port or 3306, user=u.username or "root",
                                      password=u.password or "", db=u.database, minsize=concurrency,
                                      maxsize=concurrency, autocommit=True)

    async def read() -> None:
        async with pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute("SELECT * FROM members WHERE id = %s", (member_id,))
            if not await cur.fetchone():
                raise RuntimeError("member row missing")

    try:
        await drive_calls(read, 200, concurrency)  # warm up
        return await drive_calls(read, requests, concurrency)
    finally:
        pool.close()
        await pool.wait_closed()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tracing", choices=TRACING_MODES, default="production")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--member-cache-seconds", type=float, default=10.0,
                        help="MEMBERS_MEMBER_CACHE_SECONDS (0: every GetMember reads the database)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="mall-bench-"))
    db_name = f"mall_bench_members_{uuid.uuid4().hex[:6]}"
    if await mysql_available():
        admin = create_async_engine(MYSQL_ADMIN_URL)
        async with admin.begin() as conn:
            await conn.execute(text(f"CREATE DATABASE `{db_name}` CHARACTER SET utf8mb4"))
        url = MYSQL_ADMIN_URL.rstrip("/") + f"/{db_name}"
        backend = "MariaDB"
    else:
        admin = None
        url = f"sqlite+aiosqlite:///{tmp / 'members.db'}"
        backend = "SQLite"
    nats = NatsServer(tmp / "nats")  # the member cache's invalidations (mallkit.readcache) travel on it
    await nats.start()
    grpc_port, http_port, wechat_port, echo_port = free_port(), free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "MALL_ENV": "development",
        "MALL_LOG_LEVEL": "WARNING",
        "MALL_MEMBERS_ADDR": f"127.0.0.1:{grpc_port}",
        "MEMBERS_PORT": str(grpc_port),
        "MEMBERS_DATABASE_URL": url,
        "MEMBERS_WECHAT_BASE_URL": f"http://127.0.0.1:{wechat_port}",
        "MEMBERS_RELAY_ENABLED": "false", "MALL_NATS_URL": nats.url,
        "MEMBERS_MEMBER_CACHE_SECONDS": str(args.member_cache_seconds),
        "GATEWAY_PORT": str(http_port),
        "GATEWAY_SERVICES": "members",
        "GATEWAY_RATE_PER_IP": "0",
        "GATEWAY_RATE_PER_MEMBER": "0",
        "GATEWAY_WORKERS": str(args.workers),
        "MEMBERS_WORKERS": str(args.workers),
        **tracing_env(args.tracing),
    }
    py = sys.executable
    subprocess.run([py, "-m", "members", "migrate"], env=env, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    procs = [
        subprocess.Popen([py, "-m", "fakes.wechat", "--port", str(wechat_port)], env=env, cwd=ROOT, stdout=subprocess.DEVNULL),
        subprocess.Popen([py, "-m", "members"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL),
        subprocess.Popen([py, "-m", "gateway"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL),
        subprocess.Popen([py, str(ROOT / "bench" / "grpc_echo.py"), str(echo_port)], cwd=ROOT),
    ]
    try:
        await wait_http(f"http://127.0.0.1:{wechat_port}/cgi-bin/token")
        await wait_http(f"http://127.0.0.1:{http_port}/healthz")
        async with HttpLoad("127.0.0.1", http_port, args.concurrency) as http:
            for _ in range(100):  # health follows the database: wait until members is SERVING
                if (await http.request("GET", "/healthz"))[0] == 200:
                    break
                await asyncio.sleep(0.1)
            import json

            status, body = await http.request("POST", "/v1/members:loginWithWechat", body={"code": "bench-user"})
            login = json.loads(body)
            token = login["accessToken"]
            member_id = int(login["member"]["name"].split("/")[1])
            headers = {"Authorization": f"Bearer {token}"}
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
            via_grpc = grpc_unary(channel, "/mall.members.v1.MembersService/GetMember",
                                  pb.GetMemberRequest(name="members/me"), pb.Member,
                                  metadata=(("authorization", f"Bearer {token}"),))

            print(f"members GetMember, {args.requests} requests x {args.concurrency} concurrent, database: {backend}, "
                  f"tracing: {args.tracing}, workers: {args.workers}, member cache: {args.member_cache_seconds:g} s; load generator: bench/loadgen.py (asyncio)")
            await drive_calls(via_grpc, 200, args.concurrency)  # warm up both paths
            await http.run("GET", "/v1/members/me", 200, headers)
            raw = await raw_driver_read(url, member_id, args.requests, args.concurrency)
            raw_row = raw.print("raw driver PK read (aiomysql, baseline)") if raw else None
            echo_channel = grpc.aio.insecure_channel(f"127.0.0.1:{echo_port}")
            await asyncio.wait_for(echo_channel.channel_ready(), 30)
            echo = grpc_unary(echo_channel, "/mall.members.v1.MembersService/GetMember",
                              pb.GetMemberRequest(name="members/me"), pb.Member)
            await drive_calls(echo, 200, args.concurrency)
            bare = (await drive_calls(echo, args.requests, args.concurrency)).print(
                "bare grpc.aio unary (no interceptor, no database)")
            await echo_channel.close()
            base = (await drive_calls(via_grpc, args.requests, args.concurrency)).print("gRPC GetMember")
            gw = (await http.run("GET", "/v1/members/me", args.requests, headers)).print("HTTP GET /v1/members/me (gateway)")
            if raw_row:
                print(f"  ratio gRPC/raw driver: throughput x{base['rate'] / raw_row['rate']:.2f} (goal >= 0.35)")
            print(f"  ratio gRPC GetMember/bare grpc.aio call: throughput x{base['rate'] / bare['rate']:.2f} "
                  "(what the service adds to the transport: interceptors, SQL, the member message)")
            print(f"  ratio gateway/gRPC: throughput x{gw['rate'] / base['rate']:.2f} (goal >= 0.6), "
                  f"p50 x{gw['p50'] / base['p50']:.2f}, p99 x{gw['p99'] / base['p99']:.2f}")
            await channel.close()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        await nats.stop()
        if admin is not None:
            async with admin.begin() as conn:
                await conn.execute(text(f"DROP DATABASE IF EXISTS `{db_name}`"))
            await admin.dispose()


if __name__ == "__main__":
    asyncio.run(main())
