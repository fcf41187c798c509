"""OpenTelemetry tracing, JSON logs with trace ids, and Prometheus metrics.

Configured from the standard ``OTEL_*`` variables:

* ``OTEL_EXPORTER_OTLP_ENDPOINT`` set: spans are exported over OTLP/gRPC;
* ``OTEL_TRACES_EXPORTER=console``: spans are printed (local debugging);
* otherwise spans are created (trace ids in logs and ``traceparent`` headers)
  but not exported.

Instrumentation is explicit: the gRPC server and client interceptors, the
SQLAlchemy engine of each service and the gateway's ASGI app. Health checks are
not traced. It costs only when sampled: the gateway and each service's gRPC server
ask the sampler first (:func:`presample`) and run an unsampled request without
the instrumentation, under a non-recording span of its trace (the sampled flag
off travels on in ``traceparent``); the SQL listener and the unary client
interceptor do nothing but propagate inside a span that is not recording.

No secret reaches a log line (:func:`install_redaction`, installed by
:func:`setup_logging`): every record, whichever handler writes it, has tokens,
``Bearer`` values, PEM blocks, secret-named query/JSON parameters (``secret``,
``js_code``, ``session_key``, ``access_token``, ``password``...) and the exact values
of the process's own secrets replaced before any handler sees it; the HTTP
client's loggers (httpx, httpcore: request lines with the WeChat app secret and
the login code in the query) stay at WARNING whatever the level.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import NamedTuple, TypeVar

import grpc
from opentelemetry import context, propagate, trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.grpc import _aio_client, aio_client_interceptors, aio_server_interceptor
from opentelemetry.instrumentation.grpc import filters as grpc_filters
from opentelemetry.instrumentation.grpc._server import _wrap_rpc_behavior
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from prometheus_client import Counter, Histogram

_HEALTH = grpc_filters.negate(grpc_filters.service_prefix("grpc."))
#: Methods the server gate never traces (health, reflection): a prefix test, not ``_HEALTH`` (the
#: instrumentation's filter, an isinstance check against a Protocol per call: 3 % of a cached read).
_UNTRACED_PREFIX = "/grpc."

RPC_DURATION = Histogram(
    "mall_rpc_server_duration_seconds",
    "Time to serve an RPC.",
    ["service", "method", "code"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
RPC_ERRORS = Counter(
    "mall_rpc_server_errors_total", "RPCs that ended with an error.", ["service", "method", "code"]
)
EVENTS_REFUSED = Counter(
    "mall_events_refused_total",
    "Events a consumer refused for a business reason (recorded and applied once, never retried).",
    ["service", "event_type", "reason"],
)


#: The trace id the next root span gets (set by an edge that sampled it in advance; see PresetIdGenerator).
preset_trace_id: ContextVar[int | None] = ContextVar("mall_preset_trace_id", default=None)


class PresetIdGenerator(RandomIdGenerator):
    """Random ids, except the root trace id an edge chose and sampled in advance.

    The gateway decides whether a request is sampled before any instrumentation runs
    (unsampled requests skip the ASGI instrumentation). For a ratio sampler the decision
    depends on the trace id, so the gateway draws the id, asks the provider's sampler, and
    on "sampled" hands the id over here: the root span gets that id and the sampler answers
    the same again."""

    def generate_trace_id(self) -> int:
        preset = preset_trace_id.get()
        return preset if preset is not None else super().generate_trace_id()


def setup_tracing(service_name: str, exporter: SpanExporter | None = None) -> trace.TracerProvider:
    """Install the global tracer provider once per process and return it.

    A provider already installed (by a test, or by another component in the
    same process) is kept, so every component reports into the same one.
    """
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        if exporter is not None:
            current.add_span_processor(BatchSpanProcessor(exporter))
        return current
    # The sampler comes from OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (the SDK reads them; default
    # parentbased_always_on). Production sets parentbased_traceidratio with a ratio (k8s/base): a request
    # that arrives sampled stays sampled through every service, a new one is sampled at that ratio.
    provider = TracerProvider(
        resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)}),
        id_generator=PresetIdGenerator(),
    )
    if exporter is None:
        if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        elif os.environ.get("OTEL_TRACES_EXPORTER") == "console":
            exporter = ConsoleSpanExporter(out=sys.stderr)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return trace.get_tracer_provider()


_T = TypeVar("_T")


class Sampling(NamedTuple):
    """What an edge (the gateway, a service's gRPC server) decided before any instrumentation ran."""

    traced: bool  #: go through the instrumentation (sampled, or the decision is the instrumentation's)
    preset: int | None = None  #: traced as a new root: the trace id the root span gets (PresetIdGenerator)
    #: not traced: the context to run under (a non-recording span of the trace); traced: the caller's
    #: context extracted from the carrier, the parent of the span (None: a new root, or not asked here)
    context: Context | None = None


def presample(carrier: Mapping[str, str], name: str, kind: SpanKind,
              provider: trace.TracerProvider | None = None) -> Sampling | None:
    """Ask the provider's sampler, the way the SDK would for this request, before any span exists.

    ``carrier`` holds the incoming ``traceparent``/``tracestate`` (or nothing): a parent-based
    sampler follows the parent's sampled flag; with no parent the edge draws the trace id and
    asks the sampler (a ratio sampler decides by the id; :class:`PresetIdGenerator` gives the
    root span that same id, so the instrumentation's sampler answers the same again).
    ``None``: no SDK (``OTEL_SDK_DISABLED=true``), nothing would be recorded: run uninstrumented."""
    provider = provider or trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider) or getattr(provider, "_disabled", False):
        return None
    parent = propagate.extract(carrier) if carrier else None
    parent_span = trace.get_current_span(parent).get_span_context() if parent is not None else None
    if parent_span is not None and parent_span.is_valid:
        trace_id = parent_span.trace_id
    elif isinstance(provider.id_generator, PresetIdGenerator):
        trace_id, parent = provider.id_generator.generate_trace_id(), None
    else:  # another id generator: the root's id is unknown here, let the instrumentation decide
        return Sampling(True)
    if provider.sampler.should_sample(parent, trace_id, name, kind).decision.is_sampled():
        return Sampling(True, preset=trace_id if parent is None else None, context=parent)
    span = NonRecordingSpan(SpanContext(trace_id, random.getrandbits(64) or 1, is_remote=False,
                                        trace_flags=TraceFlags(TraceFlags.DEFAULT),
                                        trace_state=parent_span.trace_state if parent_span else None))
    return Sampling(False, context=trace.set_span_in_context(span, parent))


