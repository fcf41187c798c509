"""Composition root: the platform (mallkit.platform) -> sub-domains -> servicer -> server.

Nothing is created at import time; tests build the app with their own
settings (database, ports, WeChat Pay simulator) and call ``start``/``stop``.
The sub-domains (``catalog``, ``cart``, ``addresses``, ``coupons``, ``campaigns``,
``checkout``, ``lifecycle``, ``payment``, ``flash_sales``, ``group_buying``,
``bargains``, ``reviews``, ``journey``) are built here with their explicit dependencies. Background work of
the process (the outbox relay to NATS, the consumers of ``events.py`` and the
jobs of ``jobs.py``) is run by the platform's host.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from mall.orders.v1 import orders_service_pb2 as pb
from mall.orders.v1 import orders_service_pb2_grpc as pb_grpc
from mallkit.platform import Platform, ServiceApp, Servicer, Tables
from mallkit.wechatpay import WechatPay

from . import events, jobs
from .addresses import Addresses
from .bargain import Bargains
from .campaigns import CouponCampaigns
from .cart import Cart
from .catalog import Catalog
from .checkout import Checkout
from .config import OrdersSettings
from .coupons import Coupons
from .errors import DOMAIN
from .flash_sale import FlashSales
from .group_buy import GroupBuying
from .journey import Journey
from .lifecycle import Lifecycle
from .members_client import MemberReads
from .models import IdempotencyKeys, InboxEvents, OutboxEvents, Product, Sku
from .payment import Payment
from .reviews import Reviews
from .servicer import OrdersServicer

SERVICE_DIR = Path(__file__).resolve().parent.parent  # holds alembic.ini and migrations/
TABLES = Tables(outbox=OutboxEvents, inbox=InboxEvents, idempotency=IdempotencyKeys)


@dataclass
class OrdersApp(ServiceApp):
    platform: Platform
    pay: WechatPay
    members: MemberReads
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
    journey: Journey
    bargains: Bargains
    reviews: Reviews
    servicer: OrdersServicer

    async def close(self) -> None:
        await self.pay.close()


def wechat_pay(settings: OrdersSettings) -> WechatPay:
    return WechatPay(
        base_url=settings.wechatpay_base_url, mchid=settings.wechatpay_mchid, appid=settings.wechatpay_appid,
        merchant_private_key=settings.wechatpay_merchant_private_key.get_secret_value(),
        merchant_serial=settings.wechatpay_merchant_serial, apiv3_key=settings.wechatpay_apiv3_key.get_secret_value(),
        platform_public_key=settings.wechatpay_platform_public_key, platform_serial=settings.wechatpay_platform_serial,
        notify_url=settings.wechatpay_notify_url, window_seconds=settings.wechatpay_window_seconds,
        timeout=settings.wechatpay_timeout_seconds,
    )


def build(settings: OrdersSettings, engine: AsyncEngine | None = None) -> OrdersApp:
    platform = Platform.create("orders", settings, tables=TABLES, engine=engine)
    sessions, outbox, pages = platform.sessions, platform.outbox, platform.tokens
    pay = wechat_pay(settings)

    # --- sub-domains ---
    pay_timeout = timedelta(seconds=settings.pay_timeout_seconds)
    members = MemberReads(platform.members)
    # GetProduct for members (every product page) from memory; product and SKU writes drop it everywhere
    catalog = Catalog(pages=pages, product_cache=platform.read_cache(
        "product", keys=[Product.__table__.c.id, (Sku.__table__.c.id, "sku")], ttl=settings.catalog_cache_seconds))
    addresses = Addresses(pages=pages)
    cart = Cart(catalog=catalog, pages=pages)
    coupons = Coupons(catalog=catalog, pages=pages)
    campaigns = CouponCampaigns(sessions=sessions, members=platform.members, coupons=coupons, pages=pages,
                                page_size=settings.campaign_page_size,
                                lease=timedelta(seconds=settings.campaign_lease_seconds))
    checkout = Checkout(addresses=addresses, coupons=coupons, cart=cart, members=members, pay_timeout=pay_timeout)
    flash_sales = FlashSales(catalog=catalog, addresses=addresses, pay_timeout=pay_timeout,
                             soldout_ttl=settings.flash_soldout_ttl_seconds)
    group_buying = GroupBuying(catalog=catalog, addresses=addresses, pay_timeout=pay_timeout)
    bargains = Bargains(catalog=catalog, addresses=addresses, outbox=outbox, pay_timeout=pay_timeout)
    journey = Journey(sessions=sessions, members=platform.members, template_ids=settings.reach_template_ids)
    lifecycle = Lifecycle(outbox=outbox, pages=pages, coupons=coupons, flash_sales=flash_sales,
                          group_buying=group_buying, journey=journey, after_sales=timedelta(days=settings.after_sales_days),
                          bargains=bargains)
    reviews = Reviews(lifecycle=lifecycle, outbox=outbox, pages=pages)
    payment = Payment(sessions=sessions, outbox=outbox, pay=pay, members=members, lifecycle=lifecycle,
                      group_buying=group_buying, journey=journey, care_after=timedelta(days=settings.care_after_days))
    servicer = OrdersServicer(sessions=sessions, idem=platform.idempotency, catalog=catalog, cart=cart,
                              addresses=addresses, coupons=coupons, campaigns=campaigns, checkout=checkout, lifecycle=lifecycle,
                              payment=payment, flash_sales=flash_sales, group_buying=group_buying,
                              bargains=bargains, reviews=reviews, members=members)
    app = OrdersApp(platform, pay, members, catalog, cart, addresses, coupons, campaigns, checkout, lifecycle, payment,
                    flash_sales, group_buying, journey, bargains, reviews, servicer)
    host = platform.serve(app, domain=DOMAIN, handlers=events.HANDLERS, jobs=jobs.schedule(app),
                          servicers=[Servicer(pb.DESCRIPTOR.services_by_name["OrdersService"],
                                              pb_grpc.add_OrdersServiceServicer_to_server, servicer)])
    # A sold-out flash sale refuses from memory before the buyer's account is checked (no effect either way).
    host.precheck("/mall.orders.v1.OrdersService/BuyFlashSale", flash_sales.precheck)
    return app
