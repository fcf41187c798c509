"""Channel codes and touchpoints: where members arrive from (package cards, store QR codes...), first
touch, arrival history, and the guide, store and tags a channel gives its arrivals."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mall.members.v1 import members_service_pb2 as pb
from mallkit.db import utcnow
from mallkit.errors import NotFound
from mallkit.pagination import PageTokens
from mallkit.queries import keyset_page

from . import errors as reasons
from .codes import new_code
from .guides import record_assignment
from .models import ChannelCode, ChannelCodeTag, Member, Tag, Touchpoint
from .portrait import Portrait
from .staff import Staffing
from .tags import Tags


class Channels:
    def __init__(self, portrait: Portrait, tags: Tags, staffing: Staffing, pages: PageTokens):
        self.portrait = portrait
        self.tags = tags
        self.staffing = staffing
        self.pages = pages

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
            await self.staffing.store(s, store_id, "channel_code.store")
        if guide_id is not None:
            await self.staffing.guide(s, guide_id, "channel_code.guide")
        await self.tags.tags_by_id(s, tag_ids, "channel_code.tags")
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
            await self.staffing.store(s, changes["store_id"], "channel_code.store")
        if changes.get("guide_id") is not None:
            await self.staffing.guide(s, changes["guide_id"], "channel_code.guide")
        for key, value in changes.items():
            setattr(c, key, value)
        if tag_ids is not None:
            await self.tags.tags_by_id(s, tag_ids, "channel_code.tags")
            await s.execute(delete(ChannelCodeTag).where(ChannelCodeTag.channel_code_id == c.id))
            for tid in dict.fromkeys(tag_ids):
                s.add(ChannelCodeTag(channel_code_id=c.id, tag_id=tid))
        await s.flush()
        return c

    async def delete_channel_code(self, s: AsyncSession, channel_id: int) -> None:
        c = await self.channel_code(s, channel_id)
        c.deleted = True

    async def list_channel_codes(self, s: AsyncSession, size: int, token: str) -> tuple[list[ChannelCode], str]:
        return await keyset_page(s, select(ChannelCode).where(ChannelCode.deleted.is_(False)), key=ChannelCode.id.desc(),
                                 tokens=self.pages, page_size=size, page_token=token)

    async def by_scene(self, s: AsyncSession, scene: str) -> ChannelCode | None:
        return (
            await s.execute(select(ChannelCode).where(ChannelCode.scene == scene, ChannelCode.deleted.is_(False)))
        ).scalar_one_or_none()

    async def create_touchpoint(self, s: AsyncSession, member_id: int, scene: str) -> Touchpoint:
        m = await self.portrait.member(s, member_id)
        channel = await self.by_scene(s, scene)
        if channel is None:
            raise NotFound("no channel code has this scene", reason=reasons.CHANNEL_CODE_NOT_FOUND,
                           metadata={"field": "touchpoint.scene"}, zh="渠道码不存在")
        return await self.record_arrival(s, m, channel)

    async def record_arrival(self, s: AsyncSession, m: Member, channel: ChannelCode,
                             when: datetime | None = None) -> Touchpoint:
        """First touch (once), touchpoint history, channel tags, guide and store binding (``when``:
        the arrival's time, when it is recorded later: an anonymous scan credited at registration)."""
        now = when or utcnow()
        first = await s.execute(
            update(Member)
            .where(Member.id == m.id, Member.first_touch_channel_id.is_(None))
            .values(first_touch_channel_id=channel.id, first_touch_channel_type=channel.channel_type, update_time=now)
        )
        bound = None
        if channel.guide_id is not None:
            bound = await s.execute(update(Member).where(Member.id == m.id, Member.guide_id.is_(None))
                                    .values(guide_id=channel.guide_id))
        if channel.store_id is not None:
            await s.execute(update(Member).where(Member.id == m.id, Member.store_id.is_(None)).values(store_id=channel.store_id))
        if bound is not None and bound.rowcount == 1:  # type: ignore[attr-defined]  # the code gave the member a guide
            store_id = (await s.execute(select(Member.store_id).where(Member.id == m.id))).scalar_one()
            await record_assignment(s, m.id, channel.guide_id, None, store_id, "channel code arrival",  # type: ignore[arg-type]
                                    f"channelCodes/{channel.id}")
        await s.execute(update(ChannelCode).where(ChannelCode.id == channel.id).values(arrival_count=ChannelCode.arrival_count + 1))
        tp = Touchpoint(member_id=m.id, channel_code_id=channel.id, channel_type=channel.channel_type, scene=channel.scene,
                        first_touch=first.rowcount == 1, create_time=now)
        s.add(tp)
        tag_ids = [t.id for t in (await self.channel_tags(s, [channel.id]))[channel.id]]
        if tag_ids:
            await self.tags.apply_tags(s, [m.id], tag_ids, pb.TAG_SOURCE_CHANNEL_CODE, f"channelCodes/{channel.id}")
        await s.flush()
        await s.refresh(m)
        return tp

    async def list_touchpoints(self, s: AsyncSession, member_id: int, size: int,
                               token: str) -> tuple[list[Touchpoint], str]:
        await self.portrait.member(s, member_id)
        return await keyset_page(s, select(Touchpoint).where(Touchpoint.member_id == member_id), key=Touchpoint.id,
                                 tokens=self.pages, page_size=size, page_token=token, filters=[member_id])
