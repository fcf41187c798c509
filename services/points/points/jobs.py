"""Scheduled work of the points service, safe with several replicas running.

* :func:`expire` expires lots past their expiry time. Each lot is handled in
  its own transaction under the member's account lock and only while the lot
  is not yet marked ``expired`` (and the ledger key ``expire:{lot}`` is
  unique), so two replicas never expire a lot twice.
* :func:`remind` claims, per member, the lots expiring within the reminder
  horizon that were never reminded (conditional UPDATE of ``reminded_time``)
  and queues one reach for them.
* :func:`send_reaches` sends queued reaches through the members service's
  SendReach, each claimed with a lease; its request_id is the queued row's
  deterministic key, so a send repeated after a crash is replayed by members,
  not sent twice.

Each is a plain function of the app (tests pass ``now``); :func:`run_once` does one pass.
"""

from __future__ import annotations

import json
import logging
import random
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import grpc
from sqlalchemy import select, update

from mallkit import jobs
from mallkit.db import run_transaction, utcnow

from .models import ReachRequest

if TYPE_CHECKING:
    from .app import PointsApp

log = logging.getLogger("points.jobs")

BATCH = 200


async def expire(app: PointsApp, now: datetime | None = None) -> int:
    """Expire every due lot; returns the points expired."""
    now = now or app.ledger.clock()
    total = 0
    while True:
        async with app.sessions() as s:
            due = await app.expiry.due_lots(s, now, BATCH)
        if not due:
            return total
        for lot_id, member_id in due:
            total += await run_transaction(
                app.sessions, lambda s, lot_id=lot_id, member_id=member_id: app.expiry.expire_lot(s, lot_id, member_id,
                                                                                                  now))
        if len(due) < BATCH:
            return total


async def remind(app: PointsApp, now: datetime | None = None) -> int:
    """Queue one expiry reminder per member with unreminded lots expiring soon; returns members reminded."""
    now = now or app.ledger.clock()
    reminded = 0
    while True:
        async with app.sessions() as s:
            members = await app.expiry.members_to_remind(s, now, BATCH)
        for member_id in members:
            amount = await run_transaction(
                app.sessions, lambda s, member_id=member_id: app.expiry.remind_member(s, member_id, now))
            reminded += bool(amount)
        if len(members) < BATCH:
            return reminded


async def send_reaches(app: PointsApp, now: datetime | None = None) -> int:
    """Send due queued reaches; returns how many were sent."""
    now = now or utcnow()
    async with app.sessions() as s:
        due = await app.reach.due(s, now, BATCH)
    sent = 0
    for row_id in due:
        async def take(s, row_id=row_id):
            if not await jobs.claim(s, ReachRequest.__table__, row_id, timedelta(seconds=30), now=utcnow()):
                return None
            return (await s.execute(select(ReachRequest).where(ReachRequest.id == row_id))).scalar_one()

        row = await run_transaction(app.sessions, take)
        if row is None or row.sent_time is not None:
            continue
        try:
            await app.members.send_reach(row.member_id, row.template_id, json.loads(row.data), row.page,
                                         row.purpose, row.request_key)
        except grpc.aio.AioRpcError as err:
            delay = random.uniform(0, min(300.0, 1.0 * 2 ** min(row.attempts, 10)))
            log.warning("reach %s failed (%s), retry in %.0fs", row.request_key, err.code().name, delay)
            values = {"attempts": ReachRequest.attempts + 1, "lease_until": None,
                      "next_attempt_time": utcnow() + timedelta(seconds=delay),
                      "last_error": f"{err.code().name}"[:255]}
        else:
            values = {"attempts": ReachRequest.attempts + 1, "lease_until": None, "sent_time": utcnow()}
            sent += 1
        await run_transaction(app.sessions, lambda s, row_id=row_id, values=values: s.execute(
            update(ReachRequest).where(ReachRequest.id == row_id).values(**values)))
    return sent


async def expiry_pass(app: PointsApp, now: datetime | None = None) -> None:
    await remind(app, now)
    await expire(app, now)


async def run_once(app: PointsApp, now: datetime | None = None) -> None:
    """One pass of every job."""
    await expiry_pass(app, now)
    await send_reaches(app, now)


async def cash_pass(app: PointsApp, now: datetime | None = None) -> None:
    """Points + cash: unpaid redemptions past their deadline expire; late payments are refunded."""
    assert app.cash is not None
    await app.cash.expire_unpaid(now)
    await app.cash.process_refunds()


def schedule(app: PointsApp) -> list[jobs.Job]:
    """The service's scheduled jobs, run by the platform's host."""
    return [jobs.Job("points_expiry", app.settings.expiry_job_seconds, lambda: expiry_pass(app)),
            jobs.Job("points_reach", app.settings.reach_job_seconds, lambda: send_reaches(app)),
            jobs.Job("points_cash", app.settings.cash_job_seconds, lambda: cash_pass(app))]
