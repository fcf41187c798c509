"""Tags: tag groups (single- or multi-select), tags, and tags on members (manual, by rule, by channel)."""

from __future__ import annotations

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from mall.members.v1 import members_service_pb2 as pb
from mallkit.db import insert_ignore, is_duplicate_key, utcnow
from mallkit.errors import AlreadyExists, FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from mallkit.pagination import PageTokens
from mallkit.queries import get_or_not_found, keyset_page

from . import errors as reasons
from .models import ChannelCodeTag, Member, MemberTag, Tag, TagGroup
from .portrait import Portrait


class Tags:
    def __init__(self, portrait: Portrait, pages: PageTokens):
        self.portrait = portrait
        self.pages = pages

    async def tag_group(self, s: AsyncSession, group_id: int) -> TagGroup:
        return await get_or_not_found(s, TagGroup, group_id, lambda: NotFound(
            "tag group not found", reason=reasons.TAG_GROUP_NOT_FOUND, resource=("tagGroup", f"tagGroups/{group_id}"),
            zh="标签组不存在"))

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

    async def list_tag_groups(self, s: AsyncSession, size: int, token: str) -> tuple[list[TagGroup], str]:
        return await keyset_page(s, select(TagGroup), key=TagGroup.id, tokens=self.pages, page_size=size,
                                 page_token=token)

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

    async def list_tags(self, s: AsyncSession, group_id: int | None, size: int, token: str) -> tuple[list[Tag], str]:
        if group_id is not None:
            await self.tag_group(s, group_id)
        q = select(Tag)
        if group_id is not None:
            q = q.where(Tag.group_id == group_id)
        return await keyset_page(s, q, key=Tag.id, tokens=self.pages, page_size=size, page_token=token,
                                 filters=[group_id])

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

    async def list_member_tags(self, s: AsyncSession, member_id: int, size: int, token: str) -> tuple[list, str]:
        """The member's tags as (member tag, tag) rows, by tag id."""
        await self.portrait.member(s, member_id)
        q = select(MemberTag, Tag).join(Tag, Tag.id == MemberTag.tag_id).where(MemberTag.member_id == member_id)
        return await keyset_page(s, q, key=MemberTag.tag_id, tokens=self.pages, page_size=size, page_token=token,
                                 filters=[member_id], key_of=lambda row: [row[0].tag_id])

    async def _flush_unique(self, s: AsyncSession, field: str, zh: str) -> None:
        try:
            async with s.begin_nested():
                await s.flush()
        except IntegrityError as exc:
            if is_duplicate_key(exc):
                raise AlreadyExists("name already taken", reason=reasons.NAME_TAKEN, metadata={"field": field}, zh=zh)
            raise
