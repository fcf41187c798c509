"""ServiceHost: readiness follows the database, SIGTERM-style drain, typed errors, JSON logs with trace ids."""

from __future__ import annotations

import asyncio
import json
import logging

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mall.members.v1 import members_service_pb2 as pb
from mall.members.v1 import members_service_pb2_grpc as pb_grpc
from mallkit.auth import SERVICE, Principal, TokenCodec
from mallkit.errors import FailedPrecondition, error_info, status_of
from mallkit.server import ServiceHost
from mallkit.telemetry import JsonFormatter

SECRET = "a-test-secret-that-is-long-enough-for-hs256"
SINK = "mall.members.v1.MembersService"


class SlowMembers(pb_grpc.MembersServiceServicer):
    """A stand-in servicer on the members contract (its access policy comes from the proto)."""

    def __init__(self):
        self.started = asyncio.Event()
        self.peers: list[str] = []

    async def GetMember(self, request, context):
        if request.name == "members/9001":
            raise FailedPrecondition("refused on purpose", reason="TEST_REFUSED", zh="测试拒绝")
        if request.name == "members/9002":
            raise RuntimeError("secret internals: password=hunter2")
        self.started.set()
        await asyncio.sleep(0.5)
        return pb.Member(name=request.name)

    async def AddGrowth(self, request, context):  # service-only
        self.peers.append(context.peer())  # the caller's address: a new one per connection
        return pb.AddGrowthResponse()


@pytest.fixture
async def host():
    ready = {"ok": False}

    async def readiness():
        return ready["ok"]

    sink = SlowMembers()
    h = ServiceHost(service="test", domain="test.mall", codec=TokenCodec(SECRET),
                    descriptors=[pb.DESCRIPTOR.services_by_name["MembersService"]],
                    readiness=readiness, readiness_interval=0.05)
    h.add(pb_grpc.add_MembersServiceServicer_to_server, sink)
    port = await h.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    token = TokenCodec(SECRET).issue(Principal(SERVICE, "service/test"))[0]
    yield h, ready, sink, channel, (("authorization", f"Bearer {token}"),)
    await channel.close()
    await h.stop(0)


async def _status(channel, service=SINK):
    resp = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))
    return resp.status


