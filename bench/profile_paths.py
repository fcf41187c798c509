"""Profile the hot paths: SQL statements and round trips per request, CPU ms per request per process.

``make profile`` (or ``.venv/bin/python bench/profile_paths.py [--requests 300] [--paths members_me,...]``).

For each path (``members_me``: GET /v1/members/me; ``flash_sale``: POST flashSales/*:buy via
the gateway; ``points_grant``: gRPC CompleteTask; ``content_view``: POST posts/*:view via the
gateway, then the same views as gRPC ViewPost calls) it starts the processes the path needs on a fresh MariaDB database, warms
the path up, then runs ``--requests`` requests with ``--concurrency`` workers and reports:

* the commands the service sent to MariaDB per request, counted **on the wire**: the
  service's database URL points at a small proxy in this process that reads every MySQL
  client packet starting a command (sequence id 0) and classifies it (``SELECT``,
  ``INSERT``, ``UPDATE``, ``COMMIT``, ``ROLLBACK``, ``PING``...); every command is one round
  trip, so ``round trips`` is their sum and ``statements`` excludes the protocol-level
  ones (``PING``, ``QUIT``, ``INIT_DB``);
* CPU ms per request of each process (``/proc/<pid>/stat`` utime + stime deltas, worker
  processes included) and of this process (the load generator and the counting proxy together).

MariaDB only (SQLite has no wire to count on): without it the target says so and exits 0.
Bounded: a fixed request count per path, all on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import TRACING_MODES, free_port, start_members, tracing_env, wait_http, wait_port  # noqa: E402
from loadgen import HttpLoad, Result, drive_calls, grpc_unary  # noqa: E402

from mallkit.auth import MEMBER, SERVICE, STAFF, Principal, TokenCodec  # noqa: E402
from mallkit.settings import DEV_TOKEN_SECRET  # noqa: E402
from mallkit.testing import MYSQL_ADMIN_URL, NatsServer, mysql_available  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TRACING = "production"  #: --tracing (bench/harness.py)
PY = sys.executable
CLK = os.sysconf("SC_CLK_TCK")
COMMANDS = {0x01: "QUIT", 0x02: "INIT_DB", 0x0E: "PING", 0x16: "STMT_PREPARE", 0x17: "STMT_EXECUTE",
            0x19: "STMT_CLOSE", 0x1F: "RESET_CONNECTION"}
PROTOCOL = {"QUIT", "INIT_DB", "PING", "STMT_CLOSE", "RESET_CONNECTION"}


class WireCounter:
    """A TCP proxy to MariaDB that counts the commands the clients send through it."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.counts: Counter[str] = Counter()
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    def start(self) -> int:
        """Serve on a thread of its own (its own event loop), so this process's blocking calls
        (``subprocess.run`` of a migration) never stall the services' database traffic."""
        import threading

        ready = threading.Event()
        self.loop = asyncio.new_event_loop()

        async def serve() -> None:
            self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.port = self.server.sockets[0].getsockname()[1]
            ready.set()

        def run() -> None:
            self.loop.run_until_complete(serve())
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True, name="wire-counter")
        self.thread.start()
        ready.wait(10)
        return self.port

    def close(self) -> None:
        async def shutdown() -> None:
            if self.server is not None:
                self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self.server is not None:
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)

    def snapshot(self) -> Counter[str]:
        return Counter(self.counts)

    def _classify(self, payload: bytes) -> str:
        cmd = payload[0]
        if cmd == 0x03:  # COM_QUERY
            word = payload[1:40].lstrip(b" (\n\t").split(None, 1)
            return word[0].decode("latin-1").upper() if word else "QUERY"
        return COMMANDS.get(cmd, f"COM_{cmd:#x}")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, count: bool) -> None:
            buf = b""
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    if count:
                        buf += data
                        while len(buf) >= 4:
                            length = int.from_bytes(buf[:3], "little")
                            if len(buf) < 4 + length:
                                break
                            if buf[3] == 0 and length:
                                self.counts[self._classify(buf[4:4 + length])] += 1
                            buf = buf[4 + length:]
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.close()

        try:
            await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))
        except asyncio.CancelledError:  # shutting down
            pass


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (worker processes)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def cpu_seconds(pid: int) -> float:
    total = 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        except OSError:
            pass
    return total / CLK


