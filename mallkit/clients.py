"""Channels from one service to another.

Each channel traces its calls, sends the calling service's own token unless
the call already carries one, gives every call a deadline, and retries only
UNAVAILABLE (from the gRPC service config), which is safe because a request
that did not reach the server had no effect; mutations also carry request ids.

Load balancing is client-side: a "host:port" target is resolved through DNS
(``dns:///host:port``), which for a Kubernetes headless Service returns every
ready pod, and the channel spreads calls over all of them (``round_robin``)
instead of pinning every call to the one HTTP/2 connection ``pick_first``
would open. With client-side health checking (``healthCheckConfig``) the
channel watches each pod's overall gRPC health and stops sending new calls to
a pod as soon as it turns NOT_SERVING (its drain on SIGTERM).
"""

from __future__ import annotations

import json

import grpc

from mallkit.auth import TokenCodec
from mallkit.telemetry import grpc_client_interceptors

#: Client-side load balancing of every channel to a service (see the module docstring).
LOAD_BALANCING: dict = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": ""},
}

#: Channel options that go with :data:`LOAD_BALANCING`: gRPC turns client-side
#: health checking off unless the policy asks for it, and the DNS resolver may be
#: asked again at most every 5 s (pods come and go during a rollout).
LOAD_BALANCING_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.lb_policy_name", "round_robin"),
    ("grpc.dns_min_time_between_resolutions_ms", 5000),
]

_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:", "xds:", "passthrough:")


def channel_target(target: str) -> str:
    """``host:port`` -> ``dns:///host:port`` (every address of the name); a target
    that already names a resolver scheme is kept as it is."""
    return target if target.startswith(_SCHEMES) or "://" in target else f"dns:///{target}"


RETRY_SERVICE_CONFIG = json.dumps(
    {
        **LOAD_BALANCING,
        "methodConfig": [
            {
                "name": [{}],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


class _ServiceAuth(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, codec: TokenCodec, caller: str, timeout: float):
        self.codec = codec
        self.caller = caller
        self.timeout = timeout

    async def intercept_unary_unary(self, continuation, details, request):
        metadata = list(details.metadata or ())
        if not any(k == "authorization" for k, _ in metadata):
            metadata.append(("authorization", f"Bearer {self.codec.service_token(self.caller)}"))
        details = details._replace(
            metadata=grpc.aio.Metadata(*metadata),
            timeout=details.timeout if details.timeout is not None else self.timeout,
        )
        return await continuation(details, request)


def open_channel(target: str, *, codec: TokenCodec, caller: str, timeout: float = 5.0) -> grpc.aio.Channel:
    """A channel to ``target`` ("host:port", or a gRPC target URI) on behalf of
    service ``caller``, balanced over every address the target resolves to."""
    return grpc.aio.insecure_channel(
        channel_target(target),
        options=[
            *LOAD_BALANCING_OPTIONS,
            ("grpc.service_config", RETRY_SERVICE_CONFIG),
            ("grpc.enable_retries", 1),
            ("grpc.keepalive_time_ms", 30000),
        ],
        interceptors=[*grpc_client_interceptors(), _ServiceAuth(codec, caller, timeout)],
    )


class Peers:
    """Lazily opened channels to the other services, by name."""

    def __init__(self, addr_of, *, codec: TokenCodec, caller: str, timeout: float = 5.0):
        self._addr_of = addr_of
        self._codec = codec
        self._caller = caller
        self._timeout = timeout
        self._channels: dict[str, grpc.aio.Channel] = {}

    def channel(self, service: str) -> grpc.aio.Channel:
        if service not in self._channels:
            self._channels[service] = open_channel(
                self._addr_of(service), codec=self._codec, caller=self._caller, timeout=self._timeout
            )
        return self._channels[service]

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()
