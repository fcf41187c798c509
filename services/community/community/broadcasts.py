"""Broadcasts: messages to groups and members, capped per member and brand day, with opens and clicks."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mall.community.v1 import community_service_pb2 as pb
from mallkit.db import insert_ignore
from mallkit.errors import FailedPrecondition, NotFound
from mallkit.pagination import PageTokens
from mallkit.queries import get_or_not_found, keyset_page

from . import errors as reasons
from .common import chunks
from .groups import Groups
from .models import Broadcast, BroadcastDay, Membership, Message


async def deliver_in_app(s: AsyncSession, broadcast_id: int, round_no: int, day: date, member_ids: list[int],
                         cap: int, now: datetime) -> list[int]:
    """In-app messages to those of ``member_ids`` (distinct, sorted) under today's cap; returns them.

    Set-wise: make sure a (member, day) counter row exists, lock the rows still under the cap,
    bump those and insert their messages. Concurrent broadcasts serialize on the rows."""
    await insert_ignore(s, BroadcastDay.__table__,
                        [{"member_id": m, "day": day, "sent": 0, "last_broadcast_id": 0} for m in member_ids])
    under = list((await s.execute(select(BroadcastDay.member_id).where(
        BroadcastDay.day == day, BroadcastDay.member_id.in_(member_ids), BroadcastDay.sent < cap)
        .order_by(BroadcastDay.member_id).with_for_update())).scalars())
    if under:
        await s.execute(update(BroadcastDay).where(BroadcastDay.day == day, BroadcastDay.member_id.in_(under))
                        .values(sent=BroadcastDay.sent + 1, last_broadcast_id=broadcast_id))
        await insert_ignore(s, Message.__table__, [
            {"broadcast_id": broadcast_id, "round_no": round_no, "member_id": m, "deliver_time": now} for m in under])
    return under


class Broadcasts:
    def __init__(self, groups: Groups, pages: PageTokens, *, brand_timezone: str, daily_cap: int):
        self.groups = groups
        self.pages = pages
        self.tz = ZoneInfo(brand_timezone)
        #: Broadcasts a member gets per brand day at most.
        self.daily_cap = daily_cap

    def brand_day(self, when: datetime) -> date:
        return when.astimezone(self.tz).date()

    async def create_broadcast(self, s: AsyncSession, *, title: str, text: str, post: str, group_ids: list[int],
                               member_ids: list[int], sender: str, now: datetime) -> Broadcast:
        """Deliver to each distinct target member at most ``daily_cap`` broadcasts per brand day.

        Set-wise per chunk (:func:`deliver_in_app`): the counter rows under the cap are
        locked and bumped; concurrent broadcasts serialize on those rows, so the cap
        holds under any interleaving.
        """
        for gid in group_ids:
            await self.groups.group(s, gid)
        targets = set(member_ids)
        if group_ids:
            targets |= set((await s.execute(select(Membership.member_id).where(
                Membership.group_id.in_(group_ids), Membership.state == pb.MEMBERSHIP_STATE_ACTIVE))).scalars().all())
        day = self.brand_day(now)
        b = Broadcast(title=title, text=text, post=post, target_groups=",".join(map(str, group_ids)),
                      target_members=",".join(map(str, member_ids)), sender=sender, day=day,
                      target_count=len(targets), delivered_count=0, capped_count=0, opened_count=0, clicked_count=0,
                      create_time=now)
        s.add(b)
        await s.flush()
        delivered = 0
        for chunk in chunks(sorted(int(m) for m in targets)):
            delivered += len(await deliver_in_app(s, b.id, 0, day, chunk, self.daily_cap, now))
        b.delivered_count = delivered
        b.capped_count = len(targets) - delivered
        await s.flush()
        return b

    async def create_segment_broadcast(self, s: AsyncSession, *, fields: dict, sender: str, now: datetime) -> Broadcast:
        """A broadcast to a segment, SCHEDULED: the job starts its rounds (``targeting.py``)."""
        b = Broadcast(sender=sender, day=self.brand_day(now), target_groups="", target_members="", target_count=0,
                      delivered_count=0, capped_count=0, opened_count=0, clicked_count=0, create_time=now,
                      state=pb.BROADCAST_STATE_SCHEDULED, next_round_time=fields.get("send_time") or now, round_count=0,
                      reach_sent_count=0, reach_skipped_count=0, **fields)
        s.add(b)
        await s.flush()
        return b

    async def broadcast(self, s: AsyncSession, broadcast_id: int) -> Broadcast:
        return await get_or_not_found(s, Broadcast, broadcast_id, lambda: NotFound(
            "broadcast not found", reason=reasons.BROADCAST_NOT_FOUND,
            resource=("broadcast", f"broadcasts/{broadcast_id}"), zh="群发不存在"))

    async def cancel(self, s: AsyncSession, b: Broadcast) -> None:
        done = await s.execute(update(Broadcast).where(Broadcast.id == b.id, Broadcast.state == pb.BROADCAST_STATE_SCHEDULED)
                               .values(state=pb.BROADCAST_STATE_CANCELLED, next_round_time=None))
        if done.rowcount != 1:  # type: ignore[attr-defined]
            raise FailedPrecondition("only a scheduled broadcast can be cancelled", reason=reasons.BROADCAST_NOT_SCHEDULED,
                                     metadata={"broadcast": f"broadcasts/{b.id}"}, zh="该群发不是待发送状态")
        await s.refresh(b)

    async def list_broadcasts(self, s: AsyncSession, size: int, token: str) -> tuple[list[Broadcast], str]:
        return await keyset_page(s, select(Broadcast), key=Broadcast.id.desc(), tokens=self.pages, page_size=size,
                                 page_token=token)

    async def list_messages(self, s: AsyncSession, member_id: int, size: int, token: str) -> tuple[list, str]:
        """The member's messages, newest first, as (message, broadcast) rows."""
        q = (select(Message, Broadcast).join(Broadcast, Broadcast.id == Message.broadcast_id)
             .where(Message.member_id == member_id))
        return await keyset_page(s, q, key=Message.id.desc(), tokens=self.pages, page_size=size, page_token=token,
                                 filters=[member_id], key_of=lambda row: [row[0].id])

    async def touch_message(self, s: AsyncSession, member_id: int, message_id: int, what: str, now: datetime):
        """Record the first open (or click) of a message; a click implies an open."""
        msg = await s.get(Message, message_id)
        if msg is None or msg.member_id != member_id:
            raise NotFound("message not found", reason=reasons.MESSAGE_NOT_FOUND,
                           resource=("message", f"members/{member_id}/messages/{message_id}"), zh="消息不存在")
        opened = await s.execute(update(Message).where(Message.id == message_id, Message.open_time.is_(None))
                                 .values(open_time=now))
        if opened.rowcount == 1:  # type: ignore[attr-defined]
            await s.execute(update(Broadcast).where(Broadcast.id == msg.broadcast_id)
                            .values(opened_count=Broadcast.opened_count + 1))
        if what == "click":
            clicked = await s.execute(update(Message).where(Message.id == message_id, Message.click_time.is_(None))
                                      .values(click_time=now))
            if clicked.rowcount == 1:  # type: ignore[attr-defined]
                await s.execute(update(Broadcast).where(Broadcast.id == msg.broadcast_id)
                                .values(clicked_count=Broadcast.clicked_count + 1))
        await s.refresh(msg)
        return msg, await self.broadcast(s, msg.broadcast_id)
