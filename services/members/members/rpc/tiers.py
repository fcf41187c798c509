"""RPCs of tiers and growth."""

from __future__ import annotations

import re

from mall.members.v1 import members_service_pb2 as pb
from mallkit.auth import member_scope
from mallkit.names import parse_id
from mallkit.pagination import page_size
from mallkit.validation import Validator

from ..messages import (
    benefits_of,
    tier_change_pb,
    tier_pb,
    update_paths,
)
from .base import RpcBase


class TiersRpc(RpcBase):
    async def CreateTier(self, request, context):
        t, v = request.tier, Validator()
        v.text("tier.display_name", t.display_name, max_len=32, min_len=1)
        v.range("tier.growth_threshold", t.growth_threshold, 0, 10**12)
        benefits = benefits_of(v, t.benefits, "tier.benefits")
        v.done()

        async def use_case(s):
            row = await self.tiers.create_tier(
                s, {"display_name": t.display_name, "growth_threshold": t.growth_threshold, **benefits}
            )
            return tier_pb(row)

        return await self.idem.run(request, pb.Tier, use_case)

    async def ListTiers(self, request, context):
        size = page_size(request.page_size)
        async with self.sessions() as s:
            rows, token = await self.tiers.list_tiers(s, size, request.page_token)
        return pb.ListTiersResponse(tiers=[tier_pb(t) for t in rows], next_page_token=token)

    async def UpdateTier(self, request, context):
        t = request.tier
        tier_id = parse_id(t.name, "tiers", "tier.name")
        paths = update_paths(request.update_mask.paths, t, {"name", "create_time"},
                             {"display_name", "growth_threshold", "benefits"}, "Tier")
        v, changes = Validator(), {}
        if "display_name" in paths:
            v.text("tier.display_name", t.display_name, max_len=32, min_len=1)
            changes["display_name"] = t.display_name
        if "growth_threshold" in paths:
            v.range("tier.growth_threshold", t.growth_threshold, 0, 10**12)
            changes["growth_threshold"] = t.growth_threshold
        if "benefits" in paths:
            changes.update(benefits_of(v, t.benefits, "tier.benefits"))
        v.done()

        async def use_case(s):
            return tier_pb(await self.tiers.update_tier(s, tier_id, changes))

        return await self.idem.run(request, pb.Tier, use_case)

    async def AddGrowth(self, request, context):
        member_id = parse_id(request.member, "members", "member")
        v = Validator()
        v.range("amount", request.amount, 1, 100_000_000)
        v.pattern("source", request.source, re.compile(r"[a-z][a-z0-9_.]{0,31}"), "lowercase identifier, at most 32",
                  required=True)
        v.text("source_ref", request.source_ref, max_len=128)
        v.done()

        async def use_case(s):
            growth, tier_id, upgraded = await self.tiers.add_growth(s, member_id, request.amount, request.source,
                                                                    request.source_ref)
            return pb.AddGrowthResponse(growth_value=growth, tier=f"tiers/{tier_id}" if tier_id else "", upgraded=upgraded)

        return await self.idem.run(request, pb.AddGrowthResponse, use_case, required=True)

    async def ListTierChanges(self, request, context):
        member_id = member_scope(request.parent, "parent")
        size = page_size(request.page_size)
        async with self.sessions() as s:
            rows, token = await self.tiers.list_tier_changes(s, member_id, size, request.page_token)
        return pb.ListTierChangesResponse(tier_changes=[tier_change_pb(c) for c in rows], next_page_token=token)
