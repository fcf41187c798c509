"""The one client every service uses to read the members service, with one cache.

Members own the member: the other services read a member, its tier and the tier
benefits from here, over a service-token channel (deadline, retries on
UNAVAILABLE only). Tiers change rarely and are cached for ``tier_cache_seconds``
(a tier unknown to the cache reloads it once); a member's tier is read on every
call, since it changes with growth. Errors of the members service become
platform errors: NOT_FOUND stays NOT_FOUND (reason ``MEMBER_NOT_FOUND``),
anything else is UNAVAILABLE (``MEMBERS_UNAVAILABLE``), so callers retry.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc

from mall.members.v1 import members_service_pb2 as mpb
from mall.members.v1 import members_service_pb2_grpc as mpb_grpc
from mallkit.errors import NotFound, Unavailable

MEMBER_NOT_FOUND = "MEMBER_NOT_FOUND"
MEMBERS_UNAVAILABLE = "MEMBERS_UNAVAILABLE"
SEGMENT_SNAPSHOT_NOT_FOUND = "SEGMENT_SNAPSHOT_NOT_FOUND"


class MembersClient:
    def __init__(self, channel: Callable[[], grpc.aio.Channel], tier_cache_seconds: float = 60.0):
        self._channel = channel
        self.tier_cache_seconds = tier_cache_seconds
        self._tiers: dict[str, mpb.Tier] = {}
        self._tiers_time = 0.0
        self._known: set[int] = set()  # members seen to exist (members are never deleted)
        self._stub: tuple[grpc.aio.Channel, mpb_grpc.MembersServiceStub] | None = None

    def stub(self) -> mpb_grpc.MembersServiceStub:
        """The stub of the current channel (built once per channel: it is a dozen multicallables)."""
        channel = self._channel()
        if self._stub is None or self._stub[0] is not channel:
            self._stub = (channel, mpb_grpc.MembersServiceStub(channel))
        return self._stub[1]

    async def member(self, member_id: int) -> mpb.Member:
        try:
            m = await self.stub().GetMember(mpb.GetMemberRequest(name=f"members/{member_id}"))
        except grpc.aio.AioRpcError as err:
            raise translate(err, member_id) from None
        self._remember(member_id)
        return m

    async def tiers(self) -> dict[str, mpb.Tier]:
        """Tier name ("tiers/3") -> tier with its benefits (cached)."""
        if self._tiers and time.monotonic() - self._tiers_time < self.tier_cache_seconds:
            return self._tiers
        out: dict[str, mpb.Tier] = {}
        token = ""
        try:
            while True:
                page = await self.stub().ListTiers(mpb.ListTiersRequest(page_size=100, page_token=token))
                out.update({t.name: t for t in page.tiers})
                token = page.next_page_token
                if not token:
                    break
        except grpc.aio.AioRpcError as err:
            raise translate(err, 0) from None
        self._tiers, self._tiers_time = out, time.monotonic()
        return out

    async def tier(self, name: str) -> mpb.Tier | None:
        """One tier by name, reloading the cache once for a tier created since."""
        if not name:
            return None
        tier = (await self.tiers()).get(name)
        if tier is None:
            self.forget_tiers()
            tier = (await self.tiers()).get(name)
        return tier

    async def member_tier(self, member_id: int) -> tuple[mpb.Member, mpb.Tier | None]:
        """The member and its tier (None without one): one member read."""
        m = await self.member(member_id)
        return m, await self.tier(m.tier)

    def forget_tiers(self) -> None:
        self._tiers_time = 0.0

    async def ensure_exists(self, member_id: int) -> None:
        """NOT_FOUND unless the members service knows the member (remembered once seen)."""
        if member_id not in self._known:
            await self.member(member_id)

    def _remember(self, member_id: int) -> None:
        if len(self._known) > 100_000:
            self._known.clear()
        self._known.add(member_id)

    async def identity(self, member_id: int) -> mpb.MemberIdentity:
        """The member's WeChat identity (openid) for payments; never sent to clients."""
        try:
            return await self.stub().GetMemberIdentity(mpb.GetMemberIdentityRequest(member=f"members/{member_id}"))
        except grpc.aio.AioRpcError as err:
            raise translate(err, member_id) from None

    async def active_principals(self, subjects: list[str], deadline: float = 5.0) -> set[str]:
        """Which token subjects ("members/{id}", "staff/{id}") still name an active account
        (``CheckPrincipals``, for :mod:`mallkit.principals`); UNAVAILABLE when members cannot say."""
        try:
            resp = await self.stub().CheckPrincipals(mpb.CheckPrincipalsRequest(principals=subjects), timeout=deadline)
        except grpc.aio.AioRpcError as err:
            raise Unavailable("cannot check the caller's account now, retry", reason="PRINCIPALS_UNAVAILABLE",
                              metadata={"code": err.code().name}) from None
        return set(resp.active_principals)

    async def staff(self, staff_id: int) -> mpb.Staff | None:
        """A staff account (role, store, disabled), or None when there is none."""
        try:
            return await self.stub().GetStaff(mpb.GetStaffRequest(name=f"staff/{staff_id}"))
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise translate(err, 0) from None

    async def send_reach(self, member_id: int, template_id: str, data: dict[str, str], page: str, purpose: str,
                         request_id: str) -> mpb.Touch:
        """A subscribe message through members' reach (consent and caps apply there); idempotent on request_id."""
        return await self.stub().SendReach(mpb.SendReachRequest(
            member=f"members/{member_id}", template_id=template_id, data=data, page=page, purpose=purpose,
            request_id=request_id))

    async def segment_page(self, snapshot: str, page_size: int, page_token: str,
                           deadline: float = 10.0) -> tuple[list[int], mpb.SegmentSnapshot, str]:
        """One page of a segment snapshot ("segments/{s}/snapshots/{version|latest}"): (member ids in id
        order, the snapshot, next page token). NOT_FOUND ``SEGMENT_SNAPSHOT_NOT_FOUND`` on field ``segment``."""
        try:
            page = await self.stub().ListSegmentMembers(mpb.ListSegmentMembersRequest(
                parent=snapshot, page_size=page_size, page_token=page_token), timeout=deadline)
        except grpc.aio.AioRpcError as err:
            raise _segment_error(err, snapshot) from None
        return [int(m.rsplit("/", 1)[1]) for m in page.members], page.snapshot, page.next_page_token

    async def in_segment(self, segment: str, member_id: int, deadline: float = 5.0) -> bool:
        """Whether the member is in the latest snapshot of ``segment`` ("segments/{s}")."""
        try:
            resp = await self.stub().CheckSegmentMembership(mpb.CheckSegmentMembershipRequest(
                segment=segment, member=f"members/{member_id}"), timeout=deadline)
        except grpc.aio.AioRpcError as err:
            raise _segment_error(err, segment) from None
        return resp.member_in_segment


def _segment_error(err: grpc.aio.AioRpcError, snapshot: str) -> Exception:
    if err.code() == grpc.StatusCode.NOT_FOUND:
        return NotFound("segment snapshot not found", reason=SEGMENT_SNAPSHOT_NOT_FOUND,
                        metadata={"field": "segment", "snapshot": snapshot}, zh="分群快照不存在")
    return translate(err, 0)


def translate(err: grpc.aio.AioRpcError, member_id: int) -> Exception:
    if err.code() == grpc.StatusCode.NOT_FOUND and member_id:
        return NotFound("member not found", reason=MEMBER_NOT_FOUND, resource=("member", f"members/{member_id}"),
                        zh="会员不存在")
    return Unavailable("members service unavailable", reason=MEMBERS_UNAVAILABLE, metadata={"code": err.code().name},
                       zh="会员服务暂不可用,请稍后再试")
