"""gRPC channels to the services, generic unary calls and health checks.

One ``grpc.aio`` channel per service, opened in the app's lifespan, without interceptors
(grpc.aio's interceptor machinery costs a task and wrappers per call): every call carries the
current trace context in its metadata (``traceparent``, the sampled flag off for an unsampled
request, so the services record nothing either), and a call inside a recording span (a sampled
request) gets a CLIENT span of its own (:meth:`Upstreams.call`): one trace from HTTP to SQL.

Calls carry the configured deadline and are retried by gRPC itself on UNAVAILABLE only (the
service config below), which is safe for every method: the call never reached a handler.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from gateway.config import GatewaySettings
from gateway.routing import Route
from mallkit.clients import LOAD_BALANCING, LOAD_BALANCING_OPTIONS, channel_target

_TRACER = trace.get_tracer("gateway.upstream")
log = logging.getLogger(__name__)

_KEEPALIVE = [
    # Ping an idle connection only while calls are in flight, rarely enough that
    # servers with default settings never answer with "too many pings".
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
]


def service_config(service_full_name: str) -> str:
    return json.dumps(
        {
            **LOAD_BALANCING,  # round_robin over every pod, skipping draining ones
            "methodConfig": [
                {
                    "name": [{"service": service_full_name}],
                    "retryPolicy": {
                        "maxAttempts": 3,
                        "initialBackoff": "0.05s",
                        "maxBackoff": "0.5s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        }
    )


class Upstreams:
    """The channels of the exposed services (``start`` / ``close`` in the lifespan)."""

    def __init__(self, settings: GatewaySettings, services: dict[str, str]):
        """``services``: registry name -> full gRPC service name."""
        self.settings = settings
        self.services = services
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._callables: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}
        self._spans: dict[str, tuple[str, dict[str, str]]] = {}

    async def start(self) -> None:
        for name, full_name in self.services.items():
            options = [
                *LOAD_BALANCING_OPTIONS,
                ("grpc.enable_retries", 1),
                ("grpc.service_config", service_config(full_name)),
                *_KEEPALIVE,
            ]
            self._channels[name] = grpc.aio.insecure_channel(channel_target(self.settings.upstream_addr(name)),
                                                             options=options)

    async def close(self, grace: float | None = None) -> None:
        channels, self._channels = self._channels, {}
        self._callables.clear()
        await asyncio.gather(*(c.close(grace) for c in channels.values()))

    def _callable(self, route: Route) -> grpc.aio.UnaryUnaryMultiCallable:
        path = route.rpc_path
        call = self._callables.get(path)
        if call is None:
            call = self._channels[route.service].unary_unary(
                path,
                request_serializer=route.request_class.SerializeToString,
                response_deserializer=route.response_class.FromString,
            )
            self._callables[path] = call
        return call

    def _span_of(self, path: str) -> tuple[str, dict[str, str]]:
        """The CLIENT span's name and ``rpc.*`` attributes of an RPC path, worked out once."""
        found = self._spans.get(path)
        if found is None:
            name = path.lstrip("/")
            service, _, method = name.rpartition("/")
            found = self._spans[path] = (name, {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method})
        return found

    async def call(self, route: Route, request: Message, metadata: Sequence[tuple[str, str]]) -> Message:
        """Call the route's RPC; raises grpc.aio.AioRpcError on failure.

        The current trace context (if any) travels in the metadata (``traceparent``). Inside a
        recording span (a sampled request) the call gets a CLIENT span of its own, named and
        described as OpenTelemetry's client interceptor would (``rpc.*``, ``rpc.grpc.status_code``)."""
        call = self._callable(route)
        timeout = self.settings.call_timeout_seconds
        if not trace.get_current_span().is_recording():
            carrier: dict[str, str] = {}
            propagate.inject(carrier)  # traceparent (sampled flag off) of the current trace; nothing outside one
            return await call(request, metadata=(*metadata, *carrier.items()), timeout=timeout)
        name, attributes = self._span_of(route.rpc_path)
        # start_span, not start_as_current_span: nothing runs under the CLIENT span here but the call,
        # whose metadata carries it; no context to attach and restore, no context-manager layers.
        span = _TRACER.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
        carrier = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        code = grpc.StatusCode.UNKNOWN  # unless the call answers or fails with a status (cancelled: UNKNOWN)
        try:
            reply = await call(request, metadata=(*metadata, *carrier.items()), timeout=timeout)
            code = grpc.StatusCode.OK
            return reply
        except grpc.aio.AioRpcError as err:
            code = err.code()
            raise
        finally:
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code is not grpc.StatusCode.OK:  # as OpenTelemetry's client interceptor: any other code
                span.set_status(Status(StatusCode.ERROR, code.name))
            span.end()

    async def health(self) -> dict[str, str]:
        """Name -> "SERVING", another health status, or the gRPC error code of the check."""

        async def check(name: str) -> str:
            stub = health_pb2_grpc.HealthStub(self._channels[name])
            try:
                resp = await stub.Check(
                    health_pb2.HealthCheckRequest(service=self.services[name]),
                    timeout=self.settings.health_timeout_seconds,
                )
            except grpc.aio.AioRpcError as err:
                return err.code().name
            return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

        names = list(self._channels)
        results = await asyncio.gather(*(check(n) for n in names))
        return dict(zip(names, results, strict=True))
