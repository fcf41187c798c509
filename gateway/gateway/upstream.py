"""gRPC channels to the services, generic unary calls and health checks.

Two ``grpc.aio`` channels per service, opened in the app's lifespan, with the same target
and options (so gRPC's global subchannel pool gives both the same connections):

* the *traced* one has the OpenTelemetry client interceptor: a call made inside a recording
  span (a sampled request) gets its client span, and W3C trace context travels in the
  metadata (one trace from HTTP to SQL);
* the *plain* one has no interceptor: every other call (the unsampled requests, most of
  them; health checks) skips grpc.aio's interceptor machinery (a task and wrappers per call)
  and carries the trace context itself (``traceparent`` with the sampled flag off, from the
  current non-recording span), so the services still know the request is not sampled.

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

from gateway.config import GatewaySettings
from gateway.routing import Route
from mallkit.clients import LOAD_BALANCING, LOAD_BALANCING_OPTIONS, channel_target
from mallkit.telemetry import grpc_client_interceptors

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
        self._channels: dict[str, grpc.aio.Channel] = {}  # plain: no interceptor
        self._traced: dict[str, grpc.aio.Channel] = {}  # the OpenTelemetry client interceptor
        #: RPC path -> (plain, traced) multicallables
        self._callables: dict[str, tuple[grpc.aio.UnaryUnaryMultiCallable, grpc.aio.UnaryUnaryMultiCallable]] = {}

    async def start(self) -> None:
        for name, full_name in self.services.items():
            options = [
                *LOAD_BALANCING_OPTIONS,
                ("grpc.enable_retries", 1),
                ("grpc.service_config", service_config(full_name)),
                *_KEEPALIVE,
            ]
            target = channel_target(self.settings.upstream_addr(name))
            self._channels[name] = grpc.aio.insecure_channel(target, options=options)
            self._traced[name] = grpc.aio.insecure_channel(
                target, options=options, interceptors=grpc_client_interceptors()
            )

    async def close(self, grace: float | None = None) -> None:
        channels = [*self._channels.values(), *self._traced.values()]
        self._channels, self._traced = {}, {}
        self._callables.clear()
        await asyncio.gather(*(c.close(grace) for c in channels))

    def _callables_of(self, route: Route) -> tuple[grpc.aio.UnaryUnaryMultiCallable, grpc.aio.UnaryUnaryMultiCallable]:
        path = route.rpc_path
        pair = self._callables.get(path)
        if pair is None:
            pair = tuple(
                channels[route.service].unary_unary(
                    path,
                    request_serializer=route.request_class.SerializeToString,
                    response_deserializer=route.response_class.FromString,
                )
                for channels in (self._channels, self._traced)
            )
            self._callables[path] = pair
        return pair

    async def call(self, route: Route, request: Message, metadata: Sequence[tuple[str, str]]) -> Message:
        """Call the route's RPC; raises grpc.aio.AioRpcError on failure.

        Inside a recording span: through the interceptor (a client span). Otherwise on the
        plain channel, with the current trace context (if any) added to the metadata here."""
        plain, traced = self._callables_of(route)
        if trace.get_current_span().is_recording():
            return await traced(request, metadata=tuple(metadata), timeout=self.settings.call_timeout_seconds)
        carrier: dict[str, str] = {}
        propagate.inject(carrier)  # traceparent (sampled flag off) of the current trace; nothing outside one
        return await plain(
            request, metadata=(*metadata, *carrier.items()), timeout=self.settings.call_timeout_seconds
        )

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