def _run_with(behavior, response_streaming: bool, enter: Callable[[], _T], leave: Callable[[_T], None]):
    """An RPC behaviour that runs ``behavior`` between ``enter()`` and ``leave(token)``."""
    if response_streaming:
        async def stream(request, servicer_context):
            token = enter()
            try:
                async for response in behavior(request, servicer_context):
                    yield response
            finally:
                leave(token)

        return stream

    async def unary(request, servicer_context):
        token = enter()
        try:
            return await behavior(request, servicer_context)
        finally:
            leave(token)

    return unary


class SampledServerInterceptor(grpc.aio.ServerInterceptor):
    """OpenTelemetry's gRPC server interceptor for the sampled calls only (health and reflection never).

    The OTel interceptor costs every call a span, attributes and a wrapped servicer context even
    when nothing is recorded. This gate reads the incoming ``traceparent`` from the call's metadata
    and asks the sampler first (:func:`presample`). Sampled: a unary call runs in a server span
    of our own (:func:`_server_span`: OTel's name, kind and ``rpc.*`` attributes, without its
    wrapped servicer context), with the SQL spans under it (one trace from HTTP to SQL); a
    streaming call goes through the OTel interceptor. Not
    sampled: the handler runs directly with a non-recording span of that trace as the current
    context, so logs keep the trace id and outgoing calls carry ``traceparent`` with the sampled
    flag off. Without the SDK every call runs directly."""

    def __init__(self) -> None:
        self.traced = aio_server_interceptor(filter_=_HEALTH)

    async def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(_UNTRACED_PREFIX):
            return await continuation(handler_call_details)
        carrier = {k: v for k, v in handler_call_details.invocation_metadata or ()
                   if k in ("traceparent", "tracestate") and isinstance(v, str)}
        decision = presample(carrier, handler_call_details.method, SpanKind.SERVER)
        if decision is None:
            return await continuation(handler_call_details)
        if decision.traced:
            if carrier or decision.preset is not None:  # the sampler decided here: a span of our own
                handler = await continuation(handler_call_details)
                if handler is not None and handler.unary_unary is not None:
                    return _server_span(handler, handler_call_details.method, decision.context, decision.preset)
            handler = await self.traced.intercept_service(continuation, handler_call_details)
            if decision.preset is None:
                return handler
            trace_id = decision.preset
            return _wrap_rpc_behavior(handler, lambda behavior, _req, streaming: _run_with(
                behavior, streaming, lambda: preset_trace_id.set(trace_id), preset_trace_id.reset))
        unsampled = decision.context or context.get_current()
        return _wrap_rpc_behavior(await continuation(handler_call_details), lambda behavior, _req, streaming: _run_with(
            behavior, streaming, lambda: context.attach(unsampled), context.detach))


