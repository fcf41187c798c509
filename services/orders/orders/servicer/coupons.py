"""Coupon RPCs: templates (staff), claim and list (member), issue (staff, services)."""

from __future__ import annotations

from mall.orders.v1 import orders_service_pb2 as pb
from mallkit.auth import member_scope
from mallkit.db import utcnow
from mallkit.names import parse_id
from mallkit.pagination import page_size
from mallkit.validation import Validator

from .base import ServicerBase
from .convert import campaign_pb, coupon_pb, template_pb


class CouponRpcs(ServicerBase):
    async def CreateCouponTemplate(self, request, context):
        t = request.coupon_template
        v = Validator()
        v.text("coupon_template.display_name", t.display_name, max_len=32, required=True)
        if v.enum("coupon_template.kind", t.kind, pb.CouponKind, required=True):
            if t.kind == pb.COUPON_KIND_AMOUNT_OFF:
                v.range("coupon_template.amount_off_fen", t.amount_off_fen, 1, 100_000_000)
            else:
                v.range("coupon_template.percent", t.percent, 1, 99)
        v.range("coupon_template.threshold_fen", t.threshold_fen, 0, 100_000_000)
        v.range("coupon_template.valid_days", t.valid_days, 1, 365)
        v.range("coupon_template.per_member_limit", t.per_member_limit, 1, 100)
        v.range("coupon_template.total_quantity", t.total_quantity, 1, 100_000_000)
        v.done()
        category_id = parse_id(t.category, "categories", "coupon_template.category") if t.category else None
        fields = {"display_name": t.display_name, "kind": t.kind,
                  "amount_off_fen": t.amount_off_fen if t.kind == pb.COUPON_KIND_AMOUNT_OFF else 0,
                  "percent": t.percent if t.kind == pb.COUPON_KIND_PERCENT_OFF else 0, "threshold_fen": t.threshold_fen,
                  "category_id": category_id, "valid_days": t.valid_days, "per_member_limit": t.per_member_limit,
                  "total_quantity": t.total_quantity, "claimable": t.claimable, "welcome": t.welcome}

        async def run(s):
            return template_pb(await self.coupons.create_template(s, fields))
        return await self.idem.run(request, pb.CouponTemplate, run)

    async def ListCouponTemplates(self, request, context):
        size = page_size(request.page_size)
        rows, token = await self._read(lambda s: self.coupons.list_templates(s, size, request.page_token))
        return pb.ListCouponTemplatesResponse(coupon_templates=[template_pb(t) for t in rows], next_page_token=token)

    async def ClaimCoupon(self, request, context):
        member_id = member_scope(request.parent, "parent")
        tid = parse_id(request.coupon_template, "couponTemplates", "coupon_template")

        async def run(s):
            return coupon_pb(await self.coupons.issue(s, tid, member_id, "claim", claim=True))
        return await self.idem.run(request, pb.Coupon, run)

    async def IssueCoupons(self, request, context):
        tid = parse_id(request.coupon_template, "couponTemplates", "coupon_template")
        v = Validator()
        v.check(1 <= len(request.members) <= 1000, "members", "must list 1 to 1000 members")
        v.done()
        ids = [parse_id(m, "members", f"members[{i}]") for i, m in enumerate(request.members)]

        async def run(s):
            issued, skipped = await self.coupons.issue_many(s, tid, ids, "staff")
            return pb.IssueCouponsResponse(issued_count=issued, skipped_members=[f"members/{m}" for m in skipped])
        return await self.idem.run(request, pb.IssueCouponsResponse, run)

    async def IssueCoupon(self, request, context):
        member_id = parse_id(request.member, "members", "member")
        tid = parse_id(request.coupon_template, "couponTemplates", "coupon_template")
        v = Validator()
        v.text("source", request.source, max_len=16, required=True)
        v.done()

        async def run(s):
            return coupon_pb(await self.coupons.issue(s, tid, member_id, request.source))
        return await self.idem.run(request, pb.Coupon, run, required=True)

    async def ListCoupons(self, request, context):
        member_id = member_scope(request.parent, "parent")
        size = page_size(request.page_size)
        rows, token = await self._read(lambda s: self.coupons.list_of(s, member_id, size, request.page_token))
        return pb.ListCouponsResponse(coupons=[coupon_pb(c) for c in rows], next_page_token=token)

    async def CreateCouponCampaign(self, request, context):
        c = request.coupon_campaign
        tid = parse_id(c.coupon_template, "couponTemplates", "coupon_campaign.coupon_template")
        segment = c.segment.removeprefix("segments/")
        version, count = await self.campaigns.resolve(segment, c.segment_version)
        now = utcnow()

        async def run(s):
            return campaign_pb(await self.campaigns.create(s, tid, segment, version, count, now))
        return await self.idem.run(request, pb.CouponCampaign, run)

    async def GetCouponCampaign(self, request, context):
        cid = parse_id(request.name, "couponCampaigns", "name")
        return campaign_pb(await self._read(lambda s: self.campaigns.campaign(s, cid)))

    async def ListCouponCampaigns(self, request, context):
        size = page_size(request.page_size)
        rows, token = await self._read(lambda s: self.campaigns.list_campaigns(s, size, request.page_token))
        return pb.ListCouponCampaignsResponse(coupon_campaigns=[campaign_pb(c) for c in rows], next_page_token=token)
