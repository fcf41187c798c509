"""What orders reads from the members service: the member's tier snapshot and payer identity.

One read per purchase: ``GetMember`` for the member's tier, with the tiers'
benefits (``ListTiers``) cached briefly. The snapshot gives the tier discount
used to price the order and the points multiplier stored on the order and
carried by ``order.paid``, so points never asks members again. Any error of the
members service is UNAVAILABLE ``MEMBERS_UNAVAILABLE`` (the caller retries); an
unknown member is NOT_FOUND ``MEMBER_NOT_FOUND``.
"""

from __future__ import annotations

from dataclasses import dataclass

from mallkit.members import MembersClient


@dataclass(frozen=True)
class TierSnapshot:
    """The member's tier when the order is priced."""

    tier: str = ""  # "tiers/{tier}" or "" without a tier
    discount_percent: int = 100  # price paid in percent of list price, 50 to 100
    points_multiplier_percent: int = 100  # 100 = x1


class MemberReads:
    """The orders' reads of members, through the platform's one members client (one tier cache)."""

    def __init__(self, members: MembersClient):
        self.members = members

    async def tier(self, member_id: int) -> TierSnapshot:
        m, t = await self.members.member_tier(member_id)
        if t is None:
            return TierSnapshot()
        return TierSnapshot(m.tier, max(50, min(100, t.benefits.discount_percent or 100)),
                            t.benefits.points_multiplier_percent or 100)

    async def payer_openid(self, member_id: int) -> str:
        """The member's openid for WeChat Pay (members keeps identities; never sent to clients)."""
        return (await self.members.identity(member_id)).openid
