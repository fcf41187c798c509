"""Coupon drops: members of a group claim a drop's coupons once each while they last (issued by orders, by event)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, update
from sqlalchemy.ext.asyncio import AsyncSession

from mall.community.v1 import community_events_pb2 as evpb
from mall.community.v1 import community_service_pb2 as pb
from mallkit.errors import FailedPrecondition
from mallkit.events import Outbox

from . import errors as reasons
from .common import insert_once, ts
from .content import Content
from .models import CouponClaim, Post


class CouponDrops:
    def __init__(self, outbox: Outbox):
        self.outbox = outbox

    async def claim_coupon(self, s: AsyncSession, p: Post, member_id: int, now: datetime) -> bool:
        """Claim a drop's coupon once per member while stock lasts; returns True if claimed before."""
        if p.kind != pb.POST_KIND_COUPON_DROP:
            raise FailedPrecondition("the post is not a coupon drop", reason=reasons.WRONG_POST_KIND,
                                     zh="该内容不是优惠券")
        Content.require_published(p)
        if not await insert_once(s, CouponClaim.__table__, {"create_time": now},
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
                                                      coupon_template=p.coupon_template, claim_time=ts(now)),
                              subject=f"members/{member_id}")
        return False

    async def give_back(self, s: AsyncSession, post_id: int, member_id: int) -> bool:
        """The compensation of a claim whose coupon the orders service refused: the claim is deleted (the
        member may claim again) and the drop's count restored. Once: False when there is no such claim."""
        gone = await s.execute(delete(CouponClaim).where(CouponClaim.post_id == post_id,
                                                         CouponClaim.member_id == member_id))
        if gone.rowcount != 1:  # type: ignore[attr-defined]
            return False
        await s.execute(update(Post).where(Post.id == post_id, Post.coupon_claimed > 0)
                        .values(coupon_claimed=Post.coupon_claimed - 1))
        return True
