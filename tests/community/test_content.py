"""Content: quizzes grant points once, coupon drops, scheduled publishing with replicas, activity."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import func, select

from community import jobs
from community.app import build
from community.models import OutboxEvents, Post, QuizReward
from mall.community.v1 import community_service_pb2 as pb
from mallkit.db import utcnow
from tests.community.helpers import join, make_group, new_member_id, refused, rid
from tests.fixtures.community import community_settings


async def post(community, group, **fields) -> pb.Post:
    fields.setdefault("title", "标题")
    return await community.stub.CreatePost(pb.CreatePostRequest(parent=group.name, post=pb.Post(**fields)),
                                           metadata=community.staff_md("guide", 3))


async def wait_for(predicate, seconds: float = 60.0):
    for _ in range(int(seconds / 0.05)):
        if await predicate():
            return True
        await asyncio.sleep(0.05)
    return False


@pytest.mark.mariadb
async def test_a_quiz_answered_correctly_20_times_concurrently_grants_points_once(community):
    group = await make_group(community)
    quiz = await post(community, group, kind=pb.POST_KIND_QUIZ, quiz=pb.Quiz(
        question="宝宝几个月可以添加辅食?", options=["3 个月", "6 个月", "12 个月"], correct_option=1, reward_points=50))
    assert quiz.quiz.correct_option == 1  # staff see it (members only after answering: tests/e2e/test_output_filtering.py)
    m = new_member_id()
    await join(community, group, m)
    md = community.member_md(m)
    answers = await asyncio.gather(*[
        community.stub.AnswerQuiz(pb.AnswerQuizRequest(name=quiz.name, option=1, request_id=rid()), metadata=md)
        for _ in range(20)])
    assert all(a.correct for a in answers)
    assert sum(a.reward_points for a in answers) == 50
    assert sum(not a.already_rewarded for a in answers) == 1
    post_id = int(quiz.name.rsplit("/", 1)[1])
    async with community.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(QuizReward).where(QuizReward.post_id == post_id))
                ).scalar_one() == 1
        assert (await conn.execute(select(func.count()).select_from(OutboxEvents).where(
            OutboxEvents.c.event_type == "community.quiz_answered",
            OutboxEvents.c.payload.contains(quiz.name.encode())))).scalar_one() == 1
    # End to end: the outbox delivers to the points stand-in, which grants once.
    member = f"members/{m}"
    assert await wait_for(lambda: _granted(community, member, quiz.name), seconds=60)
    await asyncio.sleep(0.3)
    assert await community.points.total(member, f"quiz:{quiz.name}") == (1, 50)
    wrong = await community.stub.AnswerQuiz(pb.AnswerQuizRequest(name=quiz.name, option=0), metadata=md)
    assert not wrong.correct and wrong.reward_points == 0


async def _granted(community, member, quiz_name):
    return (await community.points.total(member, f"quiz:{quiz_name}"))[0] >= 1


async def test_a_viewed_quiz_shows_its_answer_to_each_caller_as_their_own(community):
    """The post of a view comes from memory, and so does its message: staff and a member who
    answered see the correct option, a member who has not never does, in any order of views."""
    group = await make_group(community)
    quiz = await post(community, group, kind=pb.POST_KIND_QUIZ, title="答题", quiz=pb.Quiz(
        question="Q", options=["a", "b", "c"], correct_option=2, reward_points=5))
    knows, guesses = new_member_id(), new_member_id()
    for m in (knows, guesses):
        await join(community, group, m)
    staff = community.staff_md("guide", 3)

    async def shown(md) -> pb.Post:
        return (await community.stub.ViewPost(pb.ViewPostRequest(name=quiz.name), metadata=md)).post

    assert (await shown(staff)).quiz.correct_option == 2
    first = await shown(community.member_md(guesses))
    assert not first.quiz.HasField("correct_option") and first.title == "答题" and list(first.quiz.options) == ["a", "b", "c"]
    await community.stub.AnswerQuiz(pb.AnswerQuizRequest(name=quiz.name, option=2, request_id=rid()),
                                    metadata=community.member_md(knows))
    for _ in range(2):
        assert (await shown(community.member_md(knows))).quiz.correct_option == 2
        assert not (await shown(community.member_md(guesses))).quiz.HasField("correct_option")
        assert (await shown(staff)).quiz.correct_option == 2


async def test_only_group_members_answer_and_a_replayed_request_id_replays(community):
    group = await make_group(community)
    quiz = await post(community, group, kind=pb.POST_KIND_QUIZ, quiz=pb.Quiz(
        question="Q", options=["a", "b"], correct_option=0, reward_points=5))
    outsider = new_member_id()
    code, info = await refused(community.stub.AnswerQuiz(pb.AnswerQuizRequest(name=quiz.name, option=0),
                                                         metadata=community.member_md(outsider)))
    assert code == grpc.StatusCode.PERMISSION_DENIED and info.reason == "NOT_GROUP_MEMBER"
    await join(community, group, outsider)
    key = rid()
    first = await community.stub.AnswerQuiz(pb.AnswerQuizRequest(name=quiz.name, option=0, request_id=key),
                                            metadata=community.member_md(outsider))
    again = await community.stub.AnswerQuiz(pb.AnswerQuizRequest(name=quiz.name, option=0, request_id=key),
                                            metadata=community.member_md(outsider))
    assert first == again and first.reward_points == 5 and not first.already_rewarded


@pytest.mark.mariadb
async def test_coupon_drop_is_claimed_once_per_member_and_never_beyond_quantity(community, orders):
    from mall.orders.v1 import orders_service_pb2 as opb

    # A real template: the real orders service consumes the community stream too, and would
    # refuse (and so give back) claims of a template it does not know.
    template = await orders.stub.CreateCouponTemplate(opb.CreateCouponTemplateRequest(
        coupon_template=opb.CouponTemplate(display_name="群券", kind=opb.COUPON_KIND_AMOUNT_OFF, amount_off_fen=100,
                                           threshold_fen=1000, valid_days=7, per_member_limit=1,
                                           total_quantity=100)), metadata=orders.staff_md)
    group = await make_group(community)
    drop = await post(community, group, kind=pb.POST_KIND_COUPON_DROP,
                      coupon=pb.CouponDrop(coupon_template=template.name, quantity=5))
    members = [new_member_id() for _ in range(8)]
    for m in members:
        await join(community, group, m)
    calls = [community.stub.ClaimCoupon(pb.ClaimCouponRequest(name=drop.name, request_id=rid()),
                                        metadata=community.member_md(m)) for m in members for _ in range(3)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    claimed = {m for m, r in zip([m for m in members for _ in range(3)], results, strict=True)
               if isinstance(r, pb.ClaimCouponResponse) and not r.already_claimed}
    assert len(claimed) == 5
    sold_out = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert sold_out and all(r.code() == grpc.StatusCode.FAILED_PRECONDITION for r in sold_out)
    staff = community.staff_md()
    listed = await community.stub.ListPosts(pb.ListPostsRequest(parent=group.name), metadata=staff)
    assert listed.posts[0].coupon.claimed_count == 5
    for m in claimed:
        assert await wait_for(lambda m=m: _coupon(community, m, drop.name))
    await asyncio.sleep(0.2)
    for m in claimed:
        assert (await community.orders.total(f"members/{m}", f"coupon:{drop.name}"))[0] == 1


async def _coupon(community, m, name):
    return (await community.orders.total(f"members/{m}", f"coupon:{name}"))[0] == 1


async def test_scheduled_post_is_published_once_with_several_replicas(community):
    group = await make_group(community)
    when = Timestamp()
    when.FromDatetime(utcnow() + timedelta(hours=3))
    scheduled = await post(community, group, kind=pb.POST_KIND_ARTICLE, title="下午茶时间", publish_time=when)
    assert scheduled.state == pb.POST_STATE_SCHEDULED
    m = new_member_id()
    await join(community, group, m)
    seen = await community.stub.ListPosts(pb.ListPostsRequest(parent=group.name), metadata=community.member_md(m))
    assert scheduled.name not in [p.name for p in seen.posts]
    code, info = await refused(community.stub.ViewPost(pb.ViewPostRequest(name=scheduled.name),
                                                       metadata=community.member_md(m)))
    assert info.reason == "POST_NOT_PUBLISHED"

    later = utcnow() + timedelta(hours=4)
    replicas = [build(community_settings(community.url), engine=community.engine, clock=lambda: later, jobs=False)
                for _ in range(3)]
    won = await asyncio.gather(*[jobs.publish_due_posts(r) for r in replicas for _ in range(3)])
    post_id = int(scheduled.name.rsplit("/", 1)[1])
    winners = [ids for ids in won if post_id in ids]
    assert len(winners) == 1
    async with community.engine.connect() as conn:
        state = (await conn.execute(select(Post.state).where(Post.id == post_id))).scalar_one()
    assert state == pb.POST_STATE_PUBLISHED
    seen = await community.stub.ListPosts(pb.ListPostsRequest(parent=group.name), metadata=community.member_md(m))
    assert scheduled.name in [p.name for p in seen.posts]


async def test_the_publishing_job_runs_in_the_service(community):
    group = await make_group(community)
    soon = Timestamp()
    soon.FromDatetime(utcnow() + timedelta(seconds=1))
    scheduled = await post(community, group, kind=pb.POST_KIND_ARTICLE, publish_time=soon)
    settings = community_settings(community.url)
    settings.publish_interval_seconds = 0.1
    replica = build(settings, engine=community.engine)
    await replica.start()
    try:
        async def published():
            async with community.engine.connect() as conn:
                return (await conn.execute(select(Post.state).where(
                    Post.id == int(scheduled.name.rsplit("/", 1)[1])))).scalar_one() == pb.POST_STATE_PUBLISHED
        assert await wait_for(published, seconds=10)
    finally:
        await replica.stop(grace=0.5)


async def test_activity_tells_whether_a_member_is_active_over_a_window(community):
    group = await make_group(community)
    article = await post(community, group, kind=pb.POST_KIND_ARTICLE, body="正文")
    m, idle = new_member_id(), new_member_id()
    await join(community, group, m)
    md = community.member_md(m)
    reply = await community.stub.CreateReply(pb.CreateReplyRequest(parent=article.name, reply=pb.Reply(text="学到了")),
                                             metadata=md)
    assert reply.author == f"members/{m}"
    assert (await community.stub.AddReaction(pb.AddReactionRequest(name=article.name, kind=pb.REACTION_KIND_LIKE),
                                             metadata=md)).added
    assert not (await community.stub.AddReaction(pb.AddReactionRequest(name=article.name, kind=pb.REACTION_KIND_LIKE),
                                                 metadata=md)).added
    mine = await community.stub.CreatePost(pb.CreatePostRequest(parent=group.name, post=pb.Post(
        kind=pb.POST_KIND_DISCUSSION, title="求推荐奶粉")), metadata=md)
    assert mine.author == f"members/{m}"
    code, _ = await refused(community.stub.CreatePost(pb.CreatePostRequest(parent=group.name, post=pb.Post(
        kind=pb.POST_KIND_COUPON_DROP, title="x")), metadata=md))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    await community.stub.ViewPost(pb.ViewPostRequest(name=article.name), metadata=md)

    activity = await community.stub.GetMemberActivity(pb.GetMemberActivityRequest(
        name=f"members/{m}/communityActivity", window=Duration(seconds=3600)), metadata=community.service_md)
    assert activity.active and activity.reply_count == 1 and activity.reaction_count == 1
    assert activity.post_count == 1 and activity.view_count == 1 and activity.group_count == 1
    assert activity.last_active_time.seconds > 0
    assert [(g.group, g.display_name, g.role) for g in activity.groups] == [
        (group.name, group.display_name, pb.MEMBERSHIP_ROLE_MEMBER)]
    assert activity.groups[0].join_time.seconds > 0
    # The reply and the post are published for the members service's behaviour store.
    async with community.engine.connect() as conn:
        posted = (await conn.execute(select(OutboxEvents.c.payload).where(
            OutboxEvents.c.event_type == "community.member_posted",
            OutboxEvents.c.payload.contains(f"members/{m}".encode())))).scalars().all()
    assert len(posted) == 2 and all(article.name.encode() in p for p in posted[:1])
    quiet = await community.stub.GetMemberActivity(pb.GetMemberActivityRequest(
        name=f"members/{idle}/communityActivity"), metadata=community.staff_md("operator"))
    assert not quiet.active
    since = Timestamp()
    since.FromDatetime(utcnow() - timedelta(minutes=5))
    found, token = [], ""
    while True:
        page = await community.stub.ListActiveMembers(pb.ListActiveMembersRequest(since_time=since, page_size=1000,
                                                                                  page_token=token),
                                                      metadata=community.service_md)
        found += page.members
        token = page.next_page_token
        if not token:
            break
    assert f"members/{m}" in found and f"members/{idle}" not in found
    code, _ = await refused(community.stub.GetMemberActivity(pb.GetMemberActivityRequest(
        name=f"members/{m}/communityActivity"), metadata=md))
    assert code == grpc.StatusCode.PERMISSION_DENIED
