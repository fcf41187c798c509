"""The gateway over real HTTP: in-process uvicorn, and ``python -m gateway`` as a process."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import httpx

from gateway import create_app
from mallkit.testing import HttpServer
from tests.gateway.conftest import ADMIN, SECRET, bearer, error_of, gateway_settings

ROOT = Path(__file__).resolve().parents[2]


async def test_over_real_http(upstream, member_auth):
    server = HttpServer(create_app(gateway_settings(upstream.addr, max_body_bytes=2048)))
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            r = await client.get("/v1/members/me", headers={**member_auth, "X-Request-Id": "over-http"})
            assert r.status_code == 200, r.text
            assert r.json()["name"] == "members/me"
            assert r.headers["x-request-id"] == "over-http"

            r = await client.post(
                "/v1/members/me", json={"nickname": "阿花"}, headers={**member_auth, "X-HTTP-Method-Override": "PATCH"}
            )
            assert r.status_code == 200 and r.json()["nickname"] == "阿花"

            async def chunks():
                for _ in range(100):
                    yield b"x" * 100

            r = await client.post("/v1/tiers", content=chunks(), headers=bearer(ADMIN))
            assert r.status_code == 413
            assert error_of(r)["by_type"]["ErrorInfo"]["reason"] == "BODY_TOO_LARGE"
            assert "CreateTier" not in upstream.servicer.methods()
    finally:
        await server.stop()


async def test_python_m_gateway_serves_and_stops_on_sigterm(upstream, member_auth):
    env = {
        **os.environ,
        "GATEWAY_PORT": "0",
        "GATEWAY_SERVICES": "members",
        "MALL_ENV": "test",
        "MALL_TOKEN_SECRET": SECRET,
        "MALL_MEMBERS_ADDR": upstream.addr,
        "MALL_LOG_FORMAT": "text",
        "MALL_LOG_LEVEL": "INFO",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip()
        assert line.startswith("gateway listening on http://127.0.0.1:"), line
        url = line.rsplit(" ", 1)[-1]
        async with httpx.AsyncClient(base_url=url) as client:
            r = await client.get("/v1/members/me", headers=member_auth)
            assert r.status_code == 200, r.text
            assert (await client.get("/openapi.json")).json()["openapi"] == "3.1.0"
        proc.send_signal(signal.SIGTERM)
        # uvicorn drains, runs the lifespan shutdown, then re-raises SIGTERM.
        assert await asyncio.wait_for(proc.wait(), 20) in (0, -signal.SIGTERM)
        assert "gateway stopped: upstream channels closed" in (await proc.stderr.read()).decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
