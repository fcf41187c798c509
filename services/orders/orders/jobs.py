"""Scheduled work of the orders service, each job safe with several replicas running it.

Every job claims what it acts on (a conditional UPDATE or a lease) and takes an
injectable ``now`` so tests can move time. :func:`run_once` is one pass of all.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from mallkit.db import run_transaction, utcnow
from mallkit.errors import FailedPrecondition
from mallkit.jobs import Job

if TYPE_CHECKING:
    from .app import OrdersApp


async def remind_unpaid(app: OrdersApp, now: datetime | None = None) -> int:
    """Unpaid orders older than ``pay_reminder_seconds`` get one pay_reminder journey step."""
    after = timedelta(seconds=app.settings.pay_reminder_seconds)
    return await run_transaction(app.sessions, lambda s: app.lifecycle.remind_unpaid(s, now or utcnow(), after))


async def cancel_overdue(app: OrdersApp, now: datetime | None = None) -> int:
    """Unpaid orders past their pay deadline are cancelled (reason "timeout")."""
    now = now or utcnow()
    ids = await run_transaction(app.sessions, lambda s: app.lifecycle.overdue(s, now))
    n = 0
    for oid in ids:
        try:
            await run_transaction(app.sessions, lambda s, oid=oid: app.lifecycle.cancel(s, oid, "timeout", now=now))
            n += 1
        except FailedPrecondition:
            pass  # paid or cancelled meanwhile, or another replica won
    return n


async def fail_expired_groups(app: OrdersApp, now: datetime | None = None) -> int:
    """Groups not full by their deadline: FAILED, unpaid orders cancelled, paid ones refunded."""
    now = now or utcnow()
    ids = await run_transaction(app.sessions, lambda s: app.group_buying.expired(s, now))
    for gid in ids:
        refunds = await run_transaction(app.sessions, lambda s, gid=gid: app.lifecycle.fail_group(s, gid, now))
        for rid in refunds:
            await app.payment.process_refund(rid)
    return len(ids)


async def complete_due(app: OrdersApp, now: datetime | None = None) -> int:
    """Shipped orders whose after-sales window closed become COMPLETED (order.completed)."""
    return await run_transaction(app.sessions, lambda s: app.lifecycle.complete_due(s, now or utcnow()))


async def process_refunds(app: OrdersApp, now: datetime | None = None) -> int:
    """Pending refunds are sent to WeChat Pay again (lease per refund)."""
    return await app.payment.process_refunds()


async def run_journey(app: OrdersApp, now: datetime | None = None) -> int:
    """One batch (up to 50) of due journey steps sent through members' reach."""
    return await app.journey.send_due(now or utcnow())


async def run_campaigns(app: OrdersApp, now: datetime | None = None) -> int:
    """Coupon campaigns with a free lease, each to its end (one page per transaction); returns pages issued."""
    return await app.campaigns.run_due(now or utcnow())


async def run_once(app: OrdersApp, now: datetime | None = None) -> None:
    await remind_unpaid(app, now)
    await cancel_overdue(app, now)
    await fail_expired_groups(app, now)
    await complete_due(app, now)
    await process_refunds(app, now)
    for _ in range(10):  # up to 500 journey messages a pass, 50 per batch
        if await run_journey(app, now) < 50:
            break


def schedule(app: OrdersApp) -> list[Job]:
    """The service's scheduled jobs, run by the platform's host (``ORDERS_JOBS_ENABLED``)."""
    if not app.settings.jobs_enabled:
        return []
    return [Job("orders", app.settings.jobs_interval_seconds, lambda: run_once(app)),
            Job("orders_campaigns", app.settings.jobs_interval_seconds, lambda: run_campaigns(app))]
