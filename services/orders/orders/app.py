"""Composition root: settings -> engine -> service -> servicer -> server.

Nothing is created at import time; tests build the app with their own
settings (database, ports, WeChat Pay simulator) and call ``start``/``stop``.
Background work of the process: the outbox relay and the scheduled jobs
(auto-cancel, unpaid reminder, completion after the after-sales window,
refunds, the care journey), each safe with several replicas.
"""

from __future__ import annotations

import functools
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import grpc
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from mall.community.v1 import community_events_pb2
from mall.events.v1 import events_pb2, events_pb2_grpc
from mall.members.v1 import members_service_pb2 as mpb
from mall.members.v1 import members_service_pb2_grpc as mpb_grpc
from mall.orders.v1 import orders_service_pb2 as pb
from mall.orders.v1 import orders_service_pb2_grpc as pb_grpc
from mall.points.v1 import points_events_pb2
from mallkit import jobs
from mallkit.auth import TokenCodec
from mallkit.clients import Peers
from mallkit.db import create_engine, ping, run_transaction, session_factory, utcnow
from mallkit.errors import FailedPrecondition, MallError
from mallkit.idempotency import Idempotency
from mallkit.names import parse_id
from mallkit.outbox import EventSink, GrpcEventDelivery, Outbox, OutboxRelay
from mallkit.pagination import PageTokens
from mallkit.principals import PrincipalCheck, members_lookup
from mallkit.server import ServiceApp, ServiceHost

from .config import OrdersSettings
from .errors import DOMAIN
from .models import IdempotencyKeys, InboxEvents, JourneyStep, Order, OutboxEvents, Refund
from .service import OrdersService
from .servicer import OrdersServicer, TierDiscounts
from .wechatpay import PayApiError, WechatPay

log = logging.getLogger("orders.app")

SERVICE_DIR = Path(__file__).resolve().parent.parent  # holds alembic.ini and migrations/

JOURNEY_PAGES = {"payment_success": "pages/order/detail", "care": "pages/order/detail",
                 "window_closed": "pages/points/index", "repurchase": "pages/product/detail",
                 "pay_reminder": "pages/order/detail"}
JOURNEY_TEXT = {"payment_success": "订单支付成功", "care": "商品使用得还好吗?", "window_closed": "售后期已结束,积分已到账",
                "repurchase": "该补货啦", "pay_reminder": "订单即将超时取消,请尽快支付"}


def _coupon_handler(source: str):
    async def handle(service: OrdersService, s, event, payload) -> None:
        try:
            member_id = parse_id(payload.member, "members", "member")
            template_id = parse_id(payload.coupon_template, "couponTemplates", "coupon_template")
            async with s.begin_nested():
                await service.issue_coupon(s, template_id, member_id, source)
        except (FailedPrecondition, MallError) as err:
            # Recorded as applied (the inbox row commits): retrying would never succeed.
            log.warning("coupon from %s not issued: %s", source, getattr(err, "reason", type(err).__name__),
                        extra={"event_id": event.id})
    return handle


async def _welcome(service: OrdersService, s, event, payload) -> None:
    """member.registered: issue every welcome coupon template to the new member (once: the inbox)."""
    n = await service.issue_welcome_coupons(s, parse_id(payload.member, "members", "member"))
    log.info("welcome coupons issued: %d", n, extra={"event_id": event.id})


#: Events this service consumes: type -> (payload message, handler(service, session, event, payload)).
EVENT_HANDLERS: dict = {
    "member.registered": (mpb.MemberRegisteredEvent, _welcome),
    "points.coupon_redeemed": (points_events_pb2.CouponRedeemedEvent, _coupon_handler("points")),
    "community.coupon_claimed": (community_events_pb2.CouponClaimedEvent, _coupon_handler("community")),
}


