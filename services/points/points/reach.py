"""Reach: messages to members (points available, points expiring) queued in the business
transaction and sent later through the members service's SendReach by the reach job."""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from mallkit.db import insert_ignore, utcnow

from .models import ReachRequest


class Reach:
    async def queue(self, s: AsyncSession, member_id: int, key: str, template_id: str, purpose: str,
                    data: dict[str, str], page: str) -> None:
        now = utcnow()  # delivery runs on the wall clock, whatever the business clock says
        await insert_ignore(s, ReachRequest.__table__, [{
            "request_key": key[:64], "member_id": member_id, "template_id": template_id, "purpose": purpose,
            "page": page, "data": json.dumps(data, ensure_ascii=False), "attempts": 0, "next_attempt_time": now,
            "lease_until": None, "sent_time": None, "last_error": "", "create_time": now}])

    async def due(self, s: AsyncSession, now: datetime, batch: int) -> list[int]:
        rows = await s.execute(select(ReachRequest.id).where(ReachRequest.sent_time.is_(None),
                                                             ReachRequest.next_attempt_time <= now)
                               .order_by(ReachRequest.next_attempt_time, ReachRequest.id).limit(batch))
        return list(rows.scalars().all())
