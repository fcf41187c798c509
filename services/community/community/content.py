"""Content: posts of a group (articles, recommendations, coupon drops, flash-sale notices, quizzes),
scheduled publishing, replies and reactions."""

from __future__ import annotations

import json
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mall.community.v1 import community_service_pb2 as pb
from mallkit.errors import FailedPrecondition, NotFound, PermissionDenied
from mallkit.pagination import PageTokens
from mallkit.queries import keyset_page

from . import errors as reasons
from .activity import ACT_POST, ACT_REACTION, ACT_REPLY, Activities
from .common import Recent, insert_once, next_daily, unchanging
from .groups import Groups
from .models import Post, Reaction, Reply


def quiz_options(p: Post) -> list[str]:
    return json.loads(p.quiz_options) if p.quiz_options else []


class Content:
    def __init__(self, groups: Groups, activity: Activities, pages: PageTokens, *, brand_timezone: str,
                 cache_seconds: float = 0.0):
        self.tz = ZoneInfo(brand_timezone)
        self.groups = groups
        self.activity = activity
        self.pages = pages
        self._posts = Recent(cache_seconds)  # (group, post) -> a post that no longer changes

    async def viewed_post(self, s: AsyncSession, group_id: int, post_id: int) -> Post:
        """:meth:`post` for a view: from memory when the post no longer changes (``unchanging``)."""
        p = self._posts.get((group_id, post_id))
        if p is None:
            p = await self.post(s, group_id, post_id)
            if unchanging(p):
                self._posts.put((group_id, post_id), p)
        return p

    async def post(self, s: AsyncSession, group_id: int, post_id: int, *, lock: bool = False) -> Post:
        q = select(Post).where(Post.id == post_id)
        if lock:
            q = q.with_for_update()
        p = (await s.execute(q)).scalar_one_or_none()
        if p is None or p.group_id != group_id:
            raise NotFound("post not found", reason=reasons.POST_NOT_FOUND,
                           resource=("post", f"groups/{group_id}/posts/{post_id}"), zh="内容不存在")
        return p

    async def create_post(self, s: AsyncSession, group_id: int, fields: dict, author: str, now: datetime,
                          member_id: int | None) -> Post:
        await self.groups.group(s, group_id)
        if member_id is not None and not await self.groups.is_member(s, group_id, member_id):
            raise PermissionDenied("only members of the group may post in it", reason=reasons.NOT_GROUP_MEMBER,
                                   zh="加入该群后才能发帖")
        publish_time = fields.pop("publish_time", None) or now
        scheduled = publish_time > now
        p = Post(group_id=group_id, author=author, create_time=now, publish_time=publish_time,
                 state=pb.POST_STATE_SCHEDULED if scheduled else pb.POST_STATE_PUBLISHED,
                 published_time=None if scheduled else now, coupon_claimed=0, **fields)
        s.add(p)
        await s.flush()
        if member_id is not None:
            await self.activity.record(s, member_id, group_id, ACT_POST, f"groups/{group_id}/posts/{p.id}", now)
        return p

    async def list_posts(self, s: AsyncSession, group_id: int, size: int, token: str,
                         include_scheduled: bool) -> tuple[list[Post], str]:
        await self.groups.group(s, group_id)
        q = select(Post).where(Post.group_id == group_id)
        if not include_scheduled:
            q = q.where(Post.state == pb.POST_STATE_PUBLISHED)
        return await keyset_page(s, q, key=Post.id.desc(), tokens=self.pages, page_size=size, page_token=token,
                                 filters=[group_id])

    async def publish_due(self, s: AsyncSession, now: datetime, limit: int = 100) -> list[int]:
        """Publish scheduled posts whose time has come. Each post is claimed by a conditional
        UPDATE (state SCHEDULED -> PUBLISHED): with several replicas, exactly one wins; the winner
        of a daily post schedules its next copy in the same transaction (the next brand-local
        occurrence of its time of day after now)."""
        due = (await s.execute(select(Post.id).where(Post.state == pb.POST_STATE_SCHEDULED, Post.publish_time <= now)
                               .order_by(Post.id).limit(limit))).scalars().all()
        won = []
        for post_id in due:
            claimed = await s.execute(
                update(Post).where(Post.id == post_id, Post.state == pb.POST_STATE_SCHEDULED)
                .values(state=pb.POST_STATE_PUBLISHED, published_time=now))
            if claimed.rowcount == 1:  # type: ignore[attr-defined]
                won.append(post_id)
                p = await s.get(Post, post_id)
                if p is not None and p.daily:
                    await self._schedule_next(s, p, now)
        return won

    async def _schedule_next(self, s: AsyncSession, p: Post, now: datetime) -> None:
        keep = {c.key: getattr(p, c.key) for c in Post.__table__.columns
                if c.key not in ("id", "state", "publish_time", "published_time", "coupon_claimed", "create_time")}
        nxt = next_daily(p.publish_time, max(now, p.publish_time), self.tz)
        assert nxt is not None
        s.add(Post(**keep, state=pb.POST_STATE_SCHEDULED, publish_time=nxt, published_time=None, coupon_claimed=0,
                   create_time=now))
        await s.flush()

    @staticmethod
    def require_published(p: Post) -> None:
        if p.state != pb.POST_STATE_PUBLISHED:
            raise FailedPrecondition("the post is not published yet", reason=reasons.POST_NOT_PUBLISHED,
                                     zh="内容尚未发布")

    async def create_reply(self, s: AsyncSession, p: Post, member_id: int, text: str, now: datetime) -> Reply:
        self.require_published(p)
        r = Reply(post_id=p.id, member_id=member_id, text=text, create_time=now)
        s.add(r)
        await s.flush()
        await self.activity.record(s, member_id, p.group_id, ACT_REPLY, f"groups/{p.group_id}/posts/{p.id}", now)
        return r

    async def add_reaction(self, s: AsyncSession, p: Post, member_id: int, kind: int, now: datetime) -> bool:
        self.require_published(p)
        if not await insert_once(s, Reaction.__table__, {"create_time": now},
                                 {"post_id": p.id, "member_id": member_id, "kind": kind}):
            return False
        await self.activity.record(s, member_id, p.group_id, ACT_REACTION, f"groups/{p.group_id}/posts/{p.id}", now)
        return True
