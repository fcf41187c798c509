"""``python -m gateway``: serve the gateway with uvicorn until SIGTERM/SIGINT.

On a signal uvicorn stops accepting connections, lets requests in flight
finish (up to ``GATEWAY_GRACE_SECONDS``), then the lifespan closes the
channels to the services; uvicorn then re-raises the signal, so the exit
status is the signal's (143 for SIGTERM), as for any process stopped by it.
A failed start (port taken, lifespan error) exits with status 3.
"""

from __future__ import annotations

import uvicorn

from gateway.app import create_app
from gateway.config import GatewaySettings
from mallkit.telemetry import register_settings_secrets, setup_logging, setup_tracing


class _Server(uvicorn.Server):
    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        port = self.servers[0].sockets[0].getsockname()[1]  # the real one when GATEWAY_PORT=0
        print(f"gateway listening on http://{self.config.host}:{port}", flush=True)


def main() -> None:
    settings = GatewaySettings()
    setup_tracing("gateway")
    register_settings_secrets(settings)
    setup_logging("gateway", settings.platform.log_level, json_logs=settings.platform.log_format != "text")
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,  # uvicorn's loggers go through our JSON logging
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        timeout_graceful_shutdown=settings.grace_seconds,
        server_header=False,
    )
    _Server(config).run()


if __name__ == "__main__":
    main()
