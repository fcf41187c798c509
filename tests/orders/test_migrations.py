"""Orders migrations upgrade, downgrade and upgrade again, on the test backend."""

from __future__ import annotations

from sqlalchemy import inspect

from mallkit import migrations
from mallkit.testing import service_database
from orders.app import SERVICE_DIR


async def test_upgrade_downgrade_upgrade(backend, tmp_root):
    async with service_database("orders_mig", backend, tmp_root, SERVICE_DIR) as (url, engine):
        async def tables():
            async with engine.connect() as conn:
                return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))

        assert {"orders", "order_items", "skus", "coupons", "flash_sales", "outbox_events", "journey_steps"} <= await tables()
        await migrations.downgrade(engine, SERVICE_DIR, "base")
        assert await tables() <= {"alembic_version"}
        await migrations.upgrade(engine, SERVICE_DIR, "head")
        assert "orders" in await tables()
