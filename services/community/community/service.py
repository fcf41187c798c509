"""Use cases of the community service.

Each public coroutine is one use case and runs inside the single transaction
its caller opened (``session``); it raises mallkit errors for every rule it
refuses. Counters change with conditional UPDATEs, never read-modify-write;
"exactly once" rules rest on unique keys. ``now`` is passed in so that tests
and the scheduler can move time.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Iterable
from datetime import date, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import String, and_, case, cast, distinct, func, insert, literal, or_, select, union, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from mall.community.v1 import community_events_pb2 as evpb
from mall.community.v1 import community_service_pb2 as pb
from mallkit.db import insert_ignore, is_duplicate_key
from mallkit.errors import AlreadyExists, FailedPrecondition, NotFound, PermissionDenied
from mallkit.outbox import Outbox

from . import errors as reasons
from .directory import TierInfo
from .models import (
    Activity,
    Broadcast,
    BroadcastDay,
    CouponClaim,
    Group,
    Membership,
    Message,
    Post,
    QuickReply,
    QuickReplyCategory,
    QuizReward,
    Reaction,
    Reply,
    Share,
    ShareAncestor,
    View,
    VisitorLink,
)

_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
CHUNK = 500

# Activity kinds (stored as small integers; not part of the API).
ACT_JOIN, ACT_POST, ACT_REPLY, ACT_REACTION, ACT_QUIZ_ANSWER = 1, 2, 3, 4, 5


def new_code(length: int) -> str:
    return "".join(secrets.choice(_CODE_ALPHABET) for _ in range(length))


def _ts(dt: datetime | None):
    from google.protobuf.timestamp_pb2 import Timestamp

    t = Timestamp()
    if dt is not None:
        t.FromDatetime(dt)
    return t


def _chunks(ids: list[int], n: int = CHUNK) -> Iterable[list[int]]:
    for i in range(0, len(ids), n):
        yield ids[i:i + n]


async def _flush_once(s: AsyncSession) -> bool:
    """Flush pending rows in a savepoint; False when a unique key says they already exist.
    Only for callers that give up (raise) on False: the transaction is not reused after it."""
    try:
        async with s.begin_nested():
            await s.flush()
        return True
    except IntegrityError as exc:
        if is_duplicate_key(exc):
            return False
        raise


async def _insert_once(s: AsyncSession, table, row: dict, key: dict) -> bool:
    """Insert a row unless its unique key exists; True when this call's row is the one stored.

    INSERT IGNORE / ON CONFLICT DO NOTHING with a fresh token, then read the
    token back: racing callers wait on the first one's row lock and then see
    its committed row, so exactly one of them wins."""
    token = str(uuid.uuid4())
    await insert_ignore(s, table, [{**row, **key, "token": token}])
    stored = (await s.execute(select(table.c.token).where(*[table.c[k] == v for k, v in key.items()]))).scalar_one()
    return stored == token


# --- VIP rule ------------------------------------------------------------------------------

def vip_tier_ids(g: Group) -> list[int]:
    return [int(x) for x in g.vip_tiers.split(",") if x]


def vip_verdict(g: Group, member_tier: str, tiers: dict[str, TierInfo]) -> tuple[bool, list[TierInfo]]:
    """Whether a member of ``member_tier`` may join VIP group ``g``, and the tiers that would qualify."""
    allowed = [f"tiers/{i}" for i in vip_tier_ids(g)]
    mine = tiers.get(member_tier)
    if member_tier and member_tier in allowed:
        return True, []
    if g.vip_min_threshold > 0 and mine is not None and mine.growth_threshold >= g.vip_min_threshold:
        return True, []
    if not allowed and g.vip_min_threshold <= 0 and mine is not None and "vip_groups" in mine.flags:
        return True, []
    ordered = sorted(tiers.values(), key=lambda t: t.growth_threshold)
    required = [tiers[n] for n in allowed if n in tiers]
    if g.vip_min_threshold > 0:
        lowest = next((t for t in ordered if t.growth_threshold >= g.vip_min_threshold), None)
        if lowest is not None:
            required.append(lowest)
    if not allowed and g.vip_min_threshold <= 0:
        required = [t for t in ordered if "vip_groups" in t.flags]
    required = sorted(dict.fromkeys(required), key=lambda t: t.growth_threshold)
    return False, required


class CommunityService:
    def __init__(self, *, outbox: Outbox, brand_timezone: str, default_capacity: int, broadcast_daily_cap: int):
        self.outbox = outbox
        self.tz = ZoneInfo(brand_timezone)
        self.default_capacity = default_capacity
        self.broadcast_daily_cap = broadcast_daily_cap

    def brand_day(self, when: datetime) -> date:
        return when.astimezone(self.tz).date()

    # --- groups ----------------------------------------------------------------------------

    @staticmethod
    def group_state(g: Group, now: datetime) -> int:
        if g.state == pb.GROUP_STATE_OPEN and g.end_time is not None and g.end_time <= now:
            return pb.GROUP_STATE_CLOSED
        return g.state

    async def group(self, s: AsyncSession, group_id: int) -> Group:
        g = await s.get(Group, group_id)
        if g is None:
            raise NotFound("group not found", reason=reasons.GROUP_NOT_FOUND, resource=("group", f"groups/{group_id}"),
                           zh="群不存在")
        return g

    async def create_group(self, s: AsyncSession, fields: dict, now: datetime) -> Group:
        fields = dict(fields)
        fields["capacity"] = fields.get("capacity") or self.default_capacity
        g = Group(invite_code=new_code(10), member_count=0, state=pb.GROUP_STATE_OPEN, create_time=now, **fields)
        s.add(g)
        await s.flush()  # 32^10 codes: a collision is an IntegrityError the client may retry
        return g

    async def close_group(self, s: AsyncSession, group_id: int) -> Group:
        g = await self.group(s, group_id)
        await s.execute(update(Group).where(Group.id == group_id).values(state=pb.GROUP_STATE_CLOSED))
        await s.refresh(g)
        return g

    async def close_ended_groups(self, s: AsyncSession, now: datetime) -> int:
        """Close flash groups past their end time (a conditional UPDATE: safe with replicas)."""
        result = await s.execute(
            update(Group).where(Group.state == pb.GROUP_STATE_OPEN, Group.end_time.is_not(None), Group.end_time <= now)
            .values(state=pb.GROUP_STATE_CLOSED)
        )
        return result.rowcount  # type: ignore[attr-defined]

    async def memberships_of(self, s: AsyncSession, member_id: int, group_ids: list[int]) -> set[int]:
        if not group_ids:
            return set()
        rows = await s.execute(select(Membership.group_id).where(
            Membership.member_id == member_id, Membership.group_id.in_(group_ids),
            Membership.state == pb.MEMBERSHIP_STATE_ACTIVE))
        return set(rows.scalars().all())

    async def is_member(self, s: AsyncSession, group_id: int, member_id: int) -> bool:
        return bool(await self.memberships_of(s, member_id, [group_id]))

    async def list_groups(self, s: AsyncSession, *, size: int, before_id: int | None, type_: int,
                          member_id: int | None, joined_only: bool, now: datetime) -> list[Group]:
        """Staff: every group. Member: joined groups and open groups they may see (VIP filtered by the caller)."""
        q = select(Group).order_by(Group.id.desc()).limit(size + 1)
        if before_id is not None:
            q = q.where(Group.id < before_id)
        if type_:
            q = q.where(Group.type == type_)
        if member_id is not None:
            joined = select(Membership.group_id).where(Membership.member_id == member_id,
                                                       Membership.state == pb.MEMBERSHIP_STATE_ACTIVE)
            joinable = and_(Group.join_policy == pb.JOIN_POLICY_OPEN, Group.state == pb.GROUP_STATE_OPEN,
                            or_(Group.end_time.is_(None), Group.end_time > now))
            q = q.where(Group.id.in_(joined) if joined_only else or_(Group.id.in_(joined), joinable))
        return list((await s.execute(q)).scalars().all())

    def check_joinable(self, g: Group, invite_code: str, now: datetime) -> None:
        if self.group_state(g, now) != pb.GROUP_STATE_OPEN:
            raise FailedPrecondition("the group is closed", reason=reasons.GROUP_CLOSED,
                                     metadata={"group": f"groups/{g.id}"}, zh="该群已关闭,无法加入")
        if g.join_policy == pb.JOIN_POLICY_INVITE_ONLY or invite_code:
            if not secrets.compare_digest(invite_code.upper(), g.invite_code):
                raise FailedPrecondition("the invite code does not match", reason=reasons.INVITE_CODE_INVALID,
                                         metadata={"field": "invite_code"}, zh="邀请码无效")

    async def join(self, s: AsyncSession, group_id: int, member_id: int, invite_code: str, now: datetime) -> Membership:
        """Join rules (VIP already checked by the caller), then a seat by conditional UPDATE.

        The seat UPDATE comes first: it takes the group row's exclusive lock
        before the membership insert's foreign-key check would take a shared
        one (shared-then-exclusive on one hot row deadlocks under load), so
        concurrent joins of one group queue on that row and never overfill it.
        """
        g = await self.group(s, group_id)
        m = (await s.execute(select(Membership).where(Membership.group_id == group_id,
                                                      Membership.member_id == member_id))).scalar_one_or_none()
        if m is not None and m.state == pb.MEMBERSHIP_STATE_ACTIVE:
            return m
        self.check_joinable(g, invite_code, now)
        seat = await s.execute(
            update(Group).where(Group.id == group_id, Group.member_count < Group.capacity,
                                Group.state == pb.GROUP_STATE_OPEN)
            .values(member_count=Group.member_count + 1))
        if seat.rowcount != 1:  # type: ignore[attr-defined]
            raise FailedPrecondition("the group is full", reason=reasons.GROUP_FULL,
                                     metadata={"group": f"groups/{group_id}", "capacity": g.capacity},
                                     zh="群成员已满")
        first_join = m is None
        if m is None:
            m = Membership(group_id=group_id, member_id=member_id, role=pb.MEMBERSHIP_ROLE_MEMBER,
                           state=pb.MEMBERSHIP_STATE_ACTIVE, join_time=now, last_active_time=now)
            s.add(m)
            await s.flush()  # a concurrent first join of the same member fails here (unique key); caller retries
        else:
            rejoined = await s.execute(
                update(Membership).where(Membership.id == m.id, Membership.state == pb.MEMBERSHIP_STATE_LEFT)
                .values(state=pb.MEMBERSHIP_STATE_ACTIVE, join_time=now, leave_time=None, last_active_time=now))
            if rejoined.rowcount != 1:  # type: ignore[attr-defined]  # a concurrent rejoin won: give the seat back
                await s.execute(update(Group).where(Group.id == group_id).values(member_count=Group.member_count - 1))
                await s.refresh(m)
                return m
        s.add(Activity(member_id=member_id, group_id=group_id, kind=ACT_JOIN, ref=f"groups/{group_id}", create_time=now))
        if first_join:
            await self.outbox.add(s, "community.group_joined",
                                  evpb.GroupJoinedEvent(group=f"groups/{group_id}", member=f"members/{member_id}",
                                                        join_time=_ts(now)),
                                  subject=f"members/{member_id}")
        await s.flush()
        await s.refresh(m)
        return m

    async def leave(self, s: AsyncSession, group_id: int, member_id: int, now: datetime) -> Membership:
        await self.group(s, group_id)
        m = (await s.execute(select(Membership).where(Membership.group_id == group_id,
                                                      Membership.member_id == member_id))).scalar_one_or_none()
        if m is None:
            raise FailedPrecondition("not a member of the group", reason=reasons.NOT_GROUP_MEMBER, zh="您不在该群中")
        left = await s.execute(
            update(Membership).where(Membership.id == m.id, Membership.state == pb.MEMBERSHIP_STATE_ACTIVE)
            .values(state=pb.MEMBERSHIP_STATE_LEFT, leave_time=now, role=pb.MEMBERSHIP_ROLE_MEMBER))
        if left.rowcount == 1:  # type: ignore[attr-defined]
            await s.execute(update(Group).where(Group.id == group_id, Group.member_count > 0)
                            .values(member_count=Group.member_count - 1))
        await s.refresh(m)
        return m

    async def list_memberships(self, s: AsyncSession, group_id: int, size: int, after_id: int | None) -> list[Membership]:
        await self.group(s, group_id)
        q = (select(Membership).where(Membership.group_id == group_id, Membership.state == pb.MEMBERSHIP_STATE_ACTIVE)
             .order_by(Membership.id).limit(size + 1))
        if after_id is not None:
            q = q.where(Membership.id > after_id)
        return list((await s.execute(q)).scalars().all())

    async def set_role(self, s: AsyncSession, group_id: int, member_id: int, role: int) -> Membership:
        m = (await s.execute(select(Membership).where(
            Membership.group_id == group_id, Membership.member_id == member_id,
            Membership.state == pb.MEMBERSHIP_STATE_ACTIVE))).scalar_one_or_none()
        if m is None:
            raise NotFound("membership not found", reason=reasons.MEMBERSHIP_NOT_FOUND,
                           resource=("membership", f"groups/{group_id}/memberships/{member_id}"), zh="该会员不在群中")
        m.role = role
        await s.flush()
        return m

    # --- activity --------------------------------------------------------------------------

    async def record_activity(self, s: AsyncSession, member_id: int, group_id: int, kind: int, ref: str,
                              now: datetime) -> None:
        s.add(Activity(member_id=member_id, group_id=group_id, kind=kind, ref=ref, create_time=now))
        await s.flush()
        await s.execute(update(Membership).where(Membership.group_id == group_id, Membership.member_id == member_id)
                        .values(last_active_time=now))

    async def member_activity(self, s: AsyncSession, member_id: int, since: datetime) -> dict:
        counts = dict((await s.execute(
            select(Activity.kind, func.count()).where(Activity.member_id == member_id, Activity.create_time >= since)
            .group_by(Activity.kind))).tuples().all())
        views = (await s.execute(select(func.count()).select_from(View).where(
            View.member_id == member_id, View.create_time >= since))).scalar_one()
        groups = (await s.execute(select(func.count()).select_from(Membership).where(
            Membership.member_id == member_id, Membership.state == pb.MEMBERSHIP_STATE_ACTIVE))).scalar_one()
        last_act = (await s.execute(select(func.max(Activity.create_time)).where(Activity.member_id == member_id))).scalar()
        last_view = (await s.execute(select(func.max(View.create_time)).where(View.member_id == member_id))).scalar()
        last = max((t for t in (last_act, last_view) if t is not None), default=None)
        if isinstance(last, str):  # SQLite aggregate bypasses the column type
            last = datetime.fromisoformat(last)
        if last is not None and last.tzinfo is None:
            from datetime import UTC

            last = last.replace(tzinfo=UTC)
        return {
            "active": bool(sum(counts.values()) or views),
            "last_active_time": last,
            "post_count": counts.get(ACT_POST, 0),
            "reply_count": counts.get(ACT_REPLY, 0),
            "reaction_count": counts.get(ACT_REACTION, 0),
            "quiz_answer_count": counts.get(ACT_QUIZ_ANSWER, 0),
            "group_count": groups,
            "view_count": views,
        }

    async def active_members(self, s: AsyncSession, since: datetime, size: int, after_id: int | None) -> list[int]:
        acts = select(Activity.member_id.label("member_id")).where(Activity.create_time >= since)
        views = select(View.member_id.label("member_id")).where(View.create_time >= since, View.member_id.is_not(None))
        u = union(acts, views).subquery()
        q = select(u.c.member_id).order_by(u.c.member_id).limit(size + 1)
        if after_id is not None:
            q = q.where(u.c.member_id > after_id)
        return [int(x) for x in (await s.execute(q)).scalars().all()]

    # --- content ---------------------------------------------------------------------------

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
        await self.group(s, group_id)
        if member_id is not None and not await self.is_member(s, group_id, member_id):
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
            await self.record_activity(s, member_id, group_id, ACT_POST, f"groups/{group_id}/posts/{p.id}", now)
        return p

    async def list_posts(self, s: AsyncSession, group_id: int, size: int, before_id: int | None,
                         include_scheduled: bool) -> list[Post]:
        await self.group(s, group_id)
        q = select(Post).where(Post.group_id == group_id).order_by(Post.id.desc()).limit(size + 1)
        if not include_scheduled:
            q = q.where(Post.state == pb.POST_STATE_PUBLISHED)
        if before_id is not None:
            q = q.where(Post.id < before_id)
        return list((await s.execute(q)).scalars().all())

    async def publish_due(self, s: AsyncSession, now: datetime, limit: int = 100) -> list[int]:
        """Publish scheduled posts whose time has come. Each post is claimed by a conditional
        UPDATE (state SCHEDULED -> PUBLISHED): with several replicas, exactly one wins."""
        due = (await s.execute(select(Post.id).where(Post.state == pb.POST_STATE_SCHEDULED, Post.publish_time <= now)
                               .order_by(Post.id).limit(limit))).scalars().all()
        won = []
        for post_id in due:
            claimed = await s.execute(
                update(Post).where(Post.id == post_id, Post.state == pb.POST_STATE_SCHEDULED)
                .values(state=pb.POST_STATE_PUBLISHED, published_time=now))
            if claimed.rowcount == 1:  # type: ignore[attr-defined]
                won.append(post_id)
        return won

    @staticmethod
    def require_published(p: Post) -> None:
        if p.state != pb.POST_STATE_PUBLISHED:
            raise FailedPrecondition("the post is not published yet", reason=reasons.POST_NOT_PUBLISHED,
                                     zh="内容尚未发布")

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

    async def record_view(self, s: AsyncSession, p: Post, member_id: int | None, visitor_id: str | None,
                          share: Share | None, now: datetime) -> int:
        """Insert one view (a single statement): an anonymous visitor already joined to a member
        is recorded as that member, found by a subquery on ``visitor_links``."""
        values: dict = {"post_id": p.id, "visitor_id": visitor_id, "share_id": share.id if share else None,
                        "create_time": now}
        if member_id is None and visitor_id:
            linked = select(VisitorLink.member_id).where(VisitorLink.visitor_id == visitor_id).scalar_subquery()
            values.update(member_id=linked, anonymous=case((linked.is_(None), True), else_=False))
        else:
            values.update(member_id=member_id, anonymous=False)
        result = await s.execute(insert(View).values(**values))
        return int(result.inserted_primary_key[0])

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
                                                      sharer=f"members/{member_id}", share_time=_ts(now)),
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
        return linked.rowcount  # type: ignore[attr-defined]

    async def answer_quiz(self, s: AsyncSession, p: Post, member_id: int, option: int, now: datetime) -> tuple[bool, int, bool]:
        """(correct, points granted now, already rewarded before). The reward row's primary key
        (post, member) makes the grant happen once however many answers race."""
        if p.kind != pb.POST_KIND_QUIZ:
            raise FailedPrecondition("the post is not a quiz", reason=reasons.WRONG_POST_KIND, zh="该内容不是答题")
        self.require_published(p)
        await self.record_activity(s, member_id, p.group_id, ACT_QUIZ_ANSWER, f"groups/{p.group_id}/posts/{p.id}", now)
        if option != p.quiz_correct:
            return False, 0, False
        event = evpb.QuizAnsweredEvent(post=f"groups/{p.group_id}/posts/{p.id}", member=f"members/{member_id}",
                                       reward_points=p.quiz_reward, answer_time=_ts(now))
        if not await _insert_once(s, QuizReward.__table__, {"create_time": now, "event_id": ""},
                                  {"post_id": p.id, "member_id": member_id}):
            return True, 0, True
        event_id = await self.outbox.add(s, "community.quiz_answered", event, subject=f"members/{member_id}")
        await s.execute(update(QuizReward).where(QuizReward.post_id == p.id, QuizReward.member_id == member_id)
                        .values(event_id=event_id))
        return True, p.quiz_reward, False

    async def claim_coupon(self, s: AsyncSession, p: Post, member_id: int, now: datetime) -> bool:
        """Claim a drop's coupon once per member while stock lasts; returns True if claimed before."""
        if p.kind != pb.POST_KIND_COUPON_DROP:
            raise FailedPrecondition("the post is not a coupon drop", reason=reasons.WRONG_POST_KIND,
                                     zh="该内容不是优惠券")
        self.require_published(p)
        if not await _insert_once(s, CouponClaim.__table__, {"create_time": now},
                                  {"post_id": p.id, "member_id": member_id}):
            return True
        taken = await s.execute(update(Post).where(Post.id == p.id, Post.coupon_claimed < Post.coupon_quantity)
                                .values(coupon_claimed=Post.coupon_claimed + 1))
        if taken.rowcount != 1:  # type: ignore[attr-defined]
            raise FailedPrecondition("the coupons of this drop are all claimed", reason=reasons.COUPON_SOLD_OUT,
                                     zh="优惠券已抢光")
        await self.outbox.add(s, "community.coupon_claimed",
                              evpb.CouponClaimedEvent(post=f"groups/{p.group_id}/posts/{p.id}",
                                                      member=f"members/{member_id}",
                                                      coupon_template=p.coupon_template, claim_time=_ts(now)),
                              subject=f"members/{member_id}")
        return False

    async def create_reply(self, s: AsyncSession, p: Post, member_id: int, text: str, now: datetime) -> Reply:
        self.require_published(p)
        r = Reply(post_id=p.id, member_id=member_id, text=text, create_time=now)
        s.add(r)
        await s.flush()
        await self.record_activity(s, member_id, p.group_id, ACT_REPLY, f"groups/{p.group_id}/posts/{p.id}", now)
        return r

    async def add_reaction(self, s: AsyncSession, p: Post, member_id: int, kind: int, now: datetime) -> bool:
        self.require_published(p)
        if not await _insert_once(s, Reaction.__table__, {"create_time": now},
                                  {"post_id": p.id, "member_id": member_id, "kind": kind}):
            return False
        await self.record_activity(s, member_id, p.group_id, ACT_REACTION, f"groups/{p.group_id}/posts/{p.id}", now)
        return True

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

    # --- broadcasts ------------------------------------------------------------------------

    async def create_broadcast(self, s: AsyncSession, *, title: str, text: str, post: str, group_ids: list[int],
                               member_ids: list[int], sender: str, now: datetime) -> Broadcast:
        """Deliver to each distinct target member at most ``broadcast_daily_cap`` broadcasts per brand day.

        Set-wise per chunk: make sure a (member, day) counter row exists, then
        ``UPDATE ... SET sent = sent + 1, last_broadcast_id = :b WHERE sent < :cap``;
        the rows this broadcast stamped are the members it reaches. Concurrent
        broadcasts serialize on those rows, so the cap holds under any interleaving.
        """
        for gid in group_ids:
            await self.group(s, gid)
        targets = set(member_ids)
        if group_ids:
            targets |= set((await s.execute(select(Membership.member_id).where(
                Membership.group_id.in_(group_ids), Membership.state == pb.MEMBERSHIP_STATE_ACTIVE))).scalars().all())
        day = self.brand_day(now)
        b = Broadcast(title=title, text=text, post=post, target_groups=",".join(map(str, group_ids)),
                      target_members=",".join(map(str, member_ids)), sender=sender, day=day,
                      target_count=len(targets), delivered_count=0, capped_count=0, opened_count=0, clicked_count=0,
                      create_time=now)
        s.add(b)
        await s.flush()
        delivered = 0
        for chunk in _chunks(sorted(int(m) for m in targets)):
            await insert_ignore(s, BroadcastDay.__table__,
                                [{"member_id": m, "day": day, "sent": 0, "last_broadcast_id": 0} for m in chunk])
            await s.execute(
                update(BroadcastDay)
                .where(BroadcastDay.day == day, BroadcastDay.member_id.in_(chunk),
                       BroadcastDay.sent < self.broadcast_daily_cap)
                .values(sent=BroadcastDay.sent + 1, last_broadcast_id=b.id))
            reached = (await s.execute(select(BroadcastDay.member_id).where(
                BroadcastDay.day == day, BroadcastDay.member_id.in_(chunk), BroadcastDay.last_broadcast_id == b.id))
            ).scalars().all()
            if reached:
                await insert_ignore(s, Message.__table__, [
                    {"broadcast_id": b.id, "member_id": m, "deliver_time": now} for m in sorted(reached)])
            delivered += len(reached)
        b.delivered_count = delivered
        b.capped_count = len(targets) - delivered
        await s.flush()
        return b

    async def broadcast(self, s: AsyncSession, broadcast_id: int) -> Broadcast:
        b = await s.get(Broadcast, broadcast_id)
        if b is None:
            raise NotFound("broadcast not found", reason=reasons.BROADCAST_NOT_FOUND,
                           resource=("broadcast", f"broadcasts/{broadcast_id}"), zh="群发不存在")
        return b

    async def list_broadcasts(self, s: AsyncSession, size: int, before_id: int | None) -> list[Broadcast]:
        q = select(Broadcast).order_by(Broadcast.id.desc()).limit(size + 1)
        if before_id is not None:
            q = q.where(Broadcast.id < before_id)
        return list((await s.execute(q)).scalars().all())

    async def list_messages(self, s: AsyncSession, member_id: int, size: int, before_id: int | None):
        q = (select(Message, Broadcast).join(Broadcast, Broadcast.id == Message.broadcast_id)
             .where(Message.member_id == member_id).order_by(Message.id.desc()).limit(size + 1))
        if before_id is not None:
            q = q.where(Message.id < before_id)
        return list((await s.execute(q)).tuples().all())

    async def touch_message(self, s: AsyncSession, member_id: int, message_id: int, what: str, now: datetime):
        """Record the first open (or click) of a message; a click implies an open."""
        msg = await s.get(Message, message_id)
        if msg is None or msg.member_id != member_id:
            raise NotFound("message not found", reason=reasons.MESSAGE_NOT_FOUND,
                           resource=("message", f"members/{member_id}/messages/{message_id}"), zh="消息不存在")
        opened = await s.execute(update(Message).where(Message.id == message_id, Message.open_time.is_(None))
                                 .values(open_time=now))
        if opened.rowcount == 1:  # type: ignore[attr-defined]
            await s.execute(update(Broadcast).where(Broadcast.id == msg.broadcast_id)
                            .values(opened_count=Broadcast.opened_count + 1))
        if what == "click":
            clicked = await s.execute(update(Message).where(Message.id == message_id, Message.click_time.is_(None))
                                      .values(click_time=now))
            if clicked.rowcount == 1:  # type: ignore[attr-defined]
                await s.execute(update(Broadcast).where(Broadcast.id == msg.broadcast_id)
                                .values(clicked_count=Broadcast.clicked_count + 1))
        await s.refresh(msg)
        return msg, await self.broadcast(s, msg.broadcast_id)

    # --- quick replies ---------------------------------------------------------------------

    async def create_category(self, s: AsyncSession, display_name: str, now: datetime) -> QuickReplyCategory:
        c = QuickReplyCategory(display_name=display_name, create_time=now)
        s.add(c)
        if not await _flush_once(s):
            raise AlreadyExists("a category has this name", reason=reasons.NAME_TAKEN,
                                metadata={"field": "quick_reply_category.display_name"}, zh="分类名称已存在")
        return c

    async def category(self, s: AsyncSession, category_id: int) -> QuickReplyCategory:
        c = await s.get(QuickReplyCategory, category_id)
        if c is None:
            raise NotFound("category not found", reason=reasons.CATEGORY_NOT_FOUND,
                           resource=("quickReplyCategory", f"quickReplyCategories/{category_id}"), zh="话术分类不存在")
        return c

    async def list_categories(self, s: AsyncSession, size: int, after_id: int | None) -> list[QuickReplyCategory]:
        q = select(QuickReplyCategory).order_by(QuickReplyCategory.id).limit(size + 1)
        if after_id is not None:
            q = q.where(QuickReplyCategory.id > after_id)
        return list((await s.execute(q)).scalars().all())

    async def create_quick_reply(self, s: AsyncSession, category_id: int, fields: dict, keywords: list[str],
                                 now: datetime) -> QuickReply:
        await self.category(s, category_id)
        q = QuickReply(category_id=category_id, usage_count=0, create_time=now,
                       keywords=(" " + " ".join(keywords) + " ") if keywords else "", **fields)
        s.add(q)
        await s.flush()
        return q

    async def quick_reply(self, s: AsyncSession, category_id: int, reply_id: int) -> QuickReply:
        q = await s.get(QuickReply, reply_id)
        if q is None or q.category_id != category_id:
            raise NotFound("quick reply not found", reason=reasons.QUICK_REPLY_NOT_FOUND,
                           resource=("quickReply", f"quickReplyCategories/{category_id}/quickReplies/{reply_id}"),
                           zh="话术不存在")
        return q

    async def list_quick_replies(self, s: AsyncSession, category_id: int | None, keyword: str, size: int,
                                 after: tuple[int, int] | None) -> list[QuickReply]:
        if category_id is not None:
            await self.category(s, category_id)
        q = select(QuickReply).order_by(QuickReply.usage_count.desc(), QuickReply.id.desc()).limit(size + 1)
        if category_id is not None:
            q = q.where(QuickReply.category_id == category_id)
        if keyword:
            q = q.where(or_(QuickReply.title.contains(keyword, autoescape=True),
                            QuickReply.text.contains(keyword, autoescape=True),
                            QuickReply.keywords.contains(keyword, autoescape=True)))
        if after is not None:
            q = q.where(or_(QuickReply.usage_count < after[0],
                            and_(QuickReply.usage_count == after[0], QuickReply.id < after[1])))
        return list((await s.execute(q)).scalars().all())

    async def use_quick_reply(self, s: AsyncSession, category_id: int, reply_id: int) -> QuickReply:
        q = await self.quick_reply(s, category_id, reply_id)
        await s.execute(update(QuickReply).where(QuickReply.id == reply_id)
                        .values(usage_count=QuickReply.usage_count + 1))
        await s.refresh(q)
        return q


def quiz_options(p: Post) -> list[str]:
    return json.loads(p.quiz_options) if p.quiz_options else []
