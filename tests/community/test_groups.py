"""Groups: types and join rules, capacity under concurrency, VIP tiers, membership and roles."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import func, select

from community import jobs
from community.models import Group, Membership
from mall.community.v1 import community_service_pb2 as pb
from mall.members.v1 import members_service_pb2 as mpb
from mallkit.db import utcnow
from tests.community.helpers import join, make_group, new_member_id, refused, rid


@pytest.mark.mariadb
async def test_600_members_joining_a_group_of_500_at_once_exactly_500_get_in(community):
    group = await make_group(community, capacity=500)
    members = [new_member_id() for _ in range(600)]
    results = await asyncio.gather(*[join(community, group, m) for m in members], return_exceptions=True)
    ok = [r for r in results if isinstance(r, pb.Membership)]
    errors = [r for r in results if not isinstance(r, pb.Membership)]
    assert len(ok) == 500
    assert len(errors) == 100
    assert all(isinstance(e, grpc.aio.AioRpcError) and e.code() == grpc.StatusCode.FAILED_PRECONDITION for e in errors)
    gid = int(group.name.split("/")[1])
    async with community.engine.connect() as conn:
        count = (await conn.execute(select(Group.member_count).where(Group.id == gid))).scalar_one()
        rows = (await conn.execute(select(func.count()).select_from(Membership).where(
            Membership.group_id == gid, Membership.state == pb.MEMBERSHIP_STATE_ACTIVE))).scalar_one()
    assert count == rows == 500
    code, info = await refused(join(community, group, new_member_id()))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and info.reason == "GROUP_FULL"


async def test_joining_twice_counts_once_and_leave_rejoin_keeps_the_count_right(community):
    group = await make_group(community, capacity=3)
    m = new_member_id()
    first = await join(community, group, m)
    again = await join(community, group, m)
    assert first.name == again.name == f"{group.name}/memberships/{m}"
    left = await community.stub.LeaveGroup(pb.LeaveGroupRequest(name=group.name), metadata=community.member_md(m))
    assert left.state == pb.MEMBERSHIP_STATE_LEFT
    staff = community.staff_md("guide")
    assert (await community.stub.GetGroup(pb.GetGroupRequest(name=group.name), metadata=staff)).member_count == 0
    await join(community, group, m)
    await asyncio.gather(*[join(community, group, m) for _ in range(10)])  # the same member, concurrently
    assert (await community.stub.GetGroup(pb.GetGroupRequest(name=group.name), metadata=staff)).member_count == 1
    promoted = await community.stub.SetMembershipRole(pb.SetMembershipRoleRequest(
        name=f"{group.name}/memberships/{m}", role=pb.MEMBERSHIP_ROLE_ADMIN), metadata=staff)
    assert promoted.role == pb.MEMBERSHIP_ROLE_ADMIN
    listed = await community.stub.ListMemberships(pb.ListMembershipsRequest(parent=group.name), metadata=staff)
    assert [x.member for x in listed.memberships] == [f"members/{m}"]


async def test_first_join_publishes_group_joined_once(community):
    group = await make_group(community)
    m = new_member_id()
    await join(community, group, m)
    await community.stub.LeaveGroup(pb.LeaveGroupRequest(name=group.name), metadata=community.member_md(m))
    await join(community, group, m)
    for _ in range(1200):
        if (await community.points.total(f"members/{m}", "join:"))[0]:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    assert (await community.points.total(f"members/{m}", f"join:{group.name}"))[0] == 1


async def test_invite_only_needs_the_code_and_flash_groups_close_at_end_time(community):
    group = await make_group(community, join_policy=pb.JOIN_POLICY_INVITE_ONLY)
    assert group.invite_code
    code, info = await refused(join(community, group, new_member_id()))
    assert info.reason == "INVITE_CODE_INVALID"
    code, info = await refused(join(community, group, new_member_id(), invite_code="WRONG123"))
    assert info.reason == "INVITE_CODE_INVALID"
    assert (await join(community, group, new_member_id(), invite_code=group.invite_code)).state == 1

    end = Timestamp()
    end.FromDatetime(utcnow() + timedelta(hours=1))
    flash = await make_group(community, type=pb.GROUP_TYPE_FLASH, end_time=end)
    await join(community, flash, new_member_id())
    community.app.set_clock(lambda: utcnow() + timedelta(hours=2))
    try:
        code, info = await refused(join(community, flash, new_member_id()))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and info.reason == "GROUP_CLOSED"
        assert await jobs.close_ended_groups(community.app) >= 1
    finally:
        community.app.set_clock(utcnow)
    got = await community.stub.GetGroup(pb.GetGroupRequest(name=flash.name), metadata=community.staff_md())
    assert got.state == pb.GROUP_STATE_CLOSED


async def test_group_rules_by_type_are_validated(community):
    for fields, field in [
        ({"type": pb.GROUP_TYPE_CATEGORY}, "group.category"),
        ({"type": pb.GROUP_TYPE_FLASH}, "group.end_time"),
        ({"type": pb.GROUP_TYPE_GENERAL, "capacity": 1}, "group.capacity"),
        ({"type": pb.GROUP_TYPE_GENERAL, "owner": "guide-3"}, "group.owner"),
        ({"type": 99}, "group.type"),
    ]:
        code, info = await refused(make_group(community, **fields))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and info.metadata["field"] == field, (fields, info)
    cat = await make_group(community, type=pb.GROUP_TYPE_CATEGORY, category="categories/7", stage="0-1岁", region="杭州市")
    assert cat.category == "categories/7" and cat.capacity == 500 and cat.stage == "0-1岁"


async def test_vip_group_refuses_a_lower_tier_with_a_clear_reason_then_admits_after_upgrade(community, members, tiers):
    gold = tiers[5000]
    vip = await make_group(community, type=pb.GROUP_TYPE_VIP, vip_rule=pb.VipRule(allowed_tiers=[gold.name]))
    by_threshold = await make_group(community, type=pb.GROUP_TYPE_VIP, vip_rule=pb.VipRule(min_growth_threshold=1000))
    login, _ = await members.login()
    member_id = int(login.member.name.split("/")[1])
    code, info = await refused(join(community, vip, member_id))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert info.reason == "TIER_TOO_LOW" and info.domain == "community.mall"
    assert info.metadata["required_tiers"] == gold.name
    assert info.metadata["required_tier_names"] == gold.display_name
    assert info.metadata["member_tier"] == login.member.tier
    # Members do not see the VIP group they may not join.
    listed = await community.stub.ListGroups(pb.ListGroupsRequest(page_size=100, type=pb.GROUP_TYPE_VIP),
                                             metadata=community.member_md(member_id))
    assert vip.name not in [g.name for g in listed.groups]
    code, _ = await refused(community.stub.GetGroup(pb.GetGroupRequest(name=vip.name),
                                                    metadata=community.member_md(member_id)))
    assert code == grpc.StatusCode.PERMISSION_DENIED

    await members.stub.AddGrowth(mpb.AddGrowthRequest(member=login.member.name, amount=1500, source="activity",
                                                      request_id=rid()), metadata=members.service_md)
    code, info = await refused(join(community, vip, member_id))  # silver: still below gold
    assert info.reason == "TIER_TOO_LOW"
    assert (await join(community, by_threshold, member_id)).state == pb.MEMBERSHIP_STATE_ACTIVE

    await members.stub.AddGrowth(mpb.AddGrowthRequest(member=login.member.name, amount=5000, source="activity",
                                                      request_id=rid()), metadata=members.service_md)
    assert (await join(community, vip, member_id)).state == pb.MEMBERSHIP_STATE_ACTIVE
    listed = await community.stub.ListGroups(pb.ListGroupsRequest(page_size=100, joined_only=True),
                                             metadata=community.member_md(member_id))
    assert {vip.name, by_threshold.name} <= {g.name for g in listed.groups}
    assert all(g.joined for g in listed.groups)


async def test_members_see_only_groups_they_belong_to_or_may_join(community):
    open_group = await make_group(community)
    invite_only = await make_group(community, join_policy=pb.JOIN_POLICY_INVITE_ONLY)
    closed = await make_group(community)
    await community.stub.CloseGroup(pb.CloseGroupRequest(name=closed.name), metadata=community.staff_md())
    m, insider = new_member_id(), new_member_id()
    await join(community, invite_only, insider, invite_code=invite_only.invite_code)
    seen = set()
    token = ""
    while True:
        page = await community.stub.ListGroups(pb.ListGroupsRequest(page_size=50, page_token=token),
                                               metadata=community.member_md(m))
        seen |= {g.name for g in page.groups}
        token = page.next_page_token
        if not token:
            break
    assert open_group.name in seen and invite_only.name not in seen and closed.name not in seen
    assert all(not g.invite_code for g in page.groups if not g.joined)
    mine = await community.stub.GetGroup(pb.GetGroupRequest(name=invite_only.name), metadata=community.member_md(insider))
    assert mine.joined and mine.invite_code == invite_only.invite_code
    for name in [invite_only.name, closed.name, "groups/999999999"]:
        code, _ = await refused(community.stub.GetGroup(pb.GetGroupRequest(name=name), metadata=community.member_md(m)))
        assert code == grpc.StatusCode.PERMISSION_DENIED, name
