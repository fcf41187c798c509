"""RPCs of groups, memberships and activity."""

from __future__ import annotations

from datetime import datetime, timedelta

from mall.community.v1 import community_service_pb2 as pb
from mallkit.auth import principal
from mallkit.db import admitted
from mallkit.errors import FailedPrecondition, NotFound
from mallkit.names import parse_id, parse_ids
from mallkit.pagination import page_size
from mallkit.validation import Validator

from .. import errors as reasons
from ..groups import vip_verdict
from ..messages import (
    CATEGORY,
    INVITE,
    MAX_AHEAD,
    caller_member_id,
    group_pb,
    hidden_group,
    membership_pb,
    set_time,
    to_dt,
    valid_time,
)
from ..models import Group
from .base import RpcBase


class GroupsRpc(RpcBase):

    async def _segment_check(self, g: Group, member_id: int) -> bool:
        """A VIP group restricted to a segment admits the members of its latest snapshot only."""
        return not g.vip_segment or await self.directory.in_segment(g.vip_segment, member_id)

    async def _vip_check(self, g: Group, member_id: int) -> tuple[bool, list, str]:
        if g.vip_segment and not g.vip_tiers and g.vip_min_threshold <= 0:
            return True, [], ""  # the segment alone decides
        tier = await self.directory.tier_of(member_id)
        tiers = await self.directory.tiers()
        ok, required = vip_verdict(g, tier, tiers)
        return ok, required, tier

    async def _visible_to_member(self, g: Group, member_id: int, joined: bool, now: datetime) -> bool:
        if joined:
            return True
        if g.join_policy != pb.JOIN_POLICY_OPEN or self.groups.group_state(g, now) != pb.GROUP_STATE_OPEN:
            return False
        if g.type == pb.GROUP_TYPE_VIP:
            return (await self._vip_check(g, member_id))[0] and await self._segment_check(g, member_id)
        return True

    async def CreateGroup(self, request, context):
        g, v, now = request.group, Validator(), self.clock()
        v.text("group.display_name", g.display_name, max_len=64, min_len=1)
        v.text("group.description", g.description, max_len=512)
        v.enum("group.type", g.type, pb.GroupType, required=True)
        v.enum("group.join_policy", g.join_policy, pb.JoinPolicy)
        v.text("group.stage", g.stage, max_len=32)
        v.text("group.region", g.region, max_len=32)
        v.check(g.capacity == 0 or 2 <= g.capacity <= 2000, "group.capacity", "must be between 2 and 2000 (0: 500)")
        if g.type == pb.GROUP_TYPE_CATEGORY:
            v.pattern("group.category", g.category, CATEGORY, "must look like categories/{id}", required=True)
        else:
            v.check(not g.category, "group.category", "only category groups have a category")
        end_time = None
        if g.type == pb.GROUP_TYPE_FLASH:
            if v.check(g.HasField("end_time"), "group.end_time", "is required for flash groups") and \
                    valid_time(v, "group.end_time", g.end_time):
                end_time = to_dt(g.end_time)
                v.check(now < end_time <= now + MAX_AHEAD, "group.end_time", "must be in the future (within a year)")
        else:
            v.check(not g.HasField("end_time"), "group.end_time", "only flash groups have an end time")
        if g.type == pb.GROUP_TYPE_VIP:
            v.check(len(g.vip_rule.allowed_tiers) <= 10, "group.vip_rule.allowed_tiers", "at most 10 tiers")
            v.range("group.vip_rule.min_growth_threshold", g.vip_rule.min_growth_threshold, 0, 10**12)
        else:
            v.check(not g.HasField("vip_rule"), "group.vip_rule", "only VIP groups have a VIP rule")
        v.done()
        owner = parse_id(g.owner, "staff", "group.owner")
        if not await self.directory.is_active_guide(owner):
            raise FailedPrecondition("the group owner must be an active guide", reason=reasons.OWNER_NOT_A_GUIDE,
                                     metadata={"field": "group.owner", "owner": g.owner}, zh="群主必须是在职导购")
        tiers = [parse_id(t, "tiers", f"group.vip_rule.allowed_tiers[{i}]") for i, t in enumerate(g.vip_rule.allowed_tiers)]
        fields = {
            "display_name": g.display_name, "description": g.description, "type": g.type, "category": g.category,
            "end_time": end_time, "vip_tiers": ",".join(str(t) for t in dict.fromkeys(tiers)),
            "vip_min_threshold": g.vip_rule.min_growth_threshold,
            "vip_segment": g.vip_rule.segment.removeprefix("segments/"), "stage": g.stage, "region": g.region,
            "owner_staff_id": owner, "capacity": g.capacity, "join_policy": g.join_policy or pb.JOIN_POLICY_OPEN,
        }

        if fields["vip_segment"]:
            await self.directory.snapshot(fields["vip_segment"], 0)  # NOT_FOUND unless it has a snapshot
        async def use_case(s):
            return group_pb(await self.groups.create_group(s, fields, now), now, show_code=True)

        return await self._run(request, pb.Group, use_case)

    async def GetGroup(self, request, context):
        group_id = parse_id(request.name, "groups", "name")
        member_id, now = caller_member_id(), self.clock()
        async with self.sessions() as s:
            if member_id is None:
                return group_pb(await self.groups.group(s, group_id), now, show_code=True)
            try:
                g = await self.groups.group(s, group_id)
            except NotFound:
                raise hidden_group() from None
            joined = await self.groups.is_member(s, group_id, member_id)
        if not await self._visible_to_member(g, member_id, joined, now):
            raise hidden_group()
        return group_pb(g, now, joined=joined, show_code=joined)

    async def ListGroups(self, request, context):
        size = page_size(request.page_size)
        v = Validator()
        v.enum("type", request.type, pb.GroupType)
        v.done()
        member_id, now = caller_member_id(), self.clock()
        async with self.sessions() as s:
            rows, token = await self.groups.list_groups(s, size=size, token=request.page_token, type_=request.type,
                                                        member_id=member_id, joined_only=request.joined_only, now=now)
            joined = await self.groups.memberships_of(s, member_id, [g.id for g in rows]) if member_id else set()
        if member_id is None:
            return pb.ListGroupsResponse(groups=[group_pb(g, now, show_code=True) for g in rows], next_page_token=token)
        out = []
        for g in rows:
            if g.id in joined or g.type != pb.GROUP_TYPE_VIP or await self._visible_to_member(g, member_id, False, now):
                out.append(group_pb(g, now, joined=g.id in joined, show_code=g.id in joined))
        return pb.ListGroupsResponse(groups=out, next_page_token=token)

    async def CloseGroup(self, request, context):
        group_id = parse_id(request.name, "groups", "name")
        now = self.clock()

        async def use_case(s):
            return group_pb(await self.groups.close_group(s, group_id), now, show_code=True)

        return await self._run(request, pb.Group, use_case)

    async def JoinGroup(self, request, context):
        group_id = parse_id(request.name, "groups", "name")
        v = Validator()
        v.pattern("invite_code", request.invite_code, INVITE, "must be an invite code")
        v.done()
        member_id, now = int(principal().id), self.clock()
        async with admitted(self.sessions), self.sessions() as s:  # the platform's admission covers the read too
            g = await self.groups.group(s, group_id)
            already = await self.groups.is_member(s, group_id, member_id)
        if g.type == pb.GROUP_TYPE_VIP and not already and not await self._segment_check(g, member_id):
            raise FailedPrecondition(
                "this VIP group admits only members of its segment", reason=reasons.NOT_IN_SEGMENT,
                metadata={"group": f"groups/{group_id}", "segment": f"segments/{g.vip_segment}"},
                zh="该群仅限指定会员加入")
        if g.type == pb.GROUP_TYPE_VIP and not already:
            ok, required, tier = await self._vip_check(g, member_id)
            if not ok:
                names = "、".join(t.display_name for t in required) or "指定等级"
                raise FailedPrecondition(
                    f"this VIP group admits only members of tier {', '.join(t.name for t in required) or 'none'}",
                    reason=reasons.TIER_TOO_LOW,
                    metadata={"group": f"groups/{group_id}", "member_tier": tier or "none",
                              "required_tiers": ",".join(t.name for t in required),
                              "required_tier_names": ",".join(t.display_name for t in required)},
                    zh=f"该群仅限{names}加入,您的会员等级不足",
                )

        async def use_case(s):
            return membership_pb(await self.memberships.join(s, group_id, member_id, request.invite_code, now))

        return await self._retry_unique(lambda: self._run(request, pb.Membership, use_case))

    async def LeaveGroup(self, request, context):
        group_id = parse_id(request.name, "groups", "name")
        member_id, now = int(principal().id), self.clock()

        async def use_case(s):
            return membership_pb(await self.memberships.leave(s, group_id, member_id, now))

        return await self._run(request, pb.Membership, use_case)

    async def ListMemberships(self, request, context):
        group_id = parse_id(request.parent, "groups", "parent")
        size = page_size(request.page_size)
        async with self.sessions() as s:
            rows, token = await self.memberships.list_memberships(s, group_id, size, request.page_token)
        return pb.ListMembershipsResponse(memberships=[membership_pb(m) for m in rows], next_page_token=token)

    async def SetMembershipRole(self, request, context):
        group_id, member_id = parse_ids(request.name, "groups/{}/memberships/{}", "name")
        v = Validator()
        v.enum("role", request.role, pb.MembershipRole, required=True)
        v.check(request.role != pb.MEMBERSHIP_ROLE_OWNER, "role", "the owner is the group's guide, not a member")
        v.done()

        async def use_case(s):
            return membership_pb(await self.memberships.set_role(s, group_id, member_id, request.role))

        return await self._run(request, pb.Membership, use_case)

    # --- activity --------------------------------------------------------------------------

    async def GetMemberActivity(self, request, context):
        member_id = parse_ids(request.name, "members/{}/communityActivity", "name")[0]
        v = Validator()
        w = request.window
        v.check(0 <= w.seconds <= 366 * 86400 and 0 <= w.nanos < 10**9, "window", "must be between 0 and 366 days")
        v.done()
        window = timedelta(seconds=w.seconds)
        window = window or timedelta(days=self.activity_window_days)
        async with self.sessions() as s:
            a = await self.activity.member_activity(s, member_id, self.clock() - window)
        out = pb.MemberActivity(name=request.name,
                                **{k: val for k, val in a.items() if k not in ("last_active_time", "groups")})
        set_time(out.last_active_time, a["last_active_time"])
        for g in a["groups"]:
            mg = out.groups.add(group=g["group"], display_name=g["display_name"], role=g["role"])
            set_time(mg.join_time, g["join_time"])
        return out

    async def ListActiveMembers(self, request, context):
        v = Validator()
        if v.check(request.HasField("since_time"), "since_time", "is required"):
            valid_time(v, "since_time", request.since_time)
        v.done()
        size = page_size(request.page_size, default=500, maximum=1000)
        since = to_dt(request.since_time)
        filters = (request.since_time.seconds, request.since_time.nanos)
        async with self.sessions() as s:
            ids, token = await self.activity.active_members(s, since, size, request.page_token, filters)
        return pb.ListActiveMembersResponse(members=[f"members/{m}" for m in ids], next_page_token=token)
