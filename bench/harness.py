"""What every benchmark shares: free ports, waiting for servers, driving load, printing figures."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import statistics
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path

import httpx

#: ``--tracing`` of every benchmark. ``production`` (the default) is what k8s/base sets: a parent-based
#: ratio sampler recording one request in ten (spans built, nothing exported here); ``on``: every
#: request sampled; ``off``: no SDK at all (``OTEL_SDK_DISABLED``). Without one of these the SDK's own
#: default applies (``parentbased_always_on``: every request traced), which is not how the mall runs.
TRACING_MODES = ("production", "on", "off")


def tracing_env(mode: str = "production") -> dict[str, str]:
    """The environment of the services for the tracing ``mode`` (:data:`TRACING_MODES`)."""
    if mode == "off":
        return {"OTEL_SDK_DISABLED": "true"}
    if mode == "on":
        return {"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_SAMPLER": "parentbased_always_on"}
    if mode == "production":
        return {"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "0.1"}
    raise ValueError(f"tracing mode {mode!r} is not one of {TRACING_MODES}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_http(url: str, within: float = 30) -> None:
    """Until ``url`` answers below 500."""
    deadline = time.time() + within
    async with httpx.AsyncClient() as c:
        while time.time() < deadline:
            try:
                if (await c.get(url)).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


async def wait_port(port: int, proc: subprocess.Popen, within: float = 60) -> None:
    """Until something listens on ``port``; fails fast if ``proc`` exits."""
    deadline = time.time() + within
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        await asyncio.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


async def drive_each(calls: Iterable[Callable[[], Awaitable[object]]], concurrency: int,
                     limit: float = 600) -> tuple[float, list[float]]:
    """Run every call of ``calls`` over ``concurrency`` workers: (seconds, latencies)."""
    latencies: list[float] = []
    it = iter(calls)

    async def worker() -> None:
        for call in it:
            t0 = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*[worker() for _ in range(concurrency)]), timeout=limit)
    return time.perf_counter() - start, latencies


async def drive(call: Callable[[], Awaitable[object]], requests: int, concurrency: int) -> tuple[float, list[float]]:
    """Run ``call()`` ``requests`` times over ``concurrency`` workers: (seconds, latencies)."""
    return await drive_each((call for _ in range(requests)), concurrency)


def summary(name: str, seconds: float, lat: list[float], unit: str = "req/s") -> dict:
    """Print one line of figures and return them: rate, p50 and p99 (ms)."""
    lat = sorted(lat)
    row = {"rate": len(lat) / seconds, "p50": statistics.median(lat) * 1000,
           "p99": lat[max(0, int(len(lat) * 0.99) - 1)] * 1000}
    print(f"  {name:<44} {row['rate']:>8.0f} {unit:<6} p50 {row['p50']:>7.2f} ms   p99 {row['p99']:>7.2f} ms", flush=True)
    return row


def start_members(env: dict, folder, member_ids: Iterable[int] = (), staff_ids: Iterable[int] = (1,),
                  guide_ids: Iterable[int] = ()) -> subprocess.Popen:
    """The members service every other service asks whether a token's account exists (``mallkit.principals``),
    on its own SQLite file in ``folder``, holding the given member, staff (admin) and guide ids. Sets
    ``MALL_MEMBERS_ADDR`` in ``env``; returns the process (wait for it with :func:`wait_port`)."""
    import sys
    import uuid
    from datetime import UTC, datetime
    from pathlib import Path

    import sqlalchemy as sa

    from mall.members.v1 import members_service_pb2 as mpb
    from members.models import Member, Staff

    root = Path(__file__).resolve().parent.parent
    port, db = free_port(), Path(folder) / f"members-{uuid.uuid4().hex[:6]}.db"
    env.update({"MEMBERS_PORT": str(port), "MEMBERS_DATABASE_URL": f"sqlite+aiosqlite:///{db}",
                "MALL_MEMBERS_ADDR": f"127.0.0.1:{port}", "MEMBERS_RELAY_ENABLED": "false"})
    subprocess.run([sys.executable, "-m", "members", "migrate"], env=env, check=True, cwd=root,
                   stdout=subprocess.DEVNULL)
    engine, now = sa.create_engine(f"sqlite:///{db}"), datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(sa.insert(Staff.__table__), [
            dict(id=i, username=f"bench-admin-{i}", display_name="压测", role=mpb.STAFF_ROLE_ADMIN, password_hash="!", disabled=False,
                 create_time=now) for i in staff_ids] + [
            dict(id=i, username=f"bench-guide-{i}", display_name="导购", role=mpb.STAFF_ROLE_GUIDE, password_hash="!",
                 disabled=False, create_time=now) for i in guide_ids])
        rows = [dict(id=i, openid=f"bench-{i}", invite_code=f"B{i}", create_time=now, update_time=now) for i in member_ids]
        for start in range(0, len(rows), 5000):
            conn.execute(sa.insert(Member.__table__), rows[start:start + 5000])
    engine.dispose()
    return subprocess.Popen([sys.executable, "-m", "members"], env=env, cwd=root, stdout=subprocess.DEVNULL)


@contextlib.asynccontextmanager
async def scratch_database(prefix: str, sqlite_file: Path) -> AsyncIterator[tuple[str, str]]:
    """A database of its own for one run: ``(url, backend)``; a fresh MariaDB database (dropped
    after) when MariaDB answers on 127.0.0.1:3306, else SQLite at ``sqlite_file``."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from mallkit.testing import MYSQL_ADMIN_URL, mysql_available

    if not await mysql_available():
        yield f"sqlite+aiosqlite:///{sqlite_file}", "SQLite"
        return
    name = f"{prefix}_{uuid.uuid4().hex[:6]}"
    admin = create_async_engine(MYSQL_ADMIN_URL)
    async with admin.begin() as conn:
        await conn.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    try:
        yield MYSQL_ADMIN_URL.rstrip("/") + f"/{name}", "MariaDB"
    finally:
        async with admin.begin() as conn:
            await conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        await admin.dispose()


def stop_processes(procs: Iterable[subprocess.Popen], grace: float = 10) -> None:
    """SIGTERM every process, wait for each (``grace`` seconds), then kill what is left."""
    procs = list(procs)
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
