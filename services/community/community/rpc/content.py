"""RPCs of content: posts, views and shares, quizzes, coupon drops, replies and reactions."""

from __future__ import annotations

import asyncio
import functools
import json
import os
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from mall.community.v1 import community_service_pb2 as pb
from mallkit.auth import Principal, current_principal, principal
from mallkit.csvbody import csv_body
from mallkit.errors import InvalidArgument
from mallkit.names import parse_id, parse_ids
from mallkit.pagination import page_size
from mallkit.validation import Validator

from .. import errors as reasons
from ..common import unchanging
from ..messages import (
    COUPON_TEMPLATE,
    MAX_AHEAD,
    PRODUCT,
    SHARE_TOKEN,
    VISITOR,
    caller_member_id,
    not_member,
    post_pb,
    reply_pb,
    share_pb,
    to_dt,
    valid_time,
)
from ..models import Post
from ..sharing import PendingView
from .base import RpcBase

#: Columns of a post report's CSV: the post's line has the totals (depth: the deepest share, views:
#: every view, direct_views: views through a share); a share's line counts the views up its chain.
POST_REPORT_COLUMNS = ["post", "share", "sharer", "depth", "views", "unique_viewers", "shares", "members_gained",
                       "direct_views", "chain_views", "chain_depth"]


@functools.lru_cache(maxsize=4096)
def _viewed_ids(name: str) -> tuple[int, ...]:
    """``parse_ids`` of a viewed post's name, remembered (a shared post is viewed again and again;
    a malformed name raises and is not remembered)."""
    return parse_ids(name, "groups/{}/posts/{}", "name")


