"""RPCs of behaviour events: the client batch, the visitor link and the staff timeline."""

from __future__ import annotations

from datetime import timedelta

from mall.members.v1 import members_service_pb2 as pb
from mallkit.auth import current_principal, member_scope
from mallkit.db import run_transaction, utcnow
from mallkit.pagination import page_size
from mallkit.validation import Validator

from ..behaviour import CLIENT_KINDS, ClientEvent, to_ms
from ..messages import CLIENT_EVENT_ID, VISITOR, behavior_event_pb
from .base import RpcBase

MAX_BATCH = 100


class BehaviourRpc(RpcBase):
    async def RecordBehaviorEvents(self, request, context):
        v = Validator()
        v.pattern("visitor_id", request.visitor_id, VISITOR, "must be 8 to 40 characters of [A-Za-z0-9_-]",
                  required=True)
        v.check(1 <= len(request.events) <= MAX_BATCH, "events", f"must hold 1 to {MAX_BATCH} events")
        now = utcnow()
        oldest = to_ms(now - timedelta(days=self.behaviour_max_age_days))
        newest = to_ms(now + timedelta(seconds=self.behaviour_clock_skew_seconds))
        events = []
        for i, e in enumerate(request.events[:MAX_BATCH]):
            f = f"events[{i}]"
            v.pattern(f"{f}.client_event_id", e.client_event_id, CLIENT_EVENT_ID,
                      "must be 1 to 40 characters of [A-Za-z0-9_-]", required=True)
            v.check(e.kind in CLIENT_KINDS, f"{f}.kind",
                    "must be one of BEHAVIOR_KIND_VIEW_PRODUCT, BEHAVIOR_KIND_VIEW_CONTENT, BEHAVIOR_KIND_SHARE, BEHAVIOR_KIND_ADD_TO_CART, BEHAVIOR_KIND_SEARCH, BEHAVIOR_KIND_OPEN_MESSAGE")
            v.text(f"{f}.target", e.target, max_len=128)
            v.text(f"{f}.detail", e.detail, max_len=256)
            v.text(f"{f}.touchpoint", e.touchpoint, max_len=64)
            ms = e.occur_time.ToMilliseconds() if e.HasField("occur_time") else None
            if v.check(ms is not None, f"{f}.occur_time", "is required") and ms is not None:
                v.check(ms <= newest, f"{f}.occur_time", "must not be in the future")
                v.check(ms >= oldest, f"{f}.occur_time", f"must be within the last {self.behaviour_max_age_days} days")
            events.append(ClientEvent(e.client_event_id, e.kind, e.target, e.detail, e.touchpoint, ms or 0))
        v.done()
        p = current_principal.get()
        member_id = int(p.id) if p is not None and p.is_member else None

        async def use_case(s):
            return await self.behaviour.record_client(s, request.visitor_id, member_id, events)

        recorded, duplicates = await run_transaction(self.sessions, use_case)
        return pb.RecordBehaviorEventsResponse(recorded_count=recorded, duplicate_count=duplicates)

    async def LinkVisitor(self, request, context):
        member_id = member_scope(request.member, "member")
        v = Validator()
        v.pattern("visitor_id", request.visitor_id, VISITOR, "must be 8 to 40 characters of [A-Za-z0-9_-]",
                  required=True)
        v.done()

        async def use_case(s):
            await self.portrait.member(s, member_id)
            return await self.behaviour.merge(s, request.visitor_id, member_id)

        merged = await run_transaction(self.sessions, use_case)
        out = pb.LinkVisitorResponse(merged_count=merged.merged)
        out.link_time.FromDatetime(merged.link_time)
        return out

    async def ListBehaviorEvents(self, request, context):
        member_id = member_scope(request.parent, "parent")
        v = Validator()
        for i, k in enumerate(request.kinds):
            v.enum(f"kinds[{i}]", k, pb.BehaviorKind, required=True)
        start = request.start_time.ToMilliseconds() if request.HasField("start_time") else None
        end = request.end_time.ToMilliseconds() if request.HasField("end_time") else None
        if start is not None and end is not None:
            v.check(start < end, "end_time", "must be after start_time")
        v.done()
        size = page_size(request.page_size)
        async with self.sessions() as s:
            await self.portrait.member(s, member_id)
            rows, token = await self.behaviour.timeline(s, member_id, sorted(set(request.kinds)), start, end, size,
                                                        request.page_token)
        return pb.ListBehaviorEventsResponse(behavior_events=[behavior_event_pb(e) for e in rows],
                                             next_page_token=token)
