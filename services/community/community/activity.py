"""Activity: what members do in the community (join, post, reply, react, answer, view), per member and window."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select, union, update
from sqlalchemy.ext.asyncio import AsyncSession

from mall.community.v1 import community_events_pb2 as evpb
from mall.community.v1 import community_service_pb2 as pb
from mallkit.events import Outbox
from mallkit.pagination import PageTokens
from mallkit.queries import keyset_page

from .common import ts
from .models import Activity, Group, Membership, View

# Activity kinds (stored as small integers; not part of the API).
ACT_JOIN, ACT_POST, ACT_REPLY, ACT_REACTION, ACT_QUIZ_ANSWER = 1, 2, 3, 4, 5


class Activities:
    def __init__(self, pages: PageTokens, outbox: Outbox):
        self.pages = pages
        self.outbox = outbox

    async def record(self, s: AsyncSession, member_id: int, group_id: int, kind: int, ref: str,
                     now: datetime) -> None:
        """Record what the member did; a post or a reply is also published (community.member_posted)."""
        s.add(Activity(member_id=member_id, group_id=group_id, kind=kind, ref=ref, create_time=now))
        await s.flush()
        await s.execute(update(Membership).where(Membership.group_id == group_id, Membership.member_id == member_id)
                        .values(last_active_time=now))
        if kind in (ACT_POST, ACT_REPLY):
            await self.outbox.add(s, "community.member_posted",
                                  evpb.MemberPostedEvent(post=ref, member=f"members/{member_id}",
                                                         reply=kind == ACT_REPLY, post_time=ts(now)),
                                  subject=f"members/{member_id}")

    async def member_activity(self, s: AsyncSession, member_id: int, since: datetime) -> dict:
        counts = dict((await s.execute(
            select(Activity.kind, func.count()).where(Activity.member_id == member_id, Activity.create_time >= since)
            .group_by(Activity.kind))).tuples().all())
        views = (await s.execute(select(func.count()).select_from(View).where(
            View.member_id == member_id, View.create_time >= since))).scalar_one()
        groups = (await s.execute(select(func.count()).select_from(Membership).where(
            Membership.member_id == member_id, Membership.state == pb.MEMBERSHIP_STATE_ACTIVE))).scalar_one()
        last_act = (await s.execute(select(func.max(Activity.create_time)).where(Activity.member_id == member_id))).scalar()
        joined = (await s.execute(
            select(Group.id, Group.display_name, Membership.role, Membership.join_time)
            .join(Group, Group.id == Membership.group_id)
            .where(Membership.member_id == member_id, Membership.state == pb.MEMBERSHIP_STATE_ACTIVE)
            .order_by(Membership.join_time.desc(), Membership.group_id.desc()).limit(50))).tuples().all()
        last_view = (await s.execute(select(func.max(View.create_time)).where(View.member_id == member_id))).scalar()
        last = max((t for t in (last_act, last_view) if t is not None), default=None)
        if isinstance(last, str):  # SQLite aggregate bypasses the column type
            last = datetime.fromisoformat(last)
        if last is not None and last.tzinfo is None:
            from datetime import UTC

            last = last.replace(tzinfo=UTC)
        return {
            "active": bool(sum(counts.values()) or views),
            "last_active_time": last,
            "post_count": counts.get(ACT_POST, 0),
            "reply_count": counts.get(ACT_REPLY, 0),
            "reaction_count": counts.get(ACT_REACTION, 0),
            "quiz_answer_count": counts.get(ACT_QUIZ_ANSWER, 0),
            "group_count": groups,
            "view_count": views,
            "groups": [{"group": f"groups/{g}", "display_name": n, "role": r, "join_time": t} for g, n, r, t in joined],
        }

    async def active_members(self, s: AsyncSession, since: datetime, size: int, token: str,
                             filters=()) -> tuple[list[int], str]:
        """Ids of the members active since ``since`` (activity or a view), ascending; ``filters`` bind the token."""
        acts = select(Activity.member_id.label("member_id")).where(Activity.create_time >= since)
        views = select(View.member_id.label("member_id")).where(View.create_time >= since, View.member_id.is_not(None))
        u = union(acts, views).subquery()
        ids, token = await keyset_page(s, select(u.c.member_id), key=u.c.member_id, tokens=self.pages, page_size=size,
                                       page_token=token, filters=filters, key_of=lambda m: [int(m)])
        return [int(x) for x in ids], token
