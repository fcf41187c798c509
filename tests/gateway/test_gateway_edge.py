"""Request ids, trace context, rate limits, health and metrics."""

from __future__ import annotations

import asyncio
import logging
import re

import httpx
from opentelemetry.trace import SpanKind, StatusCode

from gateway.ratelimit import TokenBuckets
from tests.gateway.conftest import MEMBER_42, Principal, bearer, error_of, gateway_settings, running_gateway

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
INCOMING = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


async def test_request_id_is_echoed_and_forwarded(gw, upstream, member_auth):
    r = await gw.get("/v1/members/me", headers={**member_auth, "X-Request-Id": "req-abc.123"})
    assert r.headers["x-request-id"] == "req-abc.123"
    md = upstream.servicer.last("GetMember").metadata
    assert md["x-request-id"] == "req-abc.123"
    assert md["x-forwarded-for"] == "203.0.113.7"


async def test_a_request_id_is_made_when_missing_or_unusable(gw, member_auth):
    r = await gw.get("/v1/members/me", headers=member_auth)
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
    r = await gw.get("/v1/members/me", headers={**member_auth, "X-Request-Id": "bad id\twith spaces" + "x" * 200})
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])


async def test_errors_carry_request_id_and_traceparent_too(gw):
    for r in (await gw.get("/v1/nope"), await gw.get("/v1/members/me"), await gw.delete("/v1/members")):
        assert r.status_code in (401, 404, 405)
        assert r.headers["x-request-id"]
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", r.headers["traceparent"])


async def test_incoming_trace_continues_into_the_upstream_call(gw, upstream, member_auth, spans):
    r = await gw.get("/v1/members/me", headers={**member_auth, "traceparent": INCOMING})
    assert r.status_code == 200
    assert r.headers["traceparent"].split("-")[1] == TRACE_ID
    # The upstream received the same trace, from the gateway's client span.
    received = upstream.servicer.last("GetMember").metadata["traceparent"]
    assert received.split("-")[1] == TRACE_ID
    # And the spans of all three hops share it.
    finished = {s.name: s for s in spans.get_finished_spans() if format(s.context.trace_id, "032x") == TRACE_ID}
    gateway_span = finished["GET /v1/{name=members/*}"]
    assert gateway_span.kind == SpanKind.SERVER
    assert r.headers["traceparent"].split("-")[2] == format(gateway_span.context.span_id, "016x")
    rpc_spans = [
        s for s in spans.get_finished_spans()
        if format(s.context.trace_id, "032x") == TRACE_ID and s.name.endswith("MembersService/GetMember")
    ]
    assert {s.kind for s in rpc_spans} == {SpanKind.CLIENT, SpanKind.SERVER}


async def test_the_client_span_is_the_upstreams_parent_and_records_its_status(gw, upstream, admin_auth, spans):
    for name, code, status in (("members/7", 0, StatusCode.UNSET), ("members/404", 5, StatusCode.ERROR)):
        spans.clear()
        r = await gw.get(f"/v1/{name}", headers={**admin_auth, "traceparent": INCOMING})
        assert r.status_code == (200 if code == 0 else 404)
        finished = {s.kind: s for s in spans.get_finished_spans() if s.name.endswith("MembersService/GetMember")}
        client, server = finished[SpanKind.CLIENT], [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER
                                                     and s.name == "GET /v1/{name=members/*}"][0]
        assert client.parent.span_id == server.context.span_id
        received = upstream.servicer.last("GetMember").metadata["traceparent"]
        assert received.split("-")[2] == format(client.context.span_id, "016x")  # the call carries the CLIENT span
        assert (client.attributes["rpc.grpc.status_code"], client.status.status_code) == (code, status)
        assert client.attributes["rpc.service"] == "mall.members.v1.MembersService"


async def test_health_and_metrics_are_not_traced(gw, spans):
    spans.clear()
    r = await gw.get("/healthz")
    assert r.headers["x-request-id"] and "traceparent" not in r.headers
    await gw.get("/metrics")
    assert [s.name for s in spans.get_finished_spans() if "healthz" in s.name or "metrics" in s.name] == []


async def test_per_ip_rate_limit(upstream, member_auth):
    async with running_gateway(gateway_settings(upstream.addr, rate_per_ip=1, burst_per_ip=2)) as gw:
        codes = [(await gw.get("/v1/members/me", headers=member_auth)).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        r = await gw.get("/v1/members/me", headers=member_auth)
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) >= 1
    err = error_of(r)
    assert err["status"] == "RESOURCE_EXHAUSTED"
    assert err["by_type"]["ErrorInfo"]["reason"] == "RATE_LIMITED"
    assert err["by_type"]["RetryInfo"]["retryDelay"].endswith("s")
    assert err["by_type"]["QuotaFailure"]["violations"][0]["subject"] == "ip:203.0.113.7"
    assert len(upstream.servicer.calls) == 2


