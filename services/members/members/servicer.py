"""gRPC servicer of MembersService: validates requests and translates proto <-> rows.

No SQL and no business rule here: each method checks its input, resolves
resource names (ownership first), opens the transaction (through
``Idempotency.run`` for mutations) and calls one use case of ``service.py``.
"""

from __future__ import annotations

import re
from datetime import date

from google.protobuf import empty_pb2
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mall.members.v1 import members_service_pb2 as pb
from mall.members.v1 import members_service_pb2_grpc as pb_grpc
from mallkit.auth import MEMBER, STAFF, Principal, TokenCodec, member_scope, principal
from mallkit.db import is_duplicate_key, run_transaction
from mallkit.errors import InvalidArgument
from mallkit.idempotency import Idempotency
from mallkit.names import optional_id, parse_id, parse_ids
from mallkit.pagination import PageTokens, next_token, page_size
from mallkit.validation import IDENTIFIER, Validator

from . import principals
from .models import (
    AttributeDefinition,
    ChannelCode,
    Member,
    Staff,
    Store,
    Tag,
    TagGroup,
    Tier,
    TierChange,
    Touch,
    Touchpoint,
)
from .service import ROLE_NAMES, MembersService
from .wechat import WechatClient

CODE = re.compile(r"[A-Za-z0-9_#-]{1,128}")
SCENE = re.compile(r"[A-Za-z0-9]{1,32}")
INVITE = re.compile(r"[A-Z0-9]{4,16}")
USERNAME = re.compile(r"[A-Za-z0-9_.-]{3,32}")
ATTRIBUTE_KEY = re.compile(r"[a-z][a-z0-9_]{1,31}")
PHONE = re.compile(r"1[3-9][0-9]{9}")
URL = re.compile(r"https://[^\s<>\"']{1,500}")
INTEGER = re.compile(r"-?[0-9]{1,18}")
FLAG = re.compile(r"[a-z][a-z0-9_]{0,31}")

MEMBER_FIELDS = {"nickname", "avatar_url", "gender", "birthday", "region", "region.province", "region.city",
                 "occupation", "phone", "phone_consent", "attributes"}
MEMBER_OUTPUT_ONLY = {"name", "invite_code", "inviter", "tier", "growth_value", "first_touch_channel_code",
                      "first_touch_channel_type", "guide", "store", "create_time", "update_time"}


def _ts(msg_field, dt) -> None:
    if dt is not None:
        msg_field.FromDatetime(dt)


# --- rows -> protos ------------------------------------------------------------------------

def member_pb(m: Member, attributes: dict[str, str]) -> pb.Member:
    out = pb.Member(
        name=f"members/{m.id}", nickname=m.nickname, avatar_url=m.avatar_url, gender=m.gender,
        region=pb.Region(province=m.province, city=m.city), occupation=m.occupation, phone=m.phone or "",
        phone_consent=m.phone_consent, attributes=attributes, invite_code=m.invite_code,
        inviter=f"members/{m.inviter_id}" if m.inviter_id else "", tier=f"tiers/{m.tier_id}" if m.tier_id else "",
        growth_value=m.growth_value,
        first_touch_channel_code=f"channelCodes/{m.first_touch_channel_id}" if m.first_touch_channel_id else "",
        first_touch_channel_type=m.first_touch_channel_type, guide=f"staff/{m.guide_id}" if m.guide_id else "",
        store=f"stores/{m.store_id}" if m.store_id else "",
    )
    if m.birthday:
        out.birthday.year, out.birthday.month, out.birthday.day = m.birthday.year, m.birthday.month, m.birthday.day
    _ts(out.create_time, m.create_time)
    _ts(out.update_time, m.update_time)
    return out


def channel_pb(c: ChannelCode, tags: list[Tag]) -> pb.ChannelCode:
    out = pb.ChannelCode(
        name=f"channelCodes/{c.id}", display_name=c.display_name, channel_type=c.channel_type,
        store=f"stores/{c.store_id}" if c.store_id else "", guide=f"staff/{c.guide_id}" if c.guide_id else "",
        tags=[f"tagGroups/{t.group_id}/tags/{t.id}" for t in tags], scene=c.scene, arrival_count=c.arrival_count,
    )
    _ts(out.create_time, c.create_time)
    return out


