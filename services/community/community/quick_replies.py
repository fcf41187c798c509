"""Quick replies: the guides' categorized, searchable canned answers, ordered by use."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mallkit.errors import AlreadyExists, NotFound
from mallkit.pagination import PageTokens
from mallkit.queries import get_or_not_found, keyset_page

from . import errors as reasons
from .common import flush_once
from .models import QuickReply, QuickReplyCategory


class QuickReplies:
    def __init__(self, pages: PageTokens):
        self.pages = pages

    async def create_category(self, s: AsyncSession, display_name: str, now: datetime) -> QuickReplyCategory:
        c = QuickReplyCategory(display_name=display_name, create_time=now)
        s.add(c)
        if not await flush_once(s):
            raise AlreadyExists("a category has this name", reason=reasons.NAME_TAKEN,
                                metadata={"field": "quick_reply_category.display_name"}, zh="分类名称已存在")
        return c

    async def category(self, s: AsyncSession, category_id: int) -> QuickReplyCategory:
        return await get_or_not_found(s, QuickReplyCategory, category_id, lambda: NotFound(
            "category not found", reason=reasons.CATEGORY_NOT_FOUND,
            resource=("quickReplyCategory", f"quickReplyCategories/{category_id}"), zh="话术分类不存在"))

    async def list_categories(self, s: AsyncSession, size: int, token: str) -> tuple[list[QuickReplyCategory], str]:
        return await keyset_page(s, select(QuickReplyCategory), key=QuickReplyCategory.id, tokens=self.pages,
                                 page_size=size, page_token=token)

    async def create_quick_reply(self, s: AsyncSession, category_id: int, fields: dict, keywords: list[str],
                                 now: datetime) -> QuickReply:
        await self.category(s, category_id)
        q = QuickReply(category_id=category_id, usage_count=0, create_time=now,
                       keywords=(" " + " ".join(keywords) + " ") if keywords else "", **fields)
        s.add(q)
        await s.flush()
        return q

    async def quick_reply(self, s: AsyncSession, category_id: int, reply_id: int) -> QuickReply:
        q = await s.get(QuickReply, reply_id)
        if q is None or q.category_id != category_id:
            raise NotFound("quick reply not found", reason=reasons.QUICK_REPLY_NOT_FOUND,
                           resource=("quickReply", f"quickReplyCategories/{category_id}/quickReplies/{reply_id}"),
                           zh="话术不存在")
        return q

    async def list_quick_replies(self, s: AsyncSession, category_id: int | None, keyword: str, size: int,
                                 token: str) -> tuple[list[QuickReply], str]:
        """Most used first; ``keyword`` (as the caller sent it: the token is bound to it) searches title,
        text and keywords."""
        filters = (category_id, keyword)
        keyword = keyword.strip()
        if category_id is not None:
            await self.category(s, category_id)
        q = select(QuickReply)
        if category_id is not None:
            q = q.where(QuickReply.category_id == category_id)
        if keyword:
            q = q.where(or_(QuickReply.title.contains(keyword, autoescape=True),
                            QuickReply.text.contains(keyword, autoescape=True),
                            QuickReply.keywords.contains(keyword, autoescape=True)))
        return await keyset_page(s, q, key=[QuickReply.usage_count.desc(), QuickReply.id.desc()], tokens=self.pages,
                                 page_size=size, page_token=token, filters=filters)

    async def use_quick_reply(self, s: AsyncSession, category_id: int, reply_id: int) -> QuickReply:
        q = await self.quick_reply(s, category_id, reply_id)
        await s.execute(update(QuickReply).where(QuickReply.id == reply_id)
                        .values(usage_count=QuickReply.usage_count + 1))
        await s.refresh(q)
        return q
