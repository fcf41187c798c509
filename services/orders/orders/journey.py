"""Journey: the messages around an order (payment success, care, window closed, repurchase,
pay reminder), each sent once through the members service's reach.

A step is a ``journey_steps`` row (unique per order and step). Sending claims it
with a lease; ``SendReach`` is idempotent on a request id derived from the order's
out_trade_no and the step, so a replica dying between sending and recording
replays instead of sending twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

import grpc
from sqlalchemy import and_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mall.members.v1 import members_service_pb2 as mpb
from mallkit import jobs
from mallkit.db import insert_ignore, run_transaction, utcnow
from mallkit.members import MembersClient

from .models import JourneyStep, Order

PAGES = {"payment_success": "pages/order/detail", "care": "pages/order/detail",
         "window_closed": "pages/points/index", "repurchase": "pages/product/detail",
         "pay_reminder": "pages/order/detail"}
TEXT = {"payment_success": "订单支付成功", "care": "商品使用得还好吗?", "window_closed": "售后期已结束,积分已到账",
        "repurchase": "该补货啦", "pay_reminder": "订单即将超时取消,请尽快支付"}


class Journey:
    def __init__(self, *, sessions: async_sessionmaker[AsyncSession], members: MembersClient,
                 template_ids: dict[str, str]):
        self.sessions = sessions
        self.members = members
        self.template_ids = template_ids

    async def schedule(self, s: AsyncSession, order_id: int, member_id: int,
                       steps: Sequence[tuple[str, datetime]]) -> None:
        """Steps of an order, each at most once (a step already scheduled is kept)."""
        await insert_ignore(s, JourneyStep.__table__, [
            {"order_id": order_id, "member_id": member_id, "step": st, "due_time": due, "outcome": ""}
            for st, due in steps])

    async def due_steps(self, s: AsyncSession, now: datetime, limit: int = 50) -> list[int]:
        return list((await s.execute(select(JourneyStep.id).where(JourneyStep.sent_time.is_(None), JourneyStep.due_time <= now)
                                     .order_by(JourneyStep.due_time).limit(limit))).scalars())

    async def _claim(self, s: AsyncSession, step_id: int) -> tuple[int, str, int, str] | None:
        """Lease one unsent step: (member id, step, order id, out_trade_no), None if taken or sent."""
        if not await jobs.claim(s, JourneyStep.__table__, step_id, timedelta(seconds=60), now=utcnow()):
            return None
        st = await s.get(JourneyStep, step_id, populate_existing=True)
        assert st is not None
        if st.sent_time is not None:
            return None
        otn = (await s.execute(select(Order.out_trade_no).where(Order.id == st.order_id))).scalar_one()
        return st.member_id, st.step, st.order_id, otn

    async def _sent(self, s: AsyncSession, step_id: int, outcome: str) -> None:
        await s.execute(update(JourneyStep).where(and_(JourneyStep.id == step_id, JourneyStep.sent_time.is_(None)))
                        .values(sent_time=utcnow(), outcome=outcome[:32], lease_until=None))

    async def send_due(self, now: datetime) -> int:
        """Send one batch of due steps (up to 50); returns how many were recorded."""
        ids = await run_transaction(self.sessions, lambda s: self.due_steps(s, now))
        sent = 0
        for sid in ids:
            got = await run_transaction(self.sessions, lambda s, sid=sid: self._claim(s, sid))
            if got is None:
                continue
            member_id, step, order_id, otn = got
            try:
                touch = await self.members.send_reach(
                    member_id, self.template_ids.get(step, step),
                    {"thing1": TEXT.get(step, step), "character_string2": str(order_id)},
                    f"{PAGES.get(step, 'pages/index')}?order={order_id}", f"orders.{step}",
                    str(uuid.uuid5(uuid.NAMESPACE_URL, f"orders/{otn}/journey/{step}")))
                outcome = mpb.TouchState.Name(touch.state)
            except grpc.aio.AioRpcError as err:
                if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    continue  # retried after the lease
                outcome = f"ERROR_{err.code().name}"
            await run_transaction(self.sessions, lambda s, sid=sid, outcome=outcome: self._sent(s, sid, outcome))
            sent += 1
        return sent
