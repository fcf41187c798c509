"""A light load generator: HTTP/1.1 keep-alive on raw asyncio streams, and a driver for any awaitable (gRPC).

Why not httpx: its per-request cost (4-5 ms of CPU here) exceeded the gateway's own,
on the same 2 cores, so the gateway figures measured the client. This client writes a
pre-encoded request and parses the status line, the headers it needs
(Content-Length, Transfer-Encoding: chunked, Connection: close) and the body — a few
dozen microseconds of Python per request. Every result also reports the client's own
CPU per request (``time.process_time`` delta of this process, all threads, so the
gRPC driver's C-core threads count too), so a benchmark can show the client is not the
bottleneck.

Bounded by construction: a fixed number of requests, 127.0.0.1 (or another loopback
address) only.

    from loadgen import HttpLoad, drive_calls
    load = HttpLoad("127.0.0.1", port, concurrency=16)
    result = await load.run("GET", "/v1/members/me", requests=3000, headers={"Authorization": "Bearer ..."})
    result.print("GET /v1/members/me")
    grpc_result = await drive_calls(lambda: stub.GetMember(req, metadata=md), 3000, 16)

    # from the shell:
    .venv/bin/python bench/loadgen.py http://127.0.0.1:8080/healthz -n 2000 -c 16 [-H 'Authorization: Bearer x']
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import statistics
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Result:
    """Figures of one run: requests, seconds, latencies (s), errors and the client's CPU seconds."""

    requests: int
    seconds: float
    latencies: list[float]
    errors: int = 0
    client_cpu: float = 0.0
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        lat = sorted(self.latencies)
        if not lat:
            return 0.0
        return lat[min(len(lat) - 1, max(0, int(len(lat) * q) - 1))] * 1000

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies) * 1000 if self.latencies else 0.0

    @property
    def p99(self) -> float:
        return self.pct(0.99)

    @property
    def client_cpu_ms(self) -> float:
        """Client CPU per request (ms)."""
        return self.client_cpu * 1000 / self.requests if self.requests else 0.0

    def row(self) -> dict:
        return {"rate": self.rate, "p50": self.p50, "p99": self.p99, "client_cpu_ms": self.client_cpu_ms,
                "errors": self.errors, "requests": self.requests}

    def print(self, name: str, unit: str = "req/s") -> dict:
        print(f"  {name:<44} {self.rate:>8.0f} {unit:<6} p50 {self.p50:>7.2f} ms   p99 {self.p99:>7.2f} ms"
              f"   client CPU {self.client_cpu_ms:.3f} ms/req" + (f"   errors {self.errors} (statuses {self.statuses})" if self.errors else ""),
              flush=True)
        return self.row()


def _loopback(host: str) -> str:
    if host == "localhost":
        return "127.0.0.1"
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"loadgen drives loopback addresses only, not {host}")
    return host


class HttpConnection:
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = _loopback(host), port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
            self.reader = self.writer = None

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        """Write a complete encoded request; read the response: (status, body).

        A kept-alive connection the server closed while idle (uvicorn: after 5 s) is
        reopened and the request sent once more, as browsers and httpx do."""
        reused = self.writer is not None
        if not reused:
            await self._open()
        assert self.reader is not None and self.writer is not None
        self.writer.write(raw)
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            if not reused or (isinstance(exc, asyncio.IncompleteReadError) and exc.partial):
                raise
            await self.close()
            await self._open()
            assert self.reader is not None and self.writer is not None
            self.writer.write(raw)
            head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, chunked, close = -1, False, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = b"close" in value.lower()
        if chunked:
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:  # trailers, if any, end with an empty line
                    while await self.reader.readuntil(b"\r\n") != b"\r\n":
                        pass
                    break
                parts.append((await self.reader.readexactly(size + 2))[:-2])
            body = b"".join(parts)
        elif length >= 0:
            body = await self.reader.readexactly(length)
        else:
            body = await self.reader.read()
            close = True
        if close:
            await self.close()
        return status, body


def encode_request(method: str, path: str, host: str, headers: Mapping[str, str] | None = None,
                   body: bytes | str | dict | None = None) -> bytes:
    """The bytes of one HTTP/1.1 request (a dict body is sent as JSON)."""
    hdrs = {"Host": host, "Connection": "keep-alive", **(headers or {})}
    data = b""
    if isinstance(body, dict):
        data = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    elif isinstance(body, str):
        data = body.encode()
    elif body is not None:
        data = body
    if data or method not in ("GET", "HEAD", "DELETE"):
        hdrs["Content-Length"] = str(len(data))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
    return head.encode("latin-1") + data


