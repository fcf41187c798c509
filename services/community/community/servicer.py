"""gRPC servicer of CommunityService: validates requests and translates proto <-> rows.

No SQL and no business rule here: each method checks its input, resolves
resource names (ownership first), opens the transaction (through
``Idempotency.run`` for mutations) and calls use cases of ``service.py``.
The VIP tier check calls the members service before the transaction opens.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mall.community.v1 import community_service_pb2 as pb
from mall.community.v1 import community_service_pb2_grpc as pb_grpc
from mallkit.auth import Principal, current_principal, member_scope, principal
from mallkit.db import is_duplicate_key, utcnow
from mallkit.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from mallkit.idempotency import Idempotency
from mallkit.names import optional_id, parse_id, parse_ids
from mallkit.pagination import PageTokens, next_token, page_size
from mallkit.validation import Validator

from . import errors as reasons
from .directory import MembersDirectory
from .models import Broadcast, Group, Membership, Message, Post, QuickReply, QuickReplyCategory, Reply, Share
from .service import CommunityService, quiz_options, vip_tier_ids, vip_verdict

VISITOR = re.compile(r"[A-Za-z0-9_-]{16,64}")
SHARE_TOKEN = re.compile(r"[A-Za-z0-9_-]{8,24}")
INVITE = re.compile(r"[A-Za-z0-9]{4,16}")
URL = re.compile(r"https://[^\s<>\"']{1,500}")
PAGE_PATH = re.compile(r"[A-Za-z0-9_/.-]{1,128}(\?[A-Za-z0-9_=&%.-]{0,120})?")
KEYWORD = re.compile(r"[^\s<>\x00-\x1f\x7f]{1,16}")
CATEGORY = re.compile(r"categories/[1-9][0-9]{0,17}")
PRODUCT = re.compile(r"products/[1-9][0-9]{0,17}")
COUPON_TEMPLATE = re.compile(r"couponTemplates/[1-9][0-9]{0,17}")
MAX_AHEAD = timedelta(days=366)


def _dt(ts) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def _set(field, dt: datetime | None) -> None:
    if dt is not None:
        field.FromDatetime(dt)


def _ts_ok(v: Validator, field: str, ts) -> bool:
    return v.check(0 <= ts.seconds <= 253402300799 and 0 <= ts.nanos < 10**9, field, "is not a valid time")


# --- rows -> protos ------------------------------------------------------------------------

def group_pb(g: Group, now: datetime, *, joined: bool = False, show_code: bool = False) -> pb.Group:
    out = pb.Group(
        name=f"groups/{g.id}", display_name=g.display_name, description=g.description, type=g.type,
        category=g.category, stage=g.stage, region=g.region, owner=f"staff/{g.owner_staff_id}", capacity=g.capacity,
        join_policy=g.join_policy, invite_code=g.invite_code if show_code else "", member_count=g.member_count,
        state=CommunityService.group_state(g, now), joined=joined,
    )
    if g.type == pb.GROUP_TYPE_VIP:
        out.vip_rule.allowed_tiers.extend(f"tiers/{i}" for i in vip_tier_ids(g))
        out.vip_rule.min_growth_threshold = g.vip_min_threshold
    _set(out.end_time, g.end_time)
    _set(out.create_time, g.create_time)
    return out


def membership_pb(m: Membership) -> pb.Membership:
    out = pb.Membership(name=f"groups/{m.group_id}/memberships/{m.member_id}", member=f"members/{m.member_id}",
                        role=m.role, state=m.state)
    _set(out.join_time, m.join_time)
    _set(out.last_active_time, m.last_active_time)
    return out


def post_pb(p: Post) -> pb.Post:
    out = pb.Post(name=f"groups/{p.group_id}/posts/{p.id}", kind=p.kind, title=p.title, body=p.body,
                  product=p.product, state=p.state, author=p.author)
    if p.kind == pb.POST_KIND_COUPON_DROP:
        out.coupon.coupon_template = p.coupon_template
        out.coupon.quantity = p.coupon_quantity
        out.coupon.claimed_count = p.coupon_claimed
    if p.kind == pb.POST_KIND_FLASH_SALE_NOTICE:
        out.flash_sale.product = p.product
        out.flash_sale.price_fen = p.flash_price_fen
        _set(out.flash_sale.start_time, p.flash_start_time)
    if p.kind == pb.POST_KIND_QUIZ:  # the correct option is never returned
        out.quiz.question = p.quiz_question
        out.quiz.options.extend(quiz_options(p))
        out.quiz.reward_points = p.quiz_reward
    _set(out.publish_time, p.publish_time)
    _set(out.create_time, p.create_time)
    return out


def share_pb(sh: Share, group_id: int, parent: Share | None = None) -> pb.Share:
    base = f"groups/{group_id}/posts/{sh.post_id}/shares"
    out = pb.Share(name=f"{base}/{sh.id}", sharer=f"members/{sh.sharer_id}", token=sh.token,
                   parent_share=f"{base}/{sh.parent_share_id}" if sh.parent_share_id else "", depth=sh.depth)
    _set(out.create_time, sh.create_time)
    return out


def broadcast_pb(b: Broadcast) -> pb.Broadcast:
    out = pb.Broadcast(
        name=f"broadcasts/{b.id}", title=b.title, text=b.text, post=b.post,
        groups=[f"groups/{g}" for g in b.target_groups.split(",") if g],
        members=[f"members/{m}" for m in b.target_members.split(",") if m],
        target_count=b.target_count, delivered_count=b.delivered_count, capped_count=b.capped_count,
        opened_count=b.opened_count, clicked_count=b.clicked_count, sender=b.sender,
    )
    _set(out.create_time, b.create_time)
    return out


def message_pb(m: Message, b: Broadcast) -> pb.Message:
    out = pb.Message(name=f"members/{m.member_id}/messages/{m.id}", broadcast=f"broadcasts/{b.id}", title=b.title,
                     text=b.text, post=b.post)
    _set(out.deliver_time, m.deliver_time)
    _set(out.open_time, m.open_time)
    _set(out.click_time, m.click_time)
    return out


def category_pb(c: QuickReplyCategory) -> pb.QuickReplyCategory:
    out = pb.QuickReplyCategory(name=f"quickReplyCategories/{c.id}", display_name=c.display_name)
    _set(out.create_time, c.create_time)
    return out


def quick_reply_pb(q: QuickReply) -> pb.QuickReply:
    out = pb.QuickReply(name=f"quickReplyCategories/{q.category_id}/quickReplies/{q.id}", kind=q.kind, title=q.title,
                        text=q.text, image_url=q.image_url, page_path=q.page_path,
                        keywords=[k for k in q.keywords.split(" ") if k], usage_count=q.usage_count)
    _set(out.create_time, q.create_time)
    return out


def reply_pb(r: Reply, group_id: int) -> pb.Reply:
    out = pb.Reply(name=f"groups/{group_id}/posts/{r.post_id}/replies/{r.id}", text=r.text,
                   author=f"members/{r.member_id}")
    _set(out.create_time, r.create_time)
    return out


def _member_id() -> int | None:
    p = current_principal.get()
    return int(p.id) if p is not None and p.is_member else None


def _not_member() -> PermissionDenied:
    return PermissionDenied("only members of the group may do this", reason=reasons.NOT_GROUP_MEMBER,
                            zh="加入该群后才能参与")


class CommunityServicer(pb_grpc.CommunityServiceServicer):
    def __init__(
        self,
        service: CommunityService,
        sessions: async_sessionmaker[AsyncSession],
        idempotency: Idempotency,
        pages: PageTokens,
        directory: MembersDirectory,
        *,
        activity_window_days: int = 30,
        clock: Callable[[], datetime] = utcnow,
        max_transactions: int = 10,
    ):
        self.service = service
        self.sessions = sessions
        self.idem = idempotency
        self.pages = pages
        self.directory = directory
        self.activity_window_days = activity_window_days
        self.clock = clock
        # Admission control: at most this many write transactions at once; the rest queue here
        # instead of timing out on the connection pool when hundreds of members hit one hot row.
        self.slots = asyncio.Semaphore(max_transactions)

    async def _run(self, request, response_type, use_case, **kw):
        async with self.slots:
            return await self.idem.run(request, response_type, use_case, **kw)

    def _after(self, token: str, filters=()) -> int | None:
        key = self.pages.decode(token, filters)
        return int(key[0]) if key else None

    async def _retry_unique(self, fn):
        """Run a mutation again when a concurrent twin took the unique key first (it then finds the row)."""
        for attempt in range(3):
            try:
                return await fn()
            except IntegrityError as exc:
                if not is_duplicate_key(exc) or attempt == 2:
                    raise

    # --- groups ----------------------------------------------------------------------------

    async def _vip_check(self, g: Group, member_id: int) -> tuple[bool, list, str]:
        tier = await self.directory.tier_of(member_id)
        tiers = await self.directory.tiers()
        ok, required = vip_verdict(g, tier, tiers)
        return ok, required, tier

    async def _visible_to_member(self, g: Group, member_id: int, joined: bool, now: datetime) -> bool:
        if joined:
            return True
        if g.join_policy != pb.JOIN_POLICY_OPEN or self.service.group_state(g, now) != pb.GROUP_STATE_OPEN:
            return False
        if g.type == pb.GROUP_TYPE_VIP:
            return (await self._vip_check(g, member_id))[0]
        return True

    async def CreateGroup(self, request, context):
        g, v, now = request.group, Validator(), self.clock()
        v.text("group.display_name", g.display_name, max_len=64, min_len=1)
        v.text("group.description", g.description, max_len=512)
        v.enum("group.type", g.type, pb.GroupType, required=True)
        v.enum("group.join_policy", g.join_policy, pb.JoinPolicy)
        v.text("group.stage", g.stage, max_len=32)
        v.text("group.region", g.region, max_len=32)
        v.check(g.capacity == 0 or 2 <= g.capacity <= 2000, "group.capacity", "must be between 2 and 2000 (0: 500)")
        if g.type == pb.GROUP_TYPE_CATEGORY:
            v.pattern("group.category", g.category, CATEGORY, "must look like categories/{id}", required=True)
        else:
            v.check(not g.category, "group.category", "only category groups have a category")
        end_time = None
        if g.type == pb.GROUP_TYPE_FLASH:
            if v.check(g.HasField("end_time"), "group.end_time", "is required for flash groups") and \
                    _ts_ok(v, "group.end_time", g.end_time):
                end_time = _dt(g.end_time)
                v.check(now < end_time <= now + MAX_AHEAD, "group.end_time", "must be in the future (within a year)")
        else:
            v.check(not g.HasField("end_time"), "group.end_time", "only flash groups have an end time")
        if g.type == pb.GROUP_TYPE_VIP:
            v.check(len(g.vip_rule.allowed_tiers) <= 10, "group.vip_rule.allowed_tiers", "at most 10 tiers")
            v.range("group.vip_rule.min_growth_threshold", g.vip_rule.min_growth_threshold, 0, 10**12)
        else:
            v.check(not g.HasField("vip_rule"), "group.vip_rule", "only VIP groups have a VIP rule")
        v.done()
        owner = parse_id(g.owner, "staff", "group.owner")
        tiers = [parse_id(t, "tiers", f"group.vip_rule.allowed_tiers[{i}]") for i, t in enumerate(g.vip_rule.allowed_tiers)]
        fields = {
            "display_name": g.display_name, "description": g.description, "type": g.type, "category": g.category,
            "end_time": end_time, "vip_tiers": ",".join(str(t) for t in dict.fromkeys(tiers)),
            "vip_min_threshold": g.vip_rule.min_growth_threshold, "stage": g.stage, "region": g.region,
            "owner_staff_id": owner, "capacity": g.capacity, "join_policy": g.join_policy or pb.JOIN_POLICY_OPEN,
        }

        async def use_case(s):
            return group_pb(await self.service.create_group(s, fields, now), now, show_code=True)

        return await self._run(request, pb.Group, use_case)

    async def GetGroup(self, request, context):
        group_id = parse_id(request.name, "groups", "name")
        member_id, now = _member_id(), self.clock()
        async with self.sessions() as s:
            if member_id is None:
                return group_pb(await self.service.group(s, group_id), now, show_code=True)
            try:
                g = await self.service.group(s, group_id)
            except NotFound:
                raise _hidden_group() from None
            joined = await self.service.is_member(s, group_id, member_id)
        if not await self._visible_to_member(g, member_id, joined, now):
            raise _hidden_group()
        return group_pb(g, now, joined=joined, show_code=joined)

    async def ListGroups(self, request, context):
        size = page_size(request.page_size)
        v = Validator()
        v.enum("type", request.type, pb.GroupType)
        v.done()
        member_id, now = _member_id(), self.clock()
        filters = (request.type, request.joined_only, member_id)
        async with self.sessions() as s:
            rows = await self.service.list_groups(s, size=size, before_id=self._after(request.page_token, filters),
                                                  type_=request.type, member_id=member_id,
                                                  joined_only=request.joined_only, now=now)
            rows, token = next_token(self.pages, rows, size, lambda g: [g.id], filters)
            joined = await self.service.memberships_of(s, member_id, [g.id for g in rows]) if member_id else set()
        if member_id is None:
            return pb.ListGroupsResponse(groups=[group_pb(g, now, show_code=True) for g in rows], next_page_token=token)
        out = []
        for g in rows:
            if g.id in joined or g.type != pb.GROUP_TYPE_VIP or await self._visible_to_member(g, member_id, False, now):
                out.append(group_pb(g, now, joined=g.id in joined, show_code=g.id in joined))
        return pb.ListGroupsResponse(groups=out, next_page_token=token)

    async def CloseGroup(self, request, context):
        group_id = parse_id(request.name, "groups", "name")
        now = self.clock()

        async def use_case(s):
            return group_pb(await self.service.close_group(s, group_id), now, show_code=True)

        return await self._run(request, pb.Group, use_case)

    async def JoinGroup(self, request, context):
        group_id = parse_id(request.name, "groups", "name")
        v = Validator()
        v.pattern("invite_code", request.invite_code, INVITE, "must be an invite code")
        v.done()
        member_id, now = int(principal().id), self.clock()
        async with self.slots, self.sessions() as s:  # admission control covers the read too
            g = await self.service.group(s, group_id)
            already = await self.service.is_member(s, group_id, member_id)
        if g.type == pb.GROUP_TYPE_VIP and not already:
            ok, required, tier = await self._vip_check(g, member_id)
            if not ok:
                names = "、".join(t.display_name for t in required) or "指定等级"
                raise FailedPrecondition(
                    f"this VIP group admits only members of tier {', '.join(t.name for t in required) or 'none'}",
                    reason=reasons.TIER_TOO_LOW,
                    metadata={"group": f"groups/{group_id}", "member_tier": tier or "none",
                              "required_tiers": ",".join(t.name for t in required),
                              "required_tier_names": ",".join(t.display_name for t in required)},
                    zh=f"该群仅限{names}加入,您的会员等级不足",
                )

        async def use_case(s):
            return membership_pb(await self.service.join(s, group_id, member_id, request.invite_code, now))

        return await self._retry_unique(lambda: self._run(request, pb.Membership, use_case))

    async def LeaveGroup(self, request, context):
        group_id = parse_id(request.name, "groups", "name")
        member_id, now = int(principal().id), self.clock()

        async def use_case(s):
            return membership_pb(await self.service.leave(s, group_id, member_id, now))

        return await self._run(request, pb.Membership, use_case)

    async def ListMemberships(self, request, context):
        group_id = parse_id(request.parent, "groups", "parent")
        size = page_size(request.page_size)
        async with self.sessions() as s:
            rows = await self.service.list_memberships(s, group_id, size, self._after(request.page_token, [group_id]))
        rows, token = next_token(self.pages, rows, size, lambda m: [m.id], [group_id])
        return pb.ListMembershipsResponse(memberships=[membership_pb(m) for m in rows], next_page_token=token)

    async def SetMembershipRole(self, request, context):
        group_id, member_id = parse_ids(request.name, "groups/{}/memberships/{}", "name")
        v = Validator()
        v.enum("role", request.role, pb.MembershipRole, required=True)
        v.check(request.role != pb.MEMBERSHIP_ROLE_OWNER, "role", "the owner is the group's guide, not a member")
        v.done()

        async def use_case(s):
            return membership_pb(await self.service.set_role(s, group_id, member_id, request.role))

        return await self._run(request, pb.Membership, use_case)

    # --- activity --------------------------------------------------------------------------

    async def GetMemberActivity(self, request, context):
        member_id = parse_ids(request.name, "members/{}/communityActivity", "name")[0]
        v = Validator()
        w = request.window
        v.check(0 <= w.seconds <= 366 * 86400 and 0 <= w.nanos < 10**9, "window", "must be between 0 and 366 days")
        v.done()
        window = timedelta(seconds=w.seconds)
        window = window or timedelta(days=self.activity_window_days)
        async with self.sessions() as s:
            a = await self.service.member_activity(s, member_id, self.clock() - window)
        out = pb.MemberActivity(name=request.name, **{k: val for k, val in a.items() if k != "last_active_time"})
        _set(out.last_active_time, a["last_active_time"])
        return out

    async def ListActiveMembers(self, request, context):
        v = Validator()
        if v.check(request.HasField("since_time"), "since_time", "is required"):
            _ts_ok(v, "since_time", request.since_time)
        v.done()
        size = page_size(request.page_size, default=500, maximum=1000)
        since = _dt(request.since_time)
        filters = (request.since_time.seconds, request.since_time.nanos)
        async with self.sessions() as s:
            ids = await self.service.active_members(s, since, size, self._after(request.page_token, filters))
        ids, token = next_token(self.pages, ids, size, lambda m: [m], filters)
        return pb.ListActiveMembersResponse(members=[f"members/{m}" for m in ids], next_page_token=token)

    # --- content ---------------------------------------------------------------------------

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
                    _ts_ok(v, "post.flash_sale.start_time", f.start_time):
                start = _dt(f.start_time)
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
            if _ts_ok(v, "post.publish_time", p.publish_time):
                when = _dt(p.publish_time)
                v.check(when <= now + MAX_AHEAD, "post.publish_time", "must be within a year")
                if member:
                    v.check(when <= now, "post.publish_time", "members cannot schedule posts")
                fields["publish_time"] = max(when, now) if when > now else None
        v.done()
        return fields

    async def CreatePost(self, request, context):
        group_id = parse_id(request.parent, "groups", "parent")
        caller, now = principal(), self.clock()
        fields = self._post_fields(request.post, caller.is_member, now)
        member_id = int(caller.id) if caller.is_member else None

        async def use_case(s):
            return post_pb(await self.service.create_post(s, group_id, fields, caller.subject, now, member_id))

        return await self._run(request, pb.Post, use_case)

    async def ListPosts(self, request, context):
        group_id = parse_id(request.parent, "groups", "parent")
        size = page_size(request.page_size)
        member_id = _member_id()
        async with self.sessions() as s:
            if member_id is not None and not await self.service.is_member(s, group_id, member_id):
                raise _not_member()
            rows = await self.service.list_posts(s, group_id, size, self._after(request.page_token, [group_id]),
                                                 include_scheduled=member_id is None)
        rows, token = next_token(self.pages, rows, size, lambda p: [p.id], [group_id])
        return pb.ListPostsResponse(posts=[post_pb(p) for p in rows], next_page_token=token)

    async def _member_post(self, s: AsyncSession, name: str, member_id: int) -> Post:
        group_id, post_id = parse_ids(name, "groups/{}/posts/{}", "name")
        if not await self.service.is_member(s, group_id, member_id):
            raise _not_member()
        return await self.service.post(s, group_id, post_id)

    async def ViewPost(self, request, context):
        group_id, post_id = parse_ids(request.name, "groups/{}/posts/{}", "name")
        v = Validator()
        v.pattern("visitor_id", request.visitor_id, VISITOR, "16 to 64 letters, digits, '-' or '_'")
        v.pattern("share_token", request.share_token, SHARE_TOKEN, "must be a share token")
        v.done()
        caller: Principal | None = current_principal.get()
        member_id = int(caller.id) if caller is not None and caller.is_member else None
        if caller is None and not request.visitor_id:
            raise InvalidArgument("visitor_id is required when not signed in", reason=reasons.VISITOR_REQUIRED,
                                  metadata={"field": "visitor_id"}, zh="缺少访客标识")
        now = self.clock()

        async def use_case(s):
            share = None
            if request.share_token:
                p, share = await self.service.post_by_share(s, group_id, post_id, request.share_token)
            elif caller is None or (member_id is not None and not await self.service.is_member(s, group_id, member_id)):
                raise _not_member()
            else:
                p = await self.service.post(s, group_id, post_id)
            if caller is not None and caller.is_staff:  # staff preview: not a view
                return pb.ViewPostResponse(post=post_pb(p))
            self.service.require_published(p)
            view_id = await self.service.record_view(s, p, member_id, request.visitor_id or None, share, now)
            return pb.ViewPostResponse(post=post_pb(p), view=f"groups/{group_id}/posts/{post_id}/views/{view_id}")

        return await self._run(request, pb.ViewPostResponse, use_case, request_id="")

    async def SharePost(self, request, context):
        group_id, post_id = parse_ids(request.name, "groups/{}/posts/{}", "name")
        v = Validator()
        v.pattern("parent_share_token", request.parent_share_token, SHARE_TOKEN, "must be a share token")
        v.done()
        member_id, now = int(principal().id), self.clock()

        async def use_case(s):
            if not request.parent_share_token and not await self.service.is_member(s, group_id, member_id):
                raise _not_member()
            p = await self.service.post(s, group_id, post_id)
            self.service.require_published(p)
            return share_pb(await self.service.share_post(s, p, member_id, request.parent_share_token, now), group_id)

        return await self._retry_unique(lambda: self._run(request, pb.Share, use_case))

    async def LinkVisitor(self, request, context):
        prefix = "visitors/"
        visitor = request.name[len(prefix):] if request.name.startswith(prefix) else ""
        if not VISITOR.fullmatch(visitor):
            raise InvalidArgument.field("name", "must look like visitors/{visitor_id} (16 to 64 letters, digits, '-', '_')")
        member_id, now = int(principal().id), self.clock()

        async def use_case(s):
            n = await self.service.link_visitor(s, visitor, member_id, now)
            return pb.LinkVisitorResponse(member=f"members/{member_id}", linked_view_count=n)

        return await self._run(request, pb.LinkVisitorResponse, use_case)

    async def AnswerQuiz(self, request, context):
        v = Validator()
        v.range("option", request.option, 0, 5)
        v.done()
        member_id, now = int(principal().id), self.clock()

        async def use_case(s):
            p = await self._member_post(s, request.name, member_id)
            correct, points, already = await self.service.answer_quiz(s, p, member_id, request.option, now)
            return pb.AnswerQuizResponse(correct=correct, reward_points=points, already_rewarded=already)

        return await self._run(request, pb.AnswerQuizResponse, use_case)

    async def ClaimCoupon(self, request, context):
        member_id, now = int(principal().id), self.clock()

        async def use_case(s):
            p = await self._member_post(s, request.name, member_id)
            already = await self.service.claim_coupon(s, p, member_id, now)
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
            return reply_pb(await self.service.create_reply(s, p, member_id, request.reply.text, now), p.group_id)

        return await self._run(request, pb.Reply, use_case)

    async def AddReaction(self, request, context):
        v = Validator()
        v.enum("kind", request.kind, pb.ReactionKind, required=True)
        v.done()
        member_id, now = int(principal().id), self.clock()

        async def use_case(s):
            p = await self._member_post(s, request.name, member_id)
            return pb.AddReactionResponse(added=await self.service.add_reaction(s, p, member_id, request.kind, now))

        return await self._run(request, pb.AddReactionResponse, use_case)

    async def GetPostReport(self, request, context):
        group_id, post_id = parse_ids(request.name, "groups/{}/posts/{}/report", "name")
        async with self.sessions() as s:
            p = await self.service.post(s, group_id, post_id)
            r = await self.service.post_report(s, p)
        out = pb.PostReport(name=request.name, views=r["views"], unique_viewers=r["unique_viewers"],
                            shares=r["shares"], max_share_depth=r["max_share_depth"],
                            members_gained=r["members_gained"], shared_views=r["shared_views"])
        for x in r["sharers"]:
            sh = x["share"]
            out.sharers.append(pb.SharerReport(
                share=f"groups/{group_id}/posts/{post_id}/shares/{sh.id}", sharer=f"members/{sh.sharer_id}",
                depth=sh.depth, direct_views=x["direct_views"], chain_views=x["chain_views"],
                unique_viewers=x["unique_viewers"], chain_depth=x["chain_depth"], members_gained=x["members_gained"]))
        return out

    # --- broadcasts ------------------------------------------------------------------------

    async def CreateBroadcast(self, request, context):
        b, v = request.broadcast, Validator()
        v.text("broadcast.title", b.title, max_len=64, min_len=1)
        v.text("broadcast.text", b.text, max_len=1000, min_len=1)
        v.check(len(b.groups) <= 50, "broadcast.groups", "at most 50 groups")
        v.check(len(b.members) <= 1000, "broadcast.members", "at most 1000 members")
        v.check(bool(b.groups) or bool(b.members), "broadcast.groups", "name target groups or members")
        v.done()
        if b.post:
            parse_ids(b.post, "groups/{}/posts/{}", "broadcast.post")
        groups = list(dict.fromkeys(parse_id(g, "groups", f"broadcast.groups[{i}]") for i, g in enumerate(b.groups)))
        members = list(dict.fromkeys(parse_id(m, "members", f"broadcast.members[{i}]") for i, m in enumerate(b.members)))
        sender, now = principal().subject, self.clock()

        async def use_case(s):
            row = await self.service.create_broadcast(s, title=b.title, text=b.text, post=b.post, group_ids=groups,
                                                      member_ids=members, sender=sender, now=now)
            return broadcast_pb(row)

        return await self._run(request, pb.Broadcast, use_case, required=True)

    async def GetBroadcast(self, request, context):
        broadcast_id = parse_id(request.name, "broadcasts", "name")
        async with self.sessions() as s:
            return broadcast_pb(await self.service.broadcast(s, broadcast_id))

    async def ListBroadcasts(self, request, context):
        size = page_size(request.page_size)
        async with self.sessions() as s:
            rows = await self.service.list_broadcasts(s, size, self._after(request.page_token))
        rows, token = next_token(self.pages, rows, size, lambda b: [b.id])
        return pb.ListBroadcastsResponse(broadcasts=[broadcast_pb(b) for b in rows], next_page_token=token)

    async def ListMessages(self, request, context):
        member_id = member_scope(request.parent, "parent")
        size = page_size(request.page_size)
        async with self.sessions() as s:
            rows = await self.service.list_messages(s, member_id, size, self._after(request.page_token, [member_id]))
        rows, token = next_token(self.pages, rows, size, lambda r: [r[0].id], [member_id])
        return pb.ListMessagesResponse(messages=[message_pb(m, b) for m, b in rows], next_page_token=token)

    async def _touch(self, request, what: str):
        parts = request.name.split("/")
        if len(parts) != 4 or parts[2] != "messages":
            raise InvalidArgument.field("name", "must look like members/me/messages/{id}")
        member_id = member_scope("/".join(parts[:2]), "name")
        message_id = parse_id("/".join(parts[2:]), "messages", "name")
        now = self.clock()

        async def use_case(s):
            m, b = await self.service.touch_message(s, member_id, message_id, what, now)
            return message_pb(m, b)

        return await self._run(request, pb.Message, use_case)

    async def OpenMessage(self, request, context):
        return await self._touch(request, "open")

    async def ClickMessage(self, request, context):
        return await self._touch(request, "click")

    # --- quick replies ---------------------------------------------------------------------

    async def CreateQuickReplyCategory(self, request, context):
        c, v = request.quick_reply_category, Validator()
        v.text("quick_reply_category.display_name", c.display_name, max_len=32, min_len=1)
        v.done()
        now = self.clock()

        async def use_case(s):
            return category_pb(await self.service.create_category(s, c.display_name, now))

        return await self._run(request, pb.QuickReplyCategory, use_case)

    async def ListQuickReplyCategories(self, request, context):
        size = page_size(request.page_size)
        async with self.sessions() as s:
            rows = await self.service.list_categories(s, size, self._after(request.page_token))
        rows, token = next_token(self.pages, rows, size, lambda c: [c.id])
        return pb.ListQuickReplyCategoriesResponse(quick_reply_categories=[category_pb(c) for c in rows],
                                                   next_page_token=token)

    async def CreateQuickReply(self, request, context):
        category_id = parse_id(request.parent, "quickReplyCategories", "parent")
        q, v = request.quick_reply, Validator()
        v.enum("quick_reply.kind", q.kind, pb.QuickReplyKind, required=True)
        v.text("quick_reply.title", q.title, max_len=64, min_len=1)
        v.text("quick_reply.text", q.text, max_len=2000, required=q.kind == pb.QUICK_REPLY_KIND_TEXT)
        v.pattern("quick_reply.image_url", q.image_url, URL, "must be an https URL of at most 512 characters",
                  required=q.kind in (pb.QUICK_REPLY_KIND_IMAGE, pb.QUICK_REPLY_KIND_MINI_PROGRAM_CARD))
        v.pattern("quick_reply.page_path", q.page_path, PAGE_PATH, "must be a mini-program page path",
                  required=q.kind == pb.QUICK_REPLY_KIND_MINI_PROGRAM_CARD)
        v.check(len(q.keywords) <= 10, "quick_reply.keywords", "at most 10 keywords")
        for i, k in enumerate(q.keywords):
            v.pattern(f"quick_reply.keywords[{i}]", k, KEYWORD, "1 to 16 characters without spaces or '<' '>'")
        v.done()
        now = self.clock()
        fields = {"kind": q.kind, "title": q.title, "text": q.text, "image_url": q.image_url, "page_path": q.page_path}

        async def use_case(s):
            row = await self.service.create_quick_reply(s, category_id, fields, list(dict.fromkeys(q.keywords)), now)
            return quick_reply_pb(row)

        return await self._run(request, pb.QuickReply, use_case)

    async def ListQuickReplies(self, request, context):
        category_id = None if request.parent == "quickReplyCategories/-" else \
            optional_id(request.parent, "quickReplyCategories", "parent")
        if category_id is None and request.parent != "quickReplyCategories/-":
            raise InvalidArgument.field("parent", "must look like quickReplyCategories/{id} or quickReplyCategories/-")
        v = Validator()
        v.text("keyword", request.keyword, max_len=32)
        v.done()
        size = page_size(request.page_size)
        filters = (category_id, request.keyword)
        key = self.pages.decode(request.page_token, filters)
        async with self.sessions() as s:
            rows = await self.service.list_quick_replies(s, category_id, request.keyword.strip(), size,
                                                         (int(key[0]), int(key[1])) if key else None)
        rows, token = next_token(self.pages, rows, size, lambda q: [q.usage_count, q.id], filters)
        return pb.ListQuickRepliesResponse(quick_replies=[quick_reply_pb(q) for q in rows], next_page_token=token)

    async def UseQuickReply(self, request, context):
        category_id, reply_id = parse_ids(request.name, "quickReplyCategories/{}/quickReplies/{}", "name")

        async def use_case(s):
            return quick_reply_pb(await self.service.use_quick_reply(s, category_id, reply_id))

        return await self._run(request, pb.QuickReply, use_case)


def _hidden_group() -> PermissionDenied:
    return PermissionDenied("members may only see groups they belong to or may join", reason=reasons.NOT_GROUP_MEMBER,
                            zh="无权查看该群")
