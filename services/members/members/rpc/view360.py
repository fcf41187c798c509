"""RPC of Member 360."""

from __future__ import annotations

import re

from mall.members.v1 import members_service_pb2 as pb
from mallkit.auth import member_scope, principal
from mallkit.errors import InvalidArgument

from ..messages import behavior_event_pb, member_pb, set_time, tier_change_pb, tier_pb
from ..view360 import View
from .base import RpcBase

VIEW_NAME = re.compile(r"(members/[^/]+)/view360")


def view_pb(name: str, v: View) -> pb.Member360:
    out = pb.Member360(name=name, member=member_pb(v.member, v.attributes), missing=v.missing,
                       tier_changes=[tier_change_pb(c) for c in v.tier_changes],
                       recent_behavior=[behavior_event_pb(e) for e in v.behaviour])
    for mt, tag in v.tags:
        item = out.tags.add(tag=f"tagGroups/{tag.group_id}/tags/{tag.id}", tag_display_name=tag.display_name,
                            source=mt.source, source_ref=mt.source_ref)
        set_time(item.create_time, mt.create_time)
    if v.tier is not None:
        out.tier.CopyFrom(tier_pb(v.tier))
    if v.rfm is not None:
        r = v.rfm
        out.rfm.CopyFrom(pb.MemberRfm(recency_days=r.recency_days or 0, frequency=r.frequency,
                                      monetary_fen=r.monetary_fen, r_score=r.r_score, f_score=r.f_score,
                                      m_score=r.m_score, segment=r.segment))
        set_time(out.rfm.compute_time, r.compute_time)
    st = v.stats
    out.orders.categories.extend(v.categories)
    if st is not None:
        o = out.orders
        o.order_count, o.total_paid_fen = st.order_count, st.total_paid_fen
        o.refund_count, o.total_refunded_fen = st.refund_count, st.total_refunded_fen
        set_time(o.first_order_time, st.first_order_time)
        set_time(o.last_order_time, st.last_order_time)
    if v.points is not None:
        out.points.CopyFrom(pb.PointsSummary(available_points=v.points.available_points,
                                             pending_points=v.points.pending_points,
                                             expiring_soon_points=v.points.expiring_soon_points))
    if v.community is not None:
        c = v.community
        out.community.CopyFrom(pb.CommunitySummary(group_count=c.group_count, active=c.active,
                                                   post_count=c.post_count, reply_count=c.reply_count,
                                                   quiz_answer_count=c.quiz_answer_count, view_count=c.view_count))
        if c.HasField("last_active_time"):
            out.community.last_active_time.CopyFrom(c.last_active_time)
        for g in c.groups:
            out.community.groups.add(group=g.group, display_name=g.display_name, join_time=g.join_time)
    return out


class View360Rpc(RpcBase):
    async def GetMember360(self, request, context):
        m = VIEW_NAME.fullmatch(request.name)
        if not m:
            raise InvalidArgument.field("name", "must look like members/{member}/view360")
        member_id = member_scope(m.group(1), "name")
        async with self.sessions() as s:
            await self.guides.visible_member(s, await self.guides.scope_of(s, principal()), member_id)
            view = await self.view360.local(s, member_id)
        await self.view360.remote(member_id, view)
        return view_pb(f"members/{member_id}/view360", view)
