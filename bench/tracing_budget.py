"""Benchmark: GET /v1/members/me (and gRPC GetMember) with every request traced vs tracing off, same run.

Starts two stacks side by side on one database (MariaDB when it answers on 127.0.0.1:3306,
else SQLite) and one nats-server: members + gateway with every request sampled
(``--tracing on`` of the other benches: ``parentbased_always_on``, spans built, nothing
exported) and members + gateway without the SDK (``OTEL_SDK_DISABLED=true``). Signs one
member in, then drives the same load at each stack in turn, ``--rounds`` times, alternating
which goes first, so that a change in the machine's load during the run falls on both: the
ratio of each round is on / off measured seconds apart, and the median of the rounds is the
figure (goal: traced >= 0.8 x off through the gateway). Only one stack is driven at a time.

The load generator is ``bench/loadgen.py`` (asyncio streams, HTTP/1.1 keep-alive; gRPC
through one ``grpc.aio`` channel). Bounded: a fixed count per phase, all on 127.0.0.1.

    .venv/bin/python bench/tracing_budget.py --rounds 4 --requests 3000 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc

from mall.members.v1 import members_service_pb2 as pb
from mallkit.testing import NatsServer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import free_port, scratch_database, stop_processes, tracing_env, wait_http  # noqa: E402
from loadgen import HttpLoad, drive_calls, grpc_unary  # noqa: E402
from profile_paths import cpu_seconds  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def start_stack(base_env: dict[str, str], tracing: str, wechat_port: int) -> tuple[dict, list[subprocess.Popen]]:
    """members + gateway with the ``tracing`` mode of bench/harness.py; returns their ports and processes."""
    grpc_port, http_port = free_port(), free_port()
    env = {**base_env, **tracing_env(tracing),
           "MALL_MEMBERS_ADDR": f"127.0.0.1:{grpc_port}", "MEMBERS_PORT": str(grpc_port),
           "MEMBERS_WECHAT_BASE_URL": f"http://127.0.0.1:{wechat_port}", "GATEWAY_PORT": str(http_port)}
    procs = [subprocess.Popen([PY, "-m", "members"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL),
             subprocess.Popen([PY, "-m", "gateway"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL)]
    return {"grpc": grpc_port, "http": http_port, "tracing": tracing, "members": procs[0].pid,
            "gateway": procs[1].pid}, procs


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=3000, help="per phase")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="mall-bench-"))
    async with scratch_database("mall_bench_tracing", tmp / "members.db") as (url, backend):
        await run(args, tmp, url, backend)


async def run(args: argparse.Namespace, tmp: Path, url: str, backend: str) -> None:
    nats = NatsServer(tmp / "nats")
    await nats.start()
    wechat_port = free_port()
    base_env = {**os.environ, "MALL_ENV": "development", "MALL_LOG_LEVEL": "WARNING", "MEMBERS_DATABASE_URL": url,
                "MEMBERS_RELAY_ENABLED": "false", "MALL_NATS_URL": nats.url, "GATEWAY_SERVICES": "members",
                "GATEWAY_RATE_PER_IP": "0", "GATEWAY_RATE_PER_MEMBER": "0"}
    subprocess.run([PY, "-m", "members", "migrate"], env=base_env, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    procs = [subprocess.Popen([PY, "-m", "fakes.wechat", "--port", str(wechat_port)], env=base_env, cwd=ROOT,
                              stdout=subprocess.DEVNULL)]
    stacks = []
    for mode in ("on", "off"):
        stack, started = start_stack(base_env, mode, wechat_port)
        stacks.append(stack)
        procs += started
    channels: list[grpc.aio.Channel] = []
    try:
        await wait_http(f"http://127.0.0.1:{wechat_port}/cgi-bin/token")
        token = ""
        for stack in stacks:
            await wait_http(f"http://127.0.0.1:{stack['http']}/healthz")
            stack["load"] = http = await HttpLoad("127.0.0.1", stack["http"], args.concurrency).__aenter__()
            for _ in range(100):  # health follows the database: wait until members is SERVING
                if (await http.request("GET", "/healthz"))[0] == 200:
                    break
                await asyncio.sleep(0.1)
            if not token:
                status, body = await http.request("POST", "/v1/members:loginWithWechat", body={"code": "bench-user"})
                token = json.loads(body)["accessToken"]
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{stack['grpc']}")
            channels.append(channel)
            stack["call"] = grpc_unary(channel, "/mall.members.v1.MembersService/GetMember",
                                       pb.GetMemberRequest(name="members/me"), pb.Member,
                                       metadata=(("authorization", f"Bearer {token}"),))
        headers = {"Authorization": f"Bearer {token}"}
        for stack in stacks:  # warm up: caches filled, connections open
            await drive_calls(stack["call"], 300, args.concurrency)
            await stack["load"].run("GET", "/v1/members/me", 300, headers)
        print(f"members/me, tracing on (every request sampled) vs off (no SDK), {args.rounds} rounds x "
              f"{args.requests} requests x {args.concurrency} concurrent per phase, database: {backend}; "
              "load generator: bench/loadgen.py (asyncio)")
        ratios: dict[str, list[float]] = {"gateway": [], "gRPC": []}
        cpu: dict[tuple[str, str, str], list[float]] = {}  # (path, tracing, process) -> CPU ms per request
        for r in range(args.rounds):
            order = stacks if r % 2 == 0 else stacks[::-1]
            for path in ("gateway", "gRPC"):
                rates = {}
                for stack in order:
                    before = {name: cpu_seconds(stack[name]) for name in ("members", "gateway")}
                    if path == "gateway":
                        res = await stack["load"].run("GET", "/v1/members/me", args.requests, headers)
                    else:
                        res = await drive_calls(stack["call"], args.requests, args.concurrency)
                    if res.errors:
                        raise SystemExit(f"{path} tracing {stack['tracing']}: {res.errors} errors")
                    rates[stack["tracing"]] = res.rate
                    for name, seconds in before.items():
                        cpu.setdefault((path, stack["tracing"], name), []).append(
                            (cpu_seconds(stack[name]) - seconds) * 1000 / args.requests)
                ratios[path].append(rates["on"] / rates["off"])
                print(f"  round {r + 1} {path:7}  on {rates['on']:7.0f} req/s   off {rates['off']:7.0f} req/s   "
                      f"on/off x{rates['on'] / rates['off']:.2f}")
        for path, values in ratios.items():
            per = {(t, n): statistics.median(cpu[(path, t, n)]) for t in ("on", "off") for n in ("members", "gateway")}
            print(f"  CPU ms/request, {path}: members on {per['on', 'members']:.2f} off {per['off', 'members']:.2f}, "
                  f"gateway on {per['on', 'gateway']:.2f} off {per['off', 'gateway']:.2f} (medians)")
            goal = " (goal >= 0.8)" if path == "gateway" else ""
            print(f"  ratio traced/off, {path}: median x{statistics.median(values):.2f}{goal}, "
                  f"rounds {min(values):.2f}-{max(values):.2f}")
    finally:
        for stack in stacks:
            if "load" in stack:
                await stack["load"].__aexit__(None, None, None)
        for channel in channels:
            await channel.close()
        stop_processes(procs)
        await nats.stop()


if __name__ == "__main__":
    asyncio.run(main())