#: Server errors by the OpenTelemetry conventions for gRPC server spans (the others are the caller's).
_SERVER_ERRORS = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED,
                            grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS})


_SERVER_TRACER = trace.get_tracer("mallkit.grpc")  # a proxy until the provider is installed


def _server_span(handler, method: str, parent: Context | None, preset: int | None):
    """The unary handler of a sampled call, run inside one SERVER span named like OpenTelemetry's
    (``package.Service/Method``, the ``rpc.*`` attributes and ``rpc.grpc.status_code``), a child
    of the caller's span (``parent``, extracted once by :func:`presample`) or a root with the
    ``preset`` trace id. It does what the
    instrumentation's interceptor does for a unary call, without its wrapped servicer context and
    per-call attribute work (most of what a sampled call cost, docs/performance.md)."""
    name = method.lstrip("/")
    service, _, rpc = name.rpartition("/")
    attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc}
    inner = handler.unary_unary
    tracer = _SERVER_TRACER

    parent = parent if parent is not None else Context()

    async def behaviour(request, servicer_context):
        token = preset_trace_id.set(preset)
        try:
            span = tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)
        finally:
            preset_trace_id.reset(token)
        attached = context.attach(trace.set_span_in_context(span, parent))
        code = grpc.StatusCode.CANCELLED  # unless it returns or raises
        try:
            response = await inner(request, servicer_context)
            code = servicer_context.code() or grpc.StatusCode.OK
            return response
        except Exception as exc:
            code = servicer_context.code() or grpc.StatusCode.UNKNOWN
            if not isinstance(exc, grpc.aio.AbortError):
                span.record_exception(exc)
            raise
        finally:
            if not isinstance(code, grpc.StatusCode):  # set_code() with an int
                code = next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code in _SERVER_ERRORS:
                span.set_status(Status(StatusCode.ERROR, code.name))
            context.detach(attached)
            span.end()

    return grpc.unary_unary_rpc_method_handler(
        behaviour, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)


def grpc_server_interceptor() -> grpc.aio.ServerInterceptor:
    """Server-side span per sampled RPC (health and reflection excluded): :class:`SampledServerInterceptor`."""
    return SampledServerInterceptor()


def _unsampled_trace() -> bool:
    """The current span belongs to a trace that is not sampled (not merely: no trace at all)."""
    span = trace.get_current_span()
    return not span.is_recording() and span.get_span_context().is_valid


class _SampledUnaryClient(_aio_client.UnaryUnaryAioClientInterceptor):
    """OTel's unary client interceptor, except inside an unsampled trace: there it only propagates
    the trace context (``traceparent`` with the flag off) and skips the span, its attributes and
    the awaits of the call's code and details."""

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        if _unsampled_trace() and not self.tracing_skipped(client_call_details):
            return await continuation(self.propagate_trace_in_details(client_call_details), request)
        return await super().intercept_unary_unary(continuation, client_call_details, request)


def grpc_client_interceptors():
    """Client-side span per outgoing RPC, carrying W3C trace context (unary calls in an unsampled
    trace: the context only, no span)."""
    interceptors = aio_client_interceptors(filter_=_HEALTH)
    first = interceptors[0]
    return [_SampledUnaryClient(first._tracer, filter_=_HEALTH), *interceptors[1:]]


def instrument_engine(engine) -> None:
    """Trace every SQL statement of an async SQLAlchemy engine that runs inside a recording span.

    OTel's listener starts a span per statement (and works out its attributes) even when the
    statement runs in an unsampled trace or outside any; this one returns at once there."""
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer

    class SampledEngineTracer(EngineTracer):
        def _before_cur_exec(self, conn, cursor, statement, params, context, executemany):
            if not trace.get_current_span().is_recording():
                return statement, params
            return super()._before_cur_exec(conn, cursor, statement, params, context, executemany)

    if getattr(engine.sync_engine, "_mall_traced", False):
        return
    from opentelemetry import metrics

    tracer = trace.get_tracer("mallkit.sqlalchemy")
    usage = metrics.get_meter("mallkit.sqlalchemy").create_up_down_counter(
        "db.client.connections.usage", unit="connections", description="Connections in use or idle"
    )
    SampledEngineTracer(tracer, engine.sync_engine, connections_usage=usage)
    engine.sync_engine._mall_traced = True


