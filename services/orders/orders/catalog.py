"""Catalog: categories, products and their SKUs (prices and stock)."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from mallkit.db import is_duplicate_key, utcnow
from mallkit.errors import AlreadyExists, NotFound
from mallkit.pagination import PageTokens
from mallkit.queries import get_or_not_found, keyset_page
from mallkit.readcache import ReadCache

from . import errors as reasons
from .models import ACTIVE, Category, Product, Sku


async def flush_unique(s: AsyncSession, field: str) -> None:
    """Flush; a duplicate unique key is ALREADY_EXISTS ``NAME_TAKEN`` on ``field``."""
    try:
        await s.flush()
    except IntegrityError as exc:
        if is_duplicate_key(exc):
            raise AlreadyExists(f"{field} is already taken", reason=reasons.NAME_TAKEN, metadata={"field": field},
                                zh="名称已被使用") from None
        raise


class Catalog:
    def __init__(self, *, pages: PageTokens, product_cache: ReadCache | None = None):
        self.pages = pages
        #: the members' view of a product (GetProduct), by product id; its SKUs as aliases ("sku", id)
        self.product_cache = product_cache if product_cache is not None else ReadCache("product", ttl=0)

    async def category(self, s: AsyncSession, category_id: int, field: str = "category") -> Category:
        return await get_or_not_found(s, Category, category_id, lambda: NotFound(
            "category not found", reason=reasons.CATEGORY_NOT_FOUND, resource=("category", f"categories/{category_id}"),
            metadata={"field": field}, zh="分类不存在"))

    async def create_category(self, s: AsyncSession, display_name: str) -> Category:
        c = Category(display_name=display_name, create_time=utcnow())
        s.add(c)
        await flush_unique(s, "category.display_name")
        return c

    async def list_categories(self, s: AsyncSession, size: int, page_token: str) -> tuple[list[Category], str]:
        return await keyset_page(s, select(Category), key=Category.id, tokens=self.pages, page_size=size,
                                 page_token=page_token)

    async def create_product(self, s: AsyncSession, fields: dict, skus: list[dict]) -> tuple[Product, list[Sku]]:
        await self.category(s, fields["category_id"], "product.category")
        now = utcnow()
        p = Product(**fields, create_time=now, update_time=now)
        s.add(p)
        await s.flush()
        rows = [Sku(product_id=p.id, create_time=now, **k) for k in skus]
        s.add_all(rows)
        await s.flush()
        return p, rows

    async def product(self, s: AsyncSession, product_id: int, *, active_only: bool = False) -> tuple[Product, list[Sku]]:
        p = await s.get(Product, product_id)
        if p is None or (active_only and p.status != ACTIVE):
            raise NotFound("product not found", reason=reasons.PRODUCT_NOT_FOUND,
                           resource=("product", f"products/{product_id}"), zh="商品不存在")
        return p, await self.skus_of(s, [p.id])

    async def skus_of(self, s: AsyncSession, product_ids: list[int]) -> list[Sku]:
        if not product_ids:
            return []
        return list((await s.execute(select(Sku).where(Sku.product_id.in_(product_ids)).order_by(Sku.id))).scalars())

    async def list_products(self, s: AsyncSession, *, size: int, page_token: str, category_id: int | None,
                            status: int | None) -> tuple[list[tuple[Product, list[Sku]]], str]:
        """Newest first, each with its SKUs; the token is bound to the filters."""
        q = select(Product)
        if category_id is not None:
            q = q.where(Product.category_id == category_id)
        if status:
            q = q.where(Product.status == status)
        rows, token = await keyset_page(s, q, key=Product.id.desc(), tokens=self.pages, page_size=size,
                                        page_token=page_token, filters=[category_id, status])
        skus = await self.skus_of(s, [p.id for p in rows])
        return [(p, [k for k in skus if k.product_id == p.id]) for p in rows], token

    async def update_product(self, s: AsyncSession, product_id: int, changes: dict) -> tuple[Product, list[Sku]]:
        p, skus = await self.product(s, product_id)
        for k, v in changes.items():
            setattr(p, k, v)
        p.update_time = utcnow()
        await s.flush()
        return p, skus

    async def sku(self, s: AsyncSession, product_id: int, sku_id: int, field: str = "sku") -> Sku:
        k = await s.get(Sku, sku_id)
        if k is None or k.product_id != product_id:
            raise NotFound("sku not found", reason=reasons.SKU_NOT_FOUND, metadata={"field": field},
                           resource=("sku", f"products/{product_id}/skus/{sku_id}"), zh="商品规格不存在")
        return k

    async def update_sku(self, s: AsyncSession, product_id: int, sku_id: int, price_fen: int, add_stock: int) -> Sku:
        k = await self.sku(s, product_id, sku_id, "name")
        values: dict = {}
        if price_fen:
            values["price_fen"] = price_fen
        if add_stock:
            values["stock"] = Sku.stock + add_stock
        if values:
            await s.execute(update(Sku).where(Sku.id == sku_id).values(**values))
            await s.refresh(k)
        return k

    async def product_of_sku(self, s: AsyncSession, sku_id: int) -> tuple[Product, Sku]:
        """The SKU and its product (for order lines of a deal or sale on that SKU)."""
        k = await s.get(Sku, sku_id)
        p = await s.get(Product, k.product_id) if k else None
        assert k is not None and p is not None
        return p, k
