"""What every benchmark shares: free ports, waiting for servers, driving load, printing figures."""

from __future__ import annotations

import asyncio
import socket
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterable

import httpx


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
