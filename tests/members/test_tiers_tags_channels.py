"""Tiers and growth, tag groups and tags, channel codes and touchpoints."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

from mall.members.v1 import members_service_pb2 as pb
from mallkit.errors import error_info, status_of
from tests.fixtures.members import rid


@pytest.fixture(scope="module")
async def tiers(members):
    staff = await members.staff()
    existing = {t.growth_threshold: t for t in (await members.stub.ListTiers(pb.ListTiersRequest(page_size=100),
                                                                              metadata=staff)).tiers}
    for name, threshold, mult in [("普通", 0, 100), ("银卡", 1000, 120), ("金卡", 5000, 150)]:
        if threshold not in existing:
            existing[threshold] = await members.stub.CreateTier(pb.CreateTierRequest(tier=pb.Tier(
                display_name=name, growth_threshold=threshold,
                benefits=pb.TierBenefits(points_multiplier_percent=mult, flags=["vip_groups"] if threshold else []))),
                metadata=staff)
    return existing


async def test_growth_upgrades_tier_automatically_with_history(members, tiers):
    login, md = await members.login()
    assert login.member.tier == tiers[0].name
    up = await members.stub.AddGrowth(pb.AddGrowthRequest(member=login.member.name, amount=1200, source="order",
                                                          request_id=rid()), metadata=members.service_md)
    assert up.upgraded and up.tier == tiers[1000].name and up.growth_value == 1200
    same = await members.stub.AddGrowth(pb.AddGrowthRequest(member=login.member.name, amount=100, source="activity",
                                                            request_id=rid()), metadata=members.service_md)
    assert not same.upgraded and same.tier == tiers[1000].name
    jump = await members.stub.AddGrowth(pb.AddGrowthRequest(member=login.member.name, amount=10_000, source="order",
                                                            request_id=rid()), metadata=members.service_md)
    assert jump.upgraded and jump.tier == tiers[5000].name
    history = await members.stub.ListTierChanges(pb.ListTierChangesRequest(parent="members/me"), metadata=md)
    assert [(c.from_tier, c.to_tier) for c in history.tier_changes] == [
        (tiers[1000].name, tiers[5000].name), (tiers[0].name, tiers[1000].name), ("", tiers[0].name)]


async def test_concurrent_growth_is_never_lost(members, tiers):
    login, _ = await members.login()
    await asyncio.gather(*[
        members.stub.AddGrowth(pb.AddGrowthRequest(member=login.member.name, amount=10, source="order", request_id=rid()),
                               metadata=members.service_md) for _ in range(40)])
    me = await members.stub.GetMember(pb.GetMemberRequest(name=login.member.name), metadata=members.service_md)
    assert me.growth_value == 400


async def test_duplicate_tier_threshold_is_already_exists(members, tiers):
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await members.stub.CreateTier(pb.CreateTierRequest(tier=pb.Tier(display_name="dup", growth_threshold=1000)),
                                      metadata=await members.staff())
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS


@pytest.fixture(scope="module")
async def groups(members):
    staff = await members.staff()
    suffix = uuid.uuid4().hex[:6]
    stage = await members.stub.CreateTagGroup(pb.CreateTagGroupRequest(tag_group=pb.TagGroup(
        display_name=f"阶段{suffix}", selection=pb.TAG_SELECTION_SINGLE)), metadata=staff)
    likes = await members.stub.CreateTagGroup(pb.CreateTagGroupRequest(tag_group=pb.TagGroup(
        display_name=f"兴趣{suffix}", selection=pb.TAG_SELECTION_MULTIPLE)), metadata=staff)
    tags = {}
    for g, names in [(stage, ["孕期", "0-1岁"]), (likes, ["奶粉", "辅食"])]:
        for n in names:
            tags[n] = await members.stub.CreateTag(pb.CreateTagRequest(parent=g.name, tag=pb.Tag(display_name=n)),
                                                   metadata=staff)
    return stage, likes, tags


async def _tags_of(members, name):
    resp = await members.stub.ListMemberTags(pb.ListMemberTagsRequest(parent=name), metadata=await members.staff())
    return {t.tag: t for t in resp.member_tags}


async def test_single_select_group_keeps_one_tag_and_multi_keeps_all(members, groups):
    stage, likes, tags = groups
    staff = await members.staff()
    a, _ = await members.login()
    b, _ = await members.login()
    who = [a.member.name, b.member.name]
    applied = await members.stub.ApplyTags(pb.ApplyTagsRequest(
        members=who, tags=[tags["孕期"].name, tags["奶粉"].name, tags["辅食"].name]), metadata=staff)
    assert applied.applied_count == 6
    await members.stub.ApplyTags(pb.ApplyTagsRequest(members=who, tags=[tags["0-1岁"].name]), metadata=staff)
    held = await _tags_of(members, a.member.name)
    assert set(held) == {tags["0-1岁"].name, tags["奶粉"].name, tags["辅食"].name}
    assert held[tags["奶粉"].name].source == pb.TAG_SOURCE_MANUAL and held[tags["奶粉"].name].source_ref.startswith("staff/")
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await members.stub.ApplyTags(pb.ApplyTagsRequest(members=who, tags=[tags["孕期"].name, tags["0-1岁"].name]),
                                     metadata=staff)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(await status_of(e.value)).reason == "SINGLE_SELECT_CONFLICT"
    removed = await members.stub.RemoveTags(pb.RemoveTagsRequest(members=who, tags=[tags["奶粉"].name]), metadata=staff)
    assert removed.removed_count == 2
    assert tags["奶粉"].name not in await _tags_of(members, b.member.name)



async def test_concurrent_single_select_applications_leave_one_tag(members, groups):
    stage, likes, tags = groups
    staff = await members.staff()
    a, _ = await members.login()
    choices = [tags["孕期"].name, tags["0-1岁"].name] * 10
    results = await asyncio.gather(*[
        members.stub.ApplyTags(pb.ApplyTagsRequest(members=[a.member.name], tags=[t]), metadata=staff) for t in choices],
        return_exceptions=True)
    assert all(not isinstance(r, Exception) or r.code() == grpc.StatusCode.ABORTED for r in results), results
    held = [t for t in await _tags_of(members, a.member.name) if t.startswith(stage.name + "/")]
    assert len(held) == 1


async def test_bulk_apply_refuses_unknown_member_and_writes_nothing(members, groups):
    _, likes, tags = groups
    a, _ = await members.login()
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await members.stub.ApplyTags(pb.ApplyTagsRequest(members=[a.member.name, "members/999999999"],
                                                         tags=[tags["辅食"].name]), metadata=await members.staff())
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert await _tags_of(members, a.member.name) == {}


async def test_channel_code_arrival_records_first_touch_tags_and_guide(members, groups):
    _, likes, tags = groups
    staff = await members.staff()
    store = await members.stub.CreateStore(pb.CreateStoreRequest(store=pb.Store(display_name="西湖店")), metadata=staff)
    guide = await members.stub.CreateStaff(pb.CreateStaffRequest(staff=pb.Staff(
        username=f"guide{uuid.uuid4().hex[:6]}", display_name="导购", role=pb.STAFF_ROLE_GUIDE, store=store.name,
        password="guide-password-123")), metadata=staff)
    card = await members.stub.CreateChannelCode(pb.CreateChannelCodeRequest(channel_code=pb.ChannelCode(
        display_name="包裹卡", channel_type=pb.CHANNEL_TYPE_PACKAGE_CARD, tags=[tags["奶粉"].name])), metadata=staff)
    qr = await members.stub.CreateChannelCode(pb.CreateChannelCodeRequest(channel_code=pb.ChannelCode(
        display_name="门店码", channel_type=pb.CHANNEL_TYPE_STORE_QR, store=store.name, guide=guide.name,
        tags=[tags["辅食"].name])), metadata=staff)
    login, md = await members.login(channel_code=card.scene)
    assert login.member.first_touch_channel_code == card.name
    assert login.member.first_touch_channel_type == pb.CHANNEL_TYPE_PACKAGE_CARD
    tp = await members.stub.CreateTouchpoint(pb.CreateTouchpointRequest(
        parent="members/me", touchpoint=pb.Touchpoint(scene=qr.scene)), metadata=md)
    assert not tp.first_touch and tp.channel_type == pb.CHANNEL_TYPE_STORE_QR
    me = await members.stub.GetMember(pb.GetMemberRequest(name="members/me"), metadata=md)
    assert me.first_touch_channel_code == card.name and me.guide == guide.name and me.store == store.name
    history = await members.stub.ListTouchpoints(pb.ListTouchpointsRequest(parent="members/me"), metadata=md)
    assert [t.channel_code for t in history.touchpoints] == [card.name, qr.name]
    assert [t.first_touch for t in history.touchpoints] == [True, False]
    held = await _tags_of(members, login.member.name)
    assert held[tags["奶粉"].name].source == pb.TAG_SOURCE_CHANNEL_CODE
    assert held[tags["辅食"].name].source_ref == qr.name
    assert (await members.stub.GetChannelCode(pb.GetChannelCodeRequest(name=qr.name), metadata=staff)).arrival_count == 1


async def test_channel_code_must_name_a_guide(members):
    staff = await members.staff()
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await members.stub.CreateChannelCode(pb.CreateChannelCodeRequest(channel_code=pb.ChannelCode(
            display_name="x", channel_type=pb.CHANNEL_TYPE_OTHER, guide="staff/1")), metadata=staff)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # staff/1 is the admin


async def test_list_pages_with_tokens_that_cannot_be_forged(members):
    staff = await members.staff()
    for _ in range(3):
        await members.login()
    first = await members.stub.ListMembers(pb.ListMembersRequest(page_size=2), metadata=staff)
    assert len(first.members) == 2 and first.next_page_token
    second = await members.stub.ListMembers(pb.ListMembersRequest(page_size=2, page_token=first.next_page_token),
                                            metadata=staff)
    assert int(second.members[0].name.split("/")[1]) < int(first.members[1].name.split("/")[1])
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await members.stub.ListMembers(pb.ListMembersRequest(page_size=2, page_token=first.next_page_token[:-2] + "AA"),
                                       metadata=staff)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await members.stub.ListMembers(pb.ListMembersRequest(page_size=-1), metadata=staff)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_services_can_read_a_staff_account_but_members_cannot(members):
    staff = await members.staff()
    created = await members.stub.CreateStaff(pb.CreateStaffRequest(staff=pb.Staff(
        username=f"g{uuid.uuid4().hex[:8]}", display_name="导购", role=pb.STAFF_ROLE_GUIDE,
        password="guide-password-123")), metadata=staff)
    got = await members.stub.GetStaff(pb.GetStaffRequest(name=created.name), metadata=members.service_md)
    assert got.role == pb.STAFF_ROLE_GUIDE and got.password == ""
    _, md = await members.login()
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await members.stub.GetStaff(pb.GetStaffRequest(name=created.name), metadata=md)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await members.stub.GetStaff(pb.GetStaffRequest(name="staff/999999999"), metadata=members.service_md)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
