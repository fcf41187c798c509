"""What orders reads from the members service: the member's tier snapshot and payer identity.

One read per purchase: ``GetMember`` for the member's tier, with the tiers'
benefits (``ListTiers``) cached briefly. The snapshot gives the tier discount
used to price the order and the points multiplier stored on the order and
carried by ``order.paid``, so points never asks members again. Any error of the
members service is UNAVAILABLE ``MEMBER_UNAVAILABLE`` (the caller retries).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from mall.members.v1 import members_service_pb2 as mpb
from mall.members.v1 import members_service_pb2_grpc as mpb_grpc
from mallkit.errors import Unavailable

from . import errors as reasons


@dataclass(frozen=True)
class TierSnapshot:
    """The member's tier when the order is priced."""

    tier: str = ""  # "tiers/{tier}" or "" without a tier
    discount_percent: int = 100  # price paid in percent of list price, 50 to 100
    points_multiplier_percent: int = 100  # 100 = x1


@dataclass(frozen=True)
class _Benefits:
    discount_percent: int
    points_multiplier_percent: int


class MembersClient:
    def __init__(self, channel: Callable[[], grpc.aio.Channel], ttl: float = 30.0):
        self._channel = channel
        self.ttl = ttl
        self._tiers: dict[str, _Benefits] = {}
        self._loaded = 0.0

    def _stub(self) -> mpb_grpc.MembersServiceStub:
        return mpb_grpc.MembersServiceStub(self._channel())

    async def tier(self, member_id: int) -> TierSnapshot:
        stub = self._stub()
        try:
            m = await stub.GetMember(mpb.GetMemberRequest(name=f"members/{member_id}"))
            if not m.tier:
                return TierSnapshot()
            if m.tier not in self._tiers or time.monotonic() - self._loaded > self.ttl:
                tiers: dict[str, _Benefits] = {}
                token = ""
                while True:
                    page = await stub.ListTiers(mpb.ListTiersRequest(page_size=100, page_token=token))
                    tiers.update({t.name: _Benefits(t.benefits.discount_percent or 100,
                                                    t.benefits.points_multiplier_percent or 100) for t in page.tiers})
                    token = page.next_page_token
                    if not token:
                        break
                self._tiers, self._loaded = tiers, time.monotonic()
        except grpc.aio.AioRpcError as err:
            raise Unavailable("members service unavailable", reason=reasons.MEMBER_UNAVAILABLE,
                              metadata={"code": err.code().name}) from None
        b = self._tiers.get(m.tier, _Benefits(100, 100))
        return TierSnapshot(m.tier, max(50, min(100, b.discount_percent)), b.points_multiplier_percent)

    async def payer_openid(self, member_id: int) -> str:
        """The member's openid for WeChat Pay (members keeps identities; never sent to clients)."""
        try:
            identity = await self._stub().GetMemberIdentity(mpb.GetMemberIdentityRequest(member=f"members/{member_id}"))
        except grpc.aio.AioRpcError as err:
            raise Unavailable("members service unavailable", reason=reasons.MEMBER_UNAVAILABLE,
                              metadata={"code": err.code().name}) from None
        return identity.openid
