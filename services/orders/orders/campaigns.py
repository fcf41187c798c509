"""Coupon campaigns: a coupon template issued to every member of a members' segment snapshot.

A campaign row holds the snapshot (segment + version, resolved at creation) and the
members' page token of the next page (``cursor``). The job (:meth:`CouponCampaigns.run_due`)
takes a lease on a running campaign (``lease_owner`` + ``lease_until``, a conditional
UPDATE), then per page, in ONE transaction:

1. ``INSERT`` the page's (campaign, member) rows into ``coupon_campaign_recipients``:
   its primary key is the guarantee that a member is handled once per campaign;
   a second runner on the same page waits on those keys and then fails on them;
2. issues set-wise: the members below the per-member limit (``coupon_holdings``
   rows locked), at most what is left of the template's total quantity (the
   template row locked), one multi-row ``INSERT`` of coupons;
3. advances the cursor and the counts ``WHERE cursor = :read AND lease_owner = :me``:
   a runner that lost its lease (it stalled past it and another took over) or
   raced on the same page rolls the whole page back and stops.

A killed job leaves the campaign at the last committed page; the next run (after the
lease expires) resumes there. Skipped members (limit reached, quantity exhausted) are
counted; they are recipients too (outcome recorded), never retried.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mallkit.db import insert_ignore, is_duplicate_key, run_transaction
from mallkit.errors import NotFound
from mallkit.members import MembersClient

from . import errors as reasons
from .coupons import Coupons
from .models import (
    CAMPAIGN_COMPLETED,
    CAMPAIGN_RUNNING,
    COUPON_AVAILABLE,
    RECIPIENT_EXHAUSTED,
    RECIPIENT_ISSUED,
    RECIPIENT_LIMIT_REACHED,
    Coupon,
    CouponCampaign,
    CouponCampaignRecipient,
    CouponHolding,
    CouponTemplate,
)


class Superseded(Exception):
    """Another runner holds the campaign now or did this page: roll the page back and stop."""


def snapshot_name(segment: str, version: int | str) -> str:
    return f"segments/{segment}/snapshots/{version}"


class CouponCampaigns:
    def __init__(self, *, sessions: async_sessionmaker[AsyncSession], members: MembersClient, coupons: Coupons,
                 page_size: int, lease: timedelta):
        self.sessions = sessions
        self.members = members
        self.coupons = coupons
        self.page_size = page_size
        self.lease = lease

    async def resolve(self, segment: str, version: int) -> tuple[int, int]:
        """(version, member count) of the snapshot; version 0 means the latest (NOT_FOUND otherwise)."""
        _, snap, _ = await self.members.segment_page(snapshot_name(segment, version or "latest"), 1, "")
        return snap.version, snap.member_count

    async def create(self, s: AsyncSession, template_id: int, segment: str, version: int, member_count: int,
                     now: datetime) -> CouponCampaign:
        await self.coupons.template(s, template_id, "coupon_campaign.coupon_template")
        c = CouponCampaign(template_id=template_id, segment=segment, segment_version=version, state=CAMPAIGN_RUNNING,
                           member_count=member_count, issued_count=0, skipped_count=0, pages_done=0, cursor="",
                           lease_owner="", create_time=now)
        s.add(c)
        await s.flush()
        return c

    async def campaign(self, s: AsyncSession, campaign_id: int) -> CouponCampaign:
        c = await s.get(CouponCampaign, campaign_id, populate_existing=True)
        if c is None:
            raise NotFound("coupon campaign not found", reason=reasons.COUPON_CAMPAIGN_NOT_FOUND,
                           resource=("couponCampaign", f"couponCampaigns/{campaign_id}"), zh="券活动不存在")
        return c

    # --- the job ---------------------------------------------------------------------------

    async def run_due(self, now: datetime) -> int:
        """Run every running campaign whose lease is free to its end; returns the pages this runner issued."""
        ids = await run_transaction(self.sessions, lambda s: self._due(s, now))
        pages = 0
        for cid in ids:
            pages += await self.run_campaign(cid, now)
        return pages

    async def _due(self, s: AsyncSession, now: datetime) -> list[int]:
        c = CouponCampaign
        return list((await s.execute(select(c.id).where(c.state == CAMPAIGN_RUNNING, or_(
            c.lease_until.is_(None), c.lease_until < now)).order_by(c.id).limit(20))).scalars())

    async def _claim(self, s: AsyncSession, campaign_id: int, owner: str, now: datetime) -> bool:
        c = CouponCampaign
        got = await s.execute(update(c).where(c.id == campaign_id, c.state == CAMPAIGN_RUNNING, or_(
            c.lease_until.is_(None), c.lease_until < now)).values(lease_owner=owner, lease_until=now + self.lease))
        return got.rowcount == 1  # type: ignore[attr-defined]

    async def run_campaign(self, campaign_id: int, now: datetime) -> int:
        """Lease the campaign, then issue page after page until done or superseded; returns pages issued."""
        owner = str(uuid.uuid4())
        if not await run_transaction(self.sessions, lambda s: self._claim(s, campaign_id, owner, now)):
            return 0
        pages = 0
        while True:
            async with self.sessions() as s:
                c = await self.campaign(s, campaign_id)
            if c.state != CAMPAIGN_RUNNING or c.lease_owner != owner:
                return pages
            ids, _, token = await self.members.segment_page(snapshot_name(c.segment, c.segment_version),
                                                            self.page_size, c.cursor)
            try:
                await run_transaction(self.sessions, lambda s, c=c, ids=ids, token=token: self._issue_page(
                    s, c, ids, token, owner, now))
            except Superseded:
                return pages
            except IntegrityError as exc:
                if not is_duplicate_key(exc):
                    raise
                return pages  # another runner issued this page (the recipients' key)
            pages += 1
            if not token:
                return pages

    async def _issue_page(self, s: AsyncSession, c: CouponCampaign, member_ids: list[int], next_token: str,
                          owner: str, now: datetime) -> None:
        members = sorted(set(member_ids))
        issued: list[int] = []
        limited: list[int] = []
        exhausted: list[int] = []
        if members:
            await s.execute(insert(CouponCampaignRecipient.__table__), [
                {"campaign_id": c.id, "member_id": m, "outcome": RECIPIENT_ISSUED} for m in members])
            issued, limited, exhausted = await self._issue_set(s, c.template_id, members, now)
            for outcome, group in ((RECIPIENT_LIMIT_REACHED, limited), (RECIPIENT_EXHAUSTED, exhausted)):
                if group:
                    await s.execute(update(CouponCampaignRecipient).where(
                        CouponCampaignRecipient.campaign_id == c.id, CouponCampaignRecipient.member_id.in_(group))
                        .values(outcome=outcome))
        done = not next_token
        cc = CouponCampaign
        moved = await s.execute(update(cc).where(cc.id == c.id, cc.cursor == c.cursor, cc.lease_owner == owner,
                                                 cc.state == CAMPAIGN_RUNNING).values(
            cursor=next_token, pages_done=cc.pages_done + 1, issued_count=cc.issued_count + len(issued),
            skipped_count=cc.skipped_count + len(limited) + len(exhausted), lease_until=now + self.lease,
            state=CAMPAIGN_COMPLETED if done else CAMPAIGN_RUNNING, complete_time=now if done else None))
        if moved.rowcount != 1:  # type: ignore[attr-defined]
            raise Superseded()

    async def _issue_set(self, s: AsyncSession, template_id: int, members: list[int],
                         now: datetime) -> tuple[list[int], list[int], list[int]]:
        """One coupon to each member below the per-member limit while quantity lasts, set-wise:
        (issued, skipped at the limit, skipped for lack of quantity). Locks holdings, then the
        template, in the order :meth:`Coupons.issue` takes them."""
        h = CouponHolding
        await insert_ignore(s, h.__table__, [{"template_id": template_id, "member_id": m, "count": 0} for m in members])
        t = (await s.execute(select(CouponTemplate).where(CouponTemplate.id == template_id)
                             .execution_options(populate_existing=True))).scalar_one()
        eligible = list((await s.execute(select(h.member_id).where(
            h.template_id == template_id, h.member_id.in_(members), h.count < t.per_member_limit)
            .order_by(h.member_id).with_for_update())).scalars())
        t = (await s.execute(select(CouponTemplate).where(CouponTemplate.id == template_id).with_for_update()
                             .execution_options(populate_existing=True))).scalar_one()
        k = max(0, min(len(eligible), t.total_quantity - t.issued_count))
        chosen, exhausted = eligible[:k], eligible[k:]
        limited = sorted(set(members) - set(eligible))
        if chosen:
            await s.execute(update(CouponTemplate).where(CouponTemplate.id == template_id)
                            .values(issued_count=CouponTemplate.issued_count + k))
            await s.execute(update(h).where(h.template_id == template_id, h.member_id.in_(chosen))
                            .values(count=h.count + 1))
            expire = now + timedelta(days=t.valid_days)
            await s.execute(insert(Coupon.__table__), [
                {"template_id": template_id, "member_id": m, "state": COUPON_AVAILABLE, "source": "campaign",
                 "issue_time": now, "expire_time": expire} for m in chosen])
        return chosen, limited, exhausted
