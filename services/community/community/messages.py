"""Proto <-> domain translation of the community service: rows to messages, times, the caller
and the refusals the RPCs share (no SQL, no business rule)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from mall.community.v1 import community_service_pb2 as pb
from mallkit.auth import current_principal
from mallkit.errors import PermissionDenied
from mallkit.validation import Validator

from . import errors as reasons
from .content import quiz_options
from .groups import Groups, vip_tier_ids
from .models import Broadcast, Group, Membership, Message, Post, QuickReply, QuickReplyCategory, Reply, Share

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


def to_dt(ts) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def set_time(field, dt: datetime | None) -> None:
    if dt is not None:
        field.FromDatetime(dt)


def valid_time(v: Validator, field: str, ts) -> bool:
    return v.check(0 <= ts.seconds <= 253402300799 and 0 <= ts.nanos < 10**9, field, "is not a valid time")


# --- rows -> protos ------------------------------------------------------------------------

def group_pb(g: Group, now: datetime, *, joined: bool = False, show_code: bool = False) -> pb.Group:
    out = pb.Group(
        name=f"groups/{g.id}", display_name=g.display_name, description=g.description, type=g.type,
        category=g.category, stage=g.stage, region=g.region, owner=f"staff/{g.owner_staff_id}", capacity=g.capacity,
        join_policy=g.join_policy, invite_code=g.invite_code if show_code else "", member_count=g.member_count,
        state=Groups.group_state(g, now), joined=joined,
    )
    if g.type == pb.GROUP_TYPE_VIP:
        out.vip_rule.allowed_tiers.extend(f"tiers/{i}" for i in vip_tier_ids(g))
        out.vip_rule.min_growth_threshold = g.vip_min_threshold
        out.vip_rule.segment = f"segments/{g.vip_segment}" if g.vip_segment else ""
    set_time(out.end_time, g.end_time)
    set_time(out.create_time, g.create_time)
    return out


def membership_pb(m: Membership) -> pb.Membership:
    out = pb.Membership(name=f"groups/{m.group_id}/memberships/{m.member_id}", member=f"members/{m.member_id}",
                        role=m.role, state=m.state)
    set_time(out.join_time, m.join_time)
    set_time(out.last_active_time, m.last_active_time)
    return out


def post_pb(p: Post, reveal_answer: bool = False) -> pb.Post:
    """The post as a caller sees it: a quiz's correct option only with ``reveal_answer`` (staff, or
    a member who has answered it)."""
    out = pb.Post(name=f"groups/{p.group_id}/posts/{p.id}", kind=p.kind, title=p.title, body=p.body,
                  product=p.product, state=p.state, author=p.author)
    if p.kind == pb.POST_KIND_COUPON_DROP:
        out.coupon.coupon_template = p.coupon_template
        out.coupon.quantity = p.coupon_quantity
        out.coupon.claimed_count = p.coupon_claimed
    if p.kind == pb.POST_KIND_FLASH_SALE_NOTICE:
        out.flash_sale.product = p.product
        out.flash_sale.price_fen = p.flash_price_fen
        set_time(out.flash_sale.start_time, p.flash_start_time)
    if p.kind == pb.POST_KIND_QUIZ:
        out.quiz.question = p.quiz_question
        out.quiz.options.extend(quiz_options(p))
        out.quiz.reward_points = p.quiz_reward
        if reveal_answer:
            out.quiz.correct_option = p.quiz_correct
    set_time(out.publish_time, p.publish_time)
    set_time(out.create_time, p.create_time)
    out.daily = p.daily
    return out


def share_pb(sh: Share, group_id: int, parent: Share | None = None) -> pb.Share:
    base = f"groups/{group_id}/posts/{sh.post_id}/shares"
    out = pb.Share(name=f"{base}/{sh.id}", sharer=f"members/{sh.sharer_id}", token=sh.token,
                   parent_share=f"{base}/{sh.parent_share_id}" if sh.parent_share_id else "", depth=sh.depth)
    set_time(out.create_time, sh.create_time)
    return out


def broadcast_pb(b: Broadcast) -> pb.Broadcast:
    out = pb.Broadcast(
        name=f"broadcasts/{b.id}", title=b.title, text=b.text, post=b.post,
        groups=[f"groups/{g}" for g in b.target_groups.split(",") if g],
        members=[f"members/{m}" for m in b.target_members.split(",") if m],
        target_count=b.target_count, delivered_count=b.delivered_count, capped_count=b.capped_count,
        opened_count=b.opened_count, clicked_count=b.clicked_count, sender=b.sender, state=b.state,
        segment=f"segments/{b.segment}" if b.segment else "", segment_version=b.segment_version,
        subscribe_message=b.subscribe_message, template_id=b.template_id, daily=b.daily, round_count=b.round_count,
        reach_sent_count=b.reach_sent_count, reach_skipped_count=b.reach_skipped_count,
    )
    set_time(out.create_time, b.create_time)
    set_time(out.send_time, b.send_time)
    set_time(out.end_time, b.end_time)
    set_time(out.next_round_time, b.next_round_time)
    return out


def message_pb(m: Message, b: Broadcast) -> pb.Message:
    out = pb.Message(name=f"members/{m.member_id}/messages/{m.id}", broadcast=f"broadcasts/{b.id}", title=b.title,
                     text=b.text, post=b.post)
    set_time(out.deliver_time, m.deliver_time)
    set_time(out.open_time, m.open_time)
    set_time(out.click_time, m.click_time)
    return out


def category_pb(c: QuickReplyCategory) -> pb.QuickReplyCategory:
    out = pb.QuickReplyCategory(name=f"quickReplyCategories/{c.id}", display_name=c.display_name)
    set_time(out.create_time, c.create_time)
    return out


def quick_reply_pb(q: QuickReply) -> pb.QuickReply:
    out = pb.QuickReply(name=f"quickReplyCategories/{q.category_id}/quickReplies/{q.id}", kind=q.kind, title=q.title,
                        text=q.text, image_url=q.image_url, page_path=q.page_path,
                        keywords=[k for k in q.keywords.split(" ") if k], usage_count=q.usage_count)
    set_time(out.create_time, q.create_time)
    return out


def reply_pb(r: Reply, group_id: int) -> pb.Reply:
    out = pb.Reply(name=f"groups/{group_id}/posts/{r.post_id}/replies/{r.id}", text=r.text,
                   author=f"members/{r.member_id}")
    set_time(out.create_time, r.create_time)
    return out


def caller_member_id() -> int | None:
    p = current_principal.get()
    return int(p.id) if p is not None and p.is_member else None


def not_member() -> PermissionDenied:
    return PermissionDenied("only members of the group may do this", reason=reasons.NOT_GROUP_MEMBER,
                            zh="加入该群后才能参与")


def hidden_group() -> PermissionDenied:
    return PermissionDenied("members may only see groups they belong to or may join", reason=reasons.NOT_GROUP_MEMBER,
                            zh="无权查看该群")
