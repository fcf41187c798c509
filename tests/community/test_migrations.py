"""Migrations upgrade, downgrade and upgrade again, on the test backend."""

from __future__ import annotations

from sqlalchemy import inspect

from community.app import SERVICE_DIR
from mallkit import migrations
from mallkit.testing import service_database


async def test_upgrade_downgrade_upgrade(backend, tmp_root):
    async with service_database("community_mig", backend, tmp_root, SERVICE_DIR) as (url, engine):
        async def tables():
            async with engine.connect() as conn:
                return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))

        assert {"groups", "memberships", "posts", "views", "shares", "share_ancestors", "broadcast_days", "messages",
                "quick_replies", "outbox_events", "idempotency_keys"} <= await tables()
        await migrations.downgrade(engine, SERVICE_DIR, "base")
        assert await tables() <= {"alembic_version"}
        await migrations.upgrade(engine, SERVICE_DIR, "head")
        assert "groups" in await tables()
