"""``python -m community [serve|migrate|seed]``."""

from __future__ import annotations

import argparse
import asyncio
import logging

from mallkit import migrations
from mallkit.db import create_engine
from mallkit.telemetry import setup_logging, setup_tracing

from .app import SERVICE_DIR, build
from .config import CommunitySettings

log = logging.getLogger("community")


async def serve(settings: CommunitySettings) -> None:
    from prometheus_client import start_http_server

    app = build(settings)
    port = await app.start()
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.host)
    log.info("community listening on %s:%d", settings.host, port)
    print(f"community gRPC listening on {settings.host}:{port}", flush=True)
    await app.host.run_until_signalled(settings.grace_seconds)
    await app.stop(0)


async def migrate(settings: CommunitySettings, revision: str) -> None:
    engine = create_engine(settings.database_url, trace=False)
    try:
        if revision.startswith("-") or revision == "base":
            await migrations.downgrade(engine, SERVICE_DIR, revision)
        else:
            await migrations.upgrade(engine, SERVICE_DIR, revision)
    finally:
        await engine.dispose()


async def seed(settings: CommunitySettings) -> None:
    from .seed import seed_demo

    engine = create_engine(settings.database_url, trace=False)
    try:
        await seed_demo(engine, settings)
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="community", description="The community service")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the gRPC server (default)")
    m = sub.add_parser("migrate", help="apply migrations (COMMUNITY_DATABASE_URL)")
    m.add_argument("revision", nargs="?", default="head", help="target revision (head, base, -1 ...)")
    sub.add_parser("seed", help="insert demo data (idempotent)")
    args = parser.parse_args(argv)
    settings = CommunitySettings()
    setup_logging("community", settings.platform.log_level, settings.platform.log_format == "json")
    if args.command in (None, "serve"):
        setup_tracing("community")
        asyncio.run(serve(settings))
    elif args.command == "migrate":
        asyncio.run(migrate(settings, args.revision))
    elif args.command == "seed":
        asyncio.run(seed(settings))


if __name__ == "__main__":
    main()
