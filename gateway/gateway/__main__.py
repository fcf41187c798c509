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


def _loop_and_parser() -> dict:
    """uvloop and httptools when installed (requirements.txt pins both): about 10 % less gateway
    CPU per request than asyncio + h11 (docs/performance.md)."""
    import importlib.util

    return {"loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
            "http": "httptools" if importlib.util.find_spec("httptools") else "h11"}


def _setup() -> GatewaySettings:
    settings = GatewaySettings()
    setup_tracing("gateway")
    register_settings_secrets(settings)
    setup_logging("gateway", settings.platform.log_level, json_logs=settings.platform.log_format != "text")
    return settings


def worker_app():
    """The app of one worker process (``GATEWAY_WORKERS`` > 1: uvicorn imports this in each)."""
    return create_app(_setup())


def main() -> None:
    settings = _setup()
    common = dict(
        host=settings.host,
        port=settings.port,
        log_config=None,  # uvicorn's loggers go through our JSON logging
        access_log=False,  # its line per request (~60 us each, even filtered out it works out the path): ours is
                           # GATEWAY_ACCESS_LOG, with the route, duration and request id
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        timeout_graceful_shutdown=settings.grace_seconds,
        server_header=False,
        **_loop_and_parser(),
    )
    if settings.workers > 1:
        # uvicorn's supervisor binds the port once and spawns the workers on it; on SIGTERM it
        # stops them (each drains its requests in flight) and exits.
        config = uvicorn.Config("gateway.__main__:worker_app", factory=True, workers=settings.workers, **common)
        sock = config.bind_socket()
        port = sock.getsockname()[1]
        print(f"gateway listening on http://{settings.host}:{port} ({settings.workers} workers)", flush=True)
        from uvicorn.supervisors import Multiprocess

        Multiprocess(config, sockets=[sock]).run()
        return
    config = uvicorn.Config(create_app(settings), **common)
    _Server(config).run()


if __name__ == "__main__":
    main()