@dataclass
class OrdersApp(ServiceApp):
    settings: OrdersSettings
    engine: AsyncEngine
    host: ServiceHost
    relay: OutboxRelay
    pay: WechatPay
    peers: Peers
    service: OrdersService
    servicer: OrdersServicer
    owns_engine: bool = field(default=True)

    async def close(self) -> None:
        await self.pay.close()

    # --- scheduled work; ``now`` injectable for tests ------------------------------------------

    @property
    def sessions(self):
        return session_factory(self.engine)

    async def cancel_overdue(self, now: datetime | None = None) -> int:
        now = now or utcnow()
        ids = await run_transaction(self.sessions, lambda s: self.service.overdue_orders(s, now))
        n = 0
        for oid in ids:
            try:
                await run_transaction(self.sessions, lambda s, oid=oid: self.service.cancel_order(s, oid, "timeout", now=now))
                n += 1
            except FailedPrecondition:
                pass  # paid or cancelled meanwhile, or another replica won
        return n

    async def remind_unpaid(self, now: datetime | None = None) -> int:
        after = timedelta(seconds=self.settings.pay_reminder_seconds)
        return await run_transaction(self.sessions, lambda s: self.service.remind_unpaid(s, now or utcnow(), after))

    async def complete_due(self, now: datetime | None = None) -> int:
        return await run_transaction(self.sessions, lambda s: self.service.complete_due(s, now or utcnow()))

    async def fail_expired_groups(self, now: datetime | None = None) -> int:
        """Groups not full by their deadline: FAILED, unpaid orders cancelled, paid ones refunded."""
        now = now or utcnow()
        ids = await run_transaction(self.sessions, lambda s: self.service.expired_groups(s, now))
        for gid in ids:
            refunds = await run_transaction(self.sessions, lambda s, gid=gid: self.service.fail_group(s, gid, now))
            for rid in refunds:
                await self.process_refund(rid)
        return len(ids)

    async def process_refund(self, refund_id: int) -> bool:
        """Claim one pending refund (lease), ask WeChat Pay, record success. True when refunded."""
        async def claim(s):
            if not await jobs.claim(s, Refund.__table__, refund_id, timedelta(seconds=30)):
                return None
            r, o = await self.service.refund_details(s, refund_id)
            return None if r.state != 1 else (r.out_refund_no, r.amount_fen, o.out_trade_no, o.payable_fen)
        got = await run_transaction(self.sessions, claim)
        if got is None:
            return False
        out_refund_no, amount, out_trade_no, total = got
        try:
            status = await self.pay.refund(out_trade_no=out_trade_no, out_refund_no=out_refund_no, refund_fen=amount,
                                           total_fen=total)
        except PayApiError:
            log.warning("refund %s failed; retried after the lease", out_refund_no)
            return False
        if status != "SUCCESS":
            return False  # PROCESSING: asked again after the lease (idempotent on out_refund_no)
        await run_transaction(self.sessions, lambda s: self.service.refund_succeeded(s, refund_id))
        return True

    async def process_refunds(self) -> int:
        ids = await run_transaction(self.sessions, lambda s: self.service.due_refunds(s))
        return sum([await self.process_refund(rid) for rid in ids])

    async def run_journey(self, now: datetime | None = None) -> int:
        """Send due journey steps through the members service's reach, each once.

        A step is claimed with a lease; SendReach is idempotent on a request id
        derived from the order's out_trade_no and the step, so a replica dying
        between sending and recording causes a replay, not a second message.
        """
        now = now or utcnow()
        ids = await run_transaction(self.sessions, lambda s: self.service.due_steps(s, now))
        stub = mpb_grpc.MembersServiceStub(self.peers.channel("members"))
        sent = 0
        for sid in ids:
            async def claim(s, sid=sid):
                if not await jobs.claim(s, JourneyStep.__table__, sid, timedelta(seconds=60), now=utcnow()):
                    return None
                st = await self.service.step(s, sid)
                if st.sent_time is not None:
                    return None
                otn = (await s.execute(select(Order.out_trade_no).where(Order.id == st.order_id))).scalar_one()
                return st.member_id, st.step, st.order_id, otn
            got = await run_transaction(self.sessions, claim)
            if got is None:
                continue
            member_id, step, order_id, otn = got
            try:
                touch = await stub.SendReach(mpb.SendReachRequest(
                    member=f"members/{member_id}", template_id=self.settings.reach_template_ids.get(step, step),
                    data={"thing1": JOURNEY_TEXT.get(step, step), "character_string2": str(order_id)},
                    page=f"{JOURNEY_PAGES.get(step, 'pages/index')}?order={order_id}", purpose=f"orders.{step}",
                    request_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"orders/{otn}/journey/{step}"))))
                outcome = mpb.TouchState.Name(touch.state)
            except grpc.aio.AioRpcError as err:
                if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    continue  # retried after the lease
                outcome = f"ERROR_{err.code().name}"
            await run_transaction(self.sessions, lambda s, sid=sid, outcome=outcome: self.service.step_sent(s, sid, outcome))
            sent += 1
        return sent

    async def run_jobs_once(self, now: datetime | None = None) -> None:
        await self.remind_unpaid(now)
        await self.cancel_overdue(now)
        await self.fail_expired_groups(now)
        await self.complete_due(now)
        await self.process_refunds()
        for _ in range(10):  # up to 500 journey messages a pass, 50 per batch
            if await self.run_journey(now) < 50:
                break