class ContentRpc(RpcBase):

    def _post_fields(self, p: pb.Post, member: bool, now: datetime) -> dict:
        v = Validator()
        v.enum("post.kind", p.kind, pb.PostKind, required=True)
        if member:
            v.check(p.kind in (0, pb.POST_KIND_DISCUSSION), "post.kind", "members may only create discussion posts")
        v.text("post.title", p.title, max_len=128, min_len=1)
        v.check(len(p.body) <= 8000, "post.body", "must be at most 8000 characters")
        v.text("post.body", p.body[:8000], max_len=8000)
        fields: dict = {"kind": p.kind, "title": p.title, "body": p.body}
        if p.kind == pb.POST_KIND_PRODUCT_RECOMMENDATION:
            v.pattern("post.product", p.product, PRODUCT, "must look like products/{id}", required=True)
            fields["product"] = p.product
        if p.kind == pb.POST_KIND_COUPON_DROP:
            v.pattern("post.coupon.coupon_template", p.coupon.coupon_template, COUPON_TEMPLATE,
                      "must look like couponTemplates/{id}", required=True)
            v.range("post.coupon.quantity", p.coupon.quantity, 1, 100_000)
            fields.update(coupon_template=p.coupon.coupon_template, coupon_quantity=p.coupon.quantity)
        if p.kind == pb.POST_KIND_FLASH_SALE_NOTICE:
            f = p.flash_sale
            v.pattern("post.flash_sale.product", f.product, PRODUCT, "must look like products/{id}", required=True)
            start = None
            if v.check(f.HasField("start_time"), "post.flash_sale.start_time", "is required") and \
                    valid_time(v, "post.flash_sale.start_time", f.start_time):
                start = to_dt(f.start_time)
            v.range("post.flash_sale.price_fen", f.price_fen, 0, 10**10)
            fields.update(product=f.product, flash_price_fen=f.price_fen, flash_start_time=start)
        if p.kind == pb.POST_KIND_QUIZ:
            q = p.quiz
            v.text("post.quiz.question", q.question, max_len=256, min_len=1)
            if v.check(2 <= len(q.options) <= 6, "post.quiz.options", "2 to 6 options"):
                for i, o in enumerate(q.options):
                    v.text(f"post.quiz.options[{i}]", o, max_len=64, min_len=1)
                v.range("post.quiz.correct_option", q.correct_option, 0, len(q.options) - 1)
            v.range("post.quiz.reward_points", q.reward_points, 1, 100_000)
            fields.update(quiz_question=q.question, quiz_options=json.dumps(list(q.options), ensure_ascii=False),
                          quiz_correct=q.correct_option, quiz_reward=q.reward_points)
        if p.HasField("publish_time"):
            if valid_time(v, "post.publish_time", p.publish_time):
                when = to_dt(p.publish_time)
                v.check(when <= now + MAX_AHEAD, "post.publish_time", "must be within a year")
                if member:
                    v.check(when <= now, "post.publish_time", "members cannot schedule posts")
                fields["publish_time"] = max(when, now) if when > now else None
        if p.daily:
            v.check(not member, "post.daily", "members cannot schedule posts")
            v.check(fields.get("publish_time") is not None, "post.publish_time",
                    "a daily post needs a publish_time in the future (its time of day)")
            fields["daily"] = True
        v.done()
        return fields

    async def CreatePost(self, request, context):
        group_id = parse_id(request.parent, "groups", "parent")
        caller, now = principal(), self.clock()
        fields = self._post_fields(request.post, caller.is_member, now)
        member_id = int(caller.id) if caller.is_member else None

        async def use_case(s):
            return post_pb(await self.content.create_post(s, group_id, fields, caller.subject, now, member_id),
                           reveal_answer=not caller.is_member)

        return await self._run(request, pb.Post, use_case)

    async def ListPosts(self, request, context):
        group_id = parse_id(request.parent, "groups", "parent")
        size = page_size(request.page_size)
        member_id = caller_member_id()
        async with self.sessions() as s:
            if member_id is not None and not await self.groups.is_member(s, group_id, member_id):
                raise not_member()
            rows, token = await self.content.list_posts(s, group_id, size, request.page_token,
                                                        include_scheduled=member_id is None)
            answered = await self._answered(s, member_id, rows)
        return pb.ListPostsResponse(posts=[post_pb(p, p.id in answered) for p in rows], next_page_token=token)

    async def _answered(self, s: AsyncSession, member_id: int | None, posts: list[Post]) -> set[int]:
        """The posts whose quiz answer the caller may see: all for staff, those answered for a member."""
        if member_id is None:
            return {p.id for p in posts}
        return await self.quizzes.answered(s, member_id, [p.id for p in posts if p.kind == pb.POST_KIND_QUIZ])

    async def _member_post(self, s: AsyncSession, name: str, member_id: int, *, lock: bool = False) -> Post:
        group_id, post_id = parse_ids(name, "groups/{}/posts/{}", "name")
        if not await self.groups.is_member(s, group_id, member_id):
            raise not_member()
        return await self.content.post(s, group_id, post_id, lock=lock)

    async def ViewPost(self, request, context):
        """Reads outside any write transaction (a shared post comes from memory), then the view
        goes to the batch writer: one multi-row INSERT per batch (``Sharing.write_views``)."""
        group_id, post_id = _viewed_ids(request.name)
        v = Validator()
        v.pattern("visitor_id", request.visitor_id, VISITOR, "16 to 64 letters, digits, '-' or '_'")
        v.pattern("share_token", request.share_token, SHARE_TOKEN, "must be a share token")
        v.pattern("client_event_id", request.client_event_id, VISITOR, "16 to 64 letters, digits, '-' or '_'")
        v.done()
        caller: Principal | None = current_principal.get()
        member_id = int(caller.id) if caller is not None and caller.is_member else None
        if caller is None and not request.visitor_id:
            raise InvalidArgument("visitor_id is required when not signed in", reason=reasons.VISITOR_REQUIRED,
                                  metadata={"field": "visitor_id"}, zh="缺少访客标识")
        now = self.clock()
        share = None
        if request.share_token:
            p, share = await self.sharing.post_by_share_cached(self.sessions, group_id, post_id, request.share_token)
        elif caller is None:
            raise not_member()
        else:
            async with self.sessions() as s:
                if member_id is not None and not await self.groups.is_member(s, group_id, member_id):
                    raise not_member()
                p = await self.content.viewed_post(s, group_id, post_id)
        if caller is not None and caller.is_staff:  # staff preview: not a view
            return pb.ViewPostResponse(post=self._viewed_post_pb(p, True))
        self.content.require_published(p)
        event_id = request.client_event_id or os.urandom(16).hex()
        written = await self.views.submit(PendingView(p.id, member_id, request.visitor_id or None,
                                                      share.id if share else None, event_id, now))
        reveal = False
        if member_id is not None and p.kind == pb.POST_KIND_QUIZ:
            async with self.sessions() as s:
                reveal = p.id in await self.quizzes.answered(s, member_id, [p.id])
        if self.view_ack_commit:
            await asyncio.shield(written)
        return pb.ViewPostResponse(post=self._viewed_post_pb(p, reveal),
                                   view=f"groups/{group_id}/posts/{post_id}/views/{event_id}")

    def _viewed_post_pb(self, p: Post, reveal: bool) -> pb.Post:
        """``post_pb(p, reveal)``, built once per post object that no longer changes: the post of a
        view comes from memory (``Sharing``/``Content`` caches, :func:`unchanging`), and so does its
        message, for as long (same seconds; an entry is keyed by the object and holds it, so a post
        loaded again gets a message of its own)."""
        if not unchanging(p):
            return post_pb(p, reveal)
        key = (id(p), reveal)
        hit = self.post_messages.get(key)
        if hit is not None and hit[0] is p:
            return hit[1]
        msg = post_pb(p, reveal)
        self.post_messages.put(key, (p, msg))
        return msg

    async def SharePost(self, request, context):
        group_id, post_id = parse_ids(request.name, "groups/{}/posts/{}", "name")
        v = Validator()
        v.pattern("parent_share_token", request.parent_share_token, SHARE_TOKEN, "must be a share token")
        v.done()
        member_id, now = int(principal().id), self.clock()

        async def use_case(s):
            if not request.parent_share_token and not await self.groups.is_member(s, group_id, member_id):
                raise not_member()
            p = await self.content.post(s, group_id, post_id)
            self.content.require_published(p)
            return share_pb(await self.sharing.share_post(s, p, member_id, request.parent_share_token, now), group_id)

        return await self._retry_unique(lambda: self._run(request, pb.Share, use_case))

    async def LinkVisitor(self, request, context):
        prefix = "visitors/"
        visitor = request.name[len(prefix):] if request.name.startswith(prefix) else ""
        if not VISITOR.fullmatch(visitor):
            raise InvalidArgument.field("name", "must look like visitors/{visitor_id} (16 to 64 letters, digits, '-', '_')")
        member_id, now = int(principal().id), self.clock()

        async def use_case(s):
            n = await self.sharing.link_visitor(s, visitor, member_id, now)
            return pb.LinkVisitorResponse(member=f"members/{member_id}", linked_view_count=n)

        return await self._run(request, pb.LinkVisitorResponse, use_case)

    async def AnswerQuiz(self, request, context):
        v = Validator()
        v.range("option", request.option, 0, 5)
        v.done()
        member_id, now = int(principal().id), self.clock()

        async def use_case(s):
            p = await self._member_post(s, request.name, member_id)
            correct, points, already = await self.quizzes.answer_quiz(s, p, member_id, request.option, now)
            return pb.AnswerQuizResponse(correct=correct, reward_points=points, already_rewarded=already,
                                         correct_option=p.quiz_correct)

        return await self._run(request, pb.AnswerQuizResponse, use_case)

    async def ClaimCoupon(self, request, context):
        member_id, now = int(principal().id), self.clock()

        async def use_case(s):
            # the drop's row locked first: claims of one drop queue on it instead of deadlocking on
            # each other's claim-key inserts (three repeats of one member's claim did, under load)
            p = await self._member_post(s, request.name, member_id, lock=True)
            already = await self.coupon_drops.claim_coupon(s, p, member_id, now)
            return pb.ClaimCouponResponse(coupon_template=p.coupon_template, already_claimed=already)

        return await self._run(request, pb.ClaimCouponResponse, use_case)

    async def CreateReply(self, request, context):
        v = Validator()
        v.text("reply.text", request.reply.text, max_len=1000, min_len=1)
        v.done()
        parse_ids(request.parent, "groups/{}/posts/{}", "parent")
        member_id, now = int(principal().id), self.clock()

        async def use_case(s):
            p = await self._member_post(s, request.parent, member_id)
            return reply_pb(await self.content.create_reply(s, p, member_id, request.reply.text, now), p.group_id)

        return await self._run(request, pb.Reply, use_case)

    async def AddReaction(self, request, context):
        v = Validator()
        v.enum("kind", request.kind, pb.ReactionKind, required=True)
        v.done()
        member_id, now = int(principal().id), self.clock()

        async def use_case(s):
            p = await self._member_post(s, request.name, member_id)
            return pb.AddReactionResponse(added=await self.content.add_reaction(s, p, member_id, request.kind, now))

        return await self._run(request, pb.AddReactionResponse, use_case)

    async def GetPostReport(self, request, context):
        return await self._post_report(request.name)

    async def ExportPostReport(self, request, context):
        r = await self._post_report(request.name)
        post = request.name.removesuffix("/report")
        rows: list[list[object]] = [[post, "", "", r.max_share_depth, r.views, r.unique_viewers, r.shares,
                                     r.members_gained, r.shared_views, "", ""]]
        rows += [[post, x.share, x.sharer, x.depth, x.chain_views, x.unique_viewers, "", x.members_gained,
                  x.direct_views, x.chain_views, x.chain_depth] for x in r.sharers]
        return csv_body(POST_REPORT_COLUMNS, rows)

    async def _post_report(self, name: str) -> pb.PostReport:
        group_id, post_id = parse_ids(name, "groups/{}/posts/{}/report", "name")
        async with self.sessions() as s:
            p = await self.content.post(s, group_id, post_id)
            r = await self.sharing.post_report(s, p)
        out = pb.PostReport(name=name, views=r["views"], unique_viewers=r["unique_viewers"],
                            shares=r["shares"], max_share_depth=r["max_share_depth"],
                            members_gained=r["members_gained"], shared_views=r["shared_views"])
        for x in r["sharers"]:
            sh = x["share"]
            out.sharers.append(pb.SharerReport(
                share=f"groups/{group_id}/posts/{post_id}/shares/{sh.id}", sharer=f"members/{sh.sharer_id}",
                depth=sh.depth, direct_views=x["direct_views"], chain_views=x["chain_views"],
                unique_viewers=x["unique_viewers"], chain_depth=x["chain_depth"], members_gained=x["members_gained"]))
        return out