class HttpLoad:
    """``concurrency`` keep-alive connections to ``host:port``, each one worker."""

    def __init__(self, host: str, port: int, concurrency: int = 16) -> None:
        self.host, self.port, self.concurrency = _loopback(host), port, concurrency
        self.connections = [HttpConnection(self.host, port) for _ in range(concurrency)]

    def encode(self, method: str, path: str, headers: Mapping[str, str] | None = None,
               body: bytes | str | dict | None = None) -> bytes:
        return encode_request(method, path, f"{self.host}:{self.port}", headers, body)

    async def request(self, method: str, path: str, headers: Mapping[str, str] | None = None,
                      body: bytes | str | dict | None = None) -> tuple[int, bytes]:
        """One request on the first connection (setup calls: login, fixtures)."""
        return await self.connections[0].send(self.encode(method, path, headers, body))

    async def run(self, method: str, path: str, requests: int, headers: Mapping[str, str] | None = None,
                  body: bytes | str | dict | None = None, expect: Iterable[int] = (200,),
                  limit: float = 600) -> Result:
        """The same request ``requests`` times over the connections."""
        raw = self.encode(method, path, headers, body)
        return await self.run_raw((raw for _ in range(requests)), expect=expect, limit=limit)

    async def run_raw(self, raws: Iterable[bytes], expect: Iterable[int] = (200,), limit: float = 600) -> Result:
        """Each pre-encoded request of ``raws`` once (e.g. one distinct member per request)."""
        ok = set(expect)
        it = iter(raws)
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        errors = 0

        async def worker(conn: HttpConnection) -> None:
            nonlocal errors
            perf = time.perf_counter
            for raw in it:
                t0 = perf()
                try:
                    status, _ = await conn.send(raw)
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    errors += 1
                    await conn.close()
                    continue
                latencies.append(perf() - t0)
                statuses[status] = statuses.get(status, 0) + 1
                if status not in ok:
                    errors += 1

        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*[worker(c) for c in self.connections]), timeout=limit)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        return Result(len(latencies), seconds, latencies, errors, cpu, statuses)

    async def close(self) -> None:
        for c in self.connections:
            await c.close()

    async def __aenter__(self) -> HttpLoad:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def drive_calls(call: Callable[[], Awaitable[object]] | Iterable[Callable[[], Awaitable[object]]],
                      requests: int, concurrency: int, limit: float = 600) -> Result:
    """Run a call (e.g. a gRPC stub method bound to its request) ``requests`` times over
    ``concurrency`` workers, or each call of an iterable once. Exceptions count as errors."""
    calls = (call for _ in range(requests)) if callable(call) else iter(call)
    latencies: list[float] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        perf = time.perf_counter
        for c in calls:
            t0 = perf()
            try:
                await c()
            except Exception:  # noqa: BLE001 - counted, the run goes on
                errors += 1
                continue
            latencies.append(perf() - t0)

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*[worker() for _ in range(concurrency)]), timeout=limit)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return Result(len(latencies), seconds, latencies, errors, cpu)


def grpc_unary(channel: object, method: str, request: object, response_type: object,
               metadata: tuple = (), timeout: float = 10) -> Callable[[], Awaitable[object]]:
    """A bound unary call on ``channel`` (grpc.aio) for :func:`drive_calls`: ``method`` is
    ``/pkg.Service/Method``; the multicallable is built once, not per request."""
    mc = channel.unary_unary(method, request_serializer=type(request).SerializeToString,  # type: ignore[attr-defined]
                             response_deserializer=response_type.FromString)  # type: ignore[attr-defined]

    def call() -> Awaitable[object]:
        return mc(request, metadata=metadata, timeout=timeout)

    return call


async def _cli() -> None:
    parser = argparse.ArgumentParser(description="HTTP/1.1 keep-alive load on a loopback URL")
    parser.add_argument("url")
    parser.add_argument("-n", "--requests", type=int, default=2000)
    parser.add_argument("-c", "--concurrency", type=int, default=16)
    parser.add_argument("-X", "--method", default="GET")
    parser.add_argument("-H", "--header", action="append", default=[])
    parser.add_argument("-d", "--data")
    args = parser.parse_args()
    u = urlsplit(args.url)
    headers = dict(h.split(":", 1) for h in args.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    async with HttpLoad(u.hostname or "127.0.0.1", u.port or 80, args.concurrency) as load:
        res = await load.run(args.method, path, args.requests, headers, args.data, expect=range(100, 600))
        res.print(f"{args.method} {path}")
        print(f"  statuses {dict(sorted(res.statuses.items()))}")


if __name__ == "__main__":
    asyncio.run(_cli())
