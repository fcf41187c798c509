"""Against the real points and orders services: quiz points and group coupons are granted once.

A second community instance on its own database publishes to the community stream,
which the real points and orders services consume (as they consume the shared
fixture's instance too)."""

from __future__ import annotations

import asyncio

import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from community.app import SERVICE_DIR, build
from mall.community.v1 import community_service_pb2 as pb
from mall.community.v1 import community_service_pb2_grpc as pb_grpc
from mall.points.v1 import points_service_pb2 as ppb
from mallkit.testing import service_database
from tests.community.helpers import new_member_id, rid
from tests.fixtures.community import Community, community_settings


async def _quiz_task(points) -> None:
    staff = points.staff_md()
    tasks = await points.stub.ListTasks(ppb.ListTasksRequest(page_size=100), metadata=staff)
    task = next((t for t in tasks.tasks if t.kind == ppb.TASK_KIND_ANSWER_QUIZ), None)
    if task is None:
        await points.stub.CreateTask(ppb.CreateTaskRequest(task=ppb.Task(
            kind=ppb.TASK_KIND_ANSWER_QUIZ, display_name="答题送好礼", reward_points=10,
            frequency=ppb.TASK_FREQUENCY_DAILY, limit_per_period=100, active=True)), metadata=staff)
    elif not task.active or task.limit_per_period < 5:
        await points.stub.UpdateTask(ppb.UpdateTaskRequest(
            task=ppb.Task(name=task.name, active=True, limit_per_period=max(task.limit_per_period, 100)),
            update_mask=FieldMask(paths=["active", "limit_per_period"])), metadata=staff)


async def quiz_points(points, member_id: int, quiz: str) -> list[int]:
    """The rewards for ``quiz`` in the member's points ledger (other tasks, e.g. joining a group, may pay too)."""
    from sqlalchemy import select

    from points.models import Entry

    async with points.engine.connect() as conn:
        return list((await conn.execute(select(Entry.available_delta).where(
            Entry.member_id == member_id, Entry.source_ref == quiz))).scalars().all())


@pytest.mark.mariadb
async def test_quiz_points_granted_once_by_the_real_points_service(backend, tmp_root, members, points):
    await _quiz_task(points)
    async with service_database("community_points", backend, tmp_root, SERVICE_DIR) as (url, engine):
        settings = community_settings(url, members_addr=members.addr)
        app = build(settings, engine=engine, jobs=False)
        await app.start()
        c = Community(app, engine, url, None, None)
        c.stub = pb_grpc.CommunityServiceStub(c.channel)
        try:
            group = await c.stub.CreateGroup(pb.CreateGroupRequest(group=pb.Group(
                display_name="答题群", type=pb.GROUP_TYPE_GENERAL, owner="staff/3")), metadata=c.staff_md())
            quiz = await c.stub.CreatePost(pb.CreatePostRequest(parent=group.name, post=pb.Post(
                kind=pb.POST_KIND_QUIZ, title="答题", quiz=pb.Quiz(question="Q", options=["a", "b"], correct_option=1,
                                                                  reward_points=50))), metadata=c.staff_md())
            m = new_member_id()
            await c.stub.JoinGroup(pb.JoinGroupRequest(name=group.name), metadata=c.member_md(m))
            answers = await asyncio.gather(*[
                c.stub.AnswerQuiz(pb.AnswerQuizRequest(name=quiz.name, option=1, request_id=rid()),
                                  metadata=c.member_md(m)) for _ in range(20)])
            assert sum(a.reward_points for a in answers) == 50
            for _ in range(1200):
                if await quiz_points(points, m, quiz.name):
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # any second grant would have landed by now
            assert await quiz_points(points, m, quiz.name) == [50]
        finally:
            await c.channel.close()
            await app.stop(grace=1)


@pytest.mark.mariadb
async def test_group_coupon_issued_once_by_the_real_orders_service(backend, tmp_root, members, orders):
    from mall.orders.v1 import orders_service_pb2 as opb

    template = await orders.stub.CreateCouponTemplate(opb.CreateCouponTemplateRequest(
        coupon_template=opb.CouponTemplate(display_name="群专享满199减30", kind=opb.COUPON_KIND_AMOUNT_OFF,
                                           amount_off_fen=3000, threshold_fen=19900, valid_days=30,
                                           per_member_limit=5, total_quantity=100)), metadata=orders.staff_md)
    async with service_database("community_orders", backend, tmp_root, SERVICE_DIR) as (url, engine):
        settings = community_settings(url, members_addr=members.addr)
        app = build(settings, engine=engine, jobs=False)
        await app.start()
        c = Community(app, engine, url, None, None)
        try:
            group = await c.stub.CreateGroup(pb.CreateGroupRequest(group=pb.Group(
                display_name="领券群", type=pb.GROUP_TYPE_GENERAL, owner="staff/3")), metadata=c.staff_md())
            drop = await c.stub.CreatePost(pb.CreatePostRequest(parent=group.name, post=pb.Post(
                kind=pb.POST_KIND_COUPON_DROP, title="群专享券",
                coupon=pb.CouponDrop(coupon_template=template.name, quantity=10))), metadata=c.staff_md())
            m = new_member_id()
            await c.stub.JoinGroup(pb.JoinGroupRequest(name=group.name), metadata=c.member_md(m))
            claims = await asyncio.gather(*[c.stub.ClaimCoupon(pb.ClaimCouponRequest(name=drop.name, request_id=rid()),
                                                               metadata=c.member_md(m)) for _ in range(10)])
            assert sum(not x.already_claimed for x in claims) == 1

            async def coupons():
                resp = await orders.stub.ListCoupons(opb.ListCouponsRequest(parent=f"members/{m}"),
                                                     metadata=orders.staff_md)
                return list(resp.coupons)

            for _ in range(1200):
                if await coupons():
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            assert len(await coupons()) == 1
        finally:
            await c.channel.close()
            await app.stop(grace=1)
