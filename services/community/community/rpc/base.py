"""What every RPC mixin of the community servicer relies on: the sub-domains, sessions,
idempotency with admission control, the clock."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mallkit.batching import BatchWriter
from mallkit.db import is_duplicate_key
from mallkit.idempotency import Idempotency

from ..activity import Activities
from ..broadcasts import Broadcasts
from ..common import Recent
from ..content import Content
from ..coupon_drops import CouponDrops
from ..directory import MembersDirectory
from ..groups import Groups
from ..memberships import Memberships
from ..quick_replies import QuickReplies
from ..quizzes import Quizzes
from ..sharing import Sharing


class RpcBase:
    groups: Groups
    memberships: Memberships
    activity: Activities
    content: Content
    sharing: Sharing
    quizzes: Quizzes
    coupon_drops: CouponDrops
    broadcasts: Broadcasts
    quick_replies: QuickReplies
    directory: MembersDirectory
    sessions: async_sessionmaker[AsyncSession]
    idem: Idempotency
    activity_window_days: int
    clock: Callable[[], datetime]
    views: BatchWriter
    view_ack_commit: bool
    post_messages: Recent  # (id(post), reveal) -> (post, its message): ContentRpc._viewed_post_pb

    async def _run(self, request, response_type, use_case, **kw):
        return await self.idem.run(request, response_type, use_case, **kw)

    async def _retry_unique(self, fn):
        """Run a mutation again when a concurrent twin took the unique key first (it then finds the row)."""
        for attempt in range(3):
            try:
                return await fn()
            except IntegrityError as exc:
                if not is_duplicate_key(exc) or attempt == 2:
                    raise
