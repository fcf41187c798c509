"""Identity: sign-in with WeChat (find or register the member of an openid), referral by invite code,
and the arrival through a channel code at sign-in."""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mall.members.v1 import members_service_pb2 as pb
from mallkit.db import is_duplicate_key, run_transaction, utcnow
from mallkit.events import Outbox

from .behaviour import Behaviour
from .channels import Channels
from .codes import new_code
from .funnels import Funnels
from .models import Member, TierChange
from .portrait import Portrait
from .tiers import Tiers
from .wechat import WechatClient, WechatIdentity

log = logging.getLogger("members.identity")


class Identity:
    def __init__(self, portrait: Portrait, tiers: Tiers, channels: Channels, outbox: Outbox,
                 wechat: WechatClient | None, sessions: async_sessionmaker[AsyncSession] | None,
                 behaviour: Behaviour | None = None, funnels: Funnels | None = None):
        self.portrait = portrait
        self.tiers = tiers
        self.channels = channels
        self.outbox = outbox
        self.wechat = wechat
        self.sessions = sessions
        self.behaviour = behaviour
        self.funnels = funnels

    async def sign_in(self, code: str, scene: str, invite_code: str,
                      visitor_id: str = "") -> tuple[Member, bool, dict[str, str]]:
        """Exchange a wx.login code with WeChat (outside any transaction), then find or register the
        member in one transaction, merging the visitor's anonymous behaviour into it (once; a
        visitor already merged into another member is left alone); returns (member, created, attributes)."""
        assert self.wechat is not None and self.sessions is not None
        identity = await self.wechat.code_to_session(code)

        async def use_case(s: AsyncSession):
            m, created = await self.login_with_wechat(s, identity, scene, invite_code)
            visitor = visitor_id
            if visitor_id and self.behaviour is not None:
                if await self.behaviour.merge(s, visitor_id, m.id, strict=False) is None:
                    log.info("login with a visitor id merged into another member: not merged")
                    visitor = ""
            if created and self.funnels is not None:
                await self.funnels.acquire(s, m, visitor)
            return m, created, await self.portrait.attributes_of(s, m.id)

        for attempt in range(3):
            try:
                return await run_transaction(self.sessions, use_case)
            except IntegrityError as exc:  # the same user logging in twice at once: the second finds the first
                if not is_duplicate_key(exc) or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def login_with_wechat(
        self, s: AsyncSession, identity: WechatIdentity, scene: str, invite_code: str
    ) -> tuple[Member, bool]:
        """Find or create the member of an openid; record referral and arrival."""
        m = (await s.execute(select(Member).where(Member.openid == identity.openid))).scalar_one_or_none()
        created = False
        if m is None:
            m = await self.register(s, identity, invite_code)
            created = True
        elif identity.unionid and not m.unionid:
            m.unionid = identity.unionid
        if scene:
            channel = await self.channels.by_scene(s, scene)
            if channel is not None:
                await self.channels.record_arrival(s, m, channel)
            else:
                log.info("login with unknown channel scene ignored")
        return m, created

    async def register(self, s: AsyncSession, identity: WechatIdentity, invite_code: str) -> Member:
        now = utcnow()
        inviter = None
        if invite_code:
            inviter = (await s.execute(select(Member).where(Member.invite_code == invite_code))).scalar_one_or_none()
        entry = await self.tiers.tier_for(s, 0)
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