async def test_per_member_rate_limit_follows_the_member_across_ips(upstream):
    settings = gateway_settings(upstream.addr, rate_per_member=0.5, burst_per_member=2)
    async with running_gateway(settings, client_ip="198.51.100.1") as gw:
        other_ip = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=gw.app, client=("198.51.100.2", 1)), base_url="http://gateway.test"
        )
        async with other_ip:
            headers = bearer(MEMBER_42)
            assert (await gw.get("/v1/members/me", headers=headers)).status_code == 200
            assert (await other_ip.get("/v1/members/me", headers=headers)).status_code == 200
            r = await other_ip.get("/v1/members/me", headers=headers)
            assert r.status_code == 429
            assert error_of(r)["by_type"]["QuotaFailure"]["violations"][0]["subject"] == "members/42"
            # Another member is not affected.
            r = await gw.get("/v1/members/me", headers=bearer(Principal("member", "members/43")))
            assert r.status_code == 200


def test_rate_limiter_memory_stays_bounded():
    now = [0.0]
    buckets = TokenBuckets(rate=10, burst=5, max_keys=1000, clock=lambda: now[0])
    for i in range(5000):
        assert buckets.take(f"ip-{i}") == 0.0
    assert len(buckets) == 1000  # hard bound
    now[0] += 10  # everybody idle long enough to be full again
    for i in range(50):
        buckets.take(f"new-{i}")
    assert len(buckets) < 1000  # idle keys were dropped as calls came in
    # A limited key stays limited: eviction never forgets a client that is still throttled.
    for _ in range(5):
        buckets.take("hot")
    assert buckets.take("hot") > 0


async def test_healthz_reports_each_upstream(upstream):
    async with running_gateway(gateway_settings(upstream.addr)) as gw:
        for _ in range(50):  # the service flips to SERVING right after it starts
            r = await gw.get("/healthz")
            if r.status_code == 200:
                break
            await asyncio.sleep(0.05)
        assert r.status_code == 200
        assert r.json() == {"status": "SERVING", "upstreams": {"members": "SERVING"}}
        await upstream.stop()
        r = await gw.get("/healthz")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "NOT_SERVING"
    assert body["upstreams"]["members"] != "SERVING"


async def test_metrics_count_requests_by_route_template(gw, member_auth):
    await gw.get("/v1/members/me", headers=member_auth)
    await gw.get("/v1/members/42", headers=member_auth)  # its own id (another member's is 403)
    await gw.get("/v1/no/such/route")
    r = await gw.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'mall_gateway_requests_total{code="200",method="GET",route="/v1/{name=members/*}"} 2.0' in text
    assert 'mall_gateway_requests_total{code="404",method="GET",route="unmatched"} 1.0' in text
    assert 'mall_gateway_request_duration_seconds_bucket{code="200",le="0.005",method="GET"' in text or (
        "mall_gateway_request_duration_seconds_bucket" in text
    )
    assert "/v1/members/43" not in text  # raw paths never become labels


async def test_unsampled_requests_skip_the_instrumentation_and_propagate_not_sampled(
        gw, upstream, member_auth, spans, monkeypatch):
    from opentelemetry import trace
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

    from mallkit.telemetry import PresetIdGenerator

    provider = trace.get_tracer_provider()
    monkeypatch.setattr(provider, "sampler", ParentBased(ALWAYS_OFF))  # new traces: none sampled
    monkeypatch.setattr(provider, "id_generator", PresetIdGenerator())
    spans.clear()
    r = await gw.get("/v1/members/me", headers=member_auth)
    assert r.status_code == 200
    _, trace_id, _, flags = r.headers["traceparent"].split("-")
    assert flags == "00" and trace_id != "0" * 32  # logs still carry a trace id
    received = upstream.servicer.last("GetMember").metadata["traceparent"].split("-")
    assert received[1] == trace_id and received[3] == "00"  # the services are told: not sampled
    assert [s for s in spans.get_finished_spans() if format(s.context.trace_id, "032x") == trace_id] == []
    assert not [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]  # no HTTP span built
    # A caller's sampled trace is still followed through the instrumentation.
    r = await gw.get("/v1/members/me", headers={**member_auth, "traceparent": INCOMING})
    assert r.headers["traceparent"].split("-")[1] == TRACE_ID and r.headers["traceparent"].endswith("-01")
    assert any(s.kind == SpanKind.SERVER and format(s.context.trace_id, "032x") == TRACE_ID
               for s in spans.get_finished_spans())


async def test_the_access_log_is_one_line_per_request_with_the_route_only_when_asked(upstream, member_auth, caplog):
    caplog.set_level(logging.INFO, logger="gateway.access")
    for wanted in (True, False):
        caplog.clear()
        async with running_gateway(gateway_settings(upstream.addr, access_log=wanted)) as gw:
            ok = await gw.get("/v1/members/me", headers={**member_auth, "X-Request-Id": "req-log-1"})
            missing = await gw.get("/v1/members/404?secret=hunter2", headers=member_auth)
        lines = [r for r in caplog.records if r.name == "gateway.access"]
        if not wanted:
            assert lines == []
            continue
        assert (ok.status_code, missing.status_code) == (200, 400)  # an unknown query parameter
        assert [(r.route, r.status, r.request_id) for r in lines] == [
            ("/v1/{name=members/*}", 200, "req-log-1"), ("/v1/{name=members/*}", 400, missing.headers["x-request-id"])]
        assert all(r.duration_ms > 0 for r in lines)
        assert "hunter2" not in caplog.text and "members/404" not in caplog.text  # the template, not the path
