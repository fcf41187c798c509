"""SIGTERM under load, as a Kubernetes rollout sends it: nothing in flight is lost.

Real processes: the fake WeChat, two members processes (two "pods" of one Deployment)
and the gateway balancing over both (round_robin, as over a headless Service). A
bounded load of GET /v1/members/me runs through the gateway while

* one members process gets SIGTERM: its health turns NOT_SERVING first, then (after
  MEMBERS_DRAIN_SECONDS) its listener closes; every call of the load succeeds, since
  the gateway stops sending to a NOT_SERVING backend and calls in flight finish;
* then the gateway gets SIGTERM: every request it is handling is answered 200. What
  the drain documents for the gateway is that it stops accepting connections at once
  and closes the connections it is not handling a request on (in Kubernetes the
  preStop sleep has already taken it out of the Service): a request that reaches it
  after SIGTERM is refused or reset before any handling (uvicorn closes only
  connections without a request in progress; closing one with unread bytes resets
  it). Such a request was never handled and may be retried; nothing else may fail,
  before SIGTERM nothing at all, and no answer is anything but 200.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
SERVICE = "mall.members.v1.MembersService"
DRAIN, GRACE = 2.0, 10.0

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_until(what: str, check, within: float, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: {proc.args} exited with {proc.returncode}")
        value = check()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"{what} did not happen within {within:.0f}s")


def health_status(port: int) -> int | None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        try:
            return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=1).status
        except grpc.RpcError:
            return None


class Load:
    """``requests`` GET /v1/members/me over ``workers`` threads, one connection per request
    (as a proxy that opens one per request would; keep-alive reuse is another story)."""

    def __init__(self, base: str, token: str, requests: int, workers: int = 8):
        self.base, self.token, self.left, self.workers = base, token, requests, workers
        self.client = httpx.Client(timeout=30, limits=httpx.Limits(max_keepalive_connections=0))
        self.lock = threading.Lock()
        self.ok = 0
        self.ok_after: float | None = None  # the time of SIGTERM: count answers after it
        self.answered_after = 0
        self.refused: list[str] = []  # refused or reset before any handling, after SIGTERM
        self.failures: list[str] = []

    def _one(self) -> None:
        try:
            r = self.client.get(f"{self.base}/v1/members/me", headers={"Authorization": f"Bearer {self.token}"})
        except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError) as e:
            with self.lock:  # refused, reset, or closed without an answer: documented after SIGTERM only
                after = self.ok_after is not None and time.monotonic() > self.ok_after
                (self.refused if after and self._unhandled(e) else self.failures).append(repr(e))
            return
        except httpx.HTTPError as e:
            with self.lock:
                self.failures.append(repr(e))
            return
        with self.lock:
            if r.status_code == 200:
                self.ok += 1
                if self.ok_after is not None and time.monotonic() > self.ok_after:
                    self.answered_after += 1
            else:
                self.failures.append(f"{r.status_code} {r.text[:200]}")

    @staticmethod
    def _unhandled(e: httpx.HTTPError) -> bool:
        text = str(e)
        return (isinstance(e, httpx.ConnectError) or "Connection reset by peer" in text
                or "without sending a response" in text)

    def _worker(self) -> None:
        while True:
            with self.lock:
                if self.left == 0:
                    return
                self.left -= 1
            self._one()

    def run(self, within: float = 240):
        pool = ThreadPoolExecutor(self.workers)
        futures = [pool.submit(self._worker) for _ in range(self.workers)]
        pool.shutdown(wait=False)
        self._futures = futures
        self._deadline = time.monotonic() + within
        return self

    def done(self) -> int:
        with self.lock:
            return self.ok + len(self.refused) + len(self.failures)

    def join(self) -> None:
        for f in self._futures:
            f.result(timeout=max(1, self._deadline - time.monotonic()))
        self.client.close()


def test_sigterm_to_a_service_then_to_the_gateway_under_load_loses_no_call(tmp_path):
    py = sys.executable
    ports = {"wechat": free_port(), "a": free_port(), "b": free_port(), "http": free_port()}
    env = {
        **os.environ,
        "MALL_ENV": "development",
        "MALL_LOG_LEVEL": "WARNING",
        "MEMBERS_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'members.db'}",
        "MEMBERS_WECHAT_BASE_URL": f"http://127.0.0.1:{ports['wechat']}",
        "MEMBERS_DRAIN_SECONDS": str(DRAIN),
        "MEMBERS_GRACE_SECONDS": str(GRACE),
        # the gateway balances over both members processes, as over a headless Service
        "MALL_MEMBERS_ADDR": f"ipv4:127.0.0.1:{ports['a']},127.0.0.1:{ports['b']}",
        "GATEWAY_PORT": str(ports["http"]),
        "GATEWAY_SERVICES": "members",
        "GATEWAY_RATE_PER_IP": "0",
        "GATEWAY_RATE_PER_MEMBER": "0",
        "GATEWAY_GRACE_SECONDS": str(int(GRACE)),
    }
    procs: dict[str, subprocess.Popen] = {}
    nats = shutil.which("nats-server") or shutil.which("nats-server", path=str(Path(py).parent))
    if nats:  # the event streams' server, where this tree has it
        nats_port = free_port()
        env["MALL_NATS_URL"] = f"nats://127.0.0.1:{nats_port}"
        procs["nats"] = subprocess.Popen([nats, "-js", "-p", str(nats_port), "-sd", str(tmp_path / "nats")],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until("nats listens", lambda: listening(nats_port), 60, procs["nats"])
    subprocess.run([py, "-m", "members", "migrate"], env=env, cwd=ROOT, check=True, timeout=120)

    def start(name: str, args: list[str], port: int, extra: dict | None = None) -> None:
        procs[name] = subprocess.Popen([py, *args], env={**env, **(extra or {})}, cwd=ROOT,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_until(f"{name} listens", lambda: listening(port), 120, procs[name])

    try:
        start("wechat", ["-m", "fakes.wechat", "--port", str(ports["wechat"])], ports["wechat"])
        start("members-a", ["-m", "members"], ports["a"], {"MEMBERS_PORT": str(ports["a"])})
        start("members-b", ["-m", "members"], ports["b"], {"MEMBERS_PORT": str(ports["b"])})
        start("gateway", ["-m", "gateway"], ports["http"])
        base = f"http://127.0.0.1:{ports['http']}"
        for p in ("a", "b"):
            wait_until(f"members-{p} SERVING", lambda p=p: health_status(ports[p]) == health_pb2.HealthCheckResponse.SERVING, 120)
        wait_until("gateway healthy", lambda: httpx.get(f"{base}/healthz", timeout=5).status_code == 200, 120)
        login = httpx.post(f"{base}/v1/members:loginWithWechat", json={"code": "drain-user"}, timeout=30)
        assert login.status_code == 200, login.text
        token = login.json()["accessToken"]

        # --- SIGTERM to one members process while 400 calls run through the gateway
        load = Load(base, token, 400).run()
        wait_until("load under way", lambda: load.done() >= 80, 120)
        procs["members-a"].send_signal(signal.SIGTERM)
        sent = time.monotonic()
        not_serving_at = closed_at = None
        while closed_at is None and time.monotonic() - sent < 60:
            if not_serving_at is None and health_status(ports["a"]) == health_pb2.HealthCheckResponse.NOT_SERVING:
                not_serving_at = time.monotonic()
            if not listening(ports["a"]):
                closed_at = time.monotonic()
            time.sleep(0.02)
        load.join()
        assert procs["members-a"].wait(timeout=60) == 0, procs["members-a"].stderr.read()[-2000:]
        assert not_serving_at is not None and closed_at is not None, (not_serving_at, closed_at)
        assert not_serving_at < closed_at, "the listener closed before health said NOT_SERVING"
        assert closed_at - not_serving_at >= DRAIN * 0.5, closed_at - not_serving_at
        assert load.ok == 400 and not load.failures and not load.refused, (load.failures[:5], load.refused[:5])
        print(f"members SIGTERM: 400/400 answered 200; NOT_SERVING {closed_at - not_serving_at:.2f}s before the listener closed")

        # --- SIGTERM to the gateway while 300 calls run through it
        load = Load(base, token, 300).run()
        wait_until("load under way", lambda: load.done() >= 60, 120)
        load.ok_after = time.monotonic()
        procs["gateway"].send_signal(signal.SIGTERM)
        load.join()
        status = procs["gateway"].wait(timeout=60)
        assert status in (0, -signal.SIGTERM, 128 + signal.SIGTERM), status
        assert not load.failures, load.failures[:5]  # no 5xx, no call cut after it was accepted
        assert load.answered_after >= 1, "no call was in flight when SIGTERM came: the check proved nothing"
        assert load.ok + len(load.refused) == 300
        assert load.ok >= 60
        print(f"gateway SIGTERM: {load.ok} answered 200 ({load.answered_after} after SIGTERM), "
              f"{len(load.refused)} refused or reset before handling")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
