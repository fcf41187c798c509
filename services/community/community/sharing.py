"""Views and shares: who viewed a post through whose share (a closure table of share chains),
anonymous visitors linked to members later, and the report of a post's reach."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import String, and_, case, cast, distinct, func, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mall.community.v1 import community_events_pb2 as evpb
from mallkit.db import insert_ignore
from mallkit.errors import FailedPrecondition, NotFound
from mallkit.events import Outbox

from . import errors as reasons
from .common import Recent, ts, unchanging
from .models import Post, Share, ShareAncestor, View, VisitorLink

MAX_SHARE_ARRIVALS = 50


@dataclass(frozen=True)
class PendingView:
    """A view accepted by ViewPost, written with others in one batch (:meth:`Sharing.write_views`)."""

    post_id: int
    member_id: int | None
    visitor_id: str | None
    share_id: int | None
    event_id: str
    create_time: datetime


class Sharing:
    def __init__(self, outbox: Outbox, cache_seconds: float = 0.0):
        self.outbox = outbox
        # (group, post, share token) -> (post, share): a share never changes, nor does a published
        # post (see Content.unchanging).
        self._by_token = Recent(cache_seconds)

    async def share_by_token(self, s: AsyncSession, post_id: int, token: str, field: str) -> Share:
        sh = (await s.execute(select(Share).where(Share.token == token))).scalar_one_or_none()
        if sh is None or sh.post_id != post_id:
            raise NotFound("share not found", reason=reasons.SHARE_NOT_FOUND, metadata={"field": field},
                           zh="分享链接无效")
        return sh

    async def post_by_share(self, s: AsyncSession, group_id: int, post_id: int, token: str) -> tuple[Post, Share]:
        """The post and the share a token belongs to, in one query (the view hot path)."""
        row = (await s.execute(select(Post, Share).join(Share, Share.post_id == Post.id)
                               .where(Share.token == token, Post.id == post_id))).first()
        if row is None:
            raise NotFound("share not found", reason=reasons.SHARE_NOT_FOUND, metadata={"field": "share_token"},
                           zh="分享链接无效")
        p, sh = row
        if p.group_id != group_id:
            raise NotFound("post not found", reason=reasons.POST_NOT_FOUND,
                           resource=("post", f"groups/{group_id}/posts/{post_id}"), zh="内容不存在")
        return p, sh

    async def post_by_share_cached(self, sessions, group_id: int, post_id: int, token: str) -> tuple[Post, Share]:
        """:meth:`post_by_share` answered from memory for ``cache_seconds`` (the view hot path: no
        database round trip for a shared article read again and again)."""
        key = (group_id, post_id, token)
        hit = self._by_token.get(key)
        if hit is not None:
            return hit
        async with sessions() as s:
            p, sh = await self.post_by_share(s, group_id, post_id, token)
        if unchanging(p):
            self._by_token.put(key, (p, sh))
        return p, sh

    async def write_views(self, s: AsyncSession, views: list[PendingView]) -> None:
        """Write a batch of views: one SELECT of the links of the batch's anonymous visitors (a
        visitor already joined to a member is recorded as that member) and one multi-row
        INSERT IGNORE (a repeated client event id of a post is skipped by the unique key)."""
        anonymous = sorted({v.visitor_id for v in views if v.member_id is None and v.visitor_id})
        linked: dict[str, int] = {}
        if anonymous:
            linked = {vid: int(m) for vid, m in (await s.execute(
                select(VisitorLink.visitor_id, VisitorLink.member_id)
                .where(VisitorLink.visitor_id.in_(anonymous)))).tuples()}
        rows = []
        for v in views:
            member_id, anon = v.member_id, False
            if member_id is None and v.visitor_id:
                member_id = linked.get(v.visitor_id)
                anon = member_id is None
            rows.append({"post_id": v.post_id, "member_id": member_id, "visitor_id": v.visitor_id,
                         "share_id": v.share_id, "anonymous": anon, "create_time": v.create_time,
                         "event_id": v.event_id})
        await insert_ignore(s, View.__table__, rows)

    async def share_post(self, s: AsyncSession, p: Post, member_id: int, parent_token: str, now: datetime) -> Share:
        """The member's share of a post (one per member and post), placed under its parent share."""
        existing = (await s.execute(select(Share).where(Share.post_id == p.id, Share.sharer_id == member_id))
                    ).scalar_one_or_none()
        if existing is not None:
            return existing
        parent = await self.share_by_token(s, p.id, parent_token, "parent_share_token") if parent_token else None
        if parent is not None and parent.sharer_id == member_id:
            parent = None
        sh = Share(post_id=p.id, sharer_id=member_id, token=secrets.token_urlsafe(12)[:16],
                   parent_share_id=parent.id if parent else None, depth=(parent.depth + 1) if parent else 1,
                   create_time=now)
        s.add(sh)
        await s.flush()  # a concurrent share by the same member fails here (unique key); caller retries
        rows = [{"share_id": sh.id, "ancestor_id": sh.id, "distance": 0}]
        if parent is not None:
            ancestors = (await s.execute(select(ShareAncestor.ancestor_id, ShareAncestor.distance)
                                         .where(ShareAncestor.share_id == parent.id))).tuples().all()
            rows += [{"share_id": sh.id, "ancestor_id": a, "distance": d + 1} for a, d in ancestors]
        await insert_ignore(s, ShareAncestor.__table__, rows)
        await self.outbox.add(s, "community.content_shared",
                              evpb.ContentSharedEvent(post=f"groups/{p.group_id}/posts/{p.id}",
                                                      sharer=f"members/{member_id}", share_time=ts(now)),
                              subject=f"members/{member_id}")
        return sh

    async def link_visitor(self, s: AsyncSession, visitor_id: str, member_id: int, now: datetime) -> int:
        await insert_ignore(s, VisitorLink.__table__,
                            [{"visitor_id": visitor_id, "member_id": member_id, "create_time": now}])
        owner = (await s.execute(select(VisitorLink.member_id).where(VisitorLink.visitor_id == visitor_id))).scalar_one()
        if int(owner) != member_id:
            raise FailedPrecondition("this visitor id belongs to another member", reason=reasons.VISITOR_LINKED_ELSEWHERE,
                                     metadata={"field": "name"}, zh="该访客身份已关联其他会员")
        linked = await s.execute(update(View).where(View.visitor_id == visitor_id, View.member_id.is_(None))
                                 .values(member_id=member_id))
        n = linked.rowcount  # type: ignore[attr-defined]
        if n:
            await self._publish_share_arrivals(s, visitor_id, member_id, now)
        return n

    async def _publish_share_arrivals(self, s: AsyncSession, visitor_id: str, member_id: int, now: datetime) -> None:
        """The shares a visitor arrived through before being known (its first view through each),
        as ``community.visitor_linked``: the members service records them as content share
        touchpoints (share attribution). Published by the link that joined the views, so once."""
        first = func.min(View.create_time)
        rows = (await s.execute(
            select(Share.id, Share.post_id, Share.sharer_id, Post.group_id, first)
            .join(View, View.share_id == Share.id).join(Post, Post.id == Share.post_id)
            .where(View.visitor_id == visitor_id, View.anonymous.is_(True), Share.sharer_id != member_id)
            .group_by(Share.id, Share.post_id, Share.sharer_id, Post.group_id)
            .order_by(first, Share.id).limit(MAX_SHARE_ARRIVALS))).tuples().all()
        if not rows:
            return
        event = evpb.VisitorLinkedEvent(member=f"members/{member_id}", visitor_id=visitor_id, link_time=ts(now))
        for share_id, post_id, sharer_id, group_id, view_time in rows:
            event.arrivals.append(evpb.ShareArrival(
                post=f"groups/{group_id}/posts/{post_id}", share=f"groups/{group_id}/posts/{post_id}/shares/{share_id}",
                sharer=f"members/{sharer_id}", view_time=ts(view_time)))
        await self.outbox.add(s, "community.visitor_linked", event, subject=f"members/{member_id}")

    async def post_report(self, s: AsyncSession, p: Post) -> dict:
        """Views, unique viewers, shares, depth and members gained, overall and per sharer.

        A view through share X counts for X and for every share above X in its
        chain (the closure table ``share_ancestors``)."""
        viewer = case((View.member_id.is_not(None), literal("m") + cast(View.member_id, String)),
                      else_=literal("v") + View.visitor_id)
        gained = case((and_(View.anonymous.is_(True), View.member_id.is_not(None)), View.member_id), else_=None)
        views, unique, shared_views, members_gained = (await s.execute(
            select(func.count(View.id), func.count(distinct(viewer)),
                   func.count(View.share_id), func.count(distinct(case((View.share_id.is_not(None), gained), else_=None))))
            .where(View.post_id == p.id))).one()
        shares = list((await s.execute(select(Share).where(Share.post_id == p.id).order_by(Share.id).limit(200)))
                      .scalars().all())
        n_shares, max_depth = (await s.execute(select(func.count(Share.id), func.max(Share.depth))
                                               .where(Share.post_id == p.id))).one()
        direct = dict((await s.execute(select(View.share_id, func.count(View.id))
                                       .where(View.post_id == p.id, View.share_id.is_not(None))
                                       .group_by(View.share_id))).tuples().all())
        chain = {
            a: (n, u, g)
            for a, n, u, g in (await s.execute(
                select(ShareAncestor.ancestor_id, func.count(View.id), func.count(distinct(viewer)),
                       func.count(distinct(gained)))
                .join(View, View.share_id == ShareAncestor.share_id)
                .where(View.post_id == p.id)
                .group_by(ShareAncestor.ancestor_id))).tuples().all()
        }
        depth_below = dict((await s.execute(
            select(ShareAncestor.ancestor_id, func.max(ShareAncestor.distance))
            .join(Share, Share.id == ShareAncestor.ancestor_id)
            .where(Share.post_id == p.id).group_by(ShareAncestor.ancestor_id))).tuples().all())
        sharers = []
        for sh in shares:
            n, u, g = chain.get(sh.id, (0, 0, 0))
            sharers.append({"share": sh, "direct_views": direct.get(sh.id, 0), "chain_views": n, "unique_viewers": u,
                            "members_gained": g, "chain_depth": depth_below.get(sh.id, 0)})
        return {"views": views, "unique_viewers": unique, "shares": n_shares, "max_share_depth": max_depth or 0,
                "members_gained": members_gained, "shared_views": shared_views, "sharers": sharers}
