"""Demo data for `make run` (idempotent): tasks of every kind and mall items of each kind."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from mall.points.v1 import points_service_pb2 as pb
from mallkit.db import run_transaction, session_factory, utcnow
from mallkit.events import Outbox
from mallkit.pagination import PageTokens

from .app import domain
from .config import PointsSettings
from .models import OutboxEvents, Task

DEMO_MEMBERS = (1, 2, 3)
DEMO_GRANT = 3000

TASKS = [
    (pb.TASK_KIND_COMPLETE_PROFILE, "完善个人资料", 50, pb.TASK_FREQUENCY_ONCE, 1),
    (pb.TASK_KIND_INVITE_FRIEND, "邀请好友注册", 100, pb.TASK_FREQUENCY_WEEKLY, 10),
    (pb.TASK_KIND_JOIN_GROUP, "加入社群", 20, pb.TASK_FREQUENCY_ONCE, 3),
    (pb.TASK_KIND_SHARE_CONTENT, "分享内容", 5, pb.TASK_FREQUENCY_DAILY, 3),
    (pb.TASK_KIND_REVIEW_ORDER, "评价订单", 10, pb.TASK_FREQUENCY_DAILY, 5),
    (pb.TASK_KIND_ANSWER_QUIZ, "社群答题", 10, pb.TASK_FREQUENCY_DAILY, 3),
]


async def seed_demo(engine: AsyncEngine, settings: PointsSettings) -> None:
    secret = settings.platform.token_secret.get_secret_value()
    service = domain(settings, Outbox(OutboxEvents, "points"), PageTokens(secret))
    sessions = session_factory(engine)
    async with sessions() as s:
        if (await s.execute(select(func.count()).select_from(Task))).scalar_one():
            print("points: demo data already present")
            return
    await run_transaction(sessions, lambda s: _seed(s, service))
    print(f"points: demo data created (6 tasks, 4 mall items, {DEMO_GRANT} points to each of members/1-3)")


async def _seed(s, service: dict) -> None:
    for kind, name, reward, frequency, limit in TASKS:
        await service["tasks"].create_task(s, {"kind": kind, "display_name": name, "reward_points": reward,
                                               "frequency": frequency, "limit_per_period": limit, "active": True})
    now = utcnow()
    for fields in [
        {"display_name": "10元无门槛券", "kind": pb.ITEM_KIND_COUPON, "points_price": 500, "stock": 1000,
         "per_member_limit": 2, "coupon_template": "couponTemplates/3", "description": "全场通用,兑换后放入卡包"},
        {"display_name": "品牌定制保温杯", "kind": pb.ITEM_KIND_PHYSICAL, "points_price": 2000,
         "cash_price_fen": 990, "stock": 100, "per_member_limit": 1, "description": "积分+9.9元,包邮到家"},
        {"display_name": "视频会员月卡", "kind": pb.ITEM_KIND_VIRTUAL, "points_price": 1500, "stock": 200,
         "per_member_limit": 1, "end_time": now + timedelta(days=30), "description": "兑换后即时到账"},
        {"display_name": "金卡专享 婴儿湿巾礼盒", "kind": pb.ITEM_KIND_PHYSICAL, "points_price": 800, "stock": 50,
         "allowed_tiers": "3,4", "description": "金卡及以上会员专享"},
    ]:
        await service["mall"].create_item(s, {"state": pb.ITEM_STATE_ACTIVE, **fields})
    # The demo members (alice, bob, carol are members/1-3 of a freshly seeded members database) start
    # with enough points for any item but the gold-tier one, so the points mall can be tried at once.
    for member_id in DEMO_MEMBERS:
        await service["ledger"].earn(s, member_id, DEMO_GRANT, key=f"demo:welcome:{member_id}",
                                     source=pb.ENTRY_SOURCE_OPERATOR, description="演示积分")
