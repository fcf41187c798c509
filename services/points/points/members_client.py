"""What the points service reads from the members service, over gRPC with a service token.

Tier benefits (the points multiplier) are cached for ``tier_cache_seconds``;
a member's tier is read on every call (it changes with growth). Errors of the
members service become errors of ours: NOT_FOUND stays NOT_FOUND, anything
else is UNAVAILABLE (the caller, or the outbox relay, retries).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc

from mall.members.v1 import members_service_pb2 as mpb
from mall.members.v1 import members_service_pb2_grpc as mpb_grpc
from mallkit.errors import NotFound, Unavailable

from . import errors as reasons


class MembersClient:
    def __init__(self, channel: Callable[[], grpc.aio.Channel], tier_cache_seconds: float = 60.0):
        self._channel = channel
        self._cache_seconds = tier_cache_seconds
        self._tiers: dict[str, int] = {}
        self._tiers_time = 0.0
        self._known: set[int] = set()  # members seen to exist (members are never deleted)

    def _stub(self) -> mpb_grpc.MembersServiceStub:
        return mpb_grpc.MembersServiceStub(self._channel())

    async def member(self, member_id: int) -> mpb.Member:
        try:
            return await self._stub().GetMember(mpb.GetMemberRequest(name=f"members/{member_id}"))
        except grpc.aio.AioRpcError as err:
            raise _translate(err, member_id) from None

    async def multipliers(self) -> dict[str, int]:
        """Tier name -> points multiplier percent."""
        if self._tiers and time.monotonic() - self._tiers_time < self._cache_seconds:
            return self._tiers
        out: dict[str, int] = {}
        token = ""
        try:
            while True:
                page = await self._stub().ListTiers(mpb.ListTiersRequest(page_size=100, page_token=token))
                for t in page.tiers:
                    out[t.name] = t.benefits.points_multiplier_percent or 100
                token = page.next_page_token
                if not token:
                    break
        except grpc.aio.AioRpcError as err:
            raise _translate(err, 0) from None
        self._tiers, self._tiers_time = out, time.monotonic()
        return out

    async def tier_and_multiplier(self, member_id: int) -> tuple[int | None, int]:
        """The member's tier id (None without one) and its points multiplier percent."""
        m = await self.member(member_id)
        if not m.tier:
            return None, 100
        mult = (await self.multipliers()).get(m.tier)
        if mult is None:  # a tier created after the cache was filled
            self._tiers_time = 0.0
            mult = (await self.multipliers()).get(m.tier, 100)
        return int(m.tier.rsplit("/", 1)[1]), mult

    async def ensure_exists(self, member_id: int) -> None:
        """NOT_FOUND unless the members service knows the member (remembered once seen)."""
        if member_id in self._known:
            return
        await self.member(member_id)
        if len(self._known) > 100_000:
            self._known.clear()
        self._known.add(member_id)

    async def tier_of(self, member_id: int) -> int | None:
        m = await self.member(member_id)
        return int(m.tier.rsplit("/", 1)[1]) if m.tier else None

    async def send_reach(self, member_id: int, template_id: str, data: dict[str, str], page: str, purpose: str,
                         request_id: str) -> mpb.Touch:
        return await self._stub().SendReach(mpb.SendReachRequest(
            member=f"members/{member_id}", template_id=template_id, data=data, page=page, purpose=purpose,
            request_id=request_id))


def profile_complete(m: mpb.Member) -> bool:
    """The profile task's rule: nickname, gender, birthday and city filled in."""
    return bool(m.nickname and m.gender and m.birthday.year and m.region.city)


def _translate(err: grpc.aio.AioRpcError, member_id: int) -> Exception:
    if err.code() == grpc.StatusCode.NOT_FOUND and member_id:
        return NotFound("member not found", reason=reasons.MEMBER_NOT_FOUND,
                        resource=("member", f"members/{member_id}"), zh="会员不存在")
    return Unavailable("members service unavailable", reason=reasons.MEMBERS_UNAVAILABLE,
                       metadata={"code": err.code().name})
