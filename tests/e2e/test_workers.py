"""Worker processes per pod: MEMBERS_WORKERS=2 and GATEWAY_WORKERS=2 serve on one port each,
every worker answers, and SIGTERM to the first process stops them all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.e2e.test_graceful_shutdown import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
SERVICE = "mall.members.v1.MembersService"

pytestmark = pytest.mark.slow


def descendants(pid: int) -> set[int]:
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    kids = [int(c) for c in f.read().split()]
                out.update(kids)
                todo.extend(kids)
        except OSError:
            pass
    return out


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:  # a new connection: the kernel picks a worker
        try:
            status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=2).status
        except grpc.RpcError:
            return False
    return status == health_pb2.HealthCheckResponse.SERVING


def test_two_workers_of_members_and_of_the_gateway_serve_and_stop_together(tmp_path):
    port, http_port = free_port(), free_port()
    env = {**os.environ, "MALL_ENV": "development", "MALL_LOG_LEVEL": "WARNING",
           "MEMBERS_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'members.db'}", "MEMBERS_PORT": str(port),
           "MEMBERS_RELAY_ENABLED": "false", "MALL_NATS_URL": "nats://127.0.0.1:1", "MEMBERS_WORKERS": "2",
           "MEMBERS_DRAIN_SECONDS": "0", "MALL_MEMBERS_ADDR": f"127.0.0.1:{port}", "GATEWAY_PORT": str(http_port),
           "GATEWAY_SERVICES": "members", "GATEWAY_WORKERS": "2"}
    subprocess.run([sys.executable, "-m", "members", "migrate"], env=env, cwd=ROOT, check=True, capture_output=True)
    members = subprocess.Popen([sys.executable, "-m", "members"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    gateway = subprocess.Popen([sys.executable, "-m", "gateway"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        workers = wait_until("a second members worker", lambda: descendants(members.pid), 60, members)
        assert len(workers) == 1
        # The kernel spreads new connections over both listeners (SO_REUSEPORT): every fresh
        # connection must be answered, whichever worker takes it.
        # Until both workers are up, a connection may reach one still starting: wait for 20
        # fresh connections in a row answered (a worker that never serves fails this).
        wait_until("every members worker serving", lambda: all(serving(port) for _ in range(20)), 90, members)
        wait_until("two gateway workers", lambda: len(descendants(gateway.pid)) >= 2, 60, gateway)
        with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=5) as c:
            def healthy():
                try:
                    return c.get("/healthz").status_code == 200
                except httpx.HTTPError:
                    return False
            wait_until("gateway healthy", healthy, 60, gateway)
        everyone = {members.pid, *workers, gateway.pid, *descendants(gateway.pid)}
        members.send_signal(signal.SIGTERM)
        gateway.send_signal(signal.SIGTERM)
        members.wait(60)
        gateway.wait(60)
        deadline = time.monotonic() + 30
        alive = everyone
        while alive and time.monotonic() < deadline:
            alive = {p for p in everyone if running(p)}
            time.sleep(0.05)
        assert not alive, f"workers left running: {alive}"
    finally:
        for p in (members, gateway):
            if p.poll() is None:
                p.kill()