def build(settings: OrdersSettings, engine: AsyncEngine | None = None) -> OrdersApp:
    owns_engine = engine is None
    engine = engine or create_engine(settings.database_url, pool_size=settings.db_pool_size)
    sessions = session_factory(engine)
    secret = settings.platform.token_secret.get_secret_value()
    codec = TokenCodec(secret)
    pay = WechatPay(
        base_url=settings.wechatpay_base_url, mchid=settings.wechatpay_mchid, appid=settings.wechatpay_appid,
        merchant_private_key=settings.wechatpay_merchant_private_key.get_secret_value(),
        merchant_serial=settings.wechatpay_merchant_serial, apiv3_key=settings.wechatpay_apiv3_key.get_secret_value(),
        platform_public_key=settings.wechatpay_platform_public_key, platform_serial=settings.wechatpay_platform_serial,
        notify_url=settings.wechatpay_notify_url, window_seconds=settings.wechatpay_window_seconds,
        timeout=settings.wechatpay_timeout_seconds,
    )
    outbox = Outbox(OutboxEvents, "orders", settings.event_routes)
    service = OrdersService(outbox=outbox, pay_timeout=timedelta(seconds=settings.pay_timeout_seconds),
                            after_sales=timedelta(days=settings.after_sales_days),
                            care_after=timedelta(days=settings.care_after_days))
    peers = Peers(settings.platform.addr_of, codec=codec, caller="orders", timeout=settings.platform.call_timeout_seconds)
    relay = OutboxRelay(sessions, OutboxEvents, GrpcEventDelivery(peers.channel, settings.platform.call_timeout_seconds),
                        max_backoff=settings.outbox_max_backoff_seconds)
    servicer = OrdersServicer(service, sessions, Idempotency(sessions, IdempotencyKeys), PageTokens(secret), pay,
                              TierDiscounts(lambda: peers.channel("members")))
    handlers = {t: (p, functools.partial(h, service)) for t, (p, h) in EVENT_HANDLERS.items()}

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
        principals=PrincipalCheck(members_lookup(lambda: peers.channel("members"), settings.platform.call_timeout_seconds),
                                  ttl=settings.platform.principal_cache_seconds),
    )
    host.add(pb_grpc.add_OrdersServiceServicer_to_server, servicer)
    host.add(events_pb2_grpc.add_EventSinkServiceServicer_to_server, EventSink(sessions, InboxEvents, handlers))
    app = OrdersApp(settings, engine, host, relay, pay, peers, service, servicer, owns_engine)
    servicer.on_refund = app.process_refund
    if settings.jobs_enabled:
        host.background.append(jobs.periodic("orders", settings.jobs_interval_seconds, app.run_jobs_once))
    return app
