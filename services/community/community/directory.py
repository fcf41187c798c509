"""What the community service reads from the members service: a member's tier, the tiers, and
whether a staff account is an active guide (a group's owner).

Reads go through the platform's one members client (``mallkit.members``), whose
cache holds the tiers; a member's tier is read on every check.
"""

from __future__ import annotations

from dataclasses import dataclass

from mall.members.v1 import members_service_pb2 as mpb
from mallkit.errors import NotFound
from mallkit.members import MembersClient


@dataclass(frozen=True)
class TierInfo:
    name: str  # "tiers/3"
    display_name: str
    growth_threshold: int
    flags: frozenset[str]


class MembersDirectory:
    def __init__(self, members: MembersClient):
        self.members = members

    async def tier_of(self, member_id: int) -> str:
        """The member's tier name ("" when the member has none or is unknown)."""
        try:
            return (await self.members.member(member_id)).tier
        except NotFound:
            return ""

    async def tiers(self) -> dict[str, TierInfo]:
        return {name: TierInfo(t.name, t.display_name, t.growth_threshold, frozenset(t.benefits.flags))
                for name, t in (await self.members.tiers()).items()}

    async def in_segment(self, segment: str, member_id: int) -> bool:
        """Whether the member is in the latest snapshot of the segment key."""
        return await self.members.in_segment(f"segments/{segment}", member_id)

    async def snapshot(self, segment: str, version: int) -> tuple[int, int]:
        """(version, member count) of a snapshot of the segment key (0: the latest); NOT_FOUND otherwise."""
        _, snap, _ = await self.members.segment_page(f"segments/{segment}/snapshots/{version or 'latest'}", 1, "")
        return snap.version, snap.member_count

    async def is_active_guide(self, staff_id: int) -> bool:
        """Whether the staff account exists, is not disabled and has the guide role (a group's owner)."""
        st = await self.members.staff(staff_id)
        return st is not None and not st.disabled and st.role == mpb.STAFF_ROLE_GUIDE

    def forget_tiers(self) -> None:
        self.members.forget_tiers()
