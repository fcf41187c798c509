"""Channels from one service to another.

Each channel traces its calls, sends the calling service's own token unless
the call already carries one, gives every call a deadline, and retries only
UNAVAILABLE (from the gRPC service config), which is safe because a request
that did not reach the server had no effect; mutations also carry request ids.
"""

from __future__ import annotations

import json

import grpc

from mallkit.auth import TokenCodec
from mallkit.telemetry import grpc_client_interceptors

RETRY_SERVICE_CONFIG = json.dumps(
    {
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
    """A channel to ``target`` ("host:port") on behalf of service ``caller``."""
    return grpc.aio.insecure_channel(
        target,
        options=[
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
