"""`make run`: the whole system on this machine, on embedded SQLite, with demo data.

Migrates and seeds each service's SQLite file under var/ (``MALL_VAR_DIR``),
starts the fake WeChat, the WeChat Pay simulator, every service and the gateway
as child processes with ``MALL_ENV=development``, prints where each listens, and
stops them all cleanly on Ctrl-C (or when one of them dies). Ports:
``GATEWAY_PORT``, ``<SVC>_PORT``, ``FAKE_WECHAT_PORT``, ``FAKE_WECHATPAY_PORT``, ``NATS_PORT``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VAR = Path(os.environ.get("MALL_VAR_DIR", ROOT / "var"))
PY = sys.executable

#: (name, gRPC port) of every service that exists under services/ (a service
#: appears here as soon as its folder has a __main__.py).
PORTS = {"members": 50051, "points": 50052, "orders": 50053, "community": 50054}
SERVICES = [
    (n, int(os.environ.get(f"{n.upper()}_PORT", p)))
    for n, p in PORTS.items()
    if (ROOT / "services" / n / n / "__main__.py").exists()
]
GATEWAY_PORT = int(os.environ.get("GATEWAY_PORT", "8080"))
WECHAT_PORT = int(os.environ.get("FAKE_WECHAT_PORT", "9100"))
WECHATPAY_PORT = int(os.environ.get("FAKE_WECHATPAY_PORT", "9200"))
NATS_PORT = int(os.environ.get("NATS_PORT", "4333"))  # not 4222: a machine's own NATS may hold that


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("MALL_ENV", "development")
    env.setdefault("MALL_LOG_FORMAT", "text")
    env.setdefault("PYTHONUNBUFFERED", "1")
    for name, port in SERVICES:
        env.setdefault(f"MALL_{name.upper()}_ADDR", f"127.0.0.1:{port}")
        env.setdefault(f"{name.upper()}_PORT", str(port))
        env.setdefault(f"{name.upper()}_DATABASE_URL", f"sqlite+aiosqlite:///{VAR / (name + '.db')}")
    env.setdefault("MEMBERS_WECHAT_BASE_URL", f"http://127.0.0.1:{WECHAT_PORT}")
    env.setdefault("ORDERS_WECHATPAY_BASE_URL", f"http://127.0.0.1:{WECHATPAY_PORT}")
    env.setdefault("ORDERS_WECHATPAY_NOTIFY_URL", f"http://127.0.0.1:{GATEWAY_PORT}/v1/wechatpay/notifications")
    env.setdefault("MALL_NATS_URL", f"nats://127.0.0.1:{NATS_PORT}")
    env.setdefault("GATEWAY_PORT", str(GATEWAY_PORT))
    env.setdefault("GATEWAY_SERVICES", "[" + ",".join(f'"{n}"' for n, _ in SERVICES) + "]")
    return env


def wait_port(port: int, proc: subprocess.Popen, name: str, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited with code {proc.returncode} while starting")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"{name} did not listen on port {port} within {timeout:.0f}s")


def main() -> int:
    VAR.mkdir(parents=True, exist_ok=True)
    env = base_env()
    for name, _ in SERVICES:
        fresh = not (VAR / f"{name}.db").exists()
        subprocess.run([PY, "-m", name, "migrate"], env=env, check=True, cwd=ROOT)
        if fresh:
            subprocess.run([PY, "-m", name, "seed"], env=env, check=True, cwd=ROOT)
    procs: list[tuple[str, subprocess.Popen]] = []

    def start(name: str, args: list[str], port: int) -> None:
        proc = subprocess.Popen(args if args[0].startswith("/") else [PY, *args], env=env, cwd=ROOT)
        procs.append((name, proc))
        wait_port(port, proc, name)

    def stop_all(*_):
        for _, p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.time() + 15
        for _, p in procs:
            try:
                p.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        from mallkit.testing import nats_server_binary

        start("nats", [nats_server_binary(), "-js", "-a", "127.0.0.1", "-p", str(NATS_PORT), "-sd", str(VAR / "nats")],
              NATS_PORT)
        start("fake-wechat", ["-m", "fakes.wechat", "--port", str(WECHAT_PORT)], WECHAT_PORT)
        start("wechatpay-sim", ["-m", "fakes.wechatpay", "--port", str(WECHATPAY_PORT)], WECHATPAY_PORT)
        for name, port in SERVICES:
            start(name, ["-m", name], port)
        start("gateway", ["-m", "gateway"], GATEWAY_PORT)
        print(
            "\n"
            f"  The mall is running (SQLite files in {VAR}; `make reset` wipes them).\n"
            f"  gateway (HTTP/JSON) http://127.0.0.1:{GATEWAY_PORT}   docs: /docs   OpenAPI: /openapi.json   health: /healthz\n"
            + "".join(f"  {n:<19} grpc 127.0.0.1:{p} (reflection on)\n" for n, p in SERVICES)
            + f"  NATS JetStream      nats://127.0.0.1:{NATS_PORT}   (events; store in {VAR / 'nats'})\n"
            + f"  fake WeChat         http://127.0.0.1:{WECHAT_PORT}\n"
            + f"  WeChat Pay sim      http://127.0.0.1:{WECHATPAY_PORT}   (the buyer pays: POST /__sim/pay {{\"out_trade_no\": ...}})\n"
            "\n"
            f"  Try:  curl -s -XPOST localhost:{GATEWAY_PORT}/v1/members:loginWithWechat -d '{{\"code\":\"alice\"}}'\n"
            "        staff: admin / admin-demo-password  (POST /v1/staff:login)\n"
            "  Ctrl-C stops everything.\n",
            flush=True,
        )
        while True:
            for name, p in procs:
                if p.poll() is not None:
                    print(f"{name} exited with code {p.returncode}; stopping everything", file=sys.stderr)
                    stop_all()
                    return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
        stop_all()
        print("stopped.", flush=True)
        return 0


if __name__ == "__main__":
    sys.exit(main())
