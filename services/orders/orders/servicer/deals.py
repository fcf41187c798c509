"""Bargaining (砍价) and review RPCs."""

from __future__ import annotations

import re
from datetime import UTC

from mall.orders.v1 import orders_service_pb2 as pb
from mallkit.auth import principal
from mallkit.db import utcnow
from mallkit.errors import InvalidArgument
from mallkit.names import parse_id, parse_ids
from mallkit.pagination import page_size
from mallkit.validation import IDENTIFIER, Validator

from ..models import REVIEW_APPROVED, REVIEW_REJECTED
from .base import ServicerBase, optional_address, require_request_id
from .convert import bargain_activity_pb, bargain_help_pb, bargain_pb, rating_pb, review_pb

_IMAGE_URL = re.compile(r"https://[^\s<>\"']{1,504}")


class BargainRpcs(ServicerBase):
    async def CreateBargainActivity(self, request, context):
        a = request.bargain_activity
        pid, sid = parse_ids(a.sku, "products/{}/skus/{}", "bargain_activity.sku")
        v = Validator()
        v.range("bargain_activity.start_price_fen", a.start_price_fen, 2, 100_000_000)
        v.range("bargain_activity.floor_price_fen", a.floor_price_fen, 1, max(1, a.start_price_fen - 1))
        if v.range("bargain_activity.helpers_needed", a.helpers_needed, 1, 1000):
            v.check(a.helpers_needed <= a.start_price_fen - a.floor_price_fen, "bargain_activity.helpers_needed",
                    "must be at most start_price_fen - floor_price_fen (every cut is at least 1 fen)")
        v.enum("bargain_activity.cut_mode", a.cut_mode, pb.BargainCutMode)
        v.range("bargain_activity.per_member_limit", a.per_member_limit, 1, 99)
        v.check(a.HasField("start_time"), "bargain_activity.start_time", "is required")
        v.check(a.HasField("end_time") and a.end_time.ToDatetime() > a.start_time.ToDatetime(),
                "bargain_activity.end_time", "must be after start_time")
        v.check(a.bargain_duration.nanos == 0 and 60 <= a.bargain_duration.seconds <= 30 * 86400,
                "bargain_activity.bargain_duration", "must be whole seconds between 1 minute and 30 days")
        if a.share_scene:
            v.pattern("bargain_activity.share_scene", a.share_scene, IDENTIFIER,
                      "must be 1 to 64 letters, digits, '-' or '_'")
        v.done()
        fields = {"start_price_fen": a.start_price_fen, "floor_price_fen": a.floor_price_fen,
                  "helpers_needed": a.helpers_needed, "cut_mode": a.cut_mode or pb.BARGAIN_CUT_MODE_EVEN,
                  "start_time": a.start_time.ToDatetime(tzinfo=UTC), "end_time": a.end_time.ToDatetime(tzinfo=UTC),
                  "bargain_seconds": a.bargain_duration.seconds, "per_member_limit": a.per_member_limit,
                  "share_scene": a.share_scene}

        async def run(s):
            return bargain_activity_pb(await self.bargains.create_activity(s, pid, sid, fields), pid)
        return await self.idem.run(request, pb.BargainActivity, run)

    async def GetBargainActivity(self, request, context):
        aid = parse_id(request.name, "bargainActivities", "name")

        async def read(s):
            a = await self.bargains.activity(s, aid)
            return bargain_activity_pb(a, await self.bargains.product_of(s, a))
        return await self._read(read)

    async def _bargain_pb(self, s, aid: int, bid: int) -> pb.Bargain:
        b = await self.bargains.bargain(s, aid, bid)
        a = await self.bargains.activity(s, aid)
        return bargain_pb(b, a.share_scene, utcnow())

    async def StartBargain(self, request, context):
        aid = parse_id(request.activity, "bargainActivities", "activity")
        member_id = int(principal().id)
        require_request_id(request)
        invite_code = (await self.members.members.member(member_id)).invite_code  # shared with the bargain

        async def run(s):
            b = await self.bargains.start(s, aid, member_id, invite_code)
            return await self._bargain_pb(s, aid, b.id)
        return await self.idem.run(request, pb.Bargain, run, required=True)

    async def GetBargain(self, request, context):
        aid, bid = parse_ids(request.name, "bargainActivities/{}/bargains/{}", "name")
        return await self._read(lambda s: self._bargain_pb(s, aid, bid))

    async def HelpBargain(self, request, context):
        aid, bid = parse_ids(request.bargain, "bargainActivities/{}/bargains/{}", "bargain")
        helper_id = int(principal().id)

        async def run(s):
            h = await self.bargains.help(s, aid, bid, helper_id)
            return bargain_help_pb(h, await self.bargains.bargain(s, aid, bid))
        return await self.idem.run(request, pb.BargainHelp, run)

    async def BuyBargain(self, request, context):
        aid, bid = parse_ids(request.bargain, "bargainActivities/{}/bargains/{}", "bargain")
        member_id = int(principal().id)
        address_id = optional_address(request.address)
        require_request_id(request)

        async def run(s):
            o = await self.bargains.buy(s, aid, bid, member_id, address_id)
            return await self._order_pb(s, o.id)
        return await self.idem.run(request, pb.Order, run, required=True)


class ReviewRpcs(ServicerBase):
    async def CreateReview(self, request, context):
        oid = parse_id(request.parent, "orders", "parent")
        member_id = int(principal().id)
        r = request.review
        pid, sid = parse_ids(r.sku, "products/{}/skus/{}", "review.sku")
        v = Validator()
        v.range("review.rating", r.rating, 1, 5)
        v.text("review.text", r.text, max_len=500)
        if v.check(len(r.image_urls) <= 9, "review.image_urls", "must hold at most 9 URLs"):
            for i, url in enumerate(r.image_urls):
                v.pattern(f"review.image_urls[{i}]", url, _IMAGE_URL, "must be an https URL of at most 512 characters",
                          required=True)
        v.done()

        async def run(s):
            return review_pb(await self.reviews.create(s, oid, member_id, pid, sid, r.rating, r.text,
                                                       list(r.image_urls)))
        return await self.idem.run(request, pb.Review, run)

    async def ListReviews(self, request, context):
        v = Validator()
        v.enum("state", request.state, pb.ReviewState)
        v.done()
        size = page_size(request.page_size)
        rows, token = await self._read(lambda s: self.reviews.list(s, state=request.state, size=size,
                                                                   token=request.page_token))
        return pb.ListReviewsResponse(reviews=[review_pb(r) for r in rows], next_page_token=token)

    async def ModerateReview(self, request, context):
        rid = parse_id(request.name, "reviews", "name")
        v = Validator()
        v.check(request.state in (REVIEW_APPROVED, REVIEW_REJECTED), "state", "must be APPROVED or REJECTED")
        v.done()

        async def run(s):
            return review_pb(await self.reviews.moderate(s, rid, request.state))
        return await self.idem.run(request, pb.Review, run)

    async def ListProductReviews(self, request, context):
        pid = parse_id(request.parent, "products", "parent")
        size = page_size(request.page_size)
        rows, token = await self._read(lambda s: self.reviews.of_product(s, pid, size, request.page_token))
        return pb.ListProductReviewsResponse(reviews=[review_pb(r) for r in rows], next_page_token=token)

    async def GetProductRating(self, request, context):
        name = request.name
        if not name.endswith("/rating"):
            raise InvalidArgument.field("name", "must look like products/{product}/rating")
        pid = parse_id(name.removesuffix("/rating"), "products", "name")
        return rating_pb(pid, await self._read(lambda s: self.reviews.rating(s, pid)))
