"""Benchmark: GET /v1/members/me through the gateway vs GetMember straight over gRPC.

Starts the fake WeChat, the members service and the gateway as separate
processes (MariaDB when it answers on 127.0.0.1:3306, else SQLite), signs one
member in, then drives both paths from this process with the same number of
concurrent workers and the same number of requests, and prints requests/s,
p50 and p99 of each and their ratios. Bounded: a fixed count per path, all on
127.0.0.1.

    make bench            # or: .venv/bin/python bench/members_me.py --requests 3000 --concurrency 16
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
import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from mall.members.v1 import members_service_pb2 as pb
from mall.members.v1 import members_service_pb2_grpc as pb_grpc
from mallkit.testing import MYSQL_ADMIN_URL, mysql_available

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import drive, free_port, summary, wait_http  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent






async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
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
    grpc_port, http_port, wechat_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "MALL_ENV": "development",
        "MALL_LOG_LEVEL": "WARNING",
        "MALL_MEMBERS_ADDR": f"127.0.0.1:{grpc_port}",
        "MEMBERS_PORT": str(grpc_port),
        "MEMBERS_DATABASE_URL": url,
        "MEMBERS_WECHAT_BASE_URL": f"http://127.0.0.1:{wechat_port}",
        "MEMBERS_RELAY_ENABLED": "false", "MALL_NATS_URL": "nats://127.0.0.1:1",
        "GATEWAY_PORT": str(http_port),
        "GATEWAY_SERVICES": "members",
        "GATEWAY_RATE_PER_IP": "0",
        "GATEWAY_RATE_PER_MEMBER": "0",
    }
    py = sys.executable
    subprocess.run([py, "-m", "members", "migrate"], env=env, check=True, cwd=ROOT)
    procs = [
        subprocess.Popen([py, "-m", "fakes.wechat", "--port", str(wechat_port)], env=env, cwd=ROOT, stdout=subprocess.DEVNULL),
        subprocess.Popen([py, "-m", "members"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL),
        subprocess.Popen([py, "-m", "gateway"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL),
    ]
    try:
        await wait_http(f"http://127.0.0.1:{wechat_port}/cgi-bin/token")
        await wait_http(f"http://127.0.0.1:{http_port}/healthz")
        limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", limits=limits, timeout=30) as http:
            for _ in range(100):  # health follows the database: wait until members is SERVING
                if (await http.get("/healthz")).status_code == 200:
                    break
                await asyncio.sleep(0.1)
            login = (await http.post("/v1/members:loginWithWechat", json={"code": "bench-user"})).json()
            token = login["accessToken"]
            headers = {"Authorization": f"Bearer {token}"}
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
            stub = pb_grpc.MembersServiceStub(channel)
            md = (("authorization", f"Bearer {token}"),)
            request = pb.GetMemberRequest(name="members/me")

            async def via_grpc() -> None:
                await stub.GetMember(request, metadata=md, timeout=10)

            async def via_gateway() -> None:
                r = await http.get("/v1/members/me", headers=headers)
                if r.status_code != 200:
                    raise RuntimeError(r.text)

            print(f"members GetMember, {args.requests} requests x {args.concurrency} concurrent, database: {backend}")
            for call in (via_grpc, via_gateway):  # warm up both paths
                await drive(call, 200, args.concurrency)
            base = summary("gRPC GetMember (baseline)", *await drive(via_grpc, args.requests, args.concurrency))
            gw = summary("HTTP GET /v1/members/me (gateway)", *await drive(via_gateway, args.requests, args.concurrency))
            print(f"  ratio gateway/gRPC: throughput x{gw['rate'] / base['rate']:.2f}, "
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
        if admin is not None:
            async with admin.begin() as conn:
                await conn.execute(text(f"DROP DATABASE IF EXISTS `{db_name}`"))
            await admin.dispose()


if __name__ == "__main__":
    asyncio.run(main())
