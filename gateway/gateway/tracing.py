"""Tracing budgeted at the edge: the ASGI instrumentation only for requests that are sampled.

OpenTelemetry's ASGI middleware costs the gateway CPU on every request (span, attributes,
wrapped ``receive``/``send``, metrics) even when the span is not recorded. :class:`SampledTracing`
asks the provider's sampler first, the way the SDK would for this request:

* an incoming ``traceparent``: the parent-based sampler follows its sampled flag;
* none: the gateway draws the trace id and asks the sampler (a ratio sampler decides by the
  id; :class:`mallkit.telemetry.PresetIdGenerator` gives the root span that same id).

Sampled: the request goes through the instrumentation, unchanged (one trace from HTTP to SQL).
Not sampled: it skips it, with a non-recording span of that trace as the current context, so
logs carry the trace id and the upstream calls propagate ``traceparent`` with the flag off
(parent-based samplers in the services then record nothing either). Without the SDK
(``OTEL_SDK_DISABLED=true``) every request skips it.
"""

from __future__ import annotations

import random

from opentelemetry import context, propagate, trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from starlette.types import ASGIApp, Receive, Scope, Send

from mallkit.telemetry import PresetIdGenerator, preset_trace_id


class SampledTracing:
    """``OpenTelemetryMiddleware`` (same arguments) for the sampled requests only."""

    def __init__(self, app: ASGIApp, **otel_options) -> None:
        self.app = app
        self.traced = OpenTelemetryMiddleware(app, **otel_options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.traced(scope, receive, send)
            return
        provider = trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider) or getattr(provider, "_disabled", False):
            await self.app(scope, receive, send)  # no SDK: nothing would be recorded
            return
        carrier = {}
        for k, v in scope["headers"]:
            if k in (b"traceparent", b"tracestate"):
                carrier[k.decode()] = v.decode("latin-1")
        parent = propagate.extract(carrier) if carrier else None
        parent_span = trace.get_current_span(parent).get_span_context() if parent is not None else None
        if parent_span is not None and parent_span.is_valid:
            trace_id = parent_span.trace_id
        elif isinstance(provider.id_generator, PresetIdGenerator):
            trace_id, parent = provider.id_generator.generate_trace_id(), None
        else:  # another id generator: the root's id is unknown here, let the instrumentation decide
            await self.traced(scope, receive, send)
            return
        sampled = provider.sampler.should_sample(parent, trace_id, "HTTP", SpanKind.SERVER).decision.is_sampled()
        if sampled:
            token = preset_trace_id.set(trace_id if parent is None else None)
            try:
                await self.traced(scope, receive, send)
            finally:
                preset_trace_id.reset(token)
            return
        span = NonRecordingSpan(SpanContext(trace_id, random.getrandbits(64) or 1, is_remote=False,
                                            trace_flags=TraceFlags(TraceFlags.DEFAULT),
                                            trace_state=parent_span.trace_state if parent_span else None))
        token = context.attach(trace.set_span_in_context(span, parent))
        try:
            await self.app(scope, receive, send)
        finally:
            context.detach(token)