def current_trace_id() -> str:
    """Hex trace id of the current span, or "" outside a trace."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


REDACTED = "[REDACTED]"
#: Names whose values are secrets wherever they appear as ``name=value`` or ``"name": "value"``.
SECRET_NAMES = (
    "secret", "appsecret", "app_secret", "js_code", "code", "session_key", "sessionKey", "access_token", "accessToken",
    "refresh_token", "token", "password", "apiv3_key", "api_key", "private_key", "paySign", "pay_sign",
    "authorization", "signature",
)
_NAMES = "|".join(sorted(SECRET_NAMES, key=len, reverse=True))
_PATTERNS = [
    (re.compile(r"-----BEGIN [A-Z ]+-----.*?-----END [A-Z ]+-----", re.DOTALL), REDACTED),
    (re.compile(r"(\w+://[^/\s:@]+:)[^@\s/]+@"), r"\1" + REDACTED + "@"),  # passwords in URLs (nats://u:p@host)
    (re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]+"), REDACTED),  # JWTs
    (re.compile(r"(?i)\b(bearer|WECHATPAY2-SHA256-RSA2048)\s+[^\s\"',]+"), r"\1 " + REDACTED),
    (re.compile(rf"(?i)(?<![A-Za-z0-9_])({_NAMES})=([^&\s\"',;)]+)"), r"\1=" + REDACTED),
    (re.compile(rf"(?i)([\"']({_NAMES})[\"']\s*:\s*)[\"'][^\"']*[\"']"), r'\1"' + REDACTED + '"'),
]
_secrets: set[str] = set()


def register_secrets(values: Iterable[str]) -> None:
    """Values that must never appear in a log line (the process's own secrets)."""
    for v in values:
        v = (v or "").strip()
        if len(v) >= 8:
            _secrets.add(v)
            _secrets.update(line.strip() for line in v.splitlines()
                            if len(line.strip()) >= 16 and not line.startswith("-----"))


def register_settings_secrets(settings) -> None:
    """Register every ``SecretStr`` (and PEM) setting of a settings object and of its ``platform``."""
    from pydantic import SecretStr
    from pydantic_settings import BaseSettings

    values = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            values.append(value.get_secret_value())
        elif isinstance(value, BaseSettings):
            register_settings_secrets(value)
        elif isinstance(value, str) and "PRIVATE KEY" in value:
            values.append(value)
    register_secrets(values)


def redact(text: str) -> str:
    """``text`` with every secret it carries replaced."""
    for pattern, repl in _PATTERNS:  # shapes first: a PEM block goes whole, markers included
        text = pattern.sub(repl, text)
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


_base_factory = None


def install_redaction() -> None:
    """Redact every log record when it is created, so every handler (ours, pytest's, a library's)
    only ever sees the redacted message and traceback. Idempotent."""
    global _base_factory
    if _base_factory is not None:
        return
    _base_factory = base = logging.getLogRecordFactory()
    plain = logging.Formatter()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = base(*args, **kwargs)
        try:
            record.msg, record.args = redact(record.getMessage()), ()
            if record.exc_info and not record.exc_text:
                record.exc_text = redact(plain.formatException(record.exc_info))
            if record.stack_info:
                record.stack_info = redact(record.stack_info)
        except Exception:  # a broken format string: keep the record, drop what could not be checked
            record.msg, record.args = "(log message dropped: could not be redacted)", ()
        return record

    logging.setLogRecordFactory(factory)
    for name in ("httpx", "httpcore", "hpack"):  # request lines carry query strings (WeChat's secret, codes)
        logging.getLogger(name).setLevel(logging.WARNING)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the trace and span ids of the record."""

    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        ctx = trace.get_current_span().get_span_context()
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if ctx.is_valid:
            out["trace_id"] = format(ctx.trace_id, "032x")
            out["span_id"] = format(ctx.span_id, "016x")
        for key in ("method", "code", "event_id", "event_type", "peer", "route", "status", "duration_ms", "request_id"):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(service: str, level: str = "INFO", json_logs: bool = True) -> None:
    """Log to stderr, as JSON lines (production) or plain text (``LOG_FORMAT=text``), redacted."""
    install_redaction()
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_mall", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler._mall = True  # type: ignore[attr-defined]
    if json_logs:
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
