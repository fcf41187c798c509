"""Demo data for `make run` (idempotent): categories, products with SKUs, coupons, a flash sale."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from mallkit.db import session_factory, utcnow
from mallkit.pagination import PageTokens

from .addresses import Addresses
from .catalog import Catalog
from .config import OrdersSettings
from .coupons import Coupons
from .flash_sale import FlashSales
from .models import ACTIVE, AMOUNT_OFF, PERCENT_OFF, Category


async def seed_demo(engine: AsyncEngine, settings: OrdersSettings) -> None:
    pages = PageTokens(settings.platform.token_secret.get_secret_value())
    catalog = Catalog(pages=pages)
    coupons = Coupons(catalog=catalog, pages=pages)
    flash_sales = FlashSales(catalog=catalog, addresses=Addresses(pages=pages),
                             pay_timeout=timedelta(seconds=settings.pay_timeout_seconds))
    async with session_factory(engine)() as s, s.begin():
        if (await s.execute(select(Category.id).limit(1))).first():
            print("orders: demo data already present")
            return
        milk = await catalog.create_category(s, "奶粉")
        diapers = await catalog.create_category(s, "纸尿裤")
        p1, skus1 = await catalog.create_product(
            s, {"category_id": milk.id, "display_name": "有机婴儿配方奶粉 1段", "description": "0-6 个月",
                "status": ACTIVE, "repurchase_cycle_days": 20},
            [{"display_name": "800g 罐装", "price_fen": 32800, "stock": 500},
             {"display_name": "800g x 3 罐", "price_fen": 92800, "stock": 200}])
        await catalog.create_product(
            s, {"category_id": diapers.id, "display_name": "超薄纸尿裤 M 码", "description": "6-11kg",
                "status": ACTIVE, "repurchase_cycle_days": 15},
            [{"display_name": "M 58 片", "price_fen": 12900, "stock": 1000}])
        await coupons.create_template(s, {
            "display_name": "满 300 减 30", "kind": AMOUNT_OFF, "amount_off_fen": 3000, "percent": 0,
            "threshold_fen": 30000, "category_id": None, "valid_days": 30, "per_member_limit": 1,
            "total_quantity": 10000, "claimable": True, "welcome": True})
        await coupons.create_template(s, {
            "display_name": "奶粉 95 折", "kind": PERCENT_OFF, "amount_off_fen": 0, "percent": 95, "threshold_fen": 0,
            "category_id": milk.id, "valid_days": 14, "per_member_limit": 2, "total_quantity": 1000,
            "claimable": True, "welcome": False})
        # couponTemplates/3: what the points mall's "10元无门槛券" issues (points seed).
        await coupons.create_template(s, {
            "display_name": "10元无门槛券", "kind": AMOUNT_OFF, "amount_off_fen": 1000, "percent": 0,
            "threshold_fen": 0, "category_id": None, "valid_days": 30, "per_member_limit": 2,
            "total_quantity": 1000, "claimable": False, "welcome": False})
        # couponTemplates/4: what the community's "群专享:满 199 减 30" drop hands out (community seed).
        await coupons.create_template(s, {
            "display_name": "群专享 满 199 减 30", "kind": AMOUNT_OFF, "amount_off_fen": 3000, "percent": 0,
            "threshold_fen": 19900, "category_id": None, "valid_days": 14, "per_member_limit": 1,
            "total_quantity": 100, "claimable": False, "welcome": False})
        now = utcnow()
        await flash_sales.create(s, p1.id, skus1[0].id, {
            "price_fen": 19900, "total_stock": 100, "per_member_limit": 1, "start_time": now,
            "end_time": now + timedelta(days=7)})
    print("orders: demo data created (2 categories, 2 products, 4 coupon templates, flashSales/1)")
