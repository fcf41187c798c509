"""Migrations upgrade, downgrade and upgrade again, on the test backend; the demo seed is idempotent."""

from __future__ import annotations

from sqlalchemy import func, inspect, select

from mallkit import migrations
from mallkit.testing import service_database
from points.app import SERVICE_DIR
from points.checker import check_ledger
from points.models import Item, Task
from points.seed import seed_demo


async def test_upgrade_downgrade_upgrade_and_seed(backend, tmp_root):
    async with service_database("points_mig", backend, tmp_root, SERVICE_DIR) as (url, engine):
        async def tables():
            async with engine.connect() as conn:
                return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))

        assert {"points_accounts", "points_entries", "points_lots", "items", "redemptions", "outbox_events",
                "idempotency_keys"} <= await tables()
        await migrations.downgrade(engine, SERVICE_DIR, "base")
        assert await tables() <= {"alembic_version"}
        await migrations.upgrade(engine, SERVICE_DIR, "head")
        await seed_demo(engine)
        await seed_demo(engine)
        async with engine.connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(Task))).scalar_one() == 6
            kinds = set((await conn.execute(select(Item.kind))).scalars().all())
        assert kinds == {1, 2, 3}
        assert (await check_ledger(engine)).ok
