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

        async def order_columns():
            async with engine.connect() as conn:
                return {c["name"] for c in await conn.run_sync(lambda c: inspect(c).get_columns("orders"))}

        assert {"orders", "order_items", "skus", "coupons", "flash_sales", "outbox_events", "journey_steps"} <= await tables()
        assert {"tier", "points_multiplier_percent"} <= await order_columns()  # 0003: the tier snapshot
        await migrations.downgrade(engine, SERVICE_DIR, "0002")
        assert not {"tier", "points_multiplier_percent"} & await order_columns()
        await migrations.downgrade(engine, SERVICE_DIR, "base")
        assert await tables() <= {"alembic_version"}
        await migrations.upgrade(engine, SERVICE_DIR, "head")
        assert "orders" in await tables()
