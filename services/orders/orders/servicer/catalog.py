"""Catalog RPCs: categories, products, SKUs."""

from __future__ import annotations

from mall.orders.v1 import orders_service_pb2 as pb
from mallkit.names import parse_id, parse_ids
from mallkit.pagination import page_size
from mallkit.validation import Validator

from ..models import ACTIVE
from .base import ServicerBase
from .convert import category_pb, product_pb, sku_pb

PRODUCT_FIELDS = {"display_name", "description", "status", "repurchase_cycle_days"}


def _validate_sku(v: Validator, field: str, k: pb.Sku) -> None:
    v.text(f"{field}.display_name", k.display_name, max_len=64, required=True)
    v.range(f"{field}.price_fen", k.price_fen, 1, 100_000_000)
    v.range(f"{field}.stock", k.stock, 0, 10_000_000)


class CatalogRpcs(ServicerBase):
    async def CreateCategory(self, request, context):
        v = Validator()
        v.text("category.display_name", request.category.display_name, max_len=32, required=True)
        v.done()

        async def run(s):
            return category_pb(await self.catalog.create_category(s, request.category.display_name))
        return await self.idem.run(request, pb.Category, run)

    async def ListCategories(self, request, context):
        size = page_size(request.page_size)
        rows, token = await self._read(lambda s: self.catalog.list_categories(s, size, request.page_token))
        return pb.ListCategoriesResponse(categories=[category_pb(c) for c in rows], next_page_token=token)

    async def CreateProduct(self, request, context):
        p = request.product
        v = Validator()
        v.text("product.display_name", p.display_name, max_len=64, required=True)
        v.text("product.description", p.description, max_len=1000)
        v.enum("product.status", p.status, pb.ProductStatus)
        v.range("product.repurchase_cycle_days", p.repurchase_cycle_days, 0, 3650)
        if v.check(1 <= len(p.skus) <= 20, "product.skus", "must hold 1 to 20 SKUs"):
            for i, k in enumerate(p.skus):
                _validate_sku(v, f"product.skus[{i}]", k)
        v.done()
        category_id = parse_id(p.category, "categories", "product.category")

        async def run(s):
            row, skus = await self.catalog.create_product(
                s, {"category_id": category_id, "display_name": p.display_name, "description": p.description,
                    "status": p.status or ACTIVE, "repurchase_cycle_days": p.repurchase_cycle_days},
                [{"display_name": k.display_name, "price_fen": k.price_fen, "stock": k.stock} for k in p.skus])
            return product_pb(row, skus)
        return await self.idem.run(request, pb.Product, run)

    async def GetProduct(self, request, context):
        pid = parse_id(request.name, "products", "name")
        if self._is_staff():  # every status, never from the cache
            return product_pb(*await self._read(lambda s: self.catalog.product(s, pid)))
        return await self.catalog.product_cache.get(pid, lambda: self._product_view(pid))

    async def _product_view(self, pid: int) -> pb.Product:
        row, skus = await self._read(lambda s: self.catalog.product(s, pid, active_only=True))
        for k in skus:  # a write of one of its SKUs (stock, price) drops the product
            self.catalog.product_cache.alias(("sku", k.id), pid)
        return product_pb(row, skus)

    async def ListProducts(self, request, context):
        v = Validator()
        v.enum("status", request.status, pb.ProductStatus)
        v.done()
        category_id = parse_id(request.category, "categories", "category") if request.category else None
        status = request.status if self._is_staff() else ACTIVE
        size = page_size(request.page_size)
        rows, token = await self._read(lambda s: self.catalog.list_products(
            s, size=size, page_token=request.page_token, category_id=category_id, status=status))
        return pb.ListProductsResponse(products=[product_pb(p, skus) for p, skus in rows], next_page_token=token)

    async def UpdateProduct(self, request, context):
        p = request.product
        pid = parse_id(p.name, "products", "product.name")
        paths = list(request.update_mask.paths) or [f for f in PRODUCT_FIELDS if f != "status" or p.status]
        v = Validator()
        for path in paths:
            v.check(path in PRODUCT_FIELDS, "update_mask", f"cannot update {path!r}")
        if "display_name" in paths:
            v.text("product.display_name", p.display_name, max_len=64, required=True)
        if "description" in paths:
            v.text("product.description", p.description, max_len=1000)
        if "status" in paths:
            v.enum("product.status", p.status, pb.ProductStatus, required=True)
        if "repurchase_cycle_days" in paths:
            v.range("product.repurchase_cycle_days", p.repurchase_cycle_days, 0, 3650)
        v.done()
        changes = {f: getattr(p, f) for f in paths if f in PRODUCT_FIELDS}

        async def run(s):
            return product_pb(*await self.catalog.update_product(s, pid, changes))
        return await self.idem.run(request, pb.Product, run)

    async def UpdateSku(self, request, context):
        pid, sid = parse_ids(request.name, "products/{}/skus/{}", "name")
        v = Validator()
        v.range("price_fen", request.price_fen, 0, 100_000_000)
        v.range("add_stock", request.add_stock, 0, 10_000_000)
        v.done()

        async def run(s):
            return sku_pb(await self.catalog.update_sku(s, pid, sid, request.price_fen, request.add_stock))
        return await self.idem.run(request, pb.Sku, run)
