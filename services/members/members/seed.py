"""Demo data for `make run` (idempotent) and the first admin account."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from mall.members.v1 import members_service_pb2 as pb
from mallkit.db import session_factory
from mallkit.events import Outbox
from mallkit.pagination import PageTokens
from mallkit.settings import PlatformSettings

from .app import domain
from .config import MembersSettings
from .models import OutboxEvents, Staff
from .wechat import WechatIdentity

DEMO_ADMIN = ("admin", "admin-demo-password")
DEMO_USERS = ["alice", "bob", "carol"]


def _service(settings: MembersSettings | None) -> dict:
    # Creating a staff account reads no setting: without settings (tests' setup), the defaults, unvalidated.
    settings = settings or MembersSettings.model_construct(platform=PlatformSettings.model_construct())
    outbox = Outbox(OutboxEvents, "members")
    return domain(settings, outbox, PageTokens(settings.platform.token_secret.get_secret_value()))


async def ensure_admin(engine: AsyncEngine, username: str, password: str, settings: MembersSettings | None = None) -> bool:
    """Create an admin account unless the username exists. Returns True if created."""
    service = _service(settings)
    async with session_factory(engine)() as s, s.begin():
        if (await s.execute(select(Staff.id).where(Staff.username == username))).first():
            return False
        await service["staffing"].create_staff(s, username=username, display_name="管理员", role=pb.STAFF_ROLE_ADMIN,
                                               store_id=None, password=password)
        return True


async def set_staff_disabled(engine: AsyncEngine, username: str, disabled: bool) -> bool:
    """Disable (or enable again) a staff account: it can no longer log in, and every service refuses
    its tokens within MALL_PRINCIPAL_CACHE_SECONDS. Returns False when no such account exists."""
    async with session_factory(engine)() as s, s.begin():
        result = await s.execute(update(Staff).where(Staff.username == username).values(disabled=disabled))
        return bool(result.rowcount)


async def seed_demo(engine: AsyncEngine, settings: MembersSettings) -> None:
    from fakes.wechat import openid_for, unionid_for

    service = _service(settings)
    if not await ensure_admin(engine, *DEMO_ADMIN, settings):
        print("members: demo data already present")
        return
    async with session_factory(engine)() as s, s.begin():
        store = await service["staffing"].create_store(s, {"display_name": "杭州湖滨店", "province": "浙江省", "city": "杭州市",
                                                           "address": "湖滨路 1 号"})
        await service["staffing"].create_staff(s, username="operator", display_name="运营小王", role=pb.STAFF_ROLE_OPERATOR,
                                               store_id=None, password="operator-demo-password")
        guide = await service["staffing"].create_staff(s, username="guide", display_name="导购小李", role=pb.STAFF_ROLE_GUIDE,
                                                       store_id=store.id, password="guide-demo-password")
        for name, threshold, mult, disc, flags in [
            ("普通会员", 0, 100, 100, ""), ("银卡会员", 1000, 120, 98, ""),
            ("金卡会员", 5000, 150, 95, "tier_items"), ("黑金会员", 20000, 200, 90, "tier_items,vip_groups"),
        ]:
            await service["tiers"].create_tier(s, {"display_name": name, "growth_threshold": threshold,
                                          "points_multiplier_percent": mult, "discount_percent": disc, "flags": flags})
        stage = await service["tags"].create_tag_group(s, "人生阶段", pb.TAG_SELECTION_SINGLE, "母婴用户的孩子阶段")
        stage_tags = [await service["tags"].create_tag(s, stage.id, n) for n in ("备孕", "孕期", "0-1岁", "1-3岁")]
        interest = await service["tags"].create_tag_group(s, "兴趣偏好", pb.TAG_SELECTION_MULTIPLE, "")
        interest_tags = [await service["tags"].create_tag(s, interest.id, n) for n in ("奶粉", "纸尿裤", "辅食")]
        await service["portrait"].create_attribute_definition(s, "child_birth_date", "宝宝生日", pb.ATTRIBUTE_TYPE_DATE)
        card = await service["channels"].create_channel_code(s, display_name="包裹卡-双11", channel_type=pb.CHANNEL_TYPE_PACKAGE_CARD,
                                                 store_id=None, guide_id=None, tag_ids=[interest_tags[0].id])
        qr = await service["channels"].create_channel_code(s, display_name="湖滨店门店码", channel_type=pb.CHANNEL_TYPE_STORE_QR,
                                               store_id=store.id, guide_id=guide.id, tag_ids=[stage_tags[2].id])
        first = None
        for user, channel in zip(DEMO_USERS, [card, qr, qr], strict=True):
            identity = WechatIdentity(openid_for(settings.wechat_appid, user), unionid_for(user))
            member, _ = await service["identity"].login_with_wechat(s, identity, channel.scene, first.invite_code if first else "")
            member.nickname = user.capitalize()
            first = first or member
    print("members: demo data created (admin / admin-demo-password; login codes alice, bob, carol)")
