"""Reach: subscription consent per template (credits from wx.requestSubscribeMessage) and subscribe
messages sent through WeChat within a daily cap per member, every attempt recorded as a touch."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mall.members.v1 import members_service_pb2 as pb
from mallkit.db import insert_ignore, utcnow
from mallkit.pagination import PageTokens
from mallkit.queries import keyset_page

from .models import ReachCounter, Subscription, Touch
from .portrait import Portrait
from .wechat import DeliveryRefused, WechatClient


class Reach:
    def __init__(self, portrait: Portrait, wechat: WechatClient, pages: PageTokens, *, brand_timezone: str,
                 daily_cap: int):
        self.portrait = portrait
        self.wechat = wechat
        self.pages = pages
        self.tz = ZoneInfo(brand_timezone)
        self.daily_cap = daily_cap

    async def record_subscriptions(self, s: AsyncSession, member_id: int, template_ids: list[str]) -> dict[str, int]:
        await self.portrait.member(s, member_id)
        now = utcnow()
        counts: dict[str, int] = {}
        for tid in template_ids:
            counts[tid] = counts.get(tid, 0) + 1
        await insert_ignore(s, Subscription.__table__,
                            [{"member_id": member_id, "template_id": t, "remaining": 0, "update_time": now} for t in counts])
        for tid, n in counts.items():
            await s.execute(update(Subscription).where(Subscription.member_id == member_id, Subscription.template_id == tid)
                            .values(remaining=Subscription.remaining + n, update_time=now))
        rows = await s.execute(select(Subscription.template_id, Subscription.remaining)
                               .where(Subscription.member_id == member_id, Subscription.template_id.in_(list(counts))))
        return dict(rows.tuples().all())

    def brand_day(self, when: datetime) -> date:
        return when.astimezone(self.tz).date()

    async def send_reach(self, s: AsyncSession, member_id: int, template_id: str, data: dict[str, str], page: str,
                         purpose: str) -> Touch:
        """Consume one subscription credit and one slot of today's cap, then send.

        A skipped touch leaves credits and cap as they were (except a refusal by
        WeChat, which means the subscription is gone anyway).
        """
        m = await self.portrait.member(s, member_id)
        now = utcnow()
        state, reason = pb.TOUCH_STATE_SENT, pb.SKIP_REASON_UNSPECIFIED
        consumed = await s.execute(
            update(Subscription)
            .where(Subscription.member_id == member_id, Subscription.template_id == template_id, Subscription.remaining > 0)
            .values(remaining=Subscription.remaining - 1, update_time=now)
        )
        if consumed.rowcount != 1:
            state, reason = pb.TOUCH_STATE_SKIPPED, pb.SKIP_REASON_NO_CONSENT
        else:
            day = self.brand_day(now)
            await insert_ignore(s, ReachCounter.__table__, [{"member_id": member_id, "day": day, "sent": 0}])
            slot = await s.execute(
                update(ReachCounter)
                .where(ReachCounter.member_id == member_id, ReachCounter.day == day, ReachCounter.sent < self.daily_cap)
                .values(sent=ReachCounter.sent + 1)
            )
            if slot.rowcount != 1:
                await s.execute(update(Subscription)
                                .where(Subscription.member_id == member_id, Subscription.template_id == template_id)
                                .values(remaining=Subscription.remaining + 1))
                state, reason = pb.TOUCH_STATE_SKIPPED, pb.SKIP_REASON_FREQUENCY_CAP
            else:
                try:
                    await self.wechat.send_subscribe_message(m.openid, template_id, data, page)
                except DeliveryRefused:
                    await s.execute(update(ReachCounter)
                                    .where(ReachCounter.member_id == member_id, ReachCounter.day == day)
                                    .values(sent=ReachCounter.sent - 1))
                    state, reason = pb.TOUCH_STATE_SKIPPED, pb.SKIP_REASON_DELIVERY_REFUSED
        touch = Touch(member_id=member_id, template_id=template_id, purpose=purpose, state=state, skip_reason=reason,
                      create_time=now)
        s.add(touch)
        await s.flush()
        return touch

    async def list_touches(self, s: AsyncSession, member_id: int, size: int, token: str) -> tuple[list[Touch], str]:
        await self.portrait.member(s, member_id)
        return await keyset_page(s, select(Touch).where(Touch.member_id == member_id), key=Touch.id.desc(),
                                 tokens=self.pages, page_size=size, page_token=token, filters=[member_id])
