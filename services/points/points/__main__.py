"""``python -m points [serve|migrate|seed|check]``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from mallkit import migrations
from mallkit.db import create_engine
from mallkit.telemetry import setup_logging, setup_tracing

from .app import SERVICE_DIR, build
from .config import PointsSettings

log = logging.getLogger("points")


async def serve(settings: PointsSettings) -> None:
    from prometheus_client import start_http_server

    app = build(settings)
    port = await app.start()
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.host)
    log.info("points listening on %s:%d", settings.host, port)
    print(f"points gRPC listening on {settings.host}:{port}", flush=True)
    await app.host.run_until_signalled(settings.grace_seconds)
    await app.stop(0)


async def migrate(settings: PointsSettings, revision: str) -> None:
    engine = create_engine(settings.database_url, trace=False)
    try:
        if revision.startswith("-") or revision == "base":
            await migrations.downgrade(engine, SERVICE_DIR, revision)
        else:
            await migrations.upgrade(engine, SERVICE_DIR, revision)
    finally:
        await engine.dispose()


async def seed(settings: PointsSettings) -> None:
    from .seed import seed_demo

    engine = create_engine(settings.database_url, trace=False)
    try:
        await seed_demo(engine, settings)
    finally:
        await engine.dispose()


async def check(settings: PointsSettings) -> bool:
    from .checker import check_ledger

    engine = create_engine(settings.database_url, trace=False)
    try:
        report = await check_ledger(engine)
    finally:
        await engine.dispose()
    for problem in report.problems:
        print(problem)
    print(f"points ledger: {report.accounts} accounts, {report.entries} entries, "
          f"{'OK' if report.ok else f'{len(report.problems)} problems'}")
    return report.ok


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="points", description="The points service")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the gRPC server (default)")
    m = sub.add_parser("migrate", help="apply migrations (POINTS_DATABASE_URL)")
    m.add_argument("revision", nargs="?", default="head", help="target revision (head, base, -1 ...)")
    sub.add_parser("seed", help="insert demo data (idempotent)")
    sub.add_parser("check", help="verify every account equals its ledger and lots (exit 1 if not)")
    args = parser.parse_args(argv)
    settings = PointsSettings()
    setup_logging("points", settings.platform.log_level, settings.platform.log_format == "json")
    if args.command in (None, "serve"):
        setup_tracing("points")
        asyncio.run(serve(settings))
    elif args.command == "migrate":
        asyncio.run(migrate(settings, args.revision))
    elif args.command == "seed":
        asyncio.run(seed(settings))
    elif args.command == "check":
        sys.exit(0 if asyncio.run(check(settings)) else 1)


if __name__ == "__main__":
    main()
