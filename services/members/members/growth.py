"""Growth taken back (a refund): the growth value goes down and the tier follows the tier rules
down too (the highest tier whose threshold the growth still reaches), recorded in the tier
history and announced with ``member.tier_downgraded``. Upgrades stay with
``add_growth``. Functions of the session and the outbox only, so they sit beside any
arrangement of the tier use cases.

Cached tiers elsewhere (``mallkit.members.MembersClient``, ``MALL_MEMBERS_CACHE_SECONDS``)
follow within that time; an order priced in between keeps the tier snapshotted then.
"""

from __future__ import annotations

from sqlalchemy import case, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mall.members.v1 import members_service_pb2 as pb
from mallkit.db import utcnow
from mallkit.errors import NotFound
from mallkit.events import Outbox

from . import errors as reasons
from .models import GrowthEntry, Member, Tier, TierChange


async def held_from(s: AsyncSession, member_id: int, source_ref: str) -> int:
    """Growth the member still holds from ``source_ref`` (what it gave minus what was taken back)."""
    return int((await s.execute(select(func.coalesce(func.sum(GrowthEntry.amount), 0)).where(
        GrowthEntry.member_id == member_id, GrowthEntry.source_ref == source_ref))).scalar_one())


async def reverse_order(s: AsyncSession, outbox: Outbox, member_id: int, order: str, paid_fen: int,
                        refunded_fen: int) -> int:
    """After a refund of ``order``: take back what its growth exceeds what the part not refunded
    still earns (one per yuan); returns the growth taken back (0 when nothing more is owed)."""
    keep = max(0, paid_fen - refunded_fen) // 100
    take = await held_from(s, member_id, order) - keep
    if take <= 0:
        return 0
    await take_back(s, outbox, member_id, take, "refund", order)
    return take


async def take_back(s: AsyncSession, outbox: Outbox, member_id: int, amount: int, source: str,
                    source_ref: str) -> tuple[int, int | None, bool]:
    """Take ``amount`` growth back (never below 0); downgrade by the tier rules with history.
    Returns (growth value, tier id, downgraded)."""
    now = utcnow()
    changed = await s.execute(update(Member).where(Member.id == member_id).values(
        growth_value=case((Member.growth_value >= amount, Member.growth_value - amount), else_=0), update_time=now))
    if changed.rowcount != 1:  # type: ignore[attr-defined]
        raise NotFound("member not found", reason=reasons.MEMBER_NOT_FOUND, resource=("member", f"members/{member_id}"),
                       zh="会员不存在")
    growth, tier_id = (await s.execute(select(Member.growth_value, Member.tier_id)
                                       .where(Member.id == member_id))).one()
    s.add(GrowthEntry(member_id=member_id, amount=-amount, source=source, source_ref=source_ref, create_time=now))
    current = await s.get(Tier, tier_id) if tier_id else None
    target = (await s.execute(select(Tier).where(Tier.growth_threshold <= growth)
                              .order_by(Tier.growth_threshold.desc()).limit(1))).scalar_one_or_none()
    downgraded = False
    if current is not None and (target is None or target.growth_threshold < current.growth_threshold):
        to_id = target.id if target is not None else None
        await s.execute(update(Member).where(Member.id == member_id).values(tier_id=to_id))
        s.add(TierChange(member_id=member_id, from_tier_id=tier_id, to_tier_id=to_id, growth_value=growth,
                         create_time=now))
        await outbox.add(s, "member.tier_downgraded", pb.MemberTierDowngradedEvent(
            member=f"members/{member_id}", from_tier=f"tiers/{tier_id}", to_tier=f"tiers/{to_id}" if to_id else "",
            source_ref=source_ref), subject=f"members/{member_id}")
        tier_id, downgraded = to_id, True
    await s.flush()
    return growth, tier_id, downgraded
