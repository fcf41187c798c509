"""`make revision SVC=<svc> MSG="..."`: autogenerate a migration against a scratch SQLite at head."""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from alembic import command

from mallkit import migrations
from mallkit.db import create_engine

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    if len(sys.argv) != 3 or not sys.argv[2]:
        sys.exit('usage: make revision SVC=<service> MSG="what changes"')
    service, message = sys.argv[1], sys.argv[2]
    service_dir = ROOT / "services" / service
    with tempfile.TemporaryDirectory() as d:
        url = f"sqlite+aiosqlite:///{d}/scratch.db"

        async def to_head() -> None:
            engine = create_engine(url, trace=False)
            await migrations.upgrade(engine, service_dir)
            await engine.dispose()

        asyncio.run(to_head())
        versions = sorted((service_dir / "migrations" / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))
        rev_id = f"{len(versions) + 1:04d}"
        command.revision(migrations.config(service_dir, url), message=message, autogenerate=True, rev_id=rev_id)


if __name__ == "__main__":
    main()
