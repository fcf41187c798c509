"""Use cases of the members service.

Each public coroutine is one use case and runs inside the single transaction
its caller opened (``session``); it raises mallkit errors for every rule it
refuses. Counters change with conditional UPDATEs, never read-modify-write.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from datetime import date, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from mall.members.v1 import members_service_pb2 as pb
from mallkit.db import insert_ignore, is_duplicate_key, utcnow
from mallkit.errors import AlreadyExists, FailedPrecondition, FieldViolation, InvalidArgument, NotFound, Unauthenticated
from mallkit.events import Outbox

from . import errors as reasons
from .models import (
    AttributeDefinition,
    ChannelCode,
    ChannelCodeTag,
    GrowthEntry,
    Member,
    MemberAttribute,
    MemberTag,
    ReachCounter,
    Staff,
    Store,
    Subscription,
    Tag,
    TagGroup,
    Tier,
    TierChange,
    Touch,
    Touchpoint,
)
from .wechat import DeliveryRefused, WechatClient, WechatIdentity

log = logging.getLogger("members.service")

ROLE_NAMES = {pb.STAFF_ROLE_ADMIN: "admin", pb.STAFF_ROLE_OPERATOR: "operator", pb.STAFF_ROLE_GUIDE: "guide"}

_INVITE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


def new_code(length: int = 8) -> str:
    return "".join(secrets.choice(_INVITE_ALPHABET) for _ in range(length))


# --- passwords (scrypt, from the standard library) ---------------------------------------

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, digest = stored.split("$")
        got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), dklen=32, n=int(n), r=int(r), p=int(p))
    except ValueError:
        return False
    return hmac.compare_digest(got.hex(), digest)


_DUMMY_HASH = hash_password(secrets.token_hex(8))


class MembersService:
    def __init__(self, *, wechat: WechatClient, outbox: Outbox, brand_timezone: str, reach_daily_cap: int):
        self.wechat = wechat
        self.outbox = outbox
        self.tz = ZoneInfo(brand_timezone)
        self.reach_daily_cap = reach_daily_cap

    # --- lookups ---------------------------------------------------------------------------

    async def member(self, s: AsyncSession, member_id: int, *, lock: bool = False) -> Member:
        q = select(Member).where(Member.id == member_id)
        if lock:
            q = q.with_for_update()
        m = (await s.execute(q)).scalar_one_or_none()
        if m is None:
            raise NotFound(
                "member not found",
                reason=reasons.MEMBER_NOT_FOUND,
                resource=("member", f"members/{member_id}"),
                zh="会员不存在",
            )
        return m

    async def attributes_of(self, s: AsyncSession, member_id: int) -> dict[str, str]:
        rows = await s.execute(select(MemberAttribute.key, MemberAttribute.value).where(MemberAttribute.member_id == member_id))
        return dict(rows.all())

    async def _store(self, s: AsyncSession, store_id: int, field: str) -> Store:
        st = await s.get(Store, store_id)
        if st is None:
            raise NotFound("store not found", reason=reasons.STORE_NOT_FOUND, resource=("store", f"stores/{store_id}"),
                           metadata={"field": field}, zh="门店不存在")
        return st

    async def _guide(self, s: AsyncSession, staff_id: int, field: str) -> Staff:
        st = await s.get(Staff, staff_id)
        if st is None:
            raise NotFound("staff not found", reason=reasons.STAFF_NOT_FOUND, resource=("staff", f"staff/{staff_id}"),
                           metadata={"field": field}, zh="导购不存在")
        if st.role != pb.STAFF_ROLE_GUIDE:
            raise FailedPrecondition("staff is not a guide", reason=reasons.NOT_A_GUIDE, metadata={"field": field},
                                     zh="该员工不是导购")
        return st

    # --- login -----------------------------------------------------------------------------

    async def login_with_wechat(
        self, s: AsyncSession, identity: WechatIdentity, scene: str, invite_code: str
    ) -> tuple[Member, bool]:
        """Find or create the member of an openid; record referral and arrival."""
        m = (await s.execute(select(Member).where(Member.openid == identity.openid))).scalar_one_or_none()
        created = False
        if m is None:
            m = await self._register(s, identity, invite_code)
            created = True
        elif identity.unionid and not m.unionid:
            m.unionid = identity.unionid
        if scene:
            channel = await self._channel_by_scene(s, scene)
            if channel is not None:
                await self._record_arrival(s, m, channel)
            else:
                log.info("login with unknown channel scene ignored")
        return m, created

    async def _register(self, s: AsyncSession, identity: WechatIdentity, invite_code: str) -> Member:
        now = utcnow()
        inviter = None
        if invite_code:
            inviter = (await s.execute(select(Member).where(Member.invite_code == invite_code))).scalar_one_or_none()
        entry = await self._tier_for(s, 0)
        m = Member(
            openid=identity.openid,
            unionid=identity.unionid,
            invite_code=new_code(),
            inviter_id=inviter.id if inviter else None,
            tier_id=entry.id if entry else None,
            growth_value=0,
            create_time=now,
            update_time=now,
        )
        s.add(m)
        await s.flush()  # a concurrent login of the same openid fails here (unique openid)
        if entry:
            s.add(TierChange(member_id=m.id, from_tier_id=None, to_tier_id=entry.id, growth_value=0, create_time=now))
        registered = pb.MemberRegisteredEvent(member=f"members/{m.id}",
                                              inviter=f"members/{inviter.id}" if inviter else "")
        registered.create_time.FromDatetime(now)
        await self.outbox.add(s, "member.registered", registered, subject=f"members/{m.id}")
        if inviter:
            event = pb.MemberReferredEvent(inviter=f"members/{inviter.id}", invitee=f"members/{m.id}")
            event.create_time.FromDatetime(now)
            await self.outbox.add(s, "member.referred", event, subject=f"members/{inviter.id}")
        return m

    async def login_staff(self, s: AsyncSession, username: str, password: str) -> Staff:
        st = (await s.execute(select(Staff).where(Staff.username == username))).scalar_one_or_none()
        ok = verify_password(password, st.password_hash if st else _DUMMY_HASH)  # same cost either way
        if st is None or not ok or st.disabled:
            raise Unauthenticated("invalid username or password", reason=reasons.LOGIN_FAILED, zh="用户名或密码错误")
        return st

    # --- portrait --------------------------------------------------------------------------

    async def list_members(
        self, s: AsyncSession, *, size: int, before_id: int | None, tier_id: int | None, tag_id: int | None,
        channel_id: int | None,
    ) -> list[Member]:
        q = select(Member).order_by(Member.id.desc()).limit(size + 1)
        if before_id is not None:
            q = q.where(Member.id < before_id)
        if tier_id is not None:
            q = q.where(Member.tier_id == tier_id)
        if channel_id is not None:
            q = q.where(Member.first_touch_channel_id == channel_id)
        if tag_id is not None:
            q = q.where(Member.id.in_(select(MemberTag.member_id).where(MemberTag.tag_id == tag_id)))
        return list((await s.execute(q)).scalars().all())

    async def update_member(self, s: AsyncSession, member_id: int, changes: dict, attributes: dict[str, str] | None,
                            replace_attributes: bool) -> Member:
        """Apply validated portrait changes. Phone needs consent; withdrawing it erases the phone."""
        m = await self.member(s, member_id, lock=True)
        consent = changes.get("phone_consent", m.phone_consent)
        if changes.get("phone") and not consent:
            raise FailedPrecondition(
                "phone requires phone_consent", reason=reasons.PHONE_CONSENT_REQUIRED,
                metadata={"field": "member.phone"}, zh="保存手机号需要您的授权",
            )
        for key, value in changes.items():
            setattr(m, key, value)
        if not consent:
            m.phone = None
        if attributes is not None:
            await self._set_attributes(s, member_id, attributes, replace_attributes)
        m.update_time = utcnow()
        return m

    async def _set_attributes(self, s: AsyncSession, member_id: int, values: dict[str, str], replace: bool) -> None:
        if replace:
            await s.execute(delete(MemberAttribute).where(MemberAttribute.member_id == member_id))
        for key, value in values.items():
            await s.execute(delete(MemberAttribute).where(MemberAttribute.member_id == member_id, MemberAttribute.key == key))
            if value != "":
                s.add(MemberAttribute(member_id=member_id, key=key, value=value))
        await s.flush()

    async def attribute_definitions(self, s: AsyncSession, keys: list[str] | None = None) -> dict[str, AttributeDefinition]:
        q = select(AttributeDefinition).order_by(AttributeDefinition.key)
        if keys is not None:
            q = q.where(AttributeDefinition.key.in_(keys))
        return {d.key: d for d in (await s.execute(q)).scalars().all()}

    async def create_attribute_definition(self, s: AsyncSession, key: str, display_name: str, type_: int) -> AttributeDefinition:
        if await s.get(AttributeDefinition, key) is not None:
            raise AlreadyExists("attribute key already defined", reason=reasons.NAME_TAKEN,
                                metadata={"field": "attribute_definition.key"}, zh="属性已存在")
        d = AttributeDefinition(key=key, display_name=display_name, type=type_, create_time=utcnow())
        s.add(d)
        await s.flush()
        return d

    async def list_attribute_definitions(self, s: AsyncSession, size: int, after_key: str | None) -> list[AttributeDefinition]:
        q = select(AttributeDefinition).order_by(AttributeDefinition.key).limit(size + 1)
        if after_key is not None:
            q = q.where(AttributeDefinition.key > after_key)
        return list((await s.execute(q)).scalars().all())

    # --- channel codes and touchpoints -----------------------------------------------------

    async def channel_code(self, s: AsyncSession, channel_id: int) -> ChannelCode:
        c = await s.get(ChannelCode, channel_id)
        if c is None or c.deleted:
            raise NotFound("channel code not found", reason=reasons.CHANNEL_CODE_NOT_FOUND,
                           resource=("channelCode", f"channelCodes/{channel_id}"), zh="渠道码不存在")
        return c

    async def channel_tags(self, s: AsyncSession, channel_ids: list[int]) -> dict[int, list[Tag]]:
        out: dict[int, list[Tag]] = {cid: [] for cid in channel_ids}
        if not channel_ids:
            return out
        rows = await s.execute(
            select(ChannelCodeTag.channel_code_id, Tag).join(Tag, Tag.id == ChannelCodeTag.tag_id)
            .where(ChannelCodeTag.channel_code_id.in_(channel_ids)).order_by(Tag.id)
        )
        for cid, tag in rows.all():
            out[cid].append(tag)
        return out

    async def create_channel_code(self, s: AsyncSession, *, display_name: str, channel_type: int, store_id: int | None,
                                  guide_id: int | None, tag_ids: list[int]) -> ChannelCode:
        if store_id is not None:
            await self._store(s, store_id, "channel_code.store")
        if guide_id is not None:
            await self._guide(s, guide_id, "channel_code.guide")
        await self.tags_by_id(s, tag_ids, "channel_code.tags")
        c = ChannelCode(display_name=display_name, channel_type=channel_type, store_id=store_id, guide_id=guide_id,
                        scene=new_code(12), arrival_count=0, deleted=False, create_time=utcnow())
        s.add(c)
        await s.flush()
        for tid in dict.fromkeys(tag_ids):
            s.add(ChannelCodeTag(channel_code_id=c.id, tag_id=tid))
        await s.flush()
        return c

    async def update_channel_code(self, s: AsyncSession, channel_id: int, changes: dict, tag_ids: list[int] | None) -> ChannelCode:
        c = await self.channel_code(s, channel_id)
        if changes.get("store_id") is not None:
            await self._store(s, changes["store_id"], "channel_code.store")
        if changes.get("guide_id") is not None:
            await self._guide(s, changes["guide_id"], "channel_code.guide")
        for key, value in changes.items():
            setattr(c, key, value)
        if tag_ids is not None:
            await self.tags_by_id(s, tag_ids, "channel_code.tags")
            await s.execute(delete(ChannelCodeTag).where(ChannelCodeTag.channel_code_id == c.id))
            for tid in dict.fromkeys(tag_ids):
                s.add(ChannelCodeTag(channel_code_id=c.id, tag_id=tid))
        await s.flush()
        return c

    async def delete_channel_code(self, s: AsyncSession, channel_id: int) -> None:
        c = await self.channel_code(s, channel_id)
        c.deleted = True

    async def list_channel_codes(self, s: AsyncSession, size: int, before_id: int | None) -> list[ChannelCode]:
        q = select(ChannelCode).where(ChannelCode.deleted.is_(False)).order_by(ChannelCode.id.desc()).limit(size + 1)
        if before_id is not None:
            q = q.where(ChannelCode.id < before_id)
        return list((await s.execute(q)).scalars().all())

    async def _channel_by_scene(self, s: AsyncSession, scene: str) -> ChannelCode | None:
        return (
            await s.execute(select(ChannelCode).where(ChannelCode.scene == scene, ChannelCode.deleted.is_(False)))
        ).scalar_one_or_none()

    async def create_touchpoint(self, s: AsyncSession, member_id: int, scene: str) -> Touchpoint:
        m = await self.member(s, member_id)
        channel = await self._channel_by_scene(s, scene)
        if channel is None:
            raise NotFound("no channel code has this scene", reason=reasons.CHANNEL_CODE_NOT_FOUND,
                           metadata={"field": "touchpoint.scene"}, zh="渠道码不存在")
        return await self._record_arrival(s, m, channel)

    async def _record_arrival(self, s: AsyncSession, m: Member, channel: ChannelCode) -> Touchpoint:
        """First touch (once), touchpoint history, channel tags, guide and store binding."""
        now = utcnow()
        first = await s.execute(
            update(Member)
            .where(Member.id == m.id, Member.first_touch_channel_id.is_(None))
            .values(first_touch_channel_id=channel.id, first_touch_channel_type=channel.channel_type, update_time=now)
        )
        if channel.guide_id is not None:
            await s.execute(update(Member).where(Member.id == m.id, Member.guide_id.is_(None)).values(guide_id=channel.guide_id))
        if channel.store_id is not None:
            await s.execute(update(Member).where(Member.id == m.id, Member.store_id.is_(None)).values(store_id=channel.store_id))
        await s.execute(update(ChannelCode).where(ChannelCode.id == channel.id).values(arrival_count=ChannelCode.arrival_count + 1))
        tp = Touchpoint(member_id=m.id, channel_code_id=channel.id, channel_type=channel.channel_type, scene=channel.scene,
                        first_touch=first.rowcount == 1, create_time=now)
        s.add(tp)
        tag_ids = [t.id for t in (await self.channel_tags(s, [channel.id]))[channel.id]]
        if tag_ids:
            await self.apply_tags(s, [m.id], tag_ids, pb.TAG_SOURCE_CHANNEL_CODE, f"channelCodes/{channel.id}")
        await s.flush()
        await s.refresh(m)
        return tp

    async def list_touchpoints(self, s: AsyncSession, member_id: int, size: int, after_id: int | None) -> list[Touchpoint]:
        await self.member(s, member_id)
        q = select(Touchpoint).where(Touchpoint.member_id == member_id).order_by(Touchpoint.id).limit(size + 1)
        if after_id is not None:
            q = q.where(Touchpoint.id > after_id)
        return list((await s.execute(q)).scalars().all())

    # --- tiers and growth ------------------------------------------------------------------

    async def _tier_for(self, s: AsyncSession, growth: int) -> Tier | None:
        q = select(Tier).where(Tier.growth_threshold <= growth).order_by(Tier.growth_threshold.desc()).limit(1)
        return (await s.execute(q)).scalar_one_or_none()

    async def tier(self, s: AsyncSession, tier_id: int) -> Tier:
        t = await s.get(Tier, tier_id)
        if t is None:
            raise NotFound("tier not found", reason=reasons.TIER_NOT_FOUND, resource=("tier", f"tiers/{tier_id}"), zh="等级不存在")
        return t

    async def create_tier(self, s: AsyncSession, fields: dict) -> Tier:
        t = Tier(create_time=utcnow(), **fields)
        s.add(t)
        try:
            async with s.begin_nested():
                await s.flush()
        except IntegrityError as exc:
            if is_duplicate_key(exc):
                raise AlreadyExists("a tier already has this growth threshold", reason=reasons.TIER_THRESHOLD_TAKEN,
                                    metadata={"field": "tier.growth_threshold"}, zh="已有相同成长值门槛的等级")
            raise
        return t

    async def update_tier(self, s: AsyncSession, tier_id: int, changes: dict) -> Tier:
        t = await self.tier(s, tier_id)
        for key, value in changes.items():
            setattr(t, key, value)
        try:
            async with s.begin_nested():
                await s.flush()
        except IntegrityError as exc:
            if is_duplicate_key(exc):
                raise AlreadyExists("a tier already has this growth threshold", reason=reasons.TIER_THRESHOLD_TAKEN,
                                    metadata={"field": "tier.growth_threshold"}, zh="已有相同成长值门槛的等级")
            raise
        return t

    async def list_tiers(self, s: AsyncSession, size: int, after_threshold: int | None) -> list[Tier]:
        q = select(Tier).order_by(Tier.growth_threshold).limit(size + 1)
        if after_threshold is not None:
            q = q.where(Tier.growth_threshold > after_threshold)
        return list((await s.execute(q)).scalars().all())

    async def add_growth(self, s: AsyncSession, member_id: int, amount: int, source: str, source_ref: str) -> tuple[int, int | None, bool]:
        """Add growth atomically; upgrade the tier (never downgrade) with history."""
        now = utcnow()
        changed = await s.execute(
            update(Member).where(Member.id == member_id)
            .values(growth_value=Member.growth_value + amount, update_time=now)
        )
        if changed.rowcount != 1:
            await self.member(s, member_id)  # raises NOT_FOUND
        growth, tier_id = (await s.execute(select(Member.growth_value, Member.tier_id).where(Member.id == member_id))).one()
        s.add(GrowthEntry(member_id=member_id, amount=amount, source=source, source_ref=source_ref, create_time=now))
        target = await self._tier_for(s, growth)
        upgraded = False
        if target is not None and target.id != tier_id:
            current = await s.get(Tier, tier_id) if tier_id else None
            if current is None or target.growth_threshold > current.growth_threshold:
                await s.execute(update(Member).where(Member.id == member_id).values(tier_id=target.id))
                s.add(TierChange(member_id=member_id, from_tier_id=tier_id, to_tier_id=target.id, growth_value=growth,
                                 create_time=now))
                await self.outbox.add(
                    s, "member.tier_upgraded",
                    pb.MemberTierUpgradedEvent(member=f"members/{member_id}",
                                               from_tier=f"tiers/{tier_id}" if tier_id else "", to_tier=f"tiers/{target.id}"),
                    subject=f"members/{member_id}",
                )
                tier_id, upgraded = target.id, True
        await s.flush()
        return growth, tier_id, upgraded

    async def list_tier_changes(self, s: AsyncSession, member_id: int, size: int, before_id: int | None) -> list[TierChange]:
        await self.member(s, member_id)
        q = select(TierChange).where(TierChange.member_id == member_id).order_by(TierChange.id.desc()).limit(size + 1)
        if before_id is not None:
            q = q.where(TierChange.id < before_id)
        return list((await s.execute(q)).scalars().all())

    # --- tags ------------------------------------------------------------------------------

    async def tag_group(self, s: AsyncSession, group_id: int) -> TagGroup:
        g = await s.get(TagGroup, group_id)
        if g is None:
            raise NotFound("tag group not found", reason=reasons.TAG_GROUP_NOT_FOUND,
                           resource=("tagGroup", f"tagGroups/{group_id}"), zh="标签组不存在")
        return g

    async def create_tag_group(self, s: AsyncSession, display_name: str, selection: int, description: str) -> TagGroup:
        g = TagGroup(display_name=display_name, selection=selection, description=description, create_time=utcnow())
        s.add(g)
        await self._flush_unique(s, "tag_group.display_name", "标签组名称已存在")
        return g

    async def update_tag_group(self, s: AsyncSession, group_id: int, changes: dict) -> TagGroup:
        g = await self.tag_group(s, group_id)
        for key, value in changes.items():
            setattr(g, key, value)
        await self._flush_unique(s, "tag_group.display_name", "标签组名称已存在")
        return g

    async def delete_tag_group(self, s: AsyncSession, group_id: int) -> None:
        g = await self.tag_group(s, group_id)
        n = (await s.execute(select(func.count()).select_from(Tag).where(Tag.group_id == group_id))).scalar_one()
        if n:
            raise FailedPrecondition("tag group still holds tags", reason=reasons.TAG_GROUP_NOT_EMPTY,
                                     metadata={"tags": n}, zh="请先删除组内标签")
        await s.delete(g)

    async def list_tag_groups(self, s: AsyncSession, size: int, after_id: int | None) -> list[TagGroup]:
        q = select(TagGroup).order_by(TagGroup.id).limit(size + 1)
        if after_id is not None:
            q = q.where(TagGroup.id > after_id)
        return list((await s.execute(q)).scalars().all())

    async def create_tag(self, s: AsyncSession, group_id: int, display_name: str) -> Tag:
        await self.tag_group(s, group_id)
        t = Tag(group_id=group_id, display_name=display_name, create_time=utcnow())
        s.add(t)
        await self._flush_unique(s, "tag.display_name", "标签名称已存在")
        return t

    async def tag(self, s: AsyncSession, group_id: int, tag_id: int) -> Tag:
        t = await s.get(Tag, tag_id)
        if t is None or t.group_id != group_id:
            raise NotFound("tag not found", reason=reasons.TAG_NOT_FOUND,
                           resource=("tag", f"tagGroups/{group_id}/tags/{tag_id}"), zh="标签不存在")
        return t

    async def delete_tag(self, s: AsyncSession, group_id: int, tag_id: int) -> None:
        t = await self.tag(s, group_id, tag_id)
        await s.execute(delete(MemberTag).where(MemberTag.tag_id == tag_id))
        await s.execute(delete(ChannelCodeTag).where(ChannelCodeTag.tag_id == tag_id))
        await s.delete(t)

    async def list_tags(self, s: AsyncSession, group_id: int | None, size: int, after_id: int | None) -> list[Tag]:
        if group_id is not None:
            await self.tag_group(s, group_id)
        q = select(Tag).order_by(Tag.id).limit(size + 1)
        if group_id is not None:
            q = q.where(Tag.group_id == group_id)
        if after_id is not None:
            q = q.where(Tag.id > after_id)
        return list((await s.execute(q)).scalars().all())

    async def tags_by_id(self, s: AsyncSession, tag_ids: list[int], field: str) -> dict[int, tuple[Tag, TagGroup]]:
        if not tag_ids:
            return {}
        rows = await s.execute(select(Tag, TagGroup).join(TagGroup, TagGroup.id == Tag.group_id).where(Tag.id.in_(tag_ids)))
        found = {t.id: (t, g) for t, g in rows.all()}
        missing = [i for i in tag_ids if i not in found]
        if missing:
            raise NotFound("tag not found", reason=reasons.TAG_NOT_FOUND, metadata={"field": field, "tagIds": missing[:10]},
                           zh="标签不存在")
        return found

    async def apply_tags(self, s: AsyncSession, member_ids: list[int], tag_ids: list[int], source: int, source_ref: str) -> int:
        """Apply tags to members. A single-select group keeps one tag per member:
        applying another replaces it (and a unique key guards concurrent calls)."""
        tags = await self.tags_by_id(s, list(dict.fromkeys(tag_ids)), "tags")
        single_groups: dict[int, int] = {}
        for tid, (_, g) in tags.items():
            if g.selection == pb.TAG_SELECTION_SINGLE:
                if g.id in single_groups:
                    raise InvalidArgument(
                        "two tags of one single-select group", reason=reasons.SINGLE_SELECT_CONFLICT,
                        field_violations=[FieldViolation("tags", "holds two tags of one single-select group")],
                        metadata={"field": "tags", "tagGroup": f"tagGroups/{g.id}"},
                        zh="单选标签组只能选择一个标签",
                    )
                single_groups[g.id] = tid
        member_ids = list(dict.fromkeys(member_ids))
        existing_members = set((await s.execute(select(Member.id).where(Member.id.in_(member_ids)))).scalars().all())
        missing = [m for m in member_ids if m not in existing_members]
        if missing:
            raise NotFound("member not found", reason=reasons.MEMBER_NOT_FOUND,
                           metadata={"field": "members", "members": ",".join(f"members/{m}" for m in missing[:10])},
                           zh="会员不存在")
        for gid, tid in single_groups.items():
            await s.execute(delete(MemberTag).where(MemberTag.member_id.in_(member_ids), MemberTag.group_id == gid,
                                                    MemberTag.tag_id != tid))
        held = set(
            (await s.execute(select(MemberTag.member_id, MemberTag.tag_id)
                             .where(MemberTag.member_id.in_(member_ids), MemberTag.tag_id.in_(list(tags))))).tuples().all()
        )
        now = utcnow()
        rows = [
            {"member_id": m, "tag_id": tid, "group_id": g.id,
             "single_group_id": g.id if g.selection == pb.TAG_SELECTION_SINGLE else None,
             "source": source, "source_ref": source_ref, "create_time": now}
            for m in member_ids for tid, (_, g) in tags.items() if (m, tid) not in held
        ]
        if rows:
            await insert_ignore(s, MemberTag.__table__, rows)
        return len(rows)

    async def remove_tags(self, s: AsyncSession, member_ids: list[int], tag_ids: list[int]) -> int:
        await self.tags_by_id(s, list(dict.fromkeys(tag_ids)), "tags")
        result = await s.execute(delete(MemberTag).where(MemberTag.member_id.in_(member_ids), MemberTag.tag_id.in_(tag_ids)))
        return result.rowcount

    async def list_member_tags(self, s: AsyncSession, member_id: int, size: int, after_tag: int | None):
        await self.member(s, member_id)
        q = (select(MemberTag, Tag).join(Tag, Tag.id == MemberTag.tag_id).where(MemberTag.member_id == member_id)
             .order_by(MemberTag.tag_id).limit(size + 1))
        if after_tag is not None:
            q = q.where(MemberTag.tag_id > after_tag)
        return list((await s.execute(q)).tuples().all())

    async def _flush_unique(self, s: AsyncSession, field: str, zh: str) -> None:
        try:
            async with s.begin_nested():
                await s.flush()
        except IntegrityError as exc:
            if is_duplicate_key(exc):
                raise AlreadyExists("name already taken", reason=reasons.NAME_TAKEN, metadata={"field": field}, zh=zh)
            raise

    # --- stores and staff ------------------------------------------------------------------

    async def create_store(self, s: AsyncSession, fields: dict) -> Store:
        st = Store(create_time=utcnow(), **fields)
        s.add(st)
        await s.flush()
        return st

    async def list_stores(self, s: AsyncSession, size: int, after_id: int | None) -> list[Store]:
        q = select(Store).order_by(Store.id).limit(size + 1)
        if after_id is not None:
            q = q.where(Store.id > after_id)
        return list((await s.execute(q)).scalars().all())

    async def create_staff(self, s: AsyncSession, *, username: str, display_name: str, role: int, store_id: int | None,
                           password: str) -> Staff:
        if store_id is not None:
            await self._store(s, store_id, "staff.store")
        st = Staff(username=username, display_name=display_name, role=role, store_id=store_id,
                   password_hash=hash_password(password), disabled=False, create_time=utcnow())
        s.add(st)
        try:
            async with s.begin_nested():
                await s.flush()
        except IntegrityError as exc:
            if is_duplicate_key(exc):
                raise AlreadyExists("username taken", reason=reasons.USERNAME_TAKEN, metadata={"field": "staff.username"},
                                    zh="用户名已被使用")
            raise
        return st

    async def staff(self, s: AsyncSession, staff_id: int) -> Staff:
        st = await s.get(Staff, staff_id)
        if st is None:
            raise NotFound("staff not found", reason=reasons.STAFF_NOT_FOUND, resource=("staff", f"staff/{staff_id}"),
                           zh="员工不存在")
        return st

    async def list_staff(self, s: AsyncSession, size: int, after_id: int | None) -> list[Staff]:
        q = select(Staff).order_by(Staff.id).limit(size + 1)
        if after_id is not None:
            q = q.where(Staff.id > after_id)
        return list((await s.execute(q)).scalars().all())

    # --- reach -----------------------------------------------------------------------------

    async def record_subscriptions(self, s: AsyncSession, member_id: int, template_ids: list[str]) -> dict[str, int]:
        await self.member(s, member_id)
        now = utcnow()
        counts: dict[str, int] = {}
        for tid in template_ids:
            counts[tid] = counts.get(tid, 0) + 1
        await insert_ignore(s, Subscription.__table__,
                            [{"member_id": member_id, "template_id": t, "remaining": 0, "update_time": now} for t in counts])
        for tid, n in counts.items():
            await s.execute(update(Subscription).where(Subscription.member_id == member_id, Subscription.template_id == tid)
                            .values(remaining=Subscription.remaining + n, update_time=now))
        rows = await s.execute(select(Subscription.template_id, Subscription.remaining)
                               .where(Subscription.member_id == member_id, Subscription.template_id.in_(list(counts))))
        return dict(rows.tuples().all())

    def brand_day(self, when: datetime) -> date:
        return when.astimezone(self.tz).date()

    async def send_reach(self, s: AsyncSession, member_id: int, template_id: str, data: dict[str, str], page: str,
                         purpose: str) -> Touch:
        """Consume one subscription credit and one slot of today's cap, then send.

        A skipped touch leaves credits and cap as they were (except a refusal by
        WeChat, which means the subscription is gone anyway).
        """
        m = await self.member(s, member_id)
        now = utcnow()
        state, reason = pb.TOUCH_STATE_SENT, pb.SKIP_REASON_UNSPECIFIED
        consumed = await s.execute(
            update(Subscription)
            .where(Subscription.member_id == member_id, Subscription.template_id == template_id, Subscription.remaining > 0)
            .values(remaining=Subscription.remaining - 1, update_time=now)
        )
        if consumed.rowcount != 1:
            state, reason = pb.TOUCH_STATE_SKIPPED, pb.SKIP_REASON_NO_CONSENT
        else:
            day = self.brand_day(now)
            await insert_ignore(s, ReachCounter.__table__, [{"member_id": member_id, "day": day, "sent": 0}])
            slot = await s.execute(
                update(ReachCounter)
                .where(ReachCounter.member_id == member_id, ReachCounter.day == day, ReachCounter.sent < self.reach_daily_cap)
                .values(sent=ReachCounter.sent + 1)
            )
            if slot.rowcount != 1:
                await s.execute(update(Subscription)
                                .where(Subscription.member_id == member_id, Subscription.template_id == template_id)
                                .values(remaining=Subscription.remaining + 1))
                state, reason = pb.TOUCH_STATE_SKIPPED, pb.SKIP_REASON_FREQUENCY_CAP
            else:
                try:
                    await self.wechat.send_subscribe_message(m.openid, template_id, data, page)
                except DeliveryRefused:
                    await s.execute(update(ReachCounter)
                                    .where(ReachCounter.member_id == member_id, ReachCounter.day == day)
                                    .values(sent=ReachCounter.sent - 1))
                    state, reason = pb.TOUCH_STATE_SKIPPED, pb.SKIP_REASON_DELIVERY_REFUSED
        touch = Touch(member_id=member_id, template_id=template_id, purpose=purpose, state=state, skip_reason=reason,
                      create_time=now)
        s.add(touch)
        await s.flush()
        return touch

    async def list_touches(self, s: AsyncSession, member_id: int, size: int, before_id: int | None) -> list[Touch]:
        await self.member(s, member_id)
        q = select(Touch).where(Touch.member_id == member_id).order_by(Touch.id.desc()).limit(size + 1)
        if before_id is not None:
            q = q.where(Touch.id < before_id)
        return list((await s.execute(q)).scalars().all())
