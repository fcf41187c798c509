"""Member 360 (会员全景): the member's own data joined with what the points and community services
know, each peer call under its own deadline; a peer that does not answer in time is named in
``missing`` and the rest is still returned."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from mall.community.v1 import community_service_pb2 as cpb
from mall.community.v1 import community_service_pb2_grpc as cpb_grpc
from mall.points.v1 import points_service_pb2 as ppb
from mall.points.v1 import points_service_pb2_grpc as ppb_grpc
from mallkit.clients import Peers

from .behaviour import Behaviour
from .models import Member, MemberPurchaseCategory, MemberPurchaseStats, MemberRfm, Tier, TierChange
from .portrait import Portrait
from .tags import Tags

log = logging.getLogger("members.view360")


@dataclass
class View:
    member: Member
    attributes: dict[str, str]
    tags: list
    tier: Tier | None
    tier_changes: list[TierChange]
    rfm: MemberRfm | None
    behaviour: list
    stats: MemberPurchaseStats | None
    categories: list[str]
    points: Any = None
    community: Any = None
    missing: list[str] = field(default_factory=list)


class Member360:
    def __init__(self, portrait: Portrait, tags: Tags, behaviour: Behaviour, peers: Peers | None,
                 timeout: float = 1.0):
        self.portrait = portrait
        self.tags = tags
        self.behaviour = behaviour
        self.peers = peers
        self.timeout = timeout

    async def local(self, s: AsyncSession, member_id: int) -> View:
        m = await self.portrait.member(s, member_id)
        attrs = await self.portrait.attributes_of(s, member_id)
        tags, _ = await self.tags.list_member_tags(s, member_id, 100, "")
        tier = await s.get(Tier, m.tier_id) if m.tier_id else None
        changes = list((await s.execute(select(TierChange).where(TierChange.member_id == member_id)
                                        .order_by(TierChange.id.desc()).limit(10))).scalars())
        cats = list((await s.execute(select(MemberPurchaseCategory.category)
                                     .where(MemberPurchaseCategory.member_id == member_id)
                                     .order_by(MemberPurchaseCategory.category))).scalars())
        return View(m, attrs, tags, tier, changes, await s.get(MemberRfm, member_id),
                    await self.behaviour.recent(s, member_id, 20), await s.get(MemberPurchaseStats, member_id), cats)

    async def _peer(self, name: str, call) -> Any:
        try:
            return await asyncio.wait_for(call(), self.timeout)
        except Exception as exc:  # down, slow or refusing: the answer says this part is missing
            log.warning("member 360: %s did not answer (%s)", name, type(exc).__name__)
            return None

    async def remote(self, member_id: int, view: View) -> None:
        if self.peers is None:
            view.missing += ["points", "community"]
            return
        name = f"members/{member_id}"
        points = ppb_grpc.PointsServiceStub(self.peers.channel("points"))
        community = cpb_grpc.CommunityServiceStub(self.peers.channel("community"))
        view.points, view.community = await asyncio.gather(
            self._peer("points", lambda: points.GetPointsAccount(
                ppb.GetPointsAccountRequest(name=f"{name}/pointsAccount"), timeout=self.timeout)),
            self._peer("community", lambda: community.GetMemberActivity(
                cpb.GetMemberActivityRequest(name=f"{name}/communityActivity"), timeout=self.timeout)))
        view.missing += [n for n, v in (("points", view.points), ("community", view.community)) if v is None]
