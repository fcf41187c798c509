"""Composition root: the platform (mallkit.platform) -> service -> servicer -> server.

Nothing is created at import time; tests build the app with their own
settings (database, ports) and call ``start``/``stop``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from mall.members.v1 import members_service_pb2 as pb
from mall.members.v1 import members_service_pb2_grpc as pb_grpc
from mallkit.platform import Platform, ServiceApp, Servicer, Tables

from . import events
from .config import MembersSettings
from .errors import DOMAIN
from .models import IdempotencyKeys, InboxEvents, OutboxEvents
from .service import MembersService
from .servicer import MembersServicer
from .wechat import WechatClient

SERVICE_DIR = Path(__file__).resolve().parent.parent  # holds alembic.ini and migrations/
TABLES = Tables(outbox=OutboxEvents, inbox=InboxEvents, idempotency=IdempotencyKeys)


@dataclass
class MembersApp(ServiceApp):
    platform: Platform
    wechat: WechatClient
    service: MembersService

    async def close(self) -> None:
        await self.wechat.close()


def build(settings: MembersSettings, engine: AsyncEngine | None = None) -> MembersApp:
    platform = Platform.create("members", settings, tables=TABLES, engine=engine)
    wechat = WechatClient(settings.wechat_base_url, settings.wechat_appid, settings.wechat_secret.get_secret_value(),
                          timeout=settings.wechat_timeout_seconds)
    service = MembersService(wechat=wechat, outbox=platform.outbox, brand_timezone=settings.platform.brand_timezone,
                             reach_daily_cap=settings.reach_daily_cap)
    app = MembersApp(platform, wechat, service)
    servicer = MembersServicer(service, platform.sessions, platform.idempotency, platform.codec, platform.tokens, wechat)
    platform.serve(app, domain=DOMAIN, handlers=events.HANDLERS,
                   servicers=[Servicer(pb.DESCRIPTOR.services_by_name["MembersService"],
                                       pb_grpc.add_MembersServiceServicer_to_server, servicer)])
    return app
