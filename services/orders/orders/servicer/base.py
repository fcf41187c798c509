"""What every part of the orders servicer shares: the sub-domains, sessions, idempotency and name helpers."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mallkit.auth import current_principal, member_scope, principal
from mallkit.errors import InvalidArgument
from mallkit.idempotency import Idempotency
from mallkit.names import parse_id

from ..addresses import Addresses
from ..bargain import Bargains
from ..campaigns import CouponCampaigns
from ..cart import Cart
from ..catalog import Catalog
from ..checkout import Checkout
from ..coupons import Coupons
from ..flash_sale import FlashSales
from ..group_buy import GroupBuying
from ..lifecycle import Lifecycle
from ..members_client import MemberReads
from ..payment import Payment
from ..reviews import Reviews


class ServicerBase:
    sessions: async_sessionmaker[AsyncSession]
    idem: Idempotency
    catalog: Catalog
    cart: Cart
    addresses: Addresses
    coupons: Coupons
    campaigns: CouponCampaigns
    checkout: Checkout
    lifecycle: Lifecycle
    payment: Payment
    flash_sales: FlashSales
    group_buying: GroupBuying
    bargains: Bargains
    reviews: Reviews
    members: MemberReads

    async def _read(self, fn):
        """Run a read-only use case in a session of its own."""
        async with self.sessions() as s:
            return await fn(s)

    async def _order_pb(self, s: AsyncSession, order_id: int):
        from .convert import order_pb

        return order_pb(*await self.lifecycle.with_items(s, order_id))

    @staticmethod
    def _is_staff() -> bool:
        p = current_principal.get()
        return bool(p and (p.is_staff or p.is_service))

    @staticmethod
    def _owner() -> int | None:
        """The member id to enforce ownership for, None for staff and services."""
        p = principal()
        return int(p.id) if p.is_member else None


def member_child(name: str, collection: str, field: str = "name") -> tuple[int, int]:
    """``members/{m|me}/<collection>/{id}`` -> (member id, id), ownership checked first."""
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "members" or parts[2] != collection:
        raise InvalidArgument.field(field, f"must look like members/me/{collection}/{{id}}")
    member_id = member_scope(f"members/{parts[1]}", field)
    return member_id, parse_id(f"{collection}/{parts[3]}", collection, field)


def optional_address(name: str) -> int | None:
    return member_child(name, "addresses", "address")[1] if name else None


def require_request_id(request) -> None:
    if not request.request_id:
        raise InvalidArgument.field("request_id", "is required for this method")
