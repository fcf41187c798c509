"""gRPC servicer of CommunityService: validates requests and translates proto <-> domain.

No SQL and no business rule here: each RPC checks its input, resolves resource
names (ownership first), opens the transaction (through ``Idempotency.run`` for
mutations, under admission control) and calls use cases of the sub-domains. The
RPCs live in one mixin per sub-domain (``rpc/``); this class composes them. The
VIP tier check calls the members service before the transaction opens.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mall.community.v1 import community_service_pb2_grpc as pb_grpc
from mallkit.batching import BatchWriter
from mallkit.db import utcnow
from mallkit.idempotency import Idempotency

from .activity import Activities
from .broadcasts import Broadcasts
from .common import Recent
from .content import Content
from .coupon_drops import CouponDrops
from .directory import MembersDirectory
from .groups import Groups
from .memberships import Memberships
from .quick_replies import QuickReplies
from .quizzes import Quizzes
from .rpc.broadcasts import BroadcastsRpc
from .rpc.content import ContentRpc
from .rpc.groups import GroupsRpc
from .sharing import Sharing


class CommunityServicer(GroupsRpc, ContentRpc, BroadcastsRpc, pb_grpc.CommunityServiceServicer):
    def __init__(
        self,
        *,
        groups: Groups,
        memberships: Memberships,
        activity: Activities,
        content: Content,
        sharing: Sharing,
        quizzes: Quizzes,
        coupon_drops: CouponDrops,
        broadcasts: Broadcasts,
        quick_replies: QuickReplies,
        sessions: async_sessionmaker[AsyncSession],
        idempotency: Idempotency,
        directory: MembersDirectory,
        views: BatchWriter,
        view_ack_commit: bool = True,
        view_cache_seconds: float = 0.0,
        activity_window_days: int = 30,
        clock: Callable[[], datetime] = utcnow,
    ):
        self.groups = groups
        self.memberships = memberships
        self.activity = activity
        self.content = content
        self.sharing = sharing
        self.quizzes = quizzes
        self.coupon_drops = coupon_drops
        self.broadcasts = broadcasts
        self.quick_replies = quick_replies
        self.sessions = sessions
        self.idem = idempotency
        self.directory = directory
        self.views = views
        self.view_ack_commit = view_ack_commit
        self.post_messages = Recent(view_cache_seconds)  # as long as the posts they show stay in memory
        self.activity_window_days = activity_window_days
        self.clock = clock
        # Admission control is the platform's (mallkit.db): write transactions queue there, as
        # wide as the pool, instead of timing out on it when hundreds of members hit one hot row.
