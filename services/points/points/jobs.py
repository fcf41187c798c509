"""Scheduled work of the points service, safe with several replicas running.

* :meth:`Jobs.expire` expires lots past their expiry time. Each lot is handled
  in its own transaction under the member's account lock and only while the
  lot is not yet marked ``expired`` (and the ledger key ``expire:{lot}`` is
  unique), so two replicas never expire a lot twice.
* :meth:`Jobs.remind` claims, per member, the lots expiring within the
  reminder horizon that were never reminded (conditional UPDATE of
  ``reminded_time``) and queues one reach for them.
* :meth:`Jobs.send_reaches` sends queued reaches through the members
  service's SendReach, each claimed with a lease; its request_id is the
  queued row's deterministic key, so a send repeated after a crash is
  replayed by members, not sent twice.

Each is also callable directly (tests pass ``now``).
"""

from __future__ import annotations

import json
import logging
import random
from datetime import datetime, timedelta

import grpc
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mallkit import jobs
from mallkit.db import run_transaction, utcnow

from .members_client import MembersClient
from .models import ReachRequest
from .service import PointsService

log = logging.getLogger("points.jobs")


class Jobs:
    def __init__(self, service: PointsService, sessions: async_sessionmaker[AsyncSession], members: MembersClient,
                 batch: int = 200):
        self.service = service
        self.sessions = sessions
        self.members = members
        self.batch = batch

    async def expire(self, now: datetime | None = None) -> int:
        """Expire every due lot; returns the points expired."""
        now = now or self.service.clock()
        total = 0
        while True:
            async with self.sessions() as s:
                due = await self.service.due_lots(s, now, self.batch)
            if not due:
                return total
            for lot_id, member_id in due:
                total += await run_transaction(
                    self.sessions, lambda s, lot_id=lot_id, member_id=member_id: self.service.expire_lot(s, lot_id, member_id, now))
            if len(due) < self.batch:
                return total

    async def remind(self, now: datetime | None = None) -> int:
        """Queue one expiry reminder per member with unreminded lots expiring soon; returns members reminded."""
        now = now or self.service.clock()
        reminded = 0
        while True:
            async with self.sessions() as s:
                members = await self.service.members_to_remind(s, now, self.batch)
            for member_id in members:
                amount = await run_transaction(
                    self.sessions, lambda s, member_id=member_id: self.service.remind_member(s, member_id, now))
                reminded += bool(amount)
            if len(members) < self.batch:
                return reminded

    async def send_reaches(self, now: datetime | None = None) -> int:
        """Send due queued reaches; returns how many were sent."""
        now = now or utcnow()
        async with self.sessions() as s:
            due = await self.service.due_reaches(s, now, self.batch)
        sent = 0
        for row_id in due:
            async def take(s, row_id=row_id):
                if not await jobs.claim(s, ReachRequest.__table__, row_id, timedelta(seconds=30), now=utcnow()):
                    return None
                return (await s.execute(select(ReachRequest).where(ReachRequest.id == row_id))).scalar_one()

            row = await run_transaction(self.sessions, take)
            if row is None or row.sent_time is not None:
                continue
            try:
                await self.members.send_reach(row.member_id, row.template_id, json.loads(row.data), row.page,
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
            await run_transaction(self.sessions, lambda s, row_id=row_id, values=values: s.execute(
                update(ReachRequest).where(ReachRequest.id == row_id).values(**values)))
        return sent

    async def expiry_pass(self) -> None:
        await self.remind()
        await self.expire()

    def background(self, expiry_seconds: float, reach_seconds: float):
        return [jobs.periodic("points_expiry", expiry_seconds, self.expiry_pass),
                jobs.periodic("points_reach", reach_seconds, self.send_reaches)]