class Run:
    """One path's processes, database and wire counter."""

    def __init__(self, name: str, service: str):
        self.name, self.service = name, service
        self.db = f"mall_prof_{service}_{uuid.uuid4().hex[:6]}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.tmp = Path(tempfile.mkdtemp(prefix="mall-profile-"))
        self.wire = WireCounter(("127.0.0.1", make_url(MYSQL_ADMIN_URL).port or 3306))
        self.codec = TokenCodec(DEV_TOKEN_SECRET)
        self.grpc_port, self.http_port = free_port(), free_port()
        self.env: dict[str, str] = {}

    async def __aenter__(self) -> Run:
        admin = create_async_engine(MYSQL_ADMIN_URL)
        async with admin.begin() as conn:
            await conn.execute(text(f"CREATE DATABASE `{self.db}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"))
        await admin.dispose()
        port = self.wire.start()
        self.nats = NatsServer(self.tmp / "nats")  # read caches serve only while their invalidations can arrive
        await self.nats.start()
        u = make_url(MYSQL_ADMIN_URL)
        url = str(u.set(host="127.0.0.1", port=port, database=self.db).render_as_string(hide_password=False))
        svc = self.service.upper()
        self.env = {
            **os.environ, "MALL_ENV": "development", "MALL_LOG_LEVEL": "WARNING", "MALL_TOKEN_SECRET": DEV_TOKEN_SECRET,
            f"MALL_{svc}_ADDR": f"127.0.0.1:{self.grpc_port}", f"{svc}_PORT": str(self.grpc_port),
            f"{svc}_DATABASE_URL": url, f"{svc}_RELAY_ENABLED": "false", f"{svc}_JOBS_ENABLED": "false",
            "MALL_NATS_URL": self.nats.url, "GATEWAY_PORT": str(self.http_port), "GATEWAY_SERVICES": self.service,
            "GATEWAY_RATE_PER_IP": "0", "GATEWAY_RATE_PER_MEMBER": "0", **tracing_env(TRACING),
        }
        self.env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        return self

    def start_members(self, member_ids, guide_ids=()) -> None:
        """members on SQLite, answering the principal checks of another service."""
        self.procs["members"] = start_members(self.env, self.tmp, member_ids, guide_ids=guide_ids)

    async def start(self, gateway: bool = True) -> None:
        if "members" in self.procs:
            await wait_port(int(self.env["MEMBERS_PORT"]), self.procs["members"])
        subprocess.run([PY, "-m", self.service, "migrate"], env=self.env, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        self.procs[self.service] = subprocess.Popen([PY, "-m", self.service], env=self.env, cwd=ROOT,
                                                    stdout=subprocess.DEVNULL)
        await wait_port(self.grpc_port, self.procs[self.service])
        if gateway:
            self.procs["gateway"] = subprocess.Popen([PY, "-m", "gateway"], env=self.env, cwd=ROOT, stdout=subprocess.DEVNULL)
            await wait_http(f"http://127.0.0.1:{self.http_port}/healthz")
            async with HttpLoad("127.0.0.1", self.http_port, 1) as h:
                for _ in range(100):  # health follows the database
                    if (await h.request("GET", "/healthz"))[0] == 200:
                        break
                    await asyncio.sleep(0.1)

    def token(self, kind: str, subject: str, roles: frozenset[str] = frozenset()) -> str:
        return self.codec.issue(Principal(kind, subject, roles), ttl=3600)[0]

    async def measure(self, label: str, run: Callable[[], Awaitable[Result]]) -> dict:
        watched = {n: p.pid for n, p in self.procs.items() if n in (self.service, "gateway")}
        wire0, cpu0 = self.wire.snapshot(), {n: cpu_seconds(pid) for n, pid in watched.items()}
        t0 = time.perf_counter()
        result = await run()
        await asyncio.sleep(0.2)  # let the last COMMIT/ROLLBACK of the pool's return reach the counter
        wire = self.wire.snapshot() - wire0
        n = max(1, result.requests + result.errors)
        cpu = {name: (cpu_seconds(pid) - cpu0[name]) * 1000 / n for name, pid in watched.items()}
        trips = sum(wire.values())
        statements = sum(v for k, v in wire.items() if k not in PROTOCOL)
        per = ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(wire.items(), key=lambda kv: -kv[1]))
        cpu_text = ", ".join(f"{name} {ms:.2f}" for name, ms in cpu.items())
        print(f"== {label}: {result.requests} ok, {result.errors} errors, {result.rate:.0f} req/s "
              f"({time.perf_counter() - t0:.1f} s)\n"
              f"   SQL statements/request {statements / n:.2f}, round trips/request {trips / n:.2f}  [{per}]\n"
              f"   CPU ms/request: {cpu_text}, load generator + proxy {result.client_cpu_ms:.2f}", flush=True)
        return {"path": label, "statements": statements / n, "round_trips": trips / n, "commands": dict(wire),
                "cpu_ms": cpu, "rate": result.rate, "errors": result.errors}

    async def __aexit__(self, *exc: object) -> None:
        for p in self.procs.values():
            p.terminate()
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.wire.close()
        await self.nats.stop()
        admin = create_async_engine(MYSQL_ADMIN_URL)
        async with admin.begin() as conn:
            await conn.execute(text(f"DROP DATABASE IF EXISTS `{self.db}`"))
        await admin.dispose()


