"""Demo data for `make run` (idempotent).

Refers to the other services' demo data by name only: the guide is
"staff/3" and the gold / black-gold tiers are "tiers/3" and "tiers/4" in a
freshly seeded members database (`python -m members seed`); the coupon drop
hands out orders' "couponTemplates/4" (群专享 满 199 减 30), the recommendation
names "products/1" (the formula milk) and the flash-sale notice "products/2".
"""

from __future__ import annotations

import json
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from mall.community.v1 import community_service_pb2 as pb
from mallkit.db import session_factory, utcnow
from mallkit.events import Outbox
from mallkit.pagination import PageTokens

from .app import domain
from .config import CommunitySettings
from .models import Group, OutboxEvents

GUIDE = 3


async def seed_demo(engine: AsyncEngine, settings: CommunitySettings) -> None:
    service = domain(settings, Outbox(OutboxEvents, "community"),
                     PageTokens(settings.platform.token_secret.get_secret_value()))
    now = utcnow()
    async with session_factory(engine)() as s, s.begin():
        if (await s.execute(select(Group.id).limit(1))).first():
            print("community: demo data already present")
            return

        def group(name, type_, **kw):
            base = {"display_name": name, "description": "", "type": type_, "category": "", "end_time": None,
                    "vip_tiers": "", "vip_min_threshold": 0, "stage": "", "region": "", "owner_staff_id": GUIDE,
                    "capacity": 0, "join_policy": pb.JOIN_POLICY_OPEN}
            base.update(kw)
            return service["groups"].create_group(s, base, now)

        general = await group("宝妈交流总群", pb.GROUP_TYPE_GENERAL, description="育儿知识、好物分享", region="杭州市")
        await group("0-1岁宝宝群", pb.GROUP_TYPE_GENERAL, stage="0-1岁")
        await group("奶粉类目群", pb.GROUP_TYPE_CATEGORY, category="categories/1")
        await group("纸尿裤类目群", pb.GROUP_TYPE_CATEGORY, category="categories/2")
        await group("双11快闪群", pb.GROUP_TYPE_FLASH, end_time=now + timedelta(days=7))
        await group("门店快闪群", pb.GROUP_TYPE_FLASH, end_time=now + timedelta(days=2),
                    join_policy=pb.JOIN_POLICY_INVITE_ONLY)
        await group("金卡会员专享群", pb.GROUP_TYPE_VIP, vip_tiers="3,4")
        await group("黑金会员俱乐部", pb.GROUP_TYPE_VIP, vip_min_threshold=20000, capacity=200)
        author = f"staff/{GUIDE}"
        await service["content"].create_post(s, general.id, {"kind": pb.POST_KIND_ARTICLE, "title": "新生儿洗澡的五个要点",
                                                             "body": "水温 38-40 度,时间控制在 5-10 分钟……"}, author, now, None)
        await service["content"].create_post(s, general.id, {"kind": pb.POST_KIND_PRODUCT_RECOMMENDATION, "title": "今日推荐:有机婴儿配方奶粉",
                                                             "body": "0-6 个月宝宝的第一罐奶粉", "product": "products/1"},
                                  author, now, None)
        await service["content"].create_post(s, general.id, {"kind": pb.POST_KIND_COUPON_DROP, "title": "群专享:满 199 减 30",
                                                  "coupon_template": "couponTemplates/4", "coupon_quantity": 100},
                                  author, now, None)
        await service["content"].create_post(s, general.id, {"kind": pb.POST_KIND_FLASH_SALE_NOTICE, "title": "明晚 8 点秒杀预告",
                                                             "product": "products/2", "flash_price_fen": 9900,
                                                  "flash_start_time": now + timedelta(days=1)}, author, now, None)
        await service["content"].create_post(s, general.id, {"kind": pb.POST_KIND_QUIZ, "title": "答题送好礼",
                                                             "quiz_question": "宝宝几个月可以添加辅食?",
                                                  "quiz_options": json.dumps(["3 个月", "6 个月", "12 个月"], ensure_ascii=False),
                                                  "quiz_correct": 1, "quiz_reward": 50}, author, now, None)
        await service["content"].create_post(s, general.id, {"kind": pb.POST_KIND_ARTICLE, "title": "下午茶时间:辅食添加顺序",
                                                             "body": "先单一后混合,先稀后稠……",
                                                  "publish_time": now + timedelta(hours=3)}, author, now, None)
        talk = await service["quick_replies"].create_category(s, "售后话术", now)
        welcome = await service["quick_replies"].create_category(s, "欢迎语", now)
        await service["quick_replies"].create_quick_reply(s, welcome.id, {"kind": pb.QUICK_REPLY_KIND_TEXT, "title": "入群欢迎",
                                                         "text": "欢迎加入!每天下午有育儿小知识分享~",
                                                         "image_url": "", "page_path": ""}, ["欢迎", "入群"], now)
        await service["quick_replies"].create_quick_reply(s, talk.id, {"kind": pb.QUICK_REPLY_KIND_TEXT, "title": "退换货说明",
                                                      "text": "签收 7 天内可申请无理由退货,请在订单页点击申请售后。",
                                                      "image_url": "", "page_path": ""}, ["退货", "售后"], now)
        await service["quick_replies"].create_quick_reply(s, talk.id, {"kind": pb.QUICK_REPLY_KIND_MINI_PROGRAM_CARD, "title": "售后入口",
                                                      "text": "", "image_url": "https://example.com/after-sale.png",
                                                      "page_path": "pages/aftersale/index"}, ["售后"], now)
    print("community: demo data created (8 groups, 6 posts incl. a quiz and a scheduled post, 3 quick replies)")
