"""Alembic, the same way for every service.

Each service keeps ``alembic.ini`` and ``migrations/`` (its own history and
its own ``alembic_version`` table in its own database). ``env.py`` is two
lines that call :func:`run_env`. :func:`upgrade` / :func:`downgrade` run
migrations from Python (tests, the dev launcher, ``python -m <service> migrate``);
in Kubernetes the migration Job runs the same command before rollout.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command, context
from alembic.config import Config
from sqlalchemy import MetaData, pool
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def config(service_dir: Path, url: str = "") -> Config:
    cfg = Config(str(service_dir / "alembic.ini"))
    cfg.set_main_option("script_location", str(service_dir / "migrations"))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def run_env(metadata: MetaData) -> None:
    """Body of every service's ``migrations/env.py``."""
    cfg = context.config

    def migrate(connection) -> None:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()

    connection = cfg.attributes.get("connection")
    if connection is not None:
        migrate(connection)
        return

    async def run_async() -> None:
        engine = create_async_engine(cfg.get_main_option("sqlalchemy.url") or "", poolclass=pool.NullPool)
        async with engine.begin() as conn:
            await conn.run_sync(migrate)
        await engine.dispose()

    asyncio.run(run_async())


async def _run(engine: AsyncEngine, service_dir: Path, fn) -> None:
    cfg = config(service_dir)

    def go(connection) -> None:
        cfg.attributes["connection"] = connection
        fn(cfg)

    async with engine.begin() as conn:
        await conn.run_sync(go)


async def upgrade(engine: AsyncEngine, service_dir: Path, revision: str = "head") -> None:
    await _run(engine, service_dir, lambda cfg: command.upgrade(cfg, revision))


async def downgrade(engine: AsyncEngine, service_dir: Path, revision: str = "base") -> None:
    await _run(engine, service_dir, lambda cfg: command.downgrade(cfg, revision))
