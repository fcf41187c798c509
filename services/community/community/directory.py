"""What the community service reads from the members service: a member's tier and the tiers.

Calls go over a service-token channel from :class:`mallkit.clients.Peers`
(deadline, retries on UNAVAILABLE only). The tier list changes rarely and is
cached for a short time; a member's tier is read on every check.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import grpc

from mall.members.v1 import members_service_pb2 as mpb
from mall.members.v1 import members_service_pb2_grpc as mpb_grpc
from mallkit.clients import Peers
from mallkit.errors import Unavailable

from . import errors as reasons


@dataclass(frozen=True)
class TierInfo:
    name: str  # "tiers/3"
    display_name: str
    growth_threshold: int
    flags: frozenset[str]


class MembersDirectory:
    def __init__(self, peers: Peers, cache_seconds: float = 30.0):
        self.peers = peers
        self.cache_seconds = cache_seconds
        self._tiers: tuple[float, dict[str, TierInfo]] | None = None

    def _stub(self) -> mpb_grpc.MembersServiceStub:
        return mpb_grpc.MembersServiceStub(self.peers.channel("members"))

    async def tier_of(self, member_id: int) -> str:
        """The member's tier name ("" when the member has none or is unknown)."""
        try:
            m = await self._stub().GetMember(mpb.GetMemberRequest(name=f"members/{member_id}"))
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return ""
            raise Unavailable("members service unavailable", reason=reasons.MEMBERS_UNAVAILABLE,
                              zh="会员服务暂不可用,请稍后再试") from None
        return m.tier

    async def tiers(self) -> dict[str, TierInfo]:
        cached = self._tiers
        if cached and time.monotonic() - cached[0] < self.cache_seconds:
            return cached[1]
        out: dict[str, TierInfo] = {}
        token = ""
        try:
            while True:
                resp = await self._stub().ListTiers(mpb.ListTiersRequest(page_size=100, page_token=token))
                for t in resp.tiers:
                    out[t.name] = TierInfo(t.name, t.display_name, t.growth_threshold, frozenset(t.benefits.flags))
                token = resp.next_page_token
                if not token:
                    break
        except grpc.aio.AioRpcError:
            raise Unavailable("members service unavailable", reason=reasons.MEMBERS_UNAVAILABLE,
                              zh="会员服务暂不可用,请稍后再试") from None
        self._tiers = (time.monotonic(), out)
        return out

    def forget_tiers(self) -> None:
        self._tiers = None
