"""Tracing budgeted at the edge: the ASGI instrumentation only for requests that are sampled.

OpenTelemetry's ASGI middleware costs the gateway CPU on every request (span, attributes,
wrapped ``receive``/``send``, metrics) even when the span is not recorded. :class:`SampledTracing`
asks the provider's sampler first, the way the SDK would for this request
(:func:`mallkit.telemetry.presample`, which each service's gRPC server gate uses too):

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

from opentelemetry import context
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.trace import SpanKind
from starlette.types import ASGIApp, Receive, Scope, Send

from mallkit.telemetry import presample, preset_trace_id


class SampledTracing:
    """``OpenTelemetryMiddleware`` (same arguments) for the sampled requests only."""

    def __init__(self, app: ASGIApp, **otel_options) -> None:
        self.app = app
        self.traced = OpenTelemetryMiddleware(app, **otel_options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.traced(scope, receive, send)
            return
        carrier = {}
        for k, v in scope["headers"]:
            if k in (b"traceparent", b"tracestate"):
                carrier[k.decode()] = v.decode("latin-1")
        decision = presample(carrier, "HTTP", SpanKind.SERVER)
        if decision is None:
            await self.app(scope, receive, send)  # no SDK: nothing would be recorded
        elif decision.traced:
            token = preset_trace_id.set(decision.preset)
            try:
                await self.traced(scope, receive, send)
            finally:
                preset_trace_id.reset(token)
        else:
            ctx_token = context.attach(decision.context)
            try:
                await self.app(scope, receive, send)
            finally:
                context.detach(ctx_token)
