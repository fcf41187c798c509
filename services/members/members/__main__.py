"""``python -m members [serve|migrate|seed|create-admin]``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from mallkit import migrations
from mallkit.db import create_engine
from mallkit.telemetry import setup_logging, setup_tracing

from .app import SERVICE_DIR, build
from .config import MembersSettings

log = logging.getLogger("members")


async def serve(settings: MembersSettings) -> None:
    from prometheus_client import start_http_server

    app = build(settings)
    port = await app.start()
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.host)
    log.info("members listening on %s:%d", settings.host, port)
    print(f"members gRPC listening on {settings.host}:{port}", flush=True)
    await app.host.run_until_signalled(settings.grace_seconds)
    await app.stop(0)


async def migrate(settings: MembersSettings, revision: str) -> None:
    engine = create_engine(settings.database_url, trace=False)
    try:
        if revision.startswith("-") or revision == "base":
            await migrations.downgrade(engine, SERVICE_DIR, revision)
        else:
            await migrations.upgrade(engine, SERVICE_DIR, revision)
    finally:
        await engine.dispose()


async def create_admin(settings: MembersSettings, username: str, password: str) -> None:
    from .seed import ensure_admin

    engine = create_engine(settings.database_url, trace=False)
    try:
        created = await ensure_admin(engine, username, password)
        print(f"admin {username!r} {'created' if created else 'already exists'}")
    finally:
        await engine.dispose()


async def seed(settings: MembersSettings) -> None:
    from .seed import seed_demo

    engine = create_engine(settings.database_url, trace=False)
    try:
        await seed_demo(engine)
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="members", description="The members service")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the gRPC server (default)")
    m = sub.add_parser("migrate", help="apply migrations (MEMBERS_DATABASE_URL)")
    m.add_argument("revision", nargs="?", default="head", help="target revision (head, base, -1 ...)")
    sub.add_parser("seed", help="insert demo data (idempotent)")
    a = sub.add_parser("create-admin", help="create the first admin staff account")
    a.add_argument("--username", default="admin")
    a.add_argument("--password", default=os.environ.get("MEMBERS_ADMIN_PASSWORD", ""),
                   help="default: $MEMBERS_ADMIN_PASSWORD")
    args = parser.parse_args(argv)
    settings = MembersSettings()
    setup_logging("members", settings.platform.log_level, settings.platform.log_format == "json")
    if args.command in (None, "serve"):
        setup_tracing("members")
        asyncio.run(serve(settings))
    elif args.command == "migrate":
        asyncio.run(migrate(settings, args.revision))
    elif args.command == "seed":
        asyncio.run(seed(settings))
    elif args.command == "create-admin":
        if len(args.password) < 10:
            sys.exit("create-admin: a password of at least 10 characters is required (--password or MEMBERS_ADMIN_PASSWORD)")
        asyncio.run(create_admin(settings, args.username, args.password))


if __name__ == "__main__":
    main()
