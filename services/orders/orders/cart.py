"""Cart: a member's cart lines (one per SKU, at most 99 units)."""

from __future__ import annotations

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mallkit.db import insert_ignore, utcnow
from mallkit.errors import InvalidArgument, NotFound
from mallkit.pagination import PageTokens
from mallkit.queries import keyset_page

from . import errors as reasons
from .catalog import Catalog
from .models import CartItem, Sku


class Cart:
    def __init__(self, *, catalog: Catalog, pages: PageTokens):
        self.catalog = catalog
        self.pages = pages

    async def add_item(self, s: AsyncSession, member_id: int, product_id: int, sku_id: int, quantity: int) -> CartItem:
        await self.catalog.sku(s, product_id, sku_id)
        await insert_ignore(s, CartItem.__table__, [{"member_id": member_id, "sku_id": sku_id, "quantity": 0,
                                                      "create_time": utcnow()}])
        done = await s.execute(update(CartItem).where(CartItem.member_id == member_id, CartItem.sku_id == sku_id,
                                                      CartItem.quantity + quantity <= 99)
                               .values(quantity=CartItem.quantity + quantity))
        if done.rowcount != 1:  # type: ignore[attr-defined]
            raise InvalidArgument.field("quantity", "a cart line holds at most 99 units")
        return (await s.execute(select(CartItem).where(CartItem.member_id == member_id, CartItem.sku_id == sku_id))).scalar_one()

    async def list_items(self, s: AsyncSession, member_id: int, size: int,
                         page_token: str) -> tuple[list[tuple[CartItem, int]], str]:
        """(cart line, its product id) in the order added."""
        q = select(CartItem, Sku.product_id).join(Sku, Sku.id == CartItem.sku_id).where(CartItem.member_id == member_id)
        rows, token = await keyset_page(s, q, key=CartItem.id, tokens=self.pages, page_size=size,
                                        page_token=page_token, filters=[member_id])
        return [(c, pid) for c, pid in rows], token

    async def delete_item(self, s: AsyncSession, member_id: int, item_id: int) -> None:
        done = await s.execute(delete(CartItem).where(CartItem.id == item_id, CartItem.member_id == member_id))
        if done.rowcount != 1:  # type: ignore[attr-defined]
            raise NotFound("cart item not found", reason=reasons.CART_ITEM_NOT_FOUND, zh="购物车商品不存在")

    async def remove_skus(self, s: AsyncSession, member_id: int, sku_ids: list[int]) -> None:
        """The lines of these SKUs leave the cart (they were ordered)."""
        await s.execute(delete(CartItem).where(CartItem.member_id == member_id, CartItem.sku_id.in_(sku_ids)))
