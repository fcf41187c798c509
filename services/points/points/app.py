"""Composition root: the platform (mallkit.platform) -> sub-domains -> servicer -> server.

Nothing is created at import time; tests build the app with their own
settings (database, ports, peers) and call ``start``/``stop``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from mall.points.v1 import points_service_pb2 as pb
from mall.points.v1 import points_service_pb2_grpc as pb_grpc
from mallkit.events import Outbox
from mallkit.members import MembersClient
from mallkit.pagination import PageTokens
from mallkit.platform import Platform, ServiceApp, Servicer, Tables
from mallkit.wechatpay import WechatPay

from . import events, jobs
from .cash import CashPayments
from .check_in import CheckIns
from .config import PointsSettings
from .errors import DOMAIN
from .expiry import Expiry
from .ledger import Ledger
from .mall import Mall
from .models import IdempotencyKeys, InboxEvents, OutboxEvents
from .purchases import Purchases
from .reach import Reach
from .servicer import PointsServicer
from .statements import Statements
from .tasks import Tasks

SERVICE_DIR = Path(__file__).resolve().parent.parent  # holds alembic.ini and migrations/
TABLES = Tables(outbox=OutboxEvents, inbox=InboxEvents, idempotency=IdempotencyKeys)


@dataclass
class PointsApp(ServiceApp):
    platform: Platform
    ledger: Ledger
    statements: Statements
    check_ins: CheckIns
    tasks: Tasks
    mall: Mall
    purchases: Purchases
    expiry: Expiry
    reach: Reach
    pay: WechatPay | None = None
    cash: CashPayments | None = None

    async def close(self) -> None:
        if self.pay is not None:
            await self.pay.close()

    @property
    def members(self) -> MembersClient:
        return self.platform.members

    def set_clock(self, clock: Callable[[], datetime]) -> None:
        """Move "now" (tests): what the use cases and the jobs believe the time is."""
        self.ledger.clock = clock


def domain(settings: PointsSettings, outbox: Outbox, pages: PageTokens) -> dict:
    """The sub-domain objects of the service, by name (also used by the demo seed)."""
    ledger = Ledger(brand_timezone=settings.platform.brand_timezone, expiry_policy=settings.expiry_policy,
                    expiry_days=settings.expiry_days)
    reach = Reach()
    return {
        "ledger": ledger,
        "statements": Statements(ledger, pages, reminder_days=settings.expiry_reminder_days),
        "check_ins": CheckIns(ledger, points=settings.check_in_points, streak_cycle=settings.check_in_streak_cycle,
                              streak_bonuses=settings.check_in_streak_bonuses, outbox=outbox),
        "tasks": Tasks(ledger, pages),
        "mall": Mall(ledger, outbox, pages, reach, reach_template=settings.reach_template_redemption_failed),
        "purchases": Purchases(ledger, reach, points_per_yuan=settings.purchase_points_per_yuan,
                               reach_template=settings.reach_template_available),
        "expiry": Expiry(ledger, reach, reminder_days=settings.expiry_reminder_days,
                         reach_template=settings.reach_template_expiring),
        "reach": reach,
    }


def wechat_pay(settings: PointsSettings) -> WechatPay:
    """The points mall's own WeChat Pay merchant client (cash part of points + cash items)."""
    return WechatPay(
        base_url=settings.wechatpay_base_url, mchid=settings.wechatpay_mchid, appid=settings.wechatpay_appid,
        merchant_private_key=settings.wechatpay_merchant_private_key.get_secret_value(),
        merchant_serial=settings.wechatpay_merchant_serial, apiv3_key=settings.wechatpay_apiv3_key.get_secret_value(),
        platform_public_key=settings.wechatpay_platform_public_key, platform_serial=settings.wechatpay_platform_serial,
        notify_url=settings.wechatpay_notify_url, window_seconds=settings.wechatpay_window_seconds,
        timeout=settings.wechatpay_timeout_seconds,
    )


def build(settings: PointsSettings, engine: AsyncEngine | None = None, *, background: bool = True) -> PointsApp:
    platform = Platform.create("points", settings, tables=TABLES, engine=engine)
    app = PointsApp(platform, **domain(settings, platform.outbox, platform.tokens))
    app.pay = wechat_pay(settings)
    app.cash = CashPayments(sessions=platform.sessions, pay=app.pay, mall=app.mall, members=platform.members,
                            pay_timeout=timedelta(seconds=settings.cash_pay_timeout_seconds))
    servicer = PointsServicer(ledger=app.ledger, statements=app.statements, check_ins=app.check_ins, tasks=app.tasks,
                              mall=app.mall, purchases=app.purchases, members=platform.members,
                              sessions=platform.sessions, idempotency=platform.idempotency, cash=app.cash)
    platform.serve(app, domain=DOMAIN, handlers=events.HANDLERS, jobs=jobs.schedule(app), background=background,
                   servicers=[Servicer(pb.DESCRIPTOR.services_by_name["PointsService"],
                                       pb_grpc.add_PointsServiceServicer_to_server, servicer)])
    return app