async def insert_member(run: Run, member_id: int) -> None:
    """A member row straight into the members database of ``run`` (migrated)."""
    from sqlalchemy import insert

    from members.models import Member

    engine = create_async_engine(MYSQL_ADMIN_URL.rstrip("/") + f"/{run.db}")
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await conn.execute(insert(Member.__table__).values(id=member_id, openid=f"prof-{member_id}",
                                                           invite_code=f"P{member_id}", create_time=now, update_time=now))
    await engine.dispose()


async def members_me(args) -> dict:
    async with Run("members_me", "members") as run:
        await run.start()
        await insert_member(run, 42)
        headers = {"Authorization": f"Bearer {run.token(MEMBER, 'members/42')}"}
        async with HttpLoad("127.0.0.1", run.http_port, args.concurrency) as http:
            await http.run("GET", "/v1/members/me", 200, headers)
            return await run.measure("GET /v1/members/me (gateway)",
                                     lambda: http.run("GET", "/v1/members/me", args.requests, headers))


async def flash_sale(args) -> dict:
    """Half-win attempts (the mixed figure), then apart: a sale of as many units as attempts (every
    one a sale) and as many attempts again once it is sold out (every one a refusal). With
    ``$MALL_BENCH_PYSPY`` set to a folder, py-spy records orders over the two apart phases
    (``flash-sale.txt``, ``flash-refusal.txt``)."""
    from probe import Spy

    async with Run("flash_sale", "orders") as run:
        first = 10_000_000
        run.start_members(range(first, first + 4 * args.requests + 400))
        await run.start()
        staff = {"Authorization": f"Bearer {run.token(STAFF, 'staff/1', frozenset({'admin'}))}"}
        async with HttpLoad("127.0.0.1", run.http_port, args.concurrency) as http:
            cat = json.loads((await http.request("POST", "/v1/categories", staff, {"displayName": "秒杀"}))[1])
            product = json.loads((await http.request("POST", "/v1/products", staff, {
                "displayName": "秒杀商品", "category": cat["name"],
                "skus": [{"displayName": "默认", "priceFen": 9900, "stock": 10}]}))[1])
            now = datetime.now(UTC)
            sales = []
            # warm-up sale; measured sale: half win, half sold out; then a sale of every attempt
            for stock in (200, args.requests // 2, args.requests):
                status, body = await http.request("POST", "/v1/flashSales", staff, {
                    "sku": product["skus"][0]["name"], "priceFen": 990, "totalStock": stock, "perMemberLimit": 1,
                    "startTime": (now - timedelta(minutes=1)).isoformat(),
                    "endTime": (now + timedelta(hours=1)).isoformat()})
                assert status == 200, body
                sales.append(json.loads(body)["name"])
            buyers = iter(range(first, first + 4 * args.requests + 400))

            def attempts(sale: str, n: int):
                for _ in range(n):
                    yield http.encode("POST", f"/v1/{sale}:buy", {
                        "Authorization": f"Bearer {run.token(MEMBER, f'members/{next(buyers)}')}",
                        "Idempotency-Key": uuid.uuid4().hex}, {"quantity": 1})

            await http.run_raw(attempts(sales[0], 300), expect=(200, 400))
            mixed = await run.measure(f"POST flashSales/*:buy (gateway; {args.requests // 2} sales, rest sold out)",
                                      lambda: http.run_raw(list(attempts(sales[1], args.requests)), expect=(200, 400)))
            wins, losses = list(attempts(sales[2], args.requests)), list(attempts(sales[2], args.requests))
            with Spy(run.procs["orders"], "flash-sale"):
                mixed["sale"] = await run.measure(f"POST flashSales/*:buy (gateway; {args.requests} sales)",
                                                  lambda: http.run_raw(wins, expect=(200,)))
            with Spy(run.procs["orders"], "flash-refusal"):
                mixed["refusal"] = await run.measure(f"POST flashSales/*:buy (gateway; {args.requests} sold out)",
                                                     lambda: http.run_raw(losses, expect=(400,)))
            ratio = mixed["sale"]["cpu_ms"]["orders"] / max(mixed["refusal"]["cpu_ms"]["orders"], 1e-9)
            print(f"   orders: a refusal is x{ratio:.1f} cheaper than a sale", flush=True)
            return mixed


async def points_grant(args) -> dict:
    import grpc

    from mall.points.v1 import points_service_pb2 as pb

    async with Run("points_grant", "points") as run:
        run.start_members(range(1, 101))
        await run.start(gateway=False)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{run.grpc_port}")
        staff = (("authorization", f"Bearer {run.token(STAFF, 'staff/1', frozenset({'admin'}))}"),)
        service = (("authorization", f"Bearer {run.token(SERVICE, 'service/orders')}"),)
        create = grpc_unary(channel, "/mall.points.v1.PointsService/CreateTask", pb.CreateTaskRequest(task=pb.Task(
            kind=pb.TASK_KIND_REVIEW_ORDER, display_name="评价订单", reward_points=10, frequency=pb.TASK_FREQUENCY_ONCE,
            limit_per_period=100_000, active=True)), pb.Task, metadata=staff)
        for _ in range(100):  # readiness follows the database
            try:
                await create()
                break
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.1)
        complete = channel.unary_unary("/mall.points.v1.PointsService/CompleteTask",
                                       request_serializer=pb.CompleteTaskRequest.SerializeToString,
                                       response_deserializer=lambda b: b)

        def grants(base: int, n: int):
            for i in range(n):
                req = pb.CompleteTaskRequest(name=f"members/{1 + i % 100}/pointsAccount",
                                             kind=pb.TASK_KIND_REVIEW_ORDER, source_ref=f"orders/{base + i}",
                                             request_id=uuid.uuid4().hex)
                yield lambda req=req: complete(req, metadata=service, timeout=30)

        try:
            await drive_calls(grants(900_000, 200), 0, args.concurrency)
            return await run.measure("gRPC CompleteTask (points grant)",
                                     lambda: drive_calls(grants(1, args.requests), 0, args.concurrency))
        finally:
            await channel.close()