async def test_readiness_follows_the_database(host):
    h, ready, _, channel, _ = host
    await asyncio.sleep(0.1)
    assert await _status(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert await _status(channel, "") == health_pb2.HealthCheckResponse.SERVING  # alive, not ready
    ready["ok"] = True
    await asyncio.sleep(0.15)
    assert await _status(channel) == health_pb2.HealthCheckResponse.SERVING
    ready["ok"] = False
    await asyncio.sleep(0.15)
    assert await _status(channel) == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_drain_flips_health_first_and_lets_calls_in_flight_finish(host):
    h, ready, sink, channel, md = host
    ready["ok"] = True
    stub = pb_grpc.MembersServiceStub(channel)

    async def call():
        return await stub.GetMember(pb.GetMemberRequest(name="members/1"), metadata=md)

    in_flight = asyncio.create_task(call())
    await sink.started.wait()
    stopping = asyncio.create_task(h.stop(grace=5, drain=0.3))
    await asyncio.sleep(0.05)
    assert await _status(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert (await in_flight).name == "members/1"  # finished, not cut off
    await stopping
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.GetMember(pb.GetMemberRequest(name="members/1"), metadata=md, timeout=1)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_typed_errors_become_rich_statuses_and_surprises_leak_nothing(host, caplog):
    h, ready, _, channel, md = host
    stub = pb_grpc.MembersServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.GetMember(pb.GetMemberRequest(name="members/9001"), metadata=md)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    st = await status_of(e.value)
    assert error_info(st).reason == "TEST_REFUSED" and error_info(st).domain == "test.mall"
    from google.rpc import error_details_pb2

    zh = error_details_pb2.LocalizedMessage()
    assert any(d.Unpack(zh) for d in st.details) and zh.message == "测试拒绝" and zh.locale == "zh-CN"
    with caplog.at_level(logging.ERROR):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.GetMember(pb.GetMemberRequest(name="members/9002"), metadata=md)
    assert e.value.code() == grpc.StatusCode.INTERNAL
    assert "hunter2" not in (e.value.details() or "") and "hunter2" not in str(await status_of(e.value))
    assert any("unhandled error" in r.getMessage() for r in caplog.records)


async def test_calls_need_a_valid_token_of_an_allowed_kind(host):
    h, ready, _, channel, _ = host
    stub = pb_grpc.MembersServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.AddGrowth(pb.AddGrowthRequest())
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    from mallkit.auth import MEMBER

    member = TokenCodec(SECRET).issue(Principal(MEMBER, "members/1"))[0]
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.AddGrowth(pb.AddGrowthRequest(), metadata=(("authorization", f"Bearer {member}"),))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_every_call_is_judged_on_its_own_token_and_counted_under_its_own_code(host):
    """The interceptor builds its wrapper of a method once: calls of that method in any order still
    get their own caller, answer and metrics (duration per code, errors per code)."""
    from prometheus_client import REGISTRY

    from mallkit.auth import MEMBER

    h, ready, sink, channel, service_md = host
    stub = pb_grpc.MembersServiceStub(channel)
    member_md = (("authorization", f"Bearer {TokenCodec(SECRET).issue(Principal(MEMBER, 'members/1'))[0]}"),)

    def seen(code: str) -> tuple[float, float]:
        labels = {"service": "test", "method": "AddGrowth", "code": code}
        return (REGISTRY.get_sample_value("mall_rpc_server_duration_seconds_count", labels) or 0.0,
                REGISTRY.get_sample_value("mall_rpc_server_errors_total", labels) or 0.0)

    before = {code: seen(code) for code in ("OK", "PERMISSION_DENIED", "UNAUTHENTICATED")}
    for md, expected in [(service_md, None), (member_md, grpc.StatusCode.PERMISSION_DENIED), ((), grpc.StatusCode.UNAUTHENTICATED),
                         (service_md, None), (member_md, grpc.StatusCode.PERMISSION_DENIED), (service_md, None)]:
        if expected is None:
            await stub.AddGrowth(pb.AddGrowthRequest(), metadata=md)
            continue
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.AddGrowth(pb.AddGrowthRequest(), metadata=md)
        assert e.value.code() == expected
    assert len(sink.peers) == 3
    delta = {code: tuple(a - b for a, b in zip(seen(code), before[code], strict=True)) for code in before}
    assert delta == {"OK": (3, 0), "PERMISSION_DENIED": (2, 2), "UNAUTHENTICATED": (1, 1)}


def test_json_logs_carry_trace_and_span_ids():
    from opentelemetry import trace

    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("world",), None)
    with trace.get_tracer("t").start_as_current_span("s") as span:
        line = json.loads(JsonFormatter("test").format(record))
    assert line["message"] == "hello world" and line["service"] == "test"
    assert line["trace_id"] == format(span.get_span_context().trace_id, "032x")


async def test_connections_are_aged_out_without_failing_calls():
    """max_connection_age: the server closes each connection after its age (GOAWAY); the caller
    reconnects (and would resolve new pods) and no call fails."""
    sink = SlowMembers()
    h = ServiceHost(service="test", domain="test.mall", codec=TokenCodec(SECRET),
                    descriptors=[pb.DESCRIPTOR.services_by_name["MembersService"]], max_connection_age=0.3)
    h.add(pb_grpc.add_MembersServiceServicer_to_server, sink)
    port = await h.start()
    token = TokenCodec(SECRET).issue(Principal(SERVICE, "service/test"))[0]
    md = (("authorization", f"Bearer {token}"),)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.MembersServiceStub(channel)
    try:
        for _ in range(20):  # about 1.5 s of calls over several connection ages
            assert (await stub.AddGrowth(pb.AddGrowthRequest(), metadata=md, timeout=10)) == pb.AddGrowthResponse()
            await asyncio.sleep(0.075)
        assert len(set(sink.peers)) >= 2  # the connection was replaced, the calls went on
    finally:
        await channel.close()
        await h.stop(0)


async def test_a_precheck_is_only_taken_for_a_method_of_the_host():
    h = ServiceHost(service="test", domain="test.mall", codec=TokenCodec(SECRET),
                    descriptors=[pb.DESCRIPTOR.services_by_name["MembersService"]])
    h.precheck("/mall.members.v1.MembersService/GetMember", lambda request: None)
    assert "/mall.members.v1.MembersService/GetMember" in h.platform_interceptor.prechecks
    with pytest.raises(ValueError, match="not a method of this host"):
        h.precheck("/mall.orders.v1.OrdersService/BuyFlashSale", lambda request: None)
