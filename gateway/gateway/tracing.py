"""Tracing budgeted at the edge: a span only for requests that are sampled.

OpenTelemetry's ASGI middleware costs the gateway CPU on every request (span, attributes,
wrapped ``receive``/``send``, metrics) even when the span is not recorded. :class:`SampledTracing`
asks the provider's sampler first, the way the SDK would for this request
(:func:`mallkit.telemetry.presample`, which each service's gRPC server gate uses too):

* an incoming ``traceparent``: the parent-based sampler follows its sampled flag;
* none: the gateway draws the trace id and asks the sampler (a ratio sampler decides by the
  id; :class:`mallkit.telemetry.PresetIdGenerator` gives the root span that same id).

Sampled: one SERVER span of the gateway's own (:class:`SampledTracing`; one trace from HTTP
to SQL, the upstream call a CLIENT span under it, ``gateway.upstream``).
Not sampled: it skips it, with a non-recording span of that trace as the current context, so
logs carry the trace id and the upstream calls propagate ``traceparent`` with the flag off
(parent-based samplers in the services then record nothing either). Without the SDK
(``OTEL_SDK_DISABLED=true``) every request skips it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry import context, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Receive, Scope, Send

from mallkit.telemetry import presample, preset_trace_id


class SampledTracing:
    """One SERVER span per sampled HTTP request (none for ``untraced`` paths, none unsampled).

    The span is what OpenTelemetry's ASGI instrumentation made of it here (its name and
    ``http.route`` from ``span_details(scope)``, ``http.request.method``, ``url.path``,
    ``http.response.status_code``, an error status from 500 on), without its wrapped
    ``receive``/``send``, its per-request metrics and attribute extraction: most of what a
    sampled request cost the gateway (docs/performance.md). A request arriving with a sampled
    ``traceparent`` continues that trace; a new root gets the trace id the sampler was asked
    about (:class:`mallkit.telemetry.PresetIdGenerator`)."""

    def __init__(self, app: ASGIApp, span_details: Callable[[Scope], tuple[str, dict]],
                 untraced: Iterable[str] = ()) -> None:
        self.app = app
        self.span_details = span_details
        self.untraced = frozenset(untraced)
        self.tracer = trace.get_tracer("gateway.http")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.untraced:
            await self.app(scope, receive, send)
            return
        carrier = {}
        for k, v in scope["headers"]:
            if k in (b"traceparent", b"tracestate"):
                carrier[k.decode()] = v.decode("latin-1")
        decision = presample(carrier, "HTTP", SpanKind.SERVER)
        if decision is None:
            await self.app(scope, receive, send)  # no SDK: nothing would be recorded
        elif decision.traced:
            await self._traced(scope, receive, send, decision.context, decision.preset)
        else:
            ctx_token = context.attach(decision.context)
            try:
                await self.app(scope, receive, send)
            finally:
                context.detach(ctx_token)

    async def _traced(self, scope: Scope, receive: Receive, send: Send, parent: Context | None,
                      preset: int | None) -> None:
        name, attributes = self.span_details(scope)
        attributes = {**attributes, "http.request.method": scope.get("method", ""), "url.path": scope["path"],
                      "url.scheme": scope.get("scheme", "http")}
        parent = parent if parent is not None else Context()  # the incoming traceparent, extracted once
        token = preset_trace_id.set(preset)
        try:
            span = self.tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)
        finally:
            preset_trace_id.reset(token)
        status = 500

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        attached = context.attach(trace.set_span_in_context(span, parent))
        try:
            await self.app(scope, receive, send_status)
        except Exception as exc:
            span.record_exception(exc)
            raise
        finally:
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            context.detach(attached)
            span.end()
