"""The command line of every service: ``python -m <svc> [serve|migrate|seed|...]``.

Each service's ``__main__.py`` calls :func:`main` with its name, settings class,
composition root and migrations folder, plus any commands of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from mallkit import migrations
from mallkit.db import create_engine
from mallkit.telemetry import register_settings_secrets, setup_logging, setup_tracing


@dataclass(frozen=True)
class Command:
    """An extra command: ``run(settings, args, engine)`` returns the exit status."""

    help: str
    run: Callable[[object, argparse.Namespace, AsyncEngine], Awaitable[int]]
    arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None


async def _serve(name: str, settings, build, worker: int = 0) -> None:
    from prometheus_client import start_http_server

    log = logging.getLogger(name)
    app = build(settings)
    port = await app.start()
    if settings.metrics_port and worker == 0:  # one /metrics per pod: the first worker's
        start_http_server(settings.metrics_port, addr=settings.host)
    log.info("%s listening on %s:%d", name, settings.host, port)
    print(f"{name} gRPC listening on {settings.host}:{port}", flush=True)
    await app.host.run_until_signalled(settings.grace_seconds, on_signal=_forward_signal if _children else None)
    await app.stop(0)


async def _dlq(name: str, settings, build, args: argparse.Namespace) -> int:
    """``dlq list`` / ``dlq replay SEQ``: dead letters of this service's consumers."""
    from mallkit.dlq import connect, describe
    from mallkit.events import list_dead_letters, replay_dead_letter

    app = build(settings)  # built, not started: its handlers, inbox and database
    bus = await connect(settings.platform)
    try:
        if args.action == "list":
            dead = await list_dead_letters(bus, name)
            for dl in dead:
                print(describe(dl))
            print(f"{len(dead)} dead letter(s) of {name}")
            return 0
        inbox = app.platform.consumers[0].inbox if app.platform.consumers else None
        if inbox is None:
            print(f"{name} consumes no events", file=sys.stderr)
            return 2
        try:
            dl = await replay_dead_letter(bus, args.seq, app.sessions, inbox, app.platform.subscriptions)
        except Exception as exc:
            print(f"replay of {args.seq} failed, the dead letter stays: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        print(f"replayed {args.seq}: {dl.event.type if dl.event else ''} applied once and removed")
        return 0
    finally:
        await bus.close()
        await app.platform.close()


async def _with_engine(settings, fn) -> int:
    engine = create_engine(settings.database_url, trace=False)
    try:
        return await fn(engine)
    finally:
        await engine.dispose()


async def _migrate(engine: AsyncEngine, service_dir: Path, revision: str) -> int:
    if revision.startswith("-") or revision == "base":
        await migrations.downgrade(engine, service_dir, revision)
    else:
        await migrations.upgrade(engine, service_dir, revision)
    return 0


_children: list[int] = []


def _fork_workers(name: str, settings) -> int:
    """``<SVC>_WORKERS`` > 1: fork the other worker processes (before any gRPC object, event loop
    or connection exists) and return this process's worker number. Every worker binds the same
    port with SO_REUSEPORT (the kernel spreads connections over them) and runs the whole service:
    its own pool and background work (relay, consumers and jobs are safe with several replicas).
    The first process forwards SIGTERM/SIGINT to the others, drains like them, and waits for them."""
    import os

    workers = getattr(settings, "workers", 1)
    if workers <= 1:
        return 0
    if not settings.port:
        raise SystemExit(f"{name}: {name.upper()}_WORKERS > 1 needs a fixed {name.upper()}_PORT")
    for n in range(1, workers):
        pid = os.fork()
        if pid == 0:
            _children.clear()
            return n
        _children.append(pid)

    logging.getLogger(name).info("%s: %d worker processes on port %d", name, workers, settings.port)
    return 0


def _forward_signal(signum: int) -> None:
    """Tell the other workers to drain too (SIGTERM or SIGINT reached the first one)."""
    import os

    for pid in _children:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _wait_workers() -> None:
    import os
    import signal

    for pid in _children:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    for pid in _children:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def main(
    *,
    name: str,
    settings_cls,
    build,
    service_dir: Path,
    seed: Callable[[AsyncEngine, object], Awaitable[None]] | None = None,
    commands: dict[str, Command] | None = None,
    argv: list[str] | None = None,
) -> None:
    parser = argparse.ArgumentParser(prog=name, description=f"The {name} service")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the gRPC server (default)")
    m = sub.add_parser("migrate", help=f"apply migrations to {name.upper()}_DATABASE_URL")
    m.add_argument("revision", nargs="?", default="head", help="target revision (head, base, -1 ...)")
    if seed is not None:
        sub.add_parser("seed", help="insert demo data (idempotent)")
    d = sub.add_parser("dlq", help="dead-lettered events of this service's consumers: list | replay SEQ")
    d.add_argument("action", choices=["list", "replay"])
    d.add_argument("seq", nargs="?", type=int, default=0)
    for cmd_name, cmd in (commands or {}).items():
        cmd.arguments(sub.add_parser(cmd_name, help=cmd.help))
    args = parser.parse_args(argv)
    settings = settings_cls()
    register_settings_secrets(settings)
    setup_logging(name, settings.platform.log_level, settings.platform.log_format == "json")
    status = 0
    if args.command in (None, "serve"):
        worker = _fork_workers(name, settings)
        setup_tracing(name)
        try:
            asyncio.run(_serve(name, settings, build, worker))
        finally:
            _wait_workers()
    elif args.command == "migrate":
        status = asyncio.run(_with_engine(settings, lambda e: _migrate(e, service_dir, args.revision)))
    elif args.command == "dlq":
        if args.action == "replay" and args.seq <= 0:
            parser.error("dlq replay needs the SEQ of a dead letter (see dlq list)")
        status = asyncio.run(_dlq(name, settings, build, args))
    elif args.command == "seed" and seed is not None:

        async def do_seed(engine: AsyncEngine) -> int:
            await seed(engine, settings)
            return 0

        status = asyncio.run(_with_engine(settings, do_seed))
    else:
        cmd = (commands or {})[args.command]
        status = asyncio.run(_with_engine(settings, lambda e: cmd.run(settings, args, e)))
    sys.exit(status)