def touchpoint_pb(t: Touchpoint) -> pb.Touchpoint:
    out = pb.Touchpoint(name=f"members/{t.member_id}/touchpoints/{t.id}", scene=t.scene,
                        channel_code=f"channelCodes/{t.channel_code_id}", channel_type=t.channel_type,
                        first_touch=t.first_touch)
    _ts(out.create_time, t.create_time)
    return out


def tier_pb(t: Tier) -> pb.Tier:
    out = pb.Tier(name=f"tiers/{t.id}", display_name=t.display_name, growth_threshold=t.growth_threshold,
                  benefits=pb.TierBenefits(points_multiplier_percent=t.points_multiplier_percent,
                                           discount_percent=t.discount_percent,
                                           flags=[f for f in t.flags.split(",") if f]))
    _ts(out.create_time, t.create_time)
    return out


def tier_change_pb(c: TierChange) -> pb.TierChange:
    out = pb.TierChange(name=f"members/{c.member_id}/tierChanges/{c.id}",
                        from_tier=f"tiers/{c.from_tier_id}" if c.from_tier_id else "", to_tier=f"tiers/{c.to_tier_id}",
                        growth_value=c.growth_value)
    _ts(out.create_time, c.create_time)
    return out


def tag_group_pb(g: TagGroup) -> pb.TagGroup:
    out = pb.TagGroup(name=f"tagGroups/{g.id}", display_name=g.display_name, selection=g.selection,
                      description=g.description)
    _ts(out.create_time, g.create_time)
    return out


def tag_pb(t: Tag) -> pb.Tag:
    out = pb.Tag(name=f"tagGroups/{t.group_id}/tags/{t.id}", display_name=t.display_name)
    _ts(out.create_time, t.create_time)
    return out


def store_pb(st: Store) -> pb.Store:
    out = pb.Store(name=f"stores/{st.id}", display_name=st.display_name,
                   region=pb.Region(province=st.province, city=st.city), address=st.address)
    _ts(out.create_time, st.create_time)
    return out


def staff_pb(st: Staff) -> pb.Staff:
    out = pb.Staff(name=f"staff/{st.id}", username=st.username, display_name=st.display_name, role=st.role,
                   store=f"stores/{st.store_id}" if st.store_id else "")
    _ts(out.create_time, st.create_time)
    return out


def attribute_definition_pb(d: AttributeDefinition) -> pb.AttributeDefinition:
    out = pb.AttributeDefinition(name=f"attributeDefinitions/{d.key}", key=d.key, display_name=d.display_name, type=d.type)
    _ts(out.create_time, d.create_time)
    return out


def touch_pb(t: Touch) -> pb.Touch:
    out = pb.Touch(name=f"members/{t.member_id}/touches/{t.id}", template_id=t.template_id, purpose=t.purpose,
                   state=t.state, skip_reason=t.skip_reason)
    _ts(out.create_time, t.create_time)
    return out


# --- validation helpers --------------------------------------------------------------------

def _mask(paths, message, output_only: set[str], allowed: set[str], prefix: str) -> list[str]:
    """The update paths: the mask, or the populated fields; output-only paths ignored."""
    if not paths:
        paths = [f.name for f, _ in message.ListFields()]
    if "*" in paths:
        paths = sorted(p for p in allowed if "." not in p)
    out = []
    for p in paths:
        if p in output_only:
            continue
        if p not in allowed and not (p.startswith("attributes.") and "attributes" in allowed):
            raise InvalidArgument.field("update_mask", f"{p!r} is not an updatable field of {prefix}")
        out.append(p)
    return out


def _birthday(v: Validator, d) -> date | None:
    if d.year == 0 and d.month == 0 and d.day == 0:
        return None
    try:
        value = date(d.year, d.month, d.day)
    except ValueError:
        v.fail("member.birthday", "is not a valid date")
        return None
    if value.year < 1900 or value > date.today():
        v.fail("member.birthday", "must be between 1900-01-01 and today")
        return None
    return value


def _check_attribute(v: Validator, key: str, value: str, definition: AttributeDefinition | None) -> None:
    field = f"member.attributes.{key}"
    if definition is None:
        v.fail(field, "is not a defined attribute")
        return
    if value == "":
        return  # removes the attribute
    if definition.type == pb.ATTRIBUTE_TYPE_STRING:
        v.text(field, value, max_len=128)
    elif definition.type == pb.ATTRIBUTE_TYPE_INTEGER:
        v.check(bool(INTEGER.fullmatch(value)), field, "must be an integer")
    elif definition.type == pb.ATTRIBUTE_TYPE_BOOLEAN:
        v.check(value in ("true", "false"), field, "must be true or false")
    elif definition.type == pb.ATTRIBUTE_TYPE_DATE:
        try:
            date.fromisoformat(value)
            v.check(len(value) == 10, field, "must be a date YYYY-MM-DD")
        except ValueError:
            v.fail(field, "must be a date YYYY-MM-DD")


