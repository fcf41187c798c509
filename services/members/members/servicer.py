"""gRPC servicer of MembersService: validates requests and translates proto <-> domain.

No SQL and no business rule here: each RPC checks its input, resolves resource
names (ownership first), opens the transaction (through ``Idempotency.run`` for
mutations) and calls one use case of a sub-domain. The RPCs live in one mixin
per sub-domain (``rpc/``); this class composes them.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mall.members.v1 import members_service_pb2_grpc as pb_grpc
from mallkit.auth import TokenCodec
from mallkit.idempotency import Idempotency
from mallkit.readcache import ReadCache

from .autotags import AutoTags
from .behaviour import Behaviour
from .channels import Channels
from .funnels import Funnels
from .guides import Guides
from .identity import Identity
from .portrait import Portrait
from .reach import Reach
from .rfm import Rfm
from .rpc.behaviour import BehaviourRpc
from .rpc.channels import ChannelsRpc
from .rpc.funnels import FunnelsRpc
from .rpc.guides import GuidesRpc
from .rpc.knowing import KnowingRpc
from .rpc.members import MembersRpc
from .rpc.reach import ReachRpc
from .rpc.segments import SegmentsRpc
from .rpc.staff import StaffRpc
from .rpc.tags import TagsRpc
from .rpc.tiers import TiersRpc
from .rpc.view360 import View360Rpc
from .segments import Segments
from .staff import Staffing
from .tags import Tags
from .tiers import Tiers
from .view360 import Member360
from .wechat import WechatClient


class MembersServicer(MembersRpc, ChannelsRpc, FunnelsRpc, TiersRpc, TagsRpc, StaffRpc, ReachRpc, BehaviourRpc, SegmentsRpc, KnowingRpc, View360Rpc,
                      GuidesRpc,
                      pb_grpc.MembersServiceServicer):
    def __init__(
        self,
        *,
        identity: Identity,
        portrait: Portrait,
        channels: Channels,
        tiers: Tiers,
        tags: Tags,
        staffing: Staffing,
        reach: Reach,
        sessions: async_sessionmaker[AsyncSession],
        idempotency: Idempotency,
        codec: TokenCodec,
        wechat: WechatClient,
        behaviour: Behaviour,
        segments: Segments,
        rfm: Rfm,
        autotags: AutoTags,
        view360: Member360,
        funnels: Funnels,
        guides: Guides,
        member_cache: ReadCache | None = None,
        behaviour_max_age_days: int = 7,
        behaviour_clock_skew_seconds: int = 300,
    ):
        self.identity = identity
        self.portrait = portrait
        self.channels = channels
        self.tiers = tiers
        self.tags = tags
        self.staffing = staffing
        self.reach = reach
        self.sessions = sessions
        self.idem = idempotency
        self.codec = codec
        self.wechat = wechat
        self.behaviour = behaviour
        self.segments = segments
        self.rfm = rfm
        self.autotags = autotags
        self.view360 = view360
        self.funnels = funnels
        self.guides = guides
        self.member_cache = member_cache if member_cache is not None else ReadCache("member", ttl=0)  # off: none given
        self.behaviour_max_age_days = behaviour_max_age_days
        self.behaviour_clock_skew_seconds = behaviour_clock_skew_seconds
