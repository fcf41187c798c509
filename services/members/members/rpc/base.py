"""What every RPC mixin of the members servicer relies on: the sub-domains, sessions, idempotency,
the token codec and the WeChat client's appid."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mallkit.auth import TokenCodec
from mallkit.idempotency import Idempotency
from mallkit.readcache import ReadCache

from ..autotags import AutoTags
from ..behaviour import Behaviour
from ..channels import Channels
from ..funnels import Funnels
from ..guides import Guides
from ..identity import Identity
from ..portrait import Portrait
from ..reach import Reach
from ..rfm import Rfm
from ..segments import Segments
from ..staff import Staffing
from ..tags import Tags
from ..tiers import Tiers
from ..view360 import Member360
from ..wechat import WechatClient


class RpcBase:
    member_cache: ReadCache
    identity: Identity
    behaviour: Behaviour
    segments: Segments
    guides: Guides
    rfm: Rfm
    autotags: AutoTags
    view360: Member360
    funnels: Funnels
    behaviour_max_age_days: int
    behaviour_clock_skew_seconds: int
    portrait: Portrait
    channels: Channels
    tiers: Tiers
    tags: Tags
    staffing: Staffing
    reach: Reach
    sessions: async_sessionmaker[AsyncSession]
    idem: Idempotency
    codec: TokenCodec
    wechat: WechatClient
