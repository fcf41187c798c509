"""Migrations upgrade, downgrade and upgrade again, on the test backend; the demo seed is idempotent."""

from __future__ import annotations

from sqlalchemy import func, inspect, select

from mallkit import migrations
from mallkit.testing import service_database
from points.app import SERVICE_DIR
from points.checker import check_ledger
from points.models import Account, Item, Task
from points.seed import seed_demo
from tests.fixtures.points import points_settings


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
        settings = points_settings(url, "127.0.0.1:1")
        await seed_demo(engine, settings)
        await seed_demo(engine, settings)
        async with engine.connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(Task))).scalar_one() == 6
            kinds = set((await conn.execute(select(Item.kind))).scalars().all())
        assert kinds == {1, 2, 3}
        assert (await check_ledger(engine)).ok
        async with engine.connect() as conn:  # the demo members can afford a mall item, once
            balances = dict((await conn.execute(select(Account.member_id, Account.available))).all())
            cheapest = (await conn.execute(select(func.min(Item.points_price)))).scalar_one()
        assert set(balances) == {1, 2, 3} and min(balances.values()) >= cheapest, (balances, cheapest)
