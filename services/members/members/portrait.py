"""The member portrait: a member's profile, phone with consent, and brand-defined attributes."""

from __future__ import annotations

from sqlalchemy import Row, bindparam, delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from mallkit.db import utcnow
from mallkit.errors import AlreadyExists, FailedPrecondition, NotFound
from mallkit.pagination import PageTokens
from mallkit.queries import keyset_page

from . import errors as reasons
from .models import AttributeDefinition, Member, MemberAttribute, MemberTag


def _member_not_found(member_id: int) -> NotFound:
    return NotFound("member not found", reason=reasons.MEMBER_NOT_FOUND, resource=("member", f"members/{member_id}"),
                    zh="会员不存在")


_m, _a = Member.__table__, MemberAttribute.__table__
#: The member row with one row per attribute (or one with NULLs): built once, compiled once.
_MEMBER_VIEW = (select(*(c for c in _m.c if c.name not in ("openid", "unionid")),  # what member_pb shows
                       _a.c.key.label("attr_key"), _a.c.value.label("attr_value"))
                .select_from(_m.outerjoin(_a, _a.c.member_id == _m.c.id))
                .where(_m.c.id == bindparam("member_id")))


class Portrait:
    def __init__(self, pages: PageTokens):
        self.pages = pages

    async def member(self, s: AsyncSession, member_id: int, *, lock: bool = False) -> Member:
        q = select(Member).where(Member.id == member_id)
        if lock:
            q = q.with_for_update()
        m = (await s.execute(q)).scalar_one_or_none()
        if m is None:
            raise _member_not_found(member_id)
        return m

    async def member_view(self, s: AsyncSession, member_id: int) -> tuple[Row, dict[str, str]]:
        """The member's row and attributes in one Core statement (GetMember, every page's read):
        no ORM identity map, no second query for the attributes."""
        rows = (await s.execute(_MEMBER_VIEW, {"member_id": member_id})).all()
        if not rows:
            raise _member_not_found(member_id)
        return rows[0], {r.attr_key: r.attr_value for r in rows if r.attr_key is not None}

    async def attributes_of(self, s: AsyncSession, member_id: int) -> dict[str, str]:
        rows = await s.execute(select(MemberAttribute.key, MemberAttribute.value).where(MemberAttribute.member_id == member_id))
        return dict(rows.all())

    async def list_members(
        self, s: AsyncSession, *, size: int, token: str, tier_id: int | None, tag_id: int | None,
        channel_id: int | None,
    ) -> tuple[list[Member], str]:
        q = select(Member)
        if tier_id is not None:
            q = q.where(Member.tier_id == tier_id)
        if channel_id is not None:
            q = q.where(Member.first_touch_channel_id == channel_id)
        if tag_id is not None:
            q = q.where(Member.id.in_(select(MemberTag.member_id).where(MemberTag.tag_id == tag_id)))
        return await keyset_page(s, q, key=Member.id.desc(), tokens=self.pages, page_size=size, page_token=token,
                                 filters=(tier_id, tag_id, channel_id))

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
            await self.set_attributes(s, member_id, attributes, replace_attributes)
        m.update_time = utcnow()
        return m

    async def set_attributes(self, s: AsyncSession, member_id: int, values: dict[str, str], replace: bool) -> None:
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

    async def list_attribute_definitions(self, s: AsyncSession, size: int,
                                         token: str) -> tuple[list[AttributeDefinition], str]:
        return await keyset_page(s, select(AttributeDefinition), key=AttributeDefinition.key, tokens=self.pages,
                                 page_size=size, page_token=token)
