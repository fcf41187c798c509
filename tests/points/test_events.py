"""Event consumers: invite, community tasks and order points, each applied once however often delivered."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import select

from mall.community.v1 import community_events_pb2 as cpb
from mall.events.v1 import events_pb2
from mall.members.v1 import members_service_pb2 as mpb
from mall.orders.v1 import orders_events_pb2 as opb
from mall.points.v1 import points_service_pb2 as pb
from members.models import OutboxEvents as MembersOutbox
from points import jobs
from points.models import Entry, Task
from tests.fixtures import deliver
from tests.fixtures.points import fresh_member_id, rid


async def ensure_task(points, kind: int, reward: int, frequency: int, limit: int) -> None:
    """One task per kind, shared by the tests of this session."""
    async with points.engine.connect() as conn:
        found = (await conn.execute(select(Task.id).where(Task.kind == kind))).scalar_one_or_none()
    task = pb.Task(kind=kind, display_name=pb.TaskKind.Name(kind), reward_points=reward, frequency=frequency,
                   limit_per_period=limit, active=True)
    if found is None:
        await points.stub.CreateTask(pb.CreateTaskRequest(task=task, request_id=rid()), metadata=points.staff_md())
    else:
        task.name = f"tasks/{found}"
        await points.stub.UpdateTask(pb.UpdateTaskRequest(task=task, request_id=rid()), metadata=points.staff_md())


async def entries(points, member: int, source: int | None = None) -> list[int]:
    async with points.engine.connect() as conn:
        q = select(Entry.available_delta).where(Entry.member_id == member)
        if source is not None:
            q = q.where(Entry.source == source)
        return list((await conn.execute(q.order_by(Entry.id))).scalars().all())


async def test_invite_reward_is_granted_once_however_often_the_event_arrives(points, members):
    await ensure_task(points, pb.TASK_KIND_INVITE_FRIEND, 100, pb.TASK_FREQUENCY_WEEKLY, 10)
    inviter, _ = await members.login()
    invitee, _ = await members.login(invite_code=inviter.member.invite_code)
    inviter_id = int(inviter.member.name.split("/")[1])
    for _ in range(400):
        if await entries(points, inviter_id, pb.ENTRY_SOURCE_INVITE):
            break
        await asyncio.sleep(0.05)
    assert await entries(points, inviter_id, pb.ENTRY_SOURCE_INVITE) == [100]
    # The stream redelivers the same event (a consumer crashed before its ack) — many times, concurrently.
    async with members.engine.connect() as conn:
        payload = (await conn.execute(select(MembersOutbox.c.payload).where(
            MembersOutbox.c.event_type == "member.referred").order_by(MembersOutbox.c.id.desc()).limit(1))).scalar()
    event = events_pb2.Event.FromString(payload)
    again = await asyncio.gather(*[deliver(points.app, event) for _ in range(5)])
    assert all(a.duplicate for a in again)
    # Even a second event (another id) about the same invitee does not pay twice.
    data = mpb.MemberReferredEvent()
    event.data.Unpack(data)
    again = await points.deliver("member.referred", data, source="members")
    assert not again.duplicate
    assert await entries(points, inviter_id, pb.ENTRY_SOURCE_INVITE) == [100]
    assert invitee.member.inviter == inviter.member.name
    await points.check()


async def test_community_tasks_respect_frequency_and_caps(points):
    await ensure_task(points, pb.TASK_KIND_SHARE_CONTENT, 5, pb.TASK_FREQUENCY_DAILY, 2)
    await ensure_task(points, pb.TASK_KIND_JOIN_GROUP, 20, pb.TASK_FREQUENCY_ONCE, 1)
    await ensure_task(points, pb.TASK_KIND_ANSWER_QUIZ, 10, pb.TASK_FREQUENCY_DAILY, 3)
    member = fresh_member_id()
    name = f"members/{member}"
    for post in ["groups/1/posts/1", "groups/1/posts/1", "groups/1/posts/2", "groups/1/posts/3"]:
        await points.deliver("community.content_shared", cpb.ContentSharedEvent(post=post, sharer=name),
                             source="community")
    for group in ["groups/1", "groups/2"]:
        await points.deliver("community.group_joined", cpb.GroupJoinedEvent(group=group, member=name),
                             source="community")
    await points.deliver("community.quiz_answered", cpb.QuizAnsweredEvent(post="groups/1/posts/9", member=name,
                                                                          reward_points=66), source="community")
    # Shares: the same post once, at most 2 a day; joining: once in a lifetime; the quiz pays its own reward.
    assert sorted(await entries(points, member, pb.ENTRY_SOURCE_TASK)) == [5, 5, 20, 66]
    await points.check()


async def test_order_points_pend_then_confirm_with_a_reminder_or_reverse(points, members):
    login, _ = await members.login()
    member = int(login.member.name.split("/")[1])
    order_a, order_b = [f"orders/{uuid.uuid4().int % 10**12 + 1}" for _ in range(2)]
    paid = opb.OrderPaidEvent(order=order_a, member=login.member.name, paid_amount_fen=12_345)
    event_id = str(uuid.uuid4())
    for _ in range(3):  # delivered three times: one effect
        await points.deliver("order.paid", paid, event_id=event_id)
    await points.deliver("order.paid", paid)  # another event id for the same order: still one effect
    account = await points.account(member)
    expected = 12_345 * points.app.settings.purchase_points_per_yuan // 100  # entry tier: x1
    assert (account.available_points, account.pending_points) == (0, expected)
    await points.deliver("order.completed", opb.OrderCompletedEvent(order=order_a, member=login.member.name))
    await points.deliver("order.completed", opb.OrderCompletedEvent(order=order_a, member=login.member.name))
    account = await points.account(member)
    assert (account.available_points, account.pending_points) == (expected, 0)
    await jobs.send_reaches(points.app)
    touches = await members.stub.ListTouches(mpb.ListTouchesRequest(parent=login.member.name),
                                             metadata=members.service_md)
    assert [t.purpose for t in touches.touches].count("points.purchase_confirmed") == 1

    await points.deliver("order.paid", opb.OrderPaidEvent(order=order_b, member=login.member.name,
                                                          paid_amount_fen=5_000))
    await points.deliver("order.refunded", opb.OrderRefundedEvent(order=order_b, member=login.member.name))
    await points.deliver("order.refunded", opb.OrderRefundedEvent(order=order_b, member=login.member.name))
    account = await points.account(member)
    assert (account.available_points, account.pending_points) == (expected, 0)
    await points.check()


async def test_order_points_use_the_multiplier_the_order_carries_without_asking_members(points):
    # A member the members service never heard of: any members call inside the handler would fail.
    member = fresh_member_id()
    order = f"orders/{uuid.uuid4().int % 10**12 + 1}"
    paid = opb.OrderPaidEvent(order=order, member=f"members/{member}", paid_amount_fen=10_000, tier="tiers/3",
                              points_multiplier_percent=150)
    await points.deliver("order.paid", paid)
    account = await points.account(member)
    assert account.pending_points == 10_000 * points.app.settings.purchase_points_per_yuan * 150 // 10_000
    await points.check()


async def test_an_event_that_arrives_too_early_is_refused_then_applied_on_retry(points, members):
    from mallkit.errors import NotFound

    member = (await members.login())[0].member.name
    order = f"orders/{uuid.uuid4().int % 10**12 + 1}"
    completed, event_id = opb.OrderCompletedEvent(order=order, member=member), str(uuid.uuid4())
    with pytest.raises(NotFound):  # order.completed before order.paid: refused, redelivered later
        await points.deliver("order.completed", completed, event_id=event_id)
    await points.deliver("order.paid", opb.OrderPaidEvent(order=order, member=member, paid_amount_fen=900))
    retried = await points.deliver("order.completed", completed, event_id=event_id)  # the stream's redelivery
    assert not retried.duplicate
    account = await points.account(int(member.split("/")[1]))
    assert (account.available_points, account.pending_points) == (9, 0)
