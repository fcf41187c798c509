"""Tiers and growth: growth value adds up atomically and upgrades the tier (never down), with history."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from mall.members.v1 import members_service_pb2 as pb
from mallkit.db import is_duplicate_key, utcnow
from mallkit.errors import AlreadyExists, NotFound
from mallkit.events import Outbox
from mallkit.pagination import PageTokens
from mallkit.queries import get_or_not_found, keyset_page

from . import errors as reasons
from .models import GrowthEntry, Member, Tier, TierChange
from .portrait import Portrait


class Tiers:
    def __init__(self, portrait: Portrait, outbox: Outbox, pages: PageTokens):
        self.portrait = portrait
        self.outbox = outbox
        self.pages = pages

    async def tier_for(self, s: AsyncSession, growth: int) -> Tier | None:
        q = select(Tier).where(Tier.growth_threshold <= growth).order_by(Tier.growth_threshold.desc()).limit(1)
        return (await s.execute(q)).scalar_one_or_none()

    async def tier(self, s: AsyncSession, tier_id: int) -> Tier:
        return await get_or_not_found(s, Tier, tier_id, lambda: NotFound(
            "tier not found", reason=reasons.TIER_NOT_FOUND, resource=("tier", f"tiers/{tier_id}"), zh="等级不存在"))

    async def create_tier(self, s: AsyncSession, fields: dict) -> Tier:
        t = Tier(create_time=utcnow(), **fields)
        s.add(t)
        try:
            async with s.begin_nested():
                await s.flush()
        except IntegrityError as exc:
            if is_duplicate_key(exc):
                raise AlreadyExists("a tier already has this growth threshold", reason=reasons.TIER_THRESHOLD_TAKEN,
                                    metadata={"field": "tier.growth_threshold"}, zh="已有相同成长值门槛的等级")
            raise
        return t

    async def update_tier(self, s: AsyncSession, tier_id: int, changes: dict) -> Tier:
        t = await self.tier(s, tier_id)
        for key, value in changes.items():
            setattr(t, key, value)
        try:
            async with s.begin_nested():
                await s.flush()
        except IntegrityError as exc:
            if is_duplicate_key(exc):
                raise AlreadyExists("a tier already has this growth threshold", reason=reasons.TIER_THRESHOLD_TAKEN,
                                    metadata={"field": "tier.growth_threshold"}, zh="已有相同成长值门槛的等级")
            raise
        return t

    async def list_tiers(self, s: AsyncSession, size: int, token: str) -> tuple[list[Tier], str]:
        """Tiers from the lowest growth threshold up (thresholds are unique)."""
        return await keyset_page(s, select(Tier), key=Tier.growth_threshold, tokens=self.pages, page_size=size,
                                 page_token=token)

    async def add_growth(self, s: AsyncSession, member_id: int, amount: int, source: str, source_ref: str) -> tuple[int, int | None, bool]:
        """Add growth atomically; upgrade the tier (never downgrade) with history."""
        now = utcnow()
        changed = await s.execute(
            update(Member).where(Member.id == member_id)
            .values(growth_value=Member.growth_value + amount, update_time=now)
        )
        if changed.rowcount != 1:
            await self.portrait.member(s, member_id)  # raises NOT_FOUND
        growth, tier_id = (await s.execute(select(Member.growth_value, Member.tier_id).where(Member.id == member_id))).one()
        s.add(GrowthEntry(member_id=member_id, amount=amount, source=source, source_ref=source_ref, create_time=now))
        target = await self.tier_for(s, growth)
        upgraded = False
        if target is not None and target.id != tier_id:
            current = await s.get(Tier, tier_id) if tier_id else None
            if current is None or target.growth_threshold > current.growth_threshold:
                await s.execute(update(Member).where(Member.id == member_id).values(tier_id=target.id))
                s.add(TierChange(member_id=member_id, from_tier_id=tier_id, to_tier_id=target.id, growth_value=growth,
                                 create_time=now))
                await self.outbox.add(
                    s, "member.tier_upgraded",
                    pb.MemberTierUpgradedEvent(member=f"members/{member_id}",
                                               from_tier=f"tiers/{tier_id}" if tier_id else "", to_tier=f"tiers/{target.id}"),
                    subject=f"members/{member_id}",
                )
                tier_id, upgraded = target.id, True
        await s.flush()
        return growth, tier_id, upgraded

    async def list_tier_changes(self, s: AsyncSession, member_id: int, size: int,
                                token: str) -> tuple[list[TierChange], str]:
        await self.portrait.member(s, member_id)
        return await keyset_page(s, select(TierChange).where(TierChange.member_id == member_id),
                                 key=TierChange.id.desc(), tokens=self.pages, page_size=size, page_token=token,
                                 filters=[member_id])
