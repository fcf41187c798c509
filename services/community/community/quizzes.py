"""Quizzes: a member answers a quiz post; a right first answer earns its points (through points, by event).

What each caller sees of a quiz: staff always see the correct option; a member only once they have
answered (``quiz_answers``), and the answer itself reveals it. Points may still refuse the reward
(its quiz task inactive, or the member at the task's cap): nothing was taken from the member and
the answer stands, so no compensation is owed; points records the refusal (its ledger has no entry)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mall.community.v1 import community_events_pb2 as evpb
from mall.community.v1 import community_service_pb2 as pb
from mallkit.errors import FailedPrecondition
from mallkit.events import Outbox

from . import errors as reasons
from .activity import ACT_QUIZ_ANSWER, Activities
from .common import insert_once, ts
from .content import Content
from .models import Post, QuizAnswer, QuizReward


class Quizzes:
    def __init__(self, activity: Activities, outbox: Outbox):
        self.activity = activity
        self.outbox = outbox

    async def answer_quiz(self, s: AsyncSession, p: Post, member_id: int, option: int, now: datetime) -> tuple[bool, int, bool]:
        """(correct, points granted now, already rewarded before). A member's first answer counts (the
        ``quiz_answers`` row; the correct option is revealed after it, so a later answer cannot earn); the
        reward row's primary key (post, member) makes the grant happen once however many answers race."""
        if p.kind != pb.POST_KIND_QUIZ:
            raise FailedPrecondition("the post is not a quiz", reason=reasons.WRONG_POST_KIND, zh="该内容不是答题")
        Content.require_published(p)
        await self.activity.record(s, member_id, p.group_id, ACT_QUIZ_ANSWER, f"groups/{p.group_id}/posts/{p.id}", now)
        correct = option == p.quiz_correct
        first = await insert_once(s, QuizAnswer.__table__, {"chosen_option": option, "correct": correct,
                                                            "create_time": now},
                                  {"post_id": p.id, "member_id": member_id})
        if not first:  # the first answer (committed: we waited on its row) decided the reward
            rewarded = await s.get(QuizReward, (p.id, member_id), populate_existing=True)
            return correct, 0, rewarded is not None
        if not correct:
            return False, 0, False
        event = evpb.QuizAnsweredEvent(post=f"groups/{p.group_id}/posts/{p.id}", member=f"members/{member_id}",
                                       reward_points=p.quiz_reward, answer_time=ts(now))
        if not await insert_once(s, QuizReward.__table__, {"create_time": now, "event_id": ""},
                                 {"post_id": p.id, "member_id": member_id}):
            return True, 0, True
        event_id = await self.outbox.add(s, "community.quiz_answered", event, subject=f"members/{member_id}")
        await s.execute(update(QuizReward).where(QuizReward.post_id == p.id, QuizReward.member_id == member_id)
                        .values(event_id=event_id))
        return True, p.quiz_reward, False

    async def answered(self, s: AsyncSession, member_id: int, post_ids: list[int]) -> set[int]:
        """Which of these quiz posts the member has answered (they may see the correct option)."""
        if not post_ids:
            return set()
        rows = await s.execute(select(QuizAnswer.post_id).where(QuizAnswer.member_id == member_id,
                                                                QuizAnswer.post_id.in_(post_ids)))
        return set(rows.scalars().all())
