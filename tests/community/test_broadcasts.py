"""Broadcasts (群发): one per member per brand day, once across overlapping groups, open and click records."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from sqlalchemy import func, select

from community.models import Message
from mall.community.v1 import community_service_pb2 as pb
from tests.community.helpers import join, make_group, new_member_id, refused, rid


async def send(community, **fields) -> pb.Broadcast:
    fields.setdefault("title", "今日福利")
    fields.setdefault("text", "群专享券已发放,快来领取")
    return await community.stub.CreateBroadcast(pb.CreateBroadcastRequest(broadcast=pb.Broadcast(**fields),
                                                                          request_id=rid()),
                                                metadata=community.staff_md("guide", 3))


async def inbox(community, member_id: int) -> list[pb.Message]:
    resp = await community.stub.ListMessages(pb.ListMessagesRequest(parent="members/me", page_size=100),
                                             metadata=community.member_md(member_id))
    return list(resp.messages)


@pytest.fixture
def brand_noon(community):
    """Pin "now" to noon of a fresh brand day (Asia/Shanghai) so earlier tests' broadcasts do not count."""
    base = datetime(2031, 1, 1, 4, 0, tzinfo=UTC) + timedelta(days=int(new_member_id() % 3000))
    clock = {"now": base}
    community.app.set_clock(lambda: clock["now"])
    yield clock
    from mallkit.db import utcnow

    community.app.set_clock(utcnow)


async def test_two_broadcasts_on_one_day_reach_each_member_once_and_overlaps_count_once(community, brand_noon):
    a, b = await make_group(community), await make_group(community)
    only_a, only_b, both = new_member_id(), new_member_id(), new_member_id()
    for g, m in [(a, only_a), (b, only_b), (a, both), (b, both)]:
        await join(community, g, m)
    first = await send(community, groups=[a.name, b.name])
    assert (first.target_count, first.delivered_count, first.capped_count) == (3, 3, 0)
    second = await send(community, groups=[a.name], members=[f"members/{only_b}"])
    assert (second.target_count, second.delivered_count, second.capped_count) == (3, 0, 3)
    for m in (only_a, only_b, both):
        msgs = await inbox(community, m)
        assert [x.broadcast for x in msgs] == [first.name], m
    # The next brand day (after midnight in Asia/Shanghai, i.e. 16:00 UTC) they may get one again.
    brand_noon["now"] = brand_noon["now"] + timedelta(hours=12, minutes=1)
    third = await send(community, groups=[a.name])
    assert third.delivered_count == 2


@pytest.mark.mariadb
async def test_concurrent_broadcasts_never_exceed_the_daily_cap(community, brand_noon):
    group = await make_group(community)
    members = [new_member_id() for _ in range(30)]
    for m in members:
        await join(community, group, m)
    sent = await asyncio.gather(*[send(community, groups=[group.name]) for _ in range(6)])
    assert sum(b.delivered_count for b in sent) == 30
    async with community.engine.connect() as conn:
        per_member = (await conn.execute(select(Message.member_id, func.count()).where(
            Message.member_id.in_(members)).group_by(Message.member_id))).all()
    assert len(per_member) == 30 and all(n == 1 for _, n in per_member)


async def test_daily_cap_is_configurable(community, brand_noon):
    group = await make_group(community)
    m = new_member_id()
    await join(community, group, m)
    community.app.broadcasts.daily_cap = 2
    try:
        results = [await send(community, groups=[group.name]) for _ in range(3)]
    finally:
        community.app.broadcasts.daily_cap = 1
    assert [b.delivered_count for b in results] == [1, 1, 0]


async def test_open_and_click_are_recorded_once_and_only_by_the_recipient(community, brand_noon):
    group = await make_group(community)
    m, other = new_member_id(), new_member_id()
    await join(community, group, m)
    b = await send(community, groups=[group.name], post=f"{group.name}/posts/1")
    msg = (await inbox(community, m))[0]
    assert msg.name.startswith(f"members/{m}/messages/") and msg.post == f"{group.name}/posts/1"
    mine = "members/me/messages/" + msg.name.rsplit("/", 1)[1]
    for _ in range(3):
        opened = await community.stub.OpenMessage(pb.OpenMessageRequest(name=mine), metadata=community.member_md(m))
    clicked = await community.stub.ClickMessage(pb.ClickMessageRequest(name=mine), metadata=community.member_md(m))
    await community.stub.ClickMessage(pb.ClickMessageRequest(name=mine), metadata=community.member_md(m))
    assert opened.open_time == clicked.open_time and clicked.click_time.seconds > 0
    got = await community.stub.GetBroadcast(pb.GetBroadcastRequest(name=b.name), metadata=community.staff_md())
    assert (got.delivered_count, got.opened_count, got.clicked_count) == (1, 1, 1)
    code, _ = await refused(community.stub.OpenMessage(pb.OpenMessageRequest(name=mine),
                                                       metadata=community.member_md(other)))
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = await refused(community.stub.OpenMessage(pb.OpenMessageRequest(name=msg.name),
                                                       metadata=community.member_md(other)))
    assert code == grpc.StatusCode.PERMISSION_DENIED


async def test_a_broadcast_needs_a_request_id_and_targets(community):
    code, info = await refused(community.stub.CreateBroadcast(pb.CreateBroadcastRequest(
        broadcast=pb.Broadcast(title="t", text="x", members=["members/1"])), metadata=community.staff_md()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and info.metadata["field"] == "request_id"
    code, info = await refused(community.stub.CreateBroadcast(pb.CreateBroadcastRequest(
        broadcast=pb.Broadcast(title="t", text="x"), request_id=rid()), metadata=community.staff_md()))
    assert info.metadata["field"] == "broadcast.groups"
    code, _ = await refused(community.stub.CreateBroadcast(pb.CreateBroadcastRequest(
        broadcast=pb.Broadcast(title="t", text="x", members=["members/1"]), request_id=rid()),
        metadata=community.member_md(1)))
    assert code == grpc.StatusCode.PERMISSION_DENIED
