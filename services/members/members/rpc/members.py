"""RPCs of members: sign-in with WeChat, the portrait, identities and attribute definitions."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from mall.members.v1 import members_service_pb2 as pb
from mallkit.auth import MEMBER, Principal, member_scope
from mallkit.db import read
from mallkit.names import optional_id, parse_id, parse_ids
from mallkit.pagination import page_size
from mallkit.validation import Validator

from .. import principals
from ..messages import (
    ATTRIBUTE_KEY,
    CODE,
    INVITE,
    MEMBER_FIELDS,
    MEMBER_OUTPUT_ONLY,
    PHONE,
    SCENE,
    URL,
    VISITOR,
    attribute_definition_pb,
    birthday_of,
    check_attribute,
    member_pb,
    update_paths,
)
from .base import RpcBase


class MembersRpc(RpcBase):
    async def LoginWithWechat(self, request, context):
        v = Validator()
        v.pattern("code", request.code, CODE, "must be the code from wx.login", required=True)
        v.pattern("channel_code", request.channel_code, SCENE, "must be a channel code scene")
        v.pattern("invite_code", request.invite_code, INVITE, "must be an invite code")
        v.pattern("visitor_id", request.visitor_id, VISITOR, "must be 8 to 40 characters of [A-Za-z0-9_-]")
        v.done()
        m, created, attrs = await self.identity.sign_in(request.code, request.channel_code, request.invite_code,
                                                        request.visitor_id)
        token, expires = self.codec.issue(Principal(MEMBER, f"members/{m.id}"))
        out = pb.LoginWithWechatResponse(access_token=token, member=member_pb(m, attrs), created=created)
        out.expire_time.FromDatetime(expires)
        return out

    async def GetMember(self, request, context):
        member_id = member_scope(request.name)
        return await self.member_cache.get(member_id, lambda: self._member_view(member_id))

    async def _member_view(self, member_id: int) -> pb.Member:
        return member_pb(*await read(self.sessions, lambda s: self.portrait.member_view(s, member_id)))

    async def GetMemberIdentity(self, request, context):
        member_id = parse_id(request.member, "members", "member")
        async with self.sessions() as s:
            m = await self.portrait.member(s, member_id)
        return pb.MemberIdentity(member=f"members/{m.id}", app_id=self.wechat.appid, openid=m.openid,
                                 unionid=m.unionid or "")

    async def CheckPrincipals(self, request, context):
        return await principals.check(self.sessions, request)

    async def ListMembers(self, request, context):
        size = page_size(request.page_size)
        tier_id = optional_id(request.tier, "tiers", "tier")
        tag_id = parse_ids(request.tag, "tagGroups/{}/tags/{}", "tag")[1] if request.tag else None
        channel_id = optional_id(request.first_touch_channel_code, "channelCodes", "first_touch_channel_code")
        async with self.sessions() as s:
            rows, token = await self.portrait.list_members(s, size=size, token=request.page_token, tier_id=tier_id,
                                                           tag_id=tag_id, channel_id=channel_id)
            out = [member_pb(m, await self.portrait.attributes_of(s, m.id)) for m in rows]
        return pb.ListMembersResponse(members=out, next_page_token=token)

    async def UpdateMember(self, request, context):
        member_id = member_scope(request.member.name, "member.name")
        paths = update_paths(request.update_mask.paths, request.member, MEMBER_OUTPUT_ONLY, MEMBER_FIELDS, "Member")
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
                changes["birthday"] = birthday_of(v, m.birthday)
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
                defs = await self.portrait.attribute_definitions(s, list(attributes))
                av = Validator()
                for key, value in attributes.items():
                    check_attribute(av, key, value, defs.get(key))
                av.done()
            row = await self.portrait.update_member(s, member_id, changes, attributes, replace_attributes)
            return member_pb(row, await self.portrait.attributes_of(s, member_id))

        return await self.idem.run(request, pb.Member, use_case)

    async def CreateAttributeDefinition(self, request, context):
        d, v = request.attribute_definition, Validator()
        v.pattern("attribute_definition.key", d.key, ATTRIBUTE_KEY, "lowercase letters, digits and '_', 2 to 32", required=True)
        v.text("attribute_definition.display_name", d.display_name, max_len=32, min_len=1)
        v.enum("attribute_definition.type", d.type, pb.AttributeType, required=True)
        v.done()

        async def use_case(s):
            return attribute_definition_pb(await self.portrait.create_attribute_definition(s, d.key, d.display_name, d.type))

        return await self.idem.run(request, pb.AttributeDefinition, use_case)

    async def ListAttributeDefinitions(self, request, context):
        size = page_size(request.page_size)
        async with self.sessions() as s:
            rows, token = await self.portrait.list_attribute_definitions(s, size, request.page_token)
        return pb.ListAttributeDefinitionsResponse(attribute_definitions=[attribute_definition_pb(d) for d in rows],
                                                   next_page_token=token)
