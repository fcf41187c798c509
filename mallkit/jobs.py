"""Scheduled work inside a service process, safe with several replicas.

:func:`periodic` turns a job into a background task of :class:`ServiceHost`:
it runs every ``interval`` seconds until the host stops, and a failing pass is
logged and retried at the next tick. The job itself must claim what it works
on so that replicas running the same job never act twice: a conditional
UPDATE whose WHERE clause still holds only for the first claimant, e.g.

    UPDATE orders SET state = 'CANCELLED' WHERE id = :id AND state = 'PENDING_PAYMENT'

(rowcount 1: this replica won), or :func:`claim` for rows carrying a lease.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Table, or_, update
from sqlalchemy.ext.asyncio import AsyncSession

from mallkit.db import utcnow

log = logging.getLogger("mallkit.jobs")


@dataclass(frozen=True)
class Job:
    """A scheduled job of a service (declared in its ``jobs.py``): ``run()`` every ``interval`` seconds."""

    name: str
    interval: float
    run: Callable[[], Awaitable[object]]


def periodic(name: str, interval: float, job: Callable[[], Awaitable[object]]):
    """A background task running ``job()`` every ``interval`` seconds."""

    async def run(stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await job()
            except Exception:
                log.exception("job %s failed; retrying next tick", name)
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                pass

    run.__name__ = f"job_{name}"
    return run


async def claim(session: AsyncSession, table: Table, row_id: int, lease: timedelta, now: datetime | None = None) -> bool:
    """Take a lease on one row (``lease_until`` column); False if another holder has it."""
    now = now or utcnow()
    result = await session.execute(
        update(table)
        .where(table.c.id == row_id, or_(table.c.lease_until.is_(None), table.c.lease_until < now))
        .values(lease_until=now + lease)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]
