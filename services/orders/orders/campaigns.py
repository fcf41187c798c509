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
   template row locked), the coupons in one ``INSERT ... SELECT`` from the page's recipients;
3. advances the cursor and the counts ``WHERE cursor = :read AND lease_owner = :me``:
   a runner that lost its lease (it stalled past it and another took over) or
   raced on the same page rolls the whole page back and stops.

A killed job leaves the campaign at the last committed page; the next run (after the
lease expires) resumes there. Skipped members (limit reached, quantity exhausted) are
counted; they are recipients too (outcome recorded), never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import datetime, timedelta

from sqlalchemy import BigInteger, Integer, SmallInteger, String, insert, literal, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mallkit.db import UTCDateTime, insert_ignore_select, is_duplicate_key, run_transaction
from mallkit.errors import NotFound
from mallkit.members import MembersClient
from mallkit.pagination import PageTokens
from mallkit.queries import keyset_page

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
                 pages: PageTokens, page_size: int, lease: timedelta):
        self.sessions = sessions
        self.pages = pages
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

    async def list_campaigns(self, s: AsyncSession, size: int, token: str) -> tuple[list[CouponCampaign], str]:
        return await keyset_page(s, select(CouponCampaign), key=CouponCampaign.id.desc(), tokens=self.pages,
                                 page_size=size, page_token=token)

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
        """Lease the campaign, then issue page after page until done or superseded; returns pages issued.

        The next page is fetched from members while the current one's transaction runs."""
        owner = str(uuid.uuid4())
        if not await run_transaction(self.sessions, lambda s: self._claim(s, campaign_id, owner, now)):
            return 0
        async with self.sessions() as s:
            c = await self.campaign(s, campaign_id)
            limit = (await self.coupons.template(s, c.template_id)).per_member_limit
        snapshot, cursor, pages = snapshot_name(c.segment, c.segment_version), c.cursor, 0
        fetch: asyncio.Task | None = asyncio.ensure_future(self.members.segment_page(snapshot, self.page_size, cursor))
        try:
            while fetch is not None:
                ids, _, token = await fetch
                fetch = asyncio.ensure_future(self.members.segment_page(snapshot, self.page_size, token)) \
                    if token else None
                try:
                    await run_transaction(self.sessions, lambda s, ids=ids, read=cursor, token=token: self._issue_page(
                        s, c.id, c.template_id, limit, ids, read, token, owner, now))
                except Superseded:
                    return pages
                except IntegrityError as exc:
                    if not is_duplicate_key(exc):
                        raise
                    return pages  # another runner issued this page (the recipients' key)
                pages, cursor = pages + 1, token
            return pages
        finally:
            if fetch is not None:
                fetch.cancel()
                with contextlib.suppress(BaseException):
                    await fetch

    async def _issue_page(self, s: AsyncSession, campaign_id: int, template_id: int, limit: int, member_ids: list[int],
                          cursor: str, next_token: str, owner: str, now: datetime) -> None:
        members = sorted(set(member_ids))
        issued = skipped = 0
        if members:
            await s.execute(insert(CouponCampaignRecipient.__table__), [
                {"campaign_id": campaign_id, "member_id": m, "outcome": RECIPIENT_ISSUED} for m in members])
            issued = await self._issue_range(s, campaign_id, template_id, limit, members, now)
            skipped = len(members) - issued
        done = not next_token
        cc = CouponCampaign
        moved = await s.execute(update(cc).where(cc.id == campaign_id, cc.cursor == cursor, cc.lease_owner == owner,
                                                 cc.state == CAMPAIGN_RUNNING).values(
            cursor=next_token, pages_done=cc.pages_done + 1, issued_count=cc.issued_count + issued,
            skipped_count=cc.skipped_count + skipped, lease_until=now + self.lease,
            state=CAMPAIGN_COMPLETED if done else CAMPAIGN_RUNNING, complete_time=now if done else None))
        if moved.rowcount != 1:  # type: ignore[attr-defined]
            raise Superseded()

    async def _issue_range(self, s: AsyncSession, campaign_id: int, template_id: int, limit: int, members: list[int],
                           now: datetime) -> int:
        """One coupon to each recipient of the page (``members``, sorted: a snapshot page is an id range,
        so the page's recipients are those between its first and last id) below the per-member limit
        while quantity lasts; returns the coupons issued.

        Set-wise, the member ids travelling to the database once (the recipients' INSERT): the
        holding rows and the coupons are ``INSERT ... SELECT`` over the page's recipients, the
        updates name their members. Locks the holdings, then the template, in the order
        :meth:`Coupons.issue` takes them."""
        h, r = CouponHolding, CouponCampaignRecipient
        lo, hi = members[0], members[-1]
        page = (r.campaign_id == campaign_id, r.member_id.between(lo, hi))
        in_page = select(r.member_id).where(*page)
        await insert_ignore_select(s, h.__table__, ["template_id", "member_id", "count"], select(
            literal(template_id, BigInteger), r.member_id, literal(0, Integer)).where(*page))
        eligible = list((await s.execute(select(h.member_id).where(
            h.template_id == template_id, h.member_id.in_(in_page), h.count < limit)
            .order_by(h.member_id).with_for_update())).scalars())
        t = (await s.execute(select(CouponTemplate).where(CouponTemplate.id == template_id).with_for_update()
                             .execution_options(populate_existing=True))).scalar_one()
        k = max(0, min(len(eligible), t.total_quantity - t.issued_count))
        if len(eligible) < len(members):
            limited = sorted(set(members) - set(eligible))
            await s.execute(update(r).where(*page, r.member_id.in_(limited)).values(outcome=RECIPIENT_LIMIT_REACHED))
        if k < len(eligible):
            await s.execute(update(r).where(*page, r.member_id.in_(eligible[k:])).values(outcome=RECIPIENT_EXHAUSTED))
        if k:
            await s.execute(update(CouponTemplate).where(CouponTemplate.id == template_id)
                            .values(issued_count=CouponTemplate.issued_count + k))
            await s.execute(update(h).where(h.template_id == template_id, h.member_id.in_(eligible[:k]))
                            .values(count=h.count + 1))  # a list: MariaDB runs UPDATE ... IN (SELECT) row by row
            c = Coupon.__table__.c
            await s.execute(insert(Coupon.__table__).from_select(
                [c.template_id, c.member_id, c.state, c.source, c.issue_time, c.expire_time],
                select(literal(template_id, BigInteger), r.member_id, literal(COUPON_AVAILABLE, SmallInteger),
                       literal("campaign", String), literal(now, UTCDateTime()),
                       literal(now + timedelta(days=t.valid_days), UTCDateTime())).where(*page, r.outcome == RECIPIENT_ISSUED)))
        return k