async def content_view(args) -> dict:
    async with Run("content_view", "community") as run:
        run.start_members([1], guide_ids=(3,))  # the group's owner staff/3 is a guide
        await run.start()
        staff = {"Authorization": f"Bearer {run.token(STAFF, 'staff/1', frozenset({'admin'}))}"}
        member = {"Authorization": f"Bearer {run.token(MEMBER, 'members/1')}"}
        async with HttpLoad("127.0.0.1", run.http_port, args.concurrency) as http:
            group = json.loads((await http.request("POST", "/v1/groups", staff, {
                "displayName": "bench", "type": "GROUP_TYPE_GENERAL", "owner": "staff/3"}))[1])
            post = json.loads((await http.request("POST", f"/v1/{group['name']}/posts", staff,
                                                  {"kind": "POST_KIND_ARTICLE", "title": "bench"}))[1])
            await http.request("POST", f"/v1/{group['name']}:join", member, {})
            share = json.loads((await http.request("POST", f"/v1/{post['name']}:share", member, {}))[1])

            def views(n: int):
                for _ in range(n):
                    yield http.encode("POST", f"/v1/{post['name']}:view", None,
                                      {"visitorId": "v" + uuid.uuid4().hex, "shareToken": share["token"]})

            await http.run_raw(views(200))
            print(f"   (pids: community {run.procs['community'].pid}, gateway {run.procs['gateway'].pid})", flush=True)
            row = await run.measure("POST posts/*:view (gateway)", lambda: http.run_raw(list(views(args.requests))))

        import grpc

        from mall.community.v1 import community_service_pb2 as pb

        channel = grpc.aio.insecure_channel(f"127.0.0.1:{run.grpc_port}")
        view = channel.unary_unary("/mall.community.v1.CommunityService/ViewPost",
                                   request_serializer=pb.ViewPostRequest.SerializeToString,
                                   response_deserializer=pb.ViewPostResponse.FromString)

        def grpc_views(n: int):
            for _ in range(n):
                req = pb.ViewPostRequest(name=post["name"], visitor_id="v" + uuid.uuid4().hex,
                                         share_token=share["token"])
                yield lambda req=req: view(req, timeout=30)

        try:
            await drive_calls(grpc_views(200), 0, args.concurrency)
            row["grpc"] = await run.measure("gRPC ViewPost", lambda: drive_calls(grpc_views(args.requests), 0,
                                                                                 args.concurrency))
        finally:
            await channel.close()
        return row


PATHS = {"members_me": members_me, "flash_sale": flash_sale, "points_grant": points_grant, "content_view": content_view}


async def main() -> tuple[list[dict], str | None]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--paths", default=",".join(PATHS), help="comma-separated: " + ", ".join(PATHS))
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--tracing", choices=TRACING_MODES, default="production", help="production: 1 in 10 sampled (k8s)")
    args = parser.parse_args()
    global TRACING
    TRACING = args.tracing
    if not await mysql_available():
        print("profile: no MariaDB on 127.0.0.1:3306 (statements are counted on its wire); nothing profiled")
        return [], None
    rows = []
    for name in args.paths.split(","):
        try:
            rows.append(await PATHS[name.strip()](args))
        except Exception as exc:  # one broken path does not hide the others' figures
            print(f"== {name}: failed: {type(exc).__name__}: {exc}", flush=True)
    return rows, args.json


if __name__ == "__main__":
    figures, out = asyncio.run(main()) or ([], None)
    if out:
        Path(out).write_text(json.dumps(figures, indent=2))
