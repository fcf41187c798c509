"""Memberships: joining (a seat by conditional UPDATE), leaving, roles and the member list of a group."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mall.community.v1 import community_events_pb2 as evpb
from mall.community.v1 import community_service_pb2 as pb
from mallkit.errors import FailedPrecondition, NotFound
from mallkit.events import Outbox
from mallkit.pagination import PageTokens
from mallkit.queries import keyset_page

from . import errors as reasons
from .activity import ACT_JOIN
from .common import ts
from .groups import Groups
from .models import Activity, Group, Membership


class Memberships:
    def __init__(self, groups: Groups, outbox: Outbox, pages: PageTokens):
        self.groups = groups
        self.outbox = outbox
        self.pages = pages

    async def join(self, s: AsyncSession, group_id: int, member_id: int, invite_code: str, now: datetime) -> Membership:
        """Join rules (VIP already checked by the caller), then a seat by conditional UPDATE.

        The seat UPDATE comes first: it takes the group row's exclusive lock
        before the membership insert's foreign-key check would take a shared
        one (shared-then-exclusive on one hot row deadlocks under load), so
        concurrent joins of one group queue on that row and never overfill it.
        """
        g = await self.groups.group(s, group_id)
        m = (await s.execute(select(Membership).where(Membership.group_id == group_id,
                                                      Membership.member_id == member_id))).scalar_one_or_none()
        if m is not None and m.state == pb.MEMBERSHIP_STATE_ACTIVE:
            return m
        self.groups.check_joinable(g, invite_code, now)
        seat = await s.execute(
            update(Group).where(Group.id == group_id, Group.member_count < Group.capacity,
                                Group.state == pb.GROUP_STATE_OPEN)
            .values(member_count=Group.member_count + 1))
        if seat.rowcount != 1:  # type: ignore[attr-defined]
            raise FailedPrecondition("the group is full", reason=reasons.GROUP_FULL,
                                     metadata={"group": f"groups/{group_id}", "capacity": g.capacity},
                                     zh="群成员已满")
        first_join = m is None
        if m is None:
            m = Membership(group_id=group_id, member_id=member_id, role=pb.MEMBERSHIP_ROLE_MEMBER,
                           state=pb.MEMBERSHIP_STATE_ACTIVE, join_time=now, last_active_time=now)
            s.add(m)
            await s.flush()  # a concurrent first join of the same member fails here (unique key); caller retries
        else:
            rejoined = await s.execute(
                update(Membership).where(Membership.id == m.id, Membership.state == pb.MEMBERSHIP_STATE_LEFT)
                .values(state=pb.MEMBERSHIP_STATE_ACTIVE, join_time=now, leave_time=None, last_active_time=now))
            if rejoined.rowcount != 1:  # type: ignore[attr-defined]  # a concurrent rejoin won: give the seat back
                await s.execute(update(Group).where(Group.id == group_id).values(member_count=Group.member_count - 1))
                await s.refresh(m)
                return m
        s.add(Activity(member_id=member_id, group_id=group_id, kind=ACT_JOIN, ref=f"groups/{group_id}", create_time=now))
        if first_join:
            await self.outbox.add(s, "community.group_joined",
                                  evpb.GroupJoinedEvent(group=f"groups/{group_id}", member=f"members/{member_id}",
                                                        join_time=ts(now)),
                                  subject=f"members/{member_id}")
        await s.flush()
        await s.refresh(m)
        return m

    async def leave(self, s: AsyncSession, group_id: int, member_id: int, now: datetime) -> Membership:
        await self.groups.group(s, group_id)
        m = (await s.execute(select(Membership).where(Membership.group_id == group_id,
                                                      Membership.member_id == member_id))).scalar_one_or_none()
        if m is None:
            raise FailedPrecondition("not a member of the group", reason=reasons.NOT_GROUP_MEMBER, zh="您不在该群中")
        left = await s.execute(
            update(Membership).where(Membership.id == m.id, Membership.state == pb.MEMBERSHIP_STATE_ACTIVE)
            .values(state=pb.MEMBERSHIP_STATE_LEFT, leave_time=now, role=pb.MEMBERSHIP_ROLE_MEMBER))
        if left.rowcount == 1:  # type: ignore[attr-defined]
            await s.execute(update(Group).where(Group.id == group_id, Group.member_count > 0)
                            .values(member_count=Group.member_count - 1))
            await self.outbox.add(s, "community.group_left",
                                  evpb.GroupLeftEvent(group=f"groups/{group_id}", member=f"members/{member_id}",
                                                      leave_time=ts(now)),
                                  subject=f"members/{member_id}")
        await s.refresh(m)
        return m

    async def list_memberships(self, s: AsyncSession, group_id: int, size: int,
                               token: str) -> tuple[list[Membership], str]:
        await self.groups.group(s, group_id)
        q = select(Membership).where(Membership.group_id == group_id, Membership.state == pb.MEMBERSHIP_STATE_ACTIVE)
        return await keyset_page(s, q, key=Membership.id, tokens=self.pages, page_size=size, page_token=token,
                                 filters=[group_id])

    async def set_role(self, s: AsyncSession, group_id: int, member_id: int, role: int) -> Membership:
        m = (await s.execute(select(Membership).where(
            Membership.group_id == group_id, Membership.member_id == member_id,
            Membership.state == pb.MEMBERSHIP_STATE_ACTIVE))).scalar_one_or_none()
        if m is None:
            raise NotFound("membership not found", reason=reasons.MEMBERSHIP_NOT_FOUND,
                           resource=("membership", f"groups/{group_id}/memberships/{member_id}"), zh="该会员不在群中")
        m.role = role
        await s.flush()
        return m