def _benefits(v: Validator, b: pb.TierBenefits, field: str) -> dict:
    mult = b.points_multiplier_percent or 100
    disc = b.discount_percent or 100
    v.range(f"{field}.points_multiplier_percent", mult, 100, 1000)
    v.range(f"{field}.discount_percent", disc, 50, 100)
    v.check(len(b.flags) <= 10, f"{field}.flags", "at most 10 flags")
    for i, f in enumerate(b.flags):
        v.pattern(f"{field}.flags[{i}]", f, FLAG, "lowercase letters, digits and '_', 1 to 32")
    return {"points_multiplier_percent": mult, "discount_percent": disc, "flags": ",".join(dict.fromkeys(b.flags))}


def _tag_ids(names, field: str) -> list[int]:
    return [parse_ids(n, "tagGroups/{}/tags/{}", f"{field}[{i}]")[1] for i, n in enumerate(names)]


class MembersServicer(pb_grpc.MembersServiceServicer):
    def __init__(
        self,
        service: MembersService,
        sessions: async_sessionmaker[AsyncSession],
        idempotency: Idempotency,
        codec: TokenCodec,
        pages: PageTokens,
        wechat: WechatClient,
    ):
        self.service = service
        self.sessions = sessions
        self.idem = idempotency
        self.codec = codec
        self.pages = pages
        self.wechat = wechat

    def _after(self, token: str, filters=()) -> int | None:
        key = self.pages.decode(token, filters)
        return int(key[0]) if key else None

    # --- login -----------------------------------------------------------------------------

    async def LoginWithWechat(self, request, context):
        v = Validator()
        v.pattern("code", request.code, CODE, "must be the code from wx.login", required=True)
        v.pattern("channel_code", request.channel_code, SCENE, "must be a channel code scene")
        v.pattern("invite_code", request.invite_code, INVITE, "must be an invite code")
        v.done()
        identity = await self.wechat.code_to_session(request.code)

        async def use_case(s: AsyncSession):
            m, created = await self.service.login_with_wechat(s, identity, request.channel_code, request.invite_code)
            return m, created, await self.service.attributes_of(s, m.id)

        for attempt in range(3):
            try:
                m, created, attrs = await run_transaction(self.sessions, use_case)
                break
            except IntegrityError as exc:  # the same user logging in twice at once: the second finds the first
                if not is_duplicate_key(exc) or attempt == 2:
                    raise
        token, expires = self.codec.issue(Principal(MEMBER, f"members/{m.id}"))
        out = pb.LoginWithWechatResponse(access_token=token, member=member_pb(m, attrs), created=created)
        out.expire_time.FromDatetime(expires)
        return out

    async def LoginStaff(self, request, context):
        v = Validator()
        v.pattern("username", request.username, USERNAME, "3 to 32 letters, digits, '_', '-' or '.'", required=True)
        v.check(0 < len(request.password) <= 128, "password", "is required (at most 128 characters)")
        v.done()
        async with self.sessions() as s:
            st = await self.service.login_staff(s, request.username, request.password)
        token, expires = self.codec.issue(Principal(STAFF, f"staff/{st.id}", frozenset({ROLE_NAMES[st.role]})))
        out = pb.LoginStaffResponse(access_token=token, staff=staff_pb(st))
        out.expire_time.FromDatetime(expires)
        return out

    # --- members ---------------------------------------------------------------------------

    async def GetMember(self, request, context):
        member_id = member_scope(request.name)
        async with self.sessions() as s:
            m = await self.service.member(s, member_id)
            return member_pb(m, await self.service.attributes_of(s, member_id))

    async def GetMemberIdentity(self, request, context):
        member_id = parse_id(request.member, "members", "member")
        async with self.sessions() as s:
            m = await self.service.member(s, member_id)
        return pb.MemberIdentity(member=f"members/{m.id}", app_id=self.wechat.appid, openid=m.openid,
                                 unionid=m.unionid or "")

    async def CheckPrincipal(self, request, context):
        return await principals.check(self.sessions, request)

    async def ListMembers(self, request, context):
        size = page_size(request.page_size)
        tier_id = optional_id(request.tier, "tiers", "tier")
        tag_id = parse_ids(request.tag, "tagGroups/{}/tags/{}", "tag")[1] if request.tag else None
        channel_id = optional_id(request.first_touch_channel_code, "channelCodes", "first_touch_channel_code")
        filters = (tier_id, tag_id, channel_id)
        async with self.sessions() as s:
            rows = await self.service.list_members(s, size=size, before_id=self._after(request.page_token, filters),
                                                   tier_id=tier_id, tag_id=tag_id, channel_id=channel_id)
            rows, token = next_token(self.pages, rows, size, lambda m: [m.id], filters)
            out = [member_pb(m, await self.service.attributes_of(s, m.id)) for m in rows]
        return pb.ListMembersResponse(members=out, next_page_token=token)

    async def UpdateMember(self, request, context):
        member_id = member_scope(request.member.name, "member.name")
        paths = _mask(request.update_mask.paths, request.member, MEMBER_OUTPUT_ONLY, MEMBER_FIELDS, "Member")
        m, v, changes = request.member, Validator(), {}
        attributes: dict[str, str] | None = None
        replace_attributes = False
        for p in paths:
            if p == "nickname":
                v.text("member.nickname", m.nickname, max_len=32, min_len=1)
                changes["nickname"] = m.nickname
            elif p == "avatar_url":
                v.pattern("member.avatar_url", m.avatar_url, URL, "must be an https URL of at most 512 characters")
                changes["avatar_url"] = m.avatar_url
            elif p == "gender":
                v.enum("member.gender", m.gender, pb.Gender)
                changes["gender"] = m.gender
            elif p == "birthday":
                changes["birthday"] = _birthday(v, m.birthday)
            elif p in ("region", "region.province", "region.city"):
                if p != "region.city":
                    v.text("member.region.province", m.region.province, max_len=32)
                    changes["province"] = m.region.province
                if p != "region.province":
                    v.text("member.region.city", m.region.city, max_len=32)
                    changes["city"] = m.region.city
            elif p == "occupation":
                v.text("member.occupation", m.occupation, max_len=32)
                changes["occupation"] = m.occupation
            elif p == "phone":
                v.pattern("member.phone", m.phone, PHONE, "must be an 11-digit mainland mobile number")
                changes["phone"] = m.phone or None
            elif p == "phone_consent":
                changes["phone_consent"] = m.phone_consent
            elif p == "attributes":
                attributes, replace_attributes = dict(m.attributes), True
            elif p.startswith("attributes."):
                key = p.split(".", 1)[1]
                attributes = attributes or {}
                attributes[key] = m.attributes.get(key, "")
        v.done()

        async def use_case(s: AsyncSession) -> pb.Member:
            if attributes:
                defs = await self.service.attribute_definitions(s, list(attributes))
                av = Validator()
                for key, value in attributes.items():
                    _check_attribute(av, key, value, defs.get(key))
                av.done()
            row = await self.service.update_member(s, member_id, changes, attributes, replace_attributes)
            return member_pb(row, await self.service.attributes_of(s, member_id))

        return await self.idem.run(request, pb.Member, use_case)

    async def CreateAttributeDefinition(self, request, context):
        d, v = request.attribute_definition, Validator()
        v.pattern("attribute_definition.key", d.key, ATTRIBUTE_KEY, "lowercase letters, digits and '_', 2 to 32", required=True)
        v.text("attribute_definition.display_name", d.display_name, max_len=32, min_len=1)
        v.enum("attribute_definition.type", d.type, pb.AttributeType, required=True)
        v.done()

        async def use_case(s):
            return attribute_definition_pb(await self.service.create_attribute_definition(s, d.key, d.display_name, d.type))

        return await self.idem.run(request, pb.AttributeDefinition, use_case)

    async def ListAttributeDefinitions(self, request, context):
        size = page_size(request.page_size)
        key = self.pages.decode(request.page_token)
        async with self.sessions() as s:
            rows = await self.service.list_attribute_definitions(s, size, key[0] if key else None)
        rows, token = next_token(self.pages, rows, size, lambda d: [d.key])
        return pb.ListAttributeDefinitionsResponse(attribute_definitions=[attribute_definition_pb(d) for d in rows],
                                                   next_page_token=token)

    # --- channel codes and touchpoints -----------------------------------------------------

    async def CreateChannelCode(self, request, context):
        c, v = request.channel_code, Validator()
        v.text("channel_code.display_name", c.display_name, max_len=64, min_len=1)
        v.enum("channel_code.channel_type", c.channel_type, pb.ChannelType, required=True)
        v.check(len(c.tags) <= 20, "channel_code.tags", "at most 20 tags")
        v.done()
        store_id = optional_id(c.store, "stores", "channel_code.store")
        guide_id = optional_id(c.guide, "staff", "channel_code.guide")
        tag_ids = _tag_ids(c.tags, "channel_code.tags")

        async def use_case(s):
            row = await self.service.create_channel_code(s, display_name=c.display_name, channel_type=c.channel_type,
                                                         store_id=store_id, guide_id=guide_id, tag_ids=tag_ids)
            return channel_pb(row, (await self.service.channel_tags(s, [row.id]))[row.id])

        return await self.idem.run(request, pb.ChannelCode, use_case)

    async def GetChannelCode(self, request, context):
        channel_id = parse_id(request.name, "channelCodes", "name")
        async with self.sessions() as s:
            c = await self.service.channel_code(s, channel_id)
            return channel_pb(c, (await self.service.channel_tags(s, [c.id]))[c.id])

    async def ListChannelCodes(self, request, context):
        size = page_size(request.page_size)
        async with self.sessions() as s:
            rows = await self.service.list_channel_codes(s, size, self._after(request.page_token))
            rows, token = next_token(self.pages, rows, size, lambda c: [c.id])
            tags = await self.service.channel_tags(s, [c.id for c in rows])
        return pb.ListChannelCodesResponse(channel_codes=[channel_pb(c, tags[c.id]) for c in rows], next_page_token=token)

    async def UpdateChannelCode(self, request, context):
        c = request.channel_code
        channel_id = parse_id(c.name, "channelCodes", "channel_code.name")
        paths = _mask(request.update_mask.paths, c, {"name", "scene", "arrival_count", "create_time", "channel_type"},
                      {"display_name", "store", "guide", "tags"}, "ChannelCode")
        v, changes = Validator(), {}
        tag_ids = None
        if "display_name" in paths:
            v.text("channel_code.display_name", c.display_name, max_len=64, min_len=1)
            changes["display_name"] = c.display_name
        if "tags" in paths:
            v.check(len(c.tags) <= 20, "channel_code.tags", "at most 20 tags")
        v.done()
        if "store" in paths:
            changes["store_id"] = optional_id(c.store, "stores", "channel_code.store")
        if "guide" in paths:
            changes["guide_id"] = optional_id(c.guide, "staff", "channel_code.guide")
        if "tags" in paths:
            tag_ids = _tag_ids(c.tags, "channel_code.tags")

        async def use_case(s):
            row = await self.service.update_channel_code(s, channel_id, changes, tag_ids)
            return channel_pb(row, (await self.service.channel_tags(s, [row.id]))[row.id])

        return await self.idem.run(request, pb.ChannelCode, use_case)

    async def DeleteChannelCode(self, request, context):
        channel_id = parse_id(request.name, "channelCodes", "name")

        async def use_case(s):
            await self.service.delete_channel_code(s, channel_id)
            return empty_pb2.Empty()

        return await self.idem.run(request, empty_pb2.Empty, use_case)

    async def CreateTouchpoint(self, request, context):
        member_id = member_scope(request.parent, "parent")
        v = Validator()
        v.pattern("touchpoint.scene", request.touchpoint.scene, SCENE, "must be a channel code scene", required=True)
        v.done()

        async def use_case(s):
            return touchpoint_pb(await self.service.create_touchpoint(s, member_id, request.touchpoint.scene))

        return await self.idem.run(request, pb.Touchpoint, use_case)

    async def ListTouchpoints(self, request, context):
        member_id = member_scope(request.parent, "parent")
        size = page_size(request.page_size)
        async with self.sessions() as s:
            rows = await self.service.list_touchpoints(s, member_id, size, self._after(request.page_token, [member_id]))
        rows, token = next_token(self.pages, rows, size, lambda t: [t.id], [member_id])
        return pb.ListTouchpointsResponse(touchpoints=[touchpoint_pb(t) for t in rows], next_page_token=token)

    # --- tiers and growth ------------------------------------------------------------------

    async def CreateTier(self, request, context):
        t, v = request.tier, Validator()
        v.text("tier.display_name", t.display_name, max_len=32, min_len=1)
        v.range("tier.growth_threshold", t.growth_threshold, 0, 10**12)
        benefits = _benefits(v, t.benefits, "tier.benefits")
        v.done()

        async def use_case(s):
            row = await self.service.create_tier(
                s, {"display_name": t.display_name, "growth_threshold": t.growth_threshold, **benefits}
            )
            return tier_pb(row)

        return await self.idem.run(request, pb.Tier, use_case)

    async def ListTiers(self, request, context):
        size = page_size(request.page_size)
        key = self.pages.decode(request.page_token)
        async with self.sessions() as s:
            rows = await self.service.list_tiers(s, size, int(key[0]) if key else None)
        rows, token = next_token(self.pages, rows, size, lambda t: [t.growth_threshold])
        return pb.ListTiersResponse(tiers=[tier_pb(t) for t in rows], next_page_token=token)

    async def UpdateTier(self, request, context):
        t = request.tier
        tier_id = parse_id(t.name, "tiers", "tier.name")
        paths = _mask(request.update_mask.paths, t, {"name", "create_time"},
                      {"display_name", "growth_threshold", "benefits"}, "Tier")
        v, changes = Validator(), {}
        if "display_name" in paths:
            v.text("tier.display_name", t.display_name, max_len=32, min_len=1)
            changes["display_name"] = t.display_name
        if "growth_threshold" in paths:
            v.range("tier.growth_threshold", t.growth_threshold, 0, 10**12)
            changes["growth_threshold"] = t.growth_threshold
        if "benefits" in paths:
            changes.update(_benefits(v, t.benefits, "tier.benefits"))
        v.done()

        async def use_case(s):
            return tier_pb(await self.service.update_tier(s, tier_id, changes))

        return await self.idem.run(request, pb.Tier, use_case)

    async def AddGrowth(self, request, context):
        member_id = parse_id(request.member, "members", "member")
        v = Validator()
        v.range("amount", request.amount, 1, 100_000_000)
        v.pattern("source", request.source, re.compile(r"[a-z][a-z0-9_.]{0,31}"), "lowercase identifier, at most 32",
                  required=True)
        v.text("source_ref", request.source_ref, max_len=128)
        v.done()

        async def use_case(s):
            growth, tier_id, upgraded = await self.service.add_growth(s, member_id, request.amount, request.source,
                                                                      request.source_ref)
            return pb.AddGrowthResponse(growth_value=growth, tier=f"tiers/{tier_id}" if tier_id else "", upgraded=upgraded)

        return await self.idem.run(request, pb.AddGrowthResponse, use_case, required=True)

    async def ListTierChanges(self, request, context):
        member_id = member_scope(request.parent, "parent")
        size = page_size(request.page_size)
        async with self.sessions() as s:
            rows = await self.service.list_tier_changes(s, member_id, size, self._after(request.page_token, [member_id]))
        rows, token = next_token(self.pages, rows, size, lambda c: [c.id], [member_id])
        return pb.ListTierChangesResponse(tier_changes=[tier_change_pb(c) for c in rows], next_page_token=token)

    # --- tags ------------------------------------------------------------------------------

    async def CreateTagGroup(self, request, context):
        g, v = request.tag_group, Validator()
        v.text("tag_group.display_name", g.display_name, max_len=32, min_len=1)
        v.enum("tag_group.selection", g.selection, pb.TagSelection, required=True)
        v.text("tag_group.description", g.description, max_len=256)
        v.done()

        async def use_case(s):
            return tag_group_pb(await self.service.create_tag_group(s, g.display_name, g.selection, g.description))

        return await self.idem.run(request, pb.TagGroup, use_case)

    async def ListTagGroups(self, request, context):
        size = page_size(request.page_size)
        async with self.sessions() as s:
            rows = await self.service.list_tag_groups(s, size, self._after(request.page_token))
        rows, token = next_token(self.pages, rows, size, lambda g: [g.id])
        return pb.ListTagGroupsResponse(tag_groups=[tag_group_pb(g) for g in rows], next_page_token=token)

    async def UpdateTagGroup(self, request, context):
        g = request.tag_group
        group_id = parse_id(g.name, "tagGroups", "tag_group.name")
        paths = _mask(request.update_mask.paths, g, {"name", "create_time", "selection"},
                      {"display_name", "description"}, "TagGroup")
        v, changes = Validator(), {}
        if "display_name" in paths:
            v.text("tag_group.display_name", g.display_name, max_len=32, min_len=1)
            changes["display_name"] = g.display_name
        if "description" in paths:
            v.text("tag_group.description", g.description, max_len=256)
            changes["description"] = g.description
        v.done()

        async def use_case(s):
            return tag_group_pb(await self.service.update_tag_group(s, group_id, changes))

        return await self.idem.run(request, pb.TagGroup, use_case)

    async def DeleteTagGroup(self, request, context):
        group_id = parse_id(request.name, "tagGroups", "name")

        async def use_case(s):
            await self.service.delete_tag_group(s, group_id)
            return empty_pb2.Empty()

        return await self.idem.run(request, empty_pb2.Empty, use_case)

    async def CreateTag(self, request, context):
        group_id = parse_id(request.parent, "tagGroups", "parent")
        v = Validator()
        v.text("tag.display_name", request.tag.display_name, max_len=32, min_len=1)
        v.done()

        async def use_case(s):
            return tag_pb(await self.service.create_tag(s, group_id, request.tag.display_name))

        return await self.idem.run(request, pb.Tag, use_case)

    async def ListTags(self, request, context):
        group_id = None if request.parent == "tagGroups/-" else parse_id(request.parent, "tagGroups", "parent")
        size = page_size(request.page_size)
        async with self.sessions() as s:
            rows = await self.service.list_tags(s, group_id, size, self._after(request.page_token, [group_id]))
        rows, token = next_token(self.pages, rows, size, lambda t: [t.id], [group_id])
        return pb.ListTagsResponse(tags=[tag_pb(t) for t in rows], next_page_token=token)

    async def DeleteTag(self, request, context):
        group_id, tag_id = parse_ids(request.name, "tagGroups/{}/tags/{}", "name")

        async def use_case(s):
            await self.service.delete_tag(s, group_id, tag_id)
            return empty_pb2.Empty()

        return await self.idem.run(request, empty_pb2.Empty, use_case)

    def _bulk(self, request) -> tuple[list[int], list[int]]:
        v = Validator()
        v.check(1 <= len(request.members) <= 1000, "members", "1 to 1000 members")
        v.check(1 <= len(request.tags) <= 20, "tags", "1 to 20 tags")
        v.done()
        members = [parse_id(n, "members", f"members[{i}]") for i, n in enumerate(request.members)]
        return members, _tag_ids(request.tags, "tags")

    async def ApplyTags(self, request, context):
        members, tags = self._bulk(request)
        p = principal()
        if p.is_staff:
            source, ref = pb.TAG_SOURCE_MANUAL, p.subject
        else:
            v = Validator()
            v.enum("source", request.source, pb.TagSource)
            v.text("source_ref", request.source_ref, max_len=128)
            v.done()
            source, ref = request.source or pb.TAG_SOURCE_RULE, request.source_ref

        async def use_case(s):
            return pb.ApplyTagsResponse(applied_count=await self.service.apply_tags(s, members, tags, source, ref))

        return await self.idem.run(request, pb.ApplyTagsResponse, use_case)

    async def RemoveTags(self, request, context):
        members, tags = self._bulk(request)

        async def use_case(s):
            return pb.RemoveTagsResponse(removed_count=await self.service.remove_tags(s, members, tags))

        return await self.idem.run(request, pb.RemoveTagsResponse, use_case)

    async def ListMemberTags(self, request, context):
        member_id = member_scope(request.parent, "parent")
        size = page_size(request.page_size)
        async with self.sessions() as s:
            rows = await self.service.list_member_tags(s, member_id, size, self._after(request.page_token, [member_id]))
        rows, token = next_token(self.pages, rows, size, lambda r: [r[0].tag_id], [member_id])
        out = []
        for mt, tag in rows:
            item = pb.MemberTag(tag=f"tagGroups/{tag.group_id}/tags/{tag.id}", tag_display_name=tag.display_name,
                                source=mt.source, source_ref=mt.source_ref)
            _ts(item.create_time, mt.create_time)
            out.append(item)
        return pb.ListMemberTagsResponse(member_tags=out, next_page_token=token)

    # --- stores and staff ------------------------------------------------------------------

    async def CreateStore(self, request, context):
        st, v = request.store, Validator()
        v.text("store.display_name", st.display_name, max_len=64, min_len=1)
        v.text("store.region.province", st.region.province, max_len=32)
        v.text("store.region.city", st.region.city, max_len=32)
        v.text("store.address", st.address, max_len=256)
        v.done()

        async def use_case(s):
            return store_pb(await self.service.create_store(s, {
                "display_name": st.display_name, "province": st.region.province, "city": st.region.city,
                "address": st.address}))

        return await self.idem.run(request, pb.Store, use_case)

    async def ListStores(self, request, context):
        size = page_size(request.page_size)
        async with self.sessions() as s:
            rows = await self.service.list_stores(s, size, self._after(request.page_token))
        rows, token = next_token(self.pages, rows, size, lambda st: [st.id])
        return pb.ListStoresResponse(stores=[store_pb(st) for st in rows], next_page_token=token)

    async def CreateStaff(self, request, context):
        st, v = request.staff, Validator()
        v.pattern("staff.username", st.username, USERNAME, "3 to 32 letters, digits, '_', '-' or '.'", required=True)
        v.text("staff.display_name", st.display_name, max_len=32, min_len=1)
        v.enum("staff.role", st.role, pb.StaffRole, required=True)
        v.check(10 <= len(st.password) <= 128, "staff.password", "must be 10 to 128 characters")
        v.done()
        store_id = optional_id(st.store, "stores", "staff.store")

        async def use_case(s):
            return staff_pb(await self.service.create_staff(s, username=st.username, display_name=st.display_name,
                                                            role=st.role, store_id=store_id, password=st.password))

        return await self.idem.run(request, pb.Staff, use_case)

    async def GetStaff(self, request, context):
        staff_id = parse_id(request.name, "staff", "name")
        async with self.sessions() as s:
            return staff_pb(await self.service.staff(s, staff_id))

    async def ListStaff(self, request, context):
        size = page_size(request.page_size)
        async with self.sessions() as s:
            rows = await self.service.list_staff(s, size, self._after(request.page_token))
        rows, token = next_token(self.pages, rows, size, lambda st: [st.id])
        return pb.ListStaffResponse(staff=[staff_pb(st) for st in rows], next_page_token=token)

    # --- reach -----------------------------------------------------------------------------

    async def RecordSubscriptions(self, request, context):
        member_id = member_scope(request.parent, "parent")
        v = Validator()
        v.check(1 <= len(request.accepted_template_ids) <= 10, "accepted_template_ids", "1 to 10 template ids")
        for i, t in enumerate(request.accepted_template_ids):
            v.pattern(f"accepted_template_ids[{i}]", t, IDENTIFIER, "letters, digits, '_' or '-', at most 64")
        v.done()

        async def use_case(s):
            remaining = await self.service.record_subscriptions(s, member_id, list(request.accepted_template_ids))
            return pb.RecordSubscriptionsResponse(remaining=remaining)

        return await self.idem.run(request, pb.RecordSubscriptionsResponse, use_case)

    async def SendReach(self, request, context):
        member_id = parse_id(request.member, "members", "member")
        v = Validator()
        v.pattern("template_id", request.template_id, IDENTIFIER, "letters, digits, '_' or '-', at most 64", required=True)
        v.text("purpose", request.purpose, max_len=64, min_len=1)
        v.text("page", request.page, max_len=256)
        v.check(len(request.data) <= 20, "data", "at most 20 keywords")
        for key, value in request.data.items():
            v.pattern(f"data.{key}", key, IDENTIFIER, "keys are letters, digits, '_' or '-'")
            v.text(f"data.{key}", value, max_len=200)
        v.done()

        async def use_case(s):
            touch = await self.service.send_reach(s, member_id, request.template_id, dict(request.data), request.page,
                                                  request.purpose)
            return touch_pb(touch)

        return await self.idem.run(request, pb.Touch, use_case, required=True)

    async def ListTouches(self, request, context):
        member_id = member_scope(request.parent, "parent")
        size = page_size(request.page_size)
        async with self.sessions() as s:
            rows = await self.service.list_touches(s, member_id, size, self._after(request.page_token, [member_id]))
        rows, token = next_token(self.pages, rows, size, lambda t: [t.id], [member_id])
        return pb.ListTouchesResponse(touches=[touch_pb(t) for t in rows], next_page_token=token)
