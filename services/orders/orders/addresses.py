"""Addresses: a member's shipping addresses (soft-deleted; orders keep a snapshot)."""

from __future__ import annotations

import json

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mallkit.db import utcnow
from mallkit.errors import NotFound
from mallkit.pagination import PageTokens
from mallkit.queries import keyset_page

from . import errors as reasons
from .models import Address


def snapshot(a: Address | None) -> str:
    """The JSON copy of an address an order keeps ("" without one)."""
    if a is None:
        return ""
    return json.dumps({"recipient": a.recipient, "phone": a.phone, "province": a.province, "city": a.city,
                       "district": a.district, "detail": a.detail}, ensure_ascii=False)


class Addresses:
    def __init__(self, *, pages: PageTokens):
        self.pages = pages

    async def create(self, s: AsyncSession, member_id: int, fields: dict) -> Address:
        a = Address(member_id=member_id, create_time=utcnow(), deleted=False, **fields)
        s.add(a)
        await s.flush()
        return a

    async def get(self, s: AsyncSession, member_id: int, address_id: int, field: str = "address") -> Address:
        a = await s.get(Address, address_id)
        if a is None or a.member_id != member_id or a.deleted:
            raise NotFound("address not found", reason=reasons.ADDRESS_NOT_FOUND, metadata={"field": field},
                           zh="收货地址不存在")
        return a

    async def optional(self, s: AsyncSession, member_id: int, address_id: int | None) -> Address | None:
        return await self.get(s, member_id, address_id) if address_id else None

    async def list_of(self, s: AsyncSession, member_id: int, size: int, page_token: str) -> tuple[list[Address], str]:
        q = select(Address).where(Address.member_id == member_id, Address.deleted.is_(False))
        return await keyset_page(s, q, key=Address.id, tokens=self.pages, page_size=size, page_token=page_token,
                                 filters=[member_id])

    async def delete(self, s: AsyncSession, member_id: int, address_id: int) -> None:
        await self.get(s, member_id, address_id, "name")
        await s.execute(update(Address).where(Address.id == address_id).values(deleted=True))
