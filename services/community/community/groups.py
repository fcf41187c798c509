"""Groups: general, category, flash and VIP groups, their capacity, join policy and VIP admission rule."""

from __future__ import annotations

import secrets
from datetime import datetime

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mall.community.v1 import community_service_pb2 as pb
from mallkit.errors import FailedPrecondition, NotFound
from mallkit.pagination import PageTokens
from mallkit.queries import get_or_not_found, keyset_page

from . import errors as reasons
from .common import new_code
from .directory import TierInfo
from .models import Group, Membership


def vip_tier_ids(g: Group) -> list[int]:
    return [int(x) for x in g.vip_tiers.split(",") if x]


def vip_verdict(g: Group, member_tier: str, tiers: dict[str, TierInfo]) -> tuple[bool, list[TierInfo]]:
    """Whether a member of ``member_tier`` may join VIP group ``g``, and the tiers that would qualify."""
    allowed = [f"tiers/{i}" for i in vip_tier_ids(g)]
    mine = tiers.get(member_tier)
    if member_tier and member_tier in allowed:
        return True, []
    if g.vip_min_threshold > 0 and mine is not None and mine.growth_threshold >= g.vip_min_threshold:
        return True, []
    if not allowed and g.vip_min_threshold <= 0 and mine is not None and "vip_groups" in mine.flags:
        return True, []
    ordered = sorted(tiers.values(), key=lambda t: t.growth_threshold)
    required = [tiers[n] for n in allowed if n in tiers]
    if g.vip_min_threshold > 0:
        lowest = next((t for t in ordered if t.growth_threshold >= g.vip_min_threshold), None)
        if lowest is not None:
            required.append(lowest)
    if not allowed and g.vip_min_threshold <= 0:
        required = [t for t in ordered if "vip_groups" in t.flags]
    required = sorted(dict.fromkeys(required), key=lambda t: t.growth_threshold)
    return False, required


class Groups:
    def __init__(self, pages: PageTokens, *, default_capacity: int):
        self.pages = pages
        self.default_capacity = default_capacity

    @staticmethod
    def group_state(g: Group, now: datetime) -> int:
        if g.state == pb.GROUP_STATE_OPEN and g.end_time is not None and g.end_time <= now:
            return pb.GROUP_STATE_CLOSED
        return g.state

    async def group(self, s: AsyncSession, group_id: int) -> Group:
        return await get_or_not_found(s, Group, group_id, lambda: NotFound(
            "group not found", reason=reasons.GROUP_NOT_FOUND, resource=("group", f"groups/{group_id}"), zh="群不存在"))

    async def create_group(self, s: AsyncSession, fields: dict, now: datetime) -> Group:
        fields = dict(fields)
        fields["capacity"] = fields.get("capacity") or self.default_capacity
        g = Group(invite_code=new_code(10), member_count=0, state=pb.GROUP_STATE_OPEN, create_time=now, **fields)
        s.add(g)
        await s.flush()  # 32^10 codes: a collision is an IntegrityError the client may retry
        return g

    async def close_group(self, s: AsyncSession, group_id: int) -> Group:
        g = await self.group(s, group_id)
        await s.execute(update(Group).where(Group.id == group_id).values(state=pb.GROUP_STATE_CLOSED))
        await s.refresh(g)
        return g

    async def close_ended_groups(self, s: AsyncSession, now: datetime) -> int:
        """Close flash groups past their end time (a conditional UPDATE: safe with replicas)."""
        result = await s.execute(
            update(Group).where(Group.state == pb.GROUP_STATE_OPEN, Group.end_time.is_not(None), Group.end_time <= now)
            .values(state=pb.GROUP_STATE_CLOSED)
        )
        return result.rowcount  # type: ignore[attr-defined]

    async def memberships_of(self, s: AsyncSession, member_id: int, group_ids: list[int]) -> set[int]:
        if not group_ids:
            return set()
        rows = await s.execute(select(Membership.group_id).where(
            Membership.member_id == member_id, Membership.group_id.in_(group_ids),
            Membership.state == pb.MEMBERSHIP_STATE_ACTIVE))
        return set(rows.scalars().all())

    async def is_member(self, s: AsyncSession, group_id: int, member_id: int) -> bool:
        return bool(await self.memberships_of(s, member_id, [group_id]))

    async def list_groups(self, s: AsyncSession, *, size: int, token: str, type_: int,
                          member_id: int | None, joined_only: bool, now: datetime) -> tuple[list[Group], str]:
        """Staff: every group. Member: joined groups and open groups they may see (VIP filtered by the caller)."""
        q = select(Group)
        if type_:
            q = q.where(Group.type == type_)
        if member_id is not None:
            joined = select(Membership.group_id).where(Membership.member_id == member_id,
                                                       Membership.state == pb.MEMBERSHIP_STATE_ACTIVE)
            joinable = and_(Group.join_policy == pb.JOIN_POLICY_OPEN, Group.state == pb.GROUP_STATE_OPEN,
                            or_(Group.end_time.is_(None), Group.end_time > now))
            q = q.where(Group.id.in_(joined) if joined_only else or_(Group.id.in_(joined), joinable))
        return await keyset_page(s, q, key=Group.id.desc(), tokens=self.pages, page_size=size, page_token=token,
                                 filters=(type_, joined_only, member_id))

    def check_joinable(self, g: Group, invite_code: str, now: datetime) -> None:
        if self.group_state(g, now) != pb.GROUP_STATE_OPEN:
            raise FailedPrecondition("the group is closed", reason=reasons.GROUP_CLOSED,
                                     metadata={"group": f"groups/{g.id}"}, zh="该群已关闭,无法加入")
        if g.join_policy == pb.JOIN_POLICY_INVITE_ONLY or invite_code:
            if not secrets.compare_digest(invite_code.upper(), g.invite_code):
                raise FailedPrecondition("the invite code does not match", reason=reasons.INVITE_CODE_INVALID,
                                         metadata={"field": "invite_code"}, zh="邀请码无效")
