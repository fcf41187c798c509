"""Reach (触达): consent per template, daily frequency cap, every touch recorded."""

from __future__ import annotations

import asyncio

from fakes.wechat import openid_for
from mall.members.v1 import members_service_pb2 as pb
from tests.fixtures.members import rid


async def _send(members, member, template="tmpl_paid", purpose="orders.payment_success", key=None):
    return await members.stub.SendReach(pb.SendReachRequest(
        member=member, template_id=template, data={"thing1": "订单已支付"}, page="pages/order/detail",
        purpose=purpose, request_id=key or rid()), metadata=members.service_md)


async def _sent_to(fake_wechat, user):
    return [m for m in fake_wechat.messages if m["touser"] == openid_for(fake_wechat.appid, user)]


async def test_each_subscription_allows_one_message_and_skips_are_recorded(members, fake_wechat):
    user = f"reach{rid()[:8]}"
    login, md = await members.login(user)
    name = login.member.name
    skipped = await _send(members, name)
    assert skipped.state == pb.TOUCH_STATE_SKIPPED and skipped.skip_reason == pb.SKIP_REASON_NO_CONSENT
    rec = await members.stub.RecordSubscriptions(pb.RecordSubscriptionsRequest(
        parent="members/me", accepted_template_ids=["tmpl_paid", "tmpl_paid"], request_id=rid()), metadata=md)
    assert rec.remaining["tmpl_paid"] == 2
    assert (await _send(members, name)).state == pb.TOUCH_STATE_SENT
    assert (await _send(members, name)).state == pb.TOUCH_STATE_SENT
    third = await _send(members, name)
    assert third.skip_reason == pb.SKIP_REASON_NO_CONSENT
    sent = await _sent_to(fake_wechat, user)
    assert len(sent) == 2 and sent[0]["data"] == {"thing1": {"value": "订单已支付"}}
    touches = await members.stub.ListTouches(pb.ListTouchesRequest(parent=name), metadata=await members.staff())
    assert [t.state for t in touches.touches] == [pb.TOUCH_STATE_SKIPPED, pb.TOUCH_STATE_SENT, pb.TOUCH_STATE_SENT,
                                                  pb.TOUCH_STATE_SKIPPED]


async def test_daily_cap_skips_without_spending_consent(members, fake_wechat):
    user = f"cap{rid()[:8]}"
    login, md = await members.login(user)
    cap = members.app.settings.reach_daily_cap
    await members.stub.RecordSubscriptions(pb.RecordSubscriptionsRequest(
        parent="members/me", accepted_template_ids=["tmpl_care"] * (cap + 2)), metadata=md)
    states = [(await _send(members, login.member.name, "tmpl_care")).skip_reason for _ in range(cap + 1)]
    assert states == [pb.SKIP_REASON_UNSPECIFIED] * cap + [pb.SKIP_REASON_FREQUENCY_CAP]
    assert len(await _sent_to(fake_wechat, user)) == cap
    again = await members.stub.RecordSubscriptions(pb.RecordSubscriptionsRequest(
        parent="members/me", accepted_template_ids=["tmpl_care"]), metadata=md)
    assert again.remaining["tmpl_care"] == 3  # cap+2+1 accepted, cap spent



async def test_same_reach_sent_concurrently_goes_out_once(members, fake_wechat):
    user = f"once{rid()[:8]}"
    login, md = await members.login(user)
    await members.stub.RecordSubscriptions(pb.RecordSubscriptionsRequest(
        parent="members/me", accepted_template_ids=["tmpl_paid"] * 5), metadata=md)
    key = rid()
    results = await asyncio.gather(*[_send(members, login.member.name, key=key) for _ in range(20)])
    assert len({r.name for r in results}) == 1
    assert len(await _sent_to(fake_wechat, user)) == 1


async def test_refusal_by_wechat_is_recorded(members, fake_wechat):
    user = f"refuse{rid()[:8]}"
    login, md = await members.login(user)
    fake_wechat.refusing.add(openid_for(fake_wechat.appid, user))
    await members.stub.RecordSubscriptions(pb.RecordSubscriptionsRequest(
        parent="members/me", accepted_template_ids=["tmpl_paid"]), metadata=md)
    touch = await _send(members, login.member.name)
    assert touch.skip_reason == pb.SKIP_REASON_DELIVERY_REFUSED
