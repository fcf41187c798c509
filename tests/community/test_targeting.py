"""Targeting by segment: a daily 15:00 (Asia/Shanghai) broadcast to a segment over two simulated days goes
out once per member per day, in-app within the community's daily cap and as a subscribe message through
members' reach (consent and members' cap apply, refusals counted); replicas overlapping on a round deliver
once; VIP groups restricted to a segment; bad input named (gateway over HTTP)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import grpc
import pytest
from sqlalchemy import func, select

from community import jobs
from community.app import build
from community.models import Broadcast, BroadcastRound, Message
from mall.community.v1 import community_service_pb2 as pb
from mall.members.v1 import members_service_pb2 as mpb
from mallkit.auth import MEMBER, STAFF, Principal
from mallkit.db import utcnow
from members.models import Member, Touch
from tests.community.helpers import join, make_group, new_member_id, refused, rid
from tests.fixtures.community import community_settings
from tests.fixtures.members import segment_of

SHANGHAI = ZoneInfo("Asia/Shanghai")
TEMPLATE = "tmpl-broadcast"


@pytest.fixture
def clock(community):
    """A fresh brand day far ahead (its in-app cap rows are this test's own), 10:00 in Shanghai."""
    day = datetime(2034, 1, 1, tzinfo=SHANGHAI) + timedelta(days=uuid.uuid4().int % 3000)
    state = {"now": day.replace(hour=10).astimezone(UTC)}
    community.app.set_clock(lambda: state["now"])
    yield state
    community.app.set_clock(utcnow)


def _member_md(members, member_id: int):
    return members.auth(members.codec.issue(Principal(MEMBER, f"members/{member_id}"))[0])


async def _consent(members, member_id: int, template: str, n: int) -> None:
    await members.stub.RecordSubscriptions(mpb.RecordSubscriptionsRequest(
        parent="members/me", accepted_template_ids=[template] * n, request_id=rid()), metadata=_member_md(members, member_id))


async def _openid(members, member_id: int) -> str:
    async with members.engine.connect() as conn:
        return (await conn.execute(select(Member.openid).where(Member.id == member_id))).scalar_one()


async def _messages(community, broadcast: str) -> Counter:
    """(member, round) -> in-app messages of the broadcast."""
    bid = int(broadcast.split("/")[1])
    async with community.engine.connect() as conn:
        rows = await conn.execute(select(Message.member_id, Message.round_no, func.count())
                                  .where(Message.broadcast_id == bid).group_by(Message.member_id, Message.round_no))
        return Counter({(m, r): n for m, r, n in rows.tuples()})


async def _round_id(community, broadcast: str, round_no: int = 1) -> int:
    async with community.engine.connect() as conn:
        return (await conn.execute(select(BroadcastRound.id).where(
            BroadcastRound.broadcast_id == int(broadcast.split("/")[1]), BroadcastRound.round_no == round_no))).scalar_one()


async def _get(community, name: str) -> pb.Broadcast:
    return await community.stub.GetBroadcast(pb.GetBroadcastRequest(name=name), metadata=community.staff_md())


@pytest.mark.mariadb
async def test_daily_15_00_broadcast_goes_out_once_a_day_per_member_with_cap_and_consent(
        community, members, fake_wechat, clock):
    segment, ids = await segment_of(members, 6)
    regular, one_credit, no_consent, at_reach_cap, in_app_capped, refusing = ids
    for m in (regular, at_reach_cap, in_app_capped, refusing):
        await _consent(members, m, TEMPLATE, 5)
    await _consent(members, one_credit, TEMPLATE, 1)
    cap = members.app.settings.reach_daily_cap  # members' cap: this real day, whatever the community's clock says
    await _consent(members, at_reach_cap, "tmpl-other", cap)
    for _ in range(cap):
        await members.stub.SendReach(mpb.SendReachRequest(member=f"members/{at_reach_cap}", template_id="tmpl-other",
                                                          data={"thing1": "x"}, page="pages/index", purpose="test",
                                                          request_id=rid()), metadata=members.service_md)
    fake_wechat.refusing.add(await _openid(members, refusing))
    # in_app_capped already had today's broadcast in the community (the cap is one per brand day)
    await community.stub.CreateBroadcast(pb.CreateBroadcastRequest(broadcast=pb.Broadcast(
        title="早安", text="早安", members=[f"members/{in_app_capped}"]), request_id=rid()), metadata=community.staff_md())

    day1 = clock["now"].astimezone(SHANGHAI).replace(hour=15, minute=0)
    b = pb.Broadcast(title="下午茶", text="15:00 下午茶券", segment=f"segments/{segment}", subscribe_message=True,
                     template_id=TEMPLATE, daily=True)
    b.send_time.FromDatetime(day1.astimezone(UTC))
    created = await community.stub.CreateBroadcast(pb.CreateBroadcastRequest(broadcast=b, request_id=rid()),
                                                   metadata=community.staff_md("operator"))
    assert created.state == pb.BROADCAST_STATE_SCHEDULED and created.next_round_time.ToDatetime(UTC) == day1

    await jobs.run_broadcasts(community.app, day1 - timedelta(minutes=1))
    assert (await _get(community, created.name)).round_count == 0  # not yet
    at = day1 + timedelta(seconds=30)
    await asyncio.gather(jobs.run_broadcasts(community.app, at), jobs.run_broadcasts(community.app, at))  # two replicas
    await jobs.run_broadcasts(community.app, day1 + timedelta(hours=5))  # later that day: nothing new
    first = await _get(community, created.name)
    assert first.round_count == 1
    assert first.next_round_time.ToDatetime(UTC) == day1 + timedelta(days=1)  # 15:00 Shanghai tomorrow = 07:00 UTC
    assert (first.target_count, first.delivered_count, first.capped_count) == (6, 5, 1)

    day2 = day1 + timedelta(days=1)
    for _ in range(2):
        await jobs.run_broadcasts(community.app, day2 + timedelta(seconds=5))
    done = await _get(community, created.name)
    assert done.round_count == 2 and done.state == pb.BROADCAST_STATE_SCHEDULED
    msgs = await _messages(community, created.name)
    expected = {(m, r): 1 for m in ids for r in (1, 2)}
    del expected[(in_app_capped, 1)]
    assert dict(msgs) == expected  # once a day per member, the in-app cap respected
    sent = Counter()
    for m in ids:
        openid = await _openid(members, m)
        sent[m] = sum(1 for x in fake_wechat.messages if x["touser"] == openid and x["template_id"] == TEMPLATE)
    assert sent == Counter({regular: 2, one_credit: 1, in_app_capped: 2})  # consent and members' cap respected
    assert (done.reach_sent_count, done.reach_skipped_count) == (5, 7)
    async with members.engine.connect() as conn:
        reasons = Counter((await conn.execute(select(Touch.skip_reason).where(
            Touch.member_id.in_(ids), Touch.purpose == "community.broadcast"))).scalars())
    assert reasons == Counter({mpb.SKIP_REASON_UNSPECIFIED: 5, mpb.SKIP_REASON_NO_CONSENT: 3,
                               mpb.SKIP_REASON_FREQUENCY_CAP: 2, mpb.SKIP_REASON_DELIVERY_REFUSED: 2})

    cancelled = await community.stub.CancelBroadcast(pb.CancelBroadcastRequest(name=created.name, request_id=rid()),
                                                     metadata=community.staff_md())
    assert cancelled.state == pb.BROADCAST_STATE_CANCELLED and not cancelled.HasField("next_round_time")
    await jobs.run_broadcasts(community.app, day2 + timedelta(days=1, seconds=5))
    assert (await _get(community, created.name)).round_count == 2
    code, info = await refused(community.stub.CancelBroadcast(pb.CancelBroadcastRequest(name=created.name),
                                                              metadata=community.staff_md()))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and info.reason == "BROADCAST_NOT_SCHEDULED"


@pytest.mark.mariadb
async def test_replicas_overlapping_on_a_round_deliver_each_member_once(community, members, clock):
    segment, ids = await segment_of(members, 600)
    replica_a = build(community_settings(community.url, members_addr=members.addr, broadcast_page_size=50), jobs=False)
    replica_b = build(community_settings(community.url, members_addr=members.addr, broadcast_page_size=50), jobs=False)
    await replica_a.start()
    await replica_b.start()
    try:
        b = pb.Broadcast(title="新品", text="新品上市", segment=f"segments/{segment}", subscribe_message=True,
                         template_id=TEMPLATE)
        created = await community.stub.CreateBroadcast(pb.CreateBroadcastRequest(broadcast=b, request_id=rid()),
                                                       metadata=community.staff_md())
        now = clock["now"]
        await asyncio.gather(replica_a.targeting.start_due_rounds(now), replica_b.targeting.start_due_rounds(now))
        assert (await _get(community, created.name)).round_count == 1  # one round, one winner
        round_id = await _round_id(community, created.name)
        first = asyncio.create_task(replica_a.targeting.run_round(round_id, now))
        loop = asyncio.get_running_loop()
        end = loop.time() + 60
        while sum((await _messages(community, created.name)).values()) < 100:
            assert loop.time() < end
            await asyncio.sleep(0.02)
        later = now + timedelta(seconds=community.app.settings.broadcast_lease_seconds + 1)  # a's lease looks expired
        pages = await asyncio.gather(first, replica_b.targeting.run_round(round_id, later),
                                     replica_b.targeting.run_round(round_id, later))
        assert pages[1] + pages[2] > 0 and pages[0] < 12  # b took over and a stopped
    finally:
        await replica_a.stop(grace=1)
        await replica_b.stop(grace=1)
    msgs = await _messages(community, created.name)
    assert dict(msgs) == {(m, 1): 1 for m in ids}
    got = await _get(community, created.name)
    assert got.state == pb.BROADCAST_STATE_FINISHED
    assert (got.target_count, got.delivered_count, got.reach_skipped_count) == (600, 600, 600)  # nobody consented
    async with members.engine.connect() as conn:
        touches = Counter((await conn.execute(select(Touch.member_id).where(
            Touch.member_id.in_(ids), Touch.purpose == "community.broadcast"))).scalars())
    assert set(touches) == set(ids) and set(touches.values()) == {1}


def _bearer(community, principal: Principal) -> dict:
    return {"Authorization": f"Bearer {community.codec.issue(principal)[0]}"}


async def test_vip_group_restricted_to_a_segment_over_http(community_gateway, community, members):
    gw = community_gateway
    staff = _bearer(community, Principal(STAFF, "staff/1", frozenset({"admin"})))
    segment, (inside,) = await segment_of(members, 1)
    outside = new_member_id()
    body = {"displayName": "黑卡群", "type": "GROUP_TYPE_VIP", "owner": "staff/3"}
    bad = await gw.post("/v1/groups", json={**body, "vipRule": {"segment": "segment/x"}}, headers=staff)
    assert bad.status_code == 400 and "group.vip_rule.segment" in bad.text
    missing = await gw.post("/v1/groups", json={**body, "vipRule": {"segment": "segments/no-such-seg"}}, headers=staff)
    assert missing.status_code == 404 and "SEGMENT_SNAPSHOT_NOT_FOUND" in missing.text
    created = await gw.post("/v1/groups", json={**body, "vipRule": {"segment": f"segments/{segment}"}}, headers=staff)
    assert created.status_code == 200, created.text
    group = created.json()["name"]
    assert created.json()["vipRule"]["segment"] == f"segments/{segment}"
    no = await gw.post(f"/v1/{group}:join", json={}, headers=_bearer(community, Principal(MEMBER, f"members/{outside}")))
    assert no.status_code == 400 and "NOT_IN_SEGMENT" in no.text
    yes = await gw.post(f"/v1/{group}:join", json={}, headers=_bearer(community, Principal(MEMBER, f"members/{inside}")))
    assert yes.status_code == 200, yes.text
    listed = await gw.get("/v1/groups", params={"type": "GROUP_TYPE_VIP"},
                          headers=_bearer(community, Principal(MEMBER, f"members/{outside}")))
    assert group not in [g["name"] for g in listed.json().get("groups", [])]  # not shown to those it refuses


async def test_vip_group_with_a_segment_and_tiers_needs_both(community, members, tiers):
    segment, (inside,) = await segment_of(members, 1)
    g = await make_group(community, type=pb.GROUP_TYPE_VIP, vip_rule=pb.VipRule(
        segment=f"segments/{segment}", allowed_tiers=[tiers[5000].name]))
    code, info = await refused(join(community, g, inside))  # in the segment, but not of the tier
    assert code == grpc.StatusCode.FAILED_PRECONDITION and info.reason == "TIER_TOO_LOW"
    code, info = await refused(join(community, g, new_member_id()))
    assert info.reason == "NOT_IN_SEGMENT"


async def test_segment_broadcast_bad_input_is_named_and_members_refused(community_gateway, community, members):
    gw = community_gateway
    staff = _bearer(community, Principal(STAFF, "staff/1", frozenset({"admin"})))
    segment, (m,) = await segment_of(members, 1)
    base = {"title": "t", "text": "x", "segment": f"segments/{segment}"}
    cases = [
        ({**base, "members": [f"members/{m}"]}, "broadcast.segment"),
        ({**base, "subscribeMessage": True}, "broadcast.template_id"),
        ({**base, "daily": True}, "broadcast.send_time"),
        ({**base, "sendTime": "2001-01-01T00:00:00Z"}, "broadcast.send_time"),
        ({"title": "t", "text": "x", "members": [f"members/{m}"], "daily": True}, "broadcast.daily"),
        ({**base, "segment": "segments/A"}, "broadcast.segment"),
    ]
    for body, field in cases:
        r = await gw.post("/v1/broadcasts", json=body, headers=staff, params={"requestId": rid()})
        assert r.status_code == 400 and field in r.text, (body, r.text)
    r = await gw.post("/v1/broadcasts", json={**base, "segment": "segments/no-such-seg"}, params={"requestId": rid()},
                      headers=staff)
    assert r.status_code == 404 and "SEGMENT_SNAPSHOT_NOT_FOUND" in r.text
    r = await gw.post("/v1/broadcasts", json=base, params={"requestId": rid()},
                      headers=_bearer(community, Principal(MEMBER, f"members/{m}")))
    assert r.status_code == 403
    async with community.engine.connect() as conn:  # nothing written by the refused ones
        assert (await conn.execute(select(func.count()).select_from(Broadcast).where(
            Broadcast.segment == segment))).scalar_one() == 0
    ok = await gw.post("/v1/broadcasts", json=base, params={"requestId": rid()}, headers=staff)
    assert ok.status_code == 200 and ok.json()["state"] == "BROADCAST_STATE_SCHEDULED", ok.text


async def test_a_daily_15_00_post_is_published_once_a_day(community, clock):
    group = await make_group(community)
    day1 = clock["now"].astimezone(SHANGHAI).replace(hour=15, minute=0)
    post = pb.Post(kind=pb.POST_KIND_ARTICLE, title="每日下午茶", body="今天的下午茶", daily=True)
    post.publish_time.FromDatetime(day1.astimezone(UTC))
    created = await community.stub.CreatePost(pb.CreatePostRequest(parent=group.name, post=post),
                                              metadata=community.staff_md())
    assert created.state == pb.POST_STATE_SCHEDULED and created.daily
    member = new_member_id()
    await join(community, group, member)
    bad = pb.Post(kind=pb.POST_KIND_DISCUSSION, title="我的", body="x", daily=True)
    code, _ = await refused(community.stub.CreatePost(pb.CreatePostRequest(parent=group.name, post=bad),
                                                      metadata=community.member_md(member)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT

    async def posts():
        resp = await community.stub.ListPosts(pb.ListPostsRequest(parent=group.name, page_size=100),
                                              metadata=community.staff_md())
        return sorted(((p.state, p.publish_time.ToDatetime(UTC)) for p in resp.posts), key=lambda x: x[1])

    await asyncio.gather(jobs.publish_due_posts(community.app, day1 + timedelta(seconds=1)),
                         jobs.publish_due_posts(community.app, day1 + timedelta(seconds=1)))  # two replicas
    await jobs.publish_due_posts(community.app, day1 + timedelta(hours=3))
    day2 = day1 + timedelta(days=1)
    assert await posts() == [(pb.POST_STATE_PUBLISHED, day1), (pb.POST_STATE_SCHEDULED, day2)]
    await jobs.publish_due_posts(community.app, day2 + timedelta(seconds=1))
    assert await posts() == [(pb.POST_STATE_PUBLISHED, day1), (pb.POST_STATE_PUBLISHED, day2),
                             (pb.POST_STATE_SCHEDULED, day2 + timedelta(days=1))]


@pytest.mark.mariadb
async def test_a_runner_dying_after_sending_never_sends_twice(community, members, fake_wechat, clock, monkeypatch):
    segment, ids = await segment_of(members, 20)
    template = f"tmpl-{uuid.uuid4().hex[:8]}"
    for m in ids:
        await _consent(members, m, template, 2)
    b = pb.Broadcast(title="会员日", text="会员日专享", segment=f"segments/{segment}", subscribe_message=True,
                     template_id=template)
    created = await community.stub.CreateBroadcast(pb.CreateBroadcastRequest(broadcast=b, request_id=rid()),
                                                   metadata=community.staff_md())
    targeting, now = community.app.targeting, clock["now"]
    await targeting.start_due_rounds(now)
    round_id = await _round_id(community, created.name)

    async def die(*args, **kwargs):
        raise RuntimeError("killed between sending and recording")

    monkeypatch.setattr(targeting, "_record_reach", die)
    with pytest.raises(RuntimeError):
        await targeting.run_round(round_id, now)
    sent = [x for x in fake_wechat.messages if x["template_id"] == template]
    assert len(sent) == 20 and (await _get(community, created.name)).reach_sent_count == 0  # sent, not recorded
    monkeypatch.undo()
    assert await targeting.run_round(round_id, now) == 0  # the dead runner's lease holds
    later = now + timedelta(seconds=community.app.settings.broadcast_lease_seconds + 1)
    await targeting.run_round(round_id, later)  # the replay: same request ids, members answers the stored touches
    assert len([x for x in fake_wechat.messages if x["template_id"] == template]) == 20
    got = await _get(community, created.name)
    assert (got.reach_sent_count, got.reach_skipped_count, got.delivered_count) == (20, 0, 20)
    async with members.engine.connect() as conn:
        touches = Counter((await conn.execute(select(Touch.member_id).where(
            Touch.member_id.in_(ids), Touch.purpose == "community.broadcast"))).scalars())
    assert touches == Counter({m: 1 for m in ids})
