"""Composition root: settings -> engine -> sub-domains -> servicer -> server.

Nothing is created at import time; tests build the app with their own
settings (database, ports, WeChat Pay simulator) and call ``start``/``stop``.
The sub-domains (``catalog``, ``cart``, ``addresses``, ``coupons``,
``checkout``, ``lifecycle``, ``payment``, ``flash_sales``, ``group_buying``,
``journey``) are built here with their explicit dependencies. Background work of
the process: the outbox relay and the scheduled jobs of ``jobs.py``; the events
consumed are in ``events.py``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from mall.events.v1 import events_pb2, events_pb2_grpc
from mall.orders.v1 import orders_service_pb2 as pb
from mall.orders.v1 import orders_service_pb2_grpc as pb_grpc
from mallkit import jobs as scheduling
from mallkit.auth import TokenCodec
from mallkit.clients import Peers
from mallkit.db import create_engine, ping, session_factory
from mallkit.idempotency import Idempotency
from mallkit.outbox import EventSink, GrpcEventDelivery, Outbox, OutboxRelay
from mallkit.pagination import PageTokens
from mallkit.server import ServiceApp, ServiceHost

from . import jobs
from .addresses import Addresses
from .cart import Cart
from .catalog import Catalog
from .checkout import Checkout
from .config import OrdersSettings
from .coupons import Coupons
from .errors import DOMAIN
from .events import HANDLERS
from .flash_sale import FlashSales
from .group_buy import GroupBuying
from .journey import Journey
from .lifecycle import Lifecycle
from .members_client import MembersClient
from .models import IdempotencyKeys, InboxEvents, OutboxEvents
from .payment import Payment
from .servicer import OrdersServicer
from .wechatpay import WechatPay

SERVICE_DIR = Path(__file__).resolve().parent.parent  # holds alembic.ini and migrations/


@dataclass
class OrdersApp(ServiceApp):
    settings: OrdersSettings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    host: ServiceHost
    relay: OutboxRelay
    pay: WechatPay
    peers: Peers
    members: MembersClient
    catalog: Catalog
    cart: Cart
    addresses: Addresses
    coupons: Coupons
    checkout: Checkout
    lifecycle: Lifecycle
    payment: Payment
    flash_sales: FlashSales
    group_buying: GroupBuying
    journey: Journey
    servicer: OrdersServicer
    owns_engine: bool = field(default=True)

    async def close(self) -> None:
        await self.pay.close()


def build(settings: OrdersSettings, engine: AsyncEngine | None = None) -> OrdersApp:
    owns_engine = engine is None
    engine = engine or create_engine(settings.database_url, pool_size=settings.db_pool_size)
    sessions = session_factory(engine)
    secret = settings.platform.token_secret.get_secret_value()
    codec = TokenCodec(secret)
    pages = PageTokens(secret)
    pay = WechatPay(
        base_url=settings.wechatpay_base_url, mchid=settings.wechatpay_mchid, appid=settings.wechatpay_appid,
        merchant_private_key=settings.wechatpay_merchant_private_key.get_secret_value(),
        merchant_serial=settings.wechatpay_merchant_serial, apiv3_key=settings.wechatpay_apiv3_key.get_secret_value(),
        platform_public_key=settings.wechatpay_platform_public_key, platform_serial=settings.wechatpay_platform_serial,
        notify_url=settings.wechatpay_notify_url, window_seconds=settings.wechatpay_window_seconds,
        timeout=settings.wechatpay_timeout_seconds,
    )
    outbox = Outbox(OutboxEvents, "orders", settings.event_routes)
    peers = Peers(settings.platform.addr_of, codec=codec, caller="orders", timeout=settings.platform.call_timeout_seconds)
    relay = OutboxRelay(sessions, OutboxEvents, GrpcEventDelivery(peers.channel, settings.platform.call_timeout_seconds),
                        max_backoff=settings.outbox_max_backoff_seconds)

    # --- sub-domains ---
    pay_timeout = timedelta(seconds=settings.pay_timeout_seconds)
    members = MembersClient(lambda: peers.channel("members"))
    catalog = Catalog(pages=pages)
    addresses = Addresses(pages=pages)
    cart = Cart(catalog=catalog, pages=pages)
    coupons = Coupons(catalog=catalog, pages=pages)
    checkout = Checkout(addresses=addresses, coupons=coupons, cart=cart, members=members, pay_timeout=pay_timeout)
    flash_sales = FlashSales(catalog=catalog, addresses=addresses, pay_timeout=pay_timeout)
    group_buying = GroupBuying(catalog=catalog, addresses=addresses, pay_timeout=pay_timeout)
    journey = Journey(sessions=sessions, members=lambda: peers.channel("members"),
                      template_ids=settings.reach_template_ids)
    lifecycle = Lifecycle(outbox=outbox, pages=pages, coupons=coupons, flash_sales=flash_sales,
                          group_buying=group_buying, journey=journey, after_sales=timedelta(days=settings.after_sales_days))
    payment = Payment(sessions=sessions, outbox=outbox, pay=pay, members=members, lifecycle=lifecycle,
                      group_buying=group_buying, journey=journey, care_after=timedelta(days=settings.care_after_days))
    servicer = OrdersServicer(sessions=sessions, idem=Idempotency(sessions, IdempotencyKeys), catalog=catalog, cart=cart,
                              addresses=addresses, coupons=coupons, checkout=checkout, lifecycle=lifecycle,
                              payment=payment, flash_sales=flash_sales, group_buying=group_buying)

    background = []
    if settings.relay_enabled:
        async def run_relay(stop):
            await relay.run(stop, settings.outbox_poll_seconds)
        background.append(run_relay)

    host = ServiceHost(
        service="orders",
        domain=DOMAIN,
        codec=codec,
        descriptors=[pb.DESCRIPTOR.services_by_name["OrdersService"],
                     events_pb2.DESCRIPTOR.services_by_name["EventSinkService"]],
        host=settings.host,
        port=settings.port,
        readiness=lambda: ping(engine),
        background=background,
        drain_seconds=settings.drain_seconds,
    )
    app = OrdersApp(settings, engine, sessions, host, relay, pay, peers, members, catalog, cart, addresses, coupons,
                    checkout, lifecycle, payment, flash_sales, group_buying, journey, servicer, owns_engine)
    host.add(pb_grpc.add_OrdersServiceServicer_to_server, servicer)
    handlers = {t: (p, functools.partial(h, app)) for t, (p, h) in HANDLERS.items()}
    host.add(events_pb2_grpc.add_EventSinkServiceServicer_to_server, EventSink(sessions, InboxEvents, handlers))
    if settings.jobs_enabled:
        host.background.append(scheduling.periodic("orders", settings.jobs_interval_seconds,
                                                   functools.partial(jobs.run_once, app)))
    return app
