"""Channels between services spread calls over every pod and stop calling a draining one."""

from __future__ import annotations

import asyncio
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from mallkit.auth import TokenCodec
from mallkit.clients import channel_target, open_channel

SECRET = "a-test-secret-that-is-long-enough-for-hs256"


class CountingHealth(health.aio.HealthServicer):
    """The standard health service, counting the Check calls this server answered."""

    def __init__(self):
        super().__init__()
        self.checks = 0

    async def Check(self, request, context):
        self.checks += 1
        return await super().Check(request, context)


def test_a_host_and_port_is_resolved_through_dns_and_uris_are_kept():
    assert channel_target("members.mall.svc.cluster.local:50051") == "dns:///members.mall.svc.cluster.local:50051"
    assert channel_target("127.0.0.1:50051") == "dns:///127.0.0.1:50051"
    assert channel_target("dns:///members:50051") == "dns:///members:50051"
    assert channel_target("ipv4:10.0.0.1:1,10.0.0.2:1") == "ipv4:10.0.0.1:1,10.0.0.2:1"
    assert channel_target("unix:///run/members.sock") == "unix:///run/members.sock"


async def test_calls_spread_over_every_backend_and_skip_one_that_drains():
    servers, healths, ports = [], [], []
    for _ in range(2):
        server = grpc.aio.server()
        h = CountingHealth()
        health_pb2_grpc.add_HealthServicer_to_server(h, server)
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        servers.append(server)
        healths.append(h)
    # Two "pods" behind one target, as a headless Service's DNS name gives them.
    channel = open_channel(f"ipv4:127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}", codec=TokenCodec(SECRET), caller="test")
    stub = health_pb2_grpc.HealthStub(channel)

    async def calls(n: int) -> None:
        for _ in range(n):
            await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)

    try:
        deadline = time.monotonic() + 60
        while min(h.checks for h in healths) == 0 and time.monotonic() < deadline:
            await calls(10)
        for h in healths:
            h.checks = 0
        await calls(200)
        # round_robin: each backend gets about half (pick_first would give one of them all 200)
        assert min(h.checks for h in healths) >= 60, [h.checks for h in healths]

        await healths[0].enter_graceful_shutdown()  # what ServiceHost.stop does first on SIGTERM
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            before = healths[0].checks
            await calls(20)
            if healths[0].checks == before:
                break
            await asyncio.sleep(0.05)
        before = [h.checks for h in healths]
        await calls(100)  # every call succeeds, none reaches the draining backend
        assert healths[0].checks == before[0], "a draining backend still got new calls"
        assert healths[1].checks == before[1] + 100
    finally:
        await channel.close()
        for server in servers:
            await server.stop(0)
