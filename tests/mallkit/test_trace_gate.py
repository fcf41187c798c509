"""Services pay for tracing only when sampled: the gRPC server gate, the SQL listener, the client interceptor."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import Tracer, TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio
from opentelemetry.trace import SpanKind

from mall.members.v1 import members_service_pb2 as pb
from mallkit.telemetry import PresetIdGenerator, presample


class Started(list):
    """Spans the SDK starts in this process (recorded or not): (name, trace id of the parent, task)."""

    def of_trace(self, trace_id: str) -> list[str]:
        return [name for name, parent, _ in self if parent == trace_id]

    def in_this_task(self) -> list[str]:
        return [name for name, _, task in self if task is asyncio.current_task()]


@pytest.fixture
def started(monkeypatch):
    seen = Started()
    original = Tracer.start_span

    def spy(self, name, context=None, *args, **kwargs):
        parent = trace.get_current_span(context).get_span_context()
        seen.append((name, format(parent.trace_id, "032x") if parent.is_valid else "", asyncio.current_task()))
        return original(self, name, context, *args, **kwargs)

    monkeypatch.setattr(Tracer, "start_span", spy)
    return seen


def traceparent(trace_id: str, sampled: bool) -> tuple[str, str]:
    return "traceparent", f"00-{trace_id}-{'2' * 16}-{'01' if sampled else '00'}"


async def finished(spans, trace_id: str, want: int, deadline: float = 10.0) -> list:
    """The finished spans of ``trace_id`` once there are at least ``want`` (or the deadline passed)."""
    end = time.monotonic() + deadline
    while True:
        mine = [s for s in spans.get_finished_spans() if format(s.context.trace_id, "032x") == trace_id]
        if len(mine) >= want or time.monotonic() > end:
            return mine
        await asyncio.sleep(0.01)


async def test_unsampled_call_starts_no_span_in_the_service(members, spans, started):
    _, md = await members.login()
    trace_id = uuid.uuid4().hex
    me = await members.stub.GetMember(pb.GetMemberRequest(name="members/me"),
                                      metadata=(*md, traceparent(trace_id, sampled=False)))
    assert me.name.startswith("members/")
    assert started.of_trace(trace_id) == []  # no server span, no SQL span: not even started and dropped
    assert await finished(spans, trace_id, want=1, deadline=0.2) == []


async def test_sampled_call_yields_server_and_sql_spans_under_the_callers_trace(members, spans, started):
    _, md = await members.login()
    trace_id = uuid.uuid4().hex
    await members.stub.GetMember(pb.GetMemberRequest(name="members/me"), metadata=(*md, traceparent(trace_id, sampled=True)))
    mine = await finished(spans, trace_id, want=2)
    server = [s for s in mine if s.kind == SpanKind.SERVER and "GetMember" in s.name]
    sql = [s for s in mine if s.attributes.get("db.system") or s.attributes.get("db.system.name")]
    assert len(server) == 1 and sql, [s.name for s in mine]
    assert server[0].parent.span_id == int("2" * 16, 16)
    assert all(s.parent.span_id == server[0].context.span_id for s in sql)


async def test_unsampled_http_request_starts_no_span_anywhere(gateway, members, started):
    """Gateway, its outgoing gRPC call, the members server and its SQL: nothing started."""
    session = (await gateway.post("/v1/members:loginWithWechat", json={"code": f"u{uuid.uuid4().hex[:10]}#1"})).json()
    trace_id = uuid.uuid4().hex
    r = await gateway.get("/v1/members/me", headers={"authorization": f"Bearer {session['accessToken']}",
                                                      "traceparent": f"00-{trace_id}-{'3' * 16}-00"})
    assert r.status_code == 200
    assert started.of_trace(trace_id) == []


async def test_sql_outside_a_recording_span_starts_no_span(members, started):
    from sqlalchemy import text

    async with members.engine.connect() as conn:
        assert (await conn.execute(text("SELECT 1"))).scalar() == 1
    assert started.in_this_task() == []


def test_presample_follows_the_parent_flag_and_the_ratio_for_roots():
    never = TracerProvider(sampler=ParentBasedTraceIdRatio(0.0), id_generator=PresetIdGenerator())
    always = TracerProvider(sampler=ParentBasedTraceIdRatio(1.0), id_generator=PresetIdGenerator())
    trace_id = uuid.uuid4().hex
    sampled = {"traceparent": f"00-{trace_id}-{'4' * 16}-01"}
    unsampled = {"traceparent": f"00-{trace_id}-{'4' * 16}-00"}

    followed = presample(sampled, "m", SpanKind.SERVER, never)  # a sampled parent wins
    assert followed.traced and followed.preset is None
    parent = trace.get_current_span(followed.context).get_span_context()  # extracted once, the span's parent
    assert (format(parent.trace_id, "032x"), parent.span_id, parent.is_remote) == (trace_id, int("4" * 16, 16), True)
    skip = presample(unsampled, "m", SpanKind.SERVER, always)
    assert not skip.traced
    span = trace.get_current_span(skip.context).get_span_context()
    assert format(span.trace_id, "032x") == trace_id and not span.trace_flags.sampled

    root = presample({}, "m", SpanKind.SERVER, always)
    assert root.traced and root.preset  # the root span gets the id the sampler was asked about
    dropped = presample({}, "m", SpanKind.SERVER, never)
    assert not dropped.traced and not trace.get_current_span(dropped.context).get_span_context().trace_flags.sampled
    assert presample({}, "m", SpanKind.SERVER, TracerProvider()) == (True, None, None)  # random ids: OTel decides
