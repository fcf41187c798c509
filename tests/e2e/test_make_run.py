"""`make run`'s launcher starts every process on SQLite with demo data, and Ctrl-C stops them all."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_local_starts_everything_and_stops_cleanly(tmp_path):
    env = {**os.environ, "MALL_VAR_DIR": str(tmp_path), "GATEWAY_PORT": str(free_port()),
           "FAKE_WECHAT_PORT": str(free_port()), "FAKE_WECHATPAY_PORT": str(free_port()), "MALL_LOG_LEVEL": "WARNING",
           "NATS_PORT": str(free_port())}
    env.pop("MALL_NATS_URL", None)  # make run starts its own nats-server
    for name in ("MEMBERS", "POINTS", "ORDERS", "COMMUNITY"):
        env[f"{name}_PORT"] = str(free_port())
        env.pop(f"MALL_{name}_ADDR", None)
        env.pop(f"{name}_DATABASE_URL", None)
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "run_local.py")], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        assert any("The mall is running" in line for line in lines), "".join(lines[-40:])
        base = f"http://127.0.0.1:{env['GATEWAY_PORT']}"
        for _ in range(100):
            health = httpx.get(f"{base}/healthz", timeout=5)
            if health.status_code == 200:
                break
            time.sleep(0.1)
        assert health.status_code == 200, health.text
        login = httpx.post(f"{base}/v1/members:loginWithWechat", json={"code": "alice"}, timeout=10)
        assert login.status_code == 200 and login.json()["member"]["nickname"] == "Alice"  # demo data
        staff = httpx.post(f"{base}/v1/staff:login", json={"username": "admin", "password": "admin-demo-password"}, timeout=10)
        assert staff.status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, out[-3000:]
    assert "stopped." in out
    for port_var in ("GATEWAY_PORT", "MEMBERS_PORT"):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", int(env[port_var]))) != 0, f"{port_var} still listening"
