"""RPCs of reach: subscription consent, subscribe messages and their touches."""

from __future__ import annotations

from mall.members.v1 import members_service_pb2 as pb
from mallkit.auth import member_scope
from mallkit.names import parse_id
from mallkit.pagination import page_size
from mallkit.validation import IDENTIFIER, Validator

from ..messages import (
    touch_pb,
)
from .base import RpcBase


class ReachRpc(RpcBase):
    async def RecordSubscriptions(self, request, context):
        member_id = member_scope(request.parent, "parent")
        v = Validator()
        v.check(1 <= len(request.accepted_template_ids) <= 10, "accepted_template_ids", "1 to 10 template ids")
        for i, t in enumerate(request.accepted_template_ids):
            v.pattern(f"accepted_template_ids[{i}]", t, IDENTIFIER, "letters, digits, '_' or '-', at most 64")
        v.done()

        async def use_case(s):
            remaining = await self.reach.record_subscriptions(s, member_id, list(request.accepted_template_ids))
            return pb.RecordSubscriptionsResponse(remaining=remaining)

        return await self.idem.run(request, pb.RecordSubscriptionsResponse, use_case)

    async def SendReach(self, request, context):
        member_id = parse_id(request.member, "members", "member")
        v = Validator()
        v.pattern("template_id", request.template_id, IDENTIFIER, "letters, digits, '_' or '-', at most 64", required=True)
        v.text("purpose", request.purpose, max_len=64, min_len=1)
        v.text("page", request.page, max_len=256)
        v.check(len(request.data) <= 20, "data", "at most 20 keywords")
        for key, value in request.data.items():
            v.pattern(f"data.{key}", key, IDENTIFIER, "keys are letters, digits, '_' or '-'")
            v.text(f"data.{key}", value, max_len=200)
        v.done()

        async def use_case(s):
            touch = await self.reach.send_reach(s, member_id, request.template_id, dict(request.data), request.page,
                                                request.purpose)
            return touch_pb(touch)

        return await self.idem.run(request, pb.Touch, use_case, required=True, key_first=True)  # WeChat is called inside

    async def ListTouches(self, request, context):
        member_id = member_scope(request.parent, "parent")
        size = page_size(request.page_size)
        async with self.sessions() as s:
            rows, token = await self.reach.list_touches(s, member_id, size, request.page_token)
        return pb.ListTouchesResponse(touches=[touch_pb(t) for t in rows], next_page_token=token)
