"""Segment broadcasts: scheduled and daily rounds to a members' segment snapshot, in-app and as
WeChat subscribe messages through members' reach, each once per (broadcast, round, member).

* **Rounds.** A segment broadcast is SCHEDULED with ``next_round_time``. Starting a round is a
  conditional UPDATE of the broadcast (``WHERE next_round_time = :read``: one replica wins) that
  moves ``next_round_time`` to the next occurrence (daily: the same brand-local time of day on
  the next day after now, computed with zoneinfo; none after ``end_time``) and inserts the
  ``broadcast_rounds`` row (unique per broadcast and round number).
* **Delivery.** A runner leases a round (``lease_owner``/``lease_until``), resolves the snapshot
  on the first page (``latest`` unless the broadcast names a version) and then per page, in one
  transaction: inserts the (round, member) ``broadcast_deliveries`` keys (a second runner on
  the same page fails on them), delivers in-app within the community's daily cap
  (``broadcast_days``, set-wise: rows under the cap locked, then bumped) and advances the
  cursor ``WHERE cursor = :read AND lease_owner = :me``.
* **Subscribe messages** (``subscribe_message``) are sent after the page committed, to the
  deliveries still pending, through ``SendReach`` with a request id derived from broadcast,
  round and member: a runner that dies between sending and recording replays the same request
  and members answers the stored touch, so no member gets it twice. Members apply consent
  (subscription credits) and their daily cap; a refusal is the touch's skip reason, counted in
  ``reach_skipped_count``, never an error. A member without consent still gets the in-app message.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import grpc
from sqlalchemy import insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mall.community.v1 import community_service_pb2 as pb
from mall.members.v1 import members_service_pb2 as mpb
from mallkit.db import is_duplicate_key, run_transaction
from mallkit.members import MembersClient

from .broadcasts import deliver_in_app
from .common import next_daily
from .models import Broadcast, BroadcastDelivery, BroadcastRound

REACH_NONE, REACH_PENDING, REACH_SENT, REACH_SKIPPED = 0, 1, 2, 3
REACH_PAGE = "pages/messages/index"


class Superseded(Exception):
    """Another runner holds the round now or did this page: roll the page back and stop."""


def request_id(broadcast_id: int, round_no: int, member_id: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"community/broadcasts/{broadcast_id}/rounds/{round_no}/members/{member_id}"))


class Targeting:
    def __init__(self, *, sessions: async_sessionmaker[AsyncSession], members: MembersClient, brand_timezone: str,
                 daily_cap: int, page_size: int, lease: timedelta, reach_concurrency: int):
        self.sessions = sessions
        self.members = members
        self.tz = ZoneInfo(brand_timezone)
        self.daily_cap = daily_cap
        self.page_size = page_size
        self.lease = lease
        self.reach_concurrency = reach_concurrency

    # --- scheduling ------------------------------------------------------------------------

    def next_time(self, b: Broadcast, after: datetime) -> datetime | None:
        """The next round of a daily broadcast strictly after ``after`` (None for a one-off, or past ``end_time``)."""
        if not b.daily or b.send_time is None:
            return None
        return next_daily(b.send_time, after, self.tz, b.end_time)

    async def start_due_rounds(self, now: datetime) -> int:
        """Start the rounds whose time has come (one replica wins each); returns rounds started."""
        async with self.sessions() as s:
            due = (await s.execute(select(Broadcast).where(
                Broadcast.state == pb.BROADCAST_STATE_SCHEDULED, Broadcast.next_round_time <= now)
                .order_by(Broadcast.next_round_time).limit(50))).scalars().all()
        started = 0
        for b in due:
            started += await run_transaction(self.sessions, lambda s, b=b: self._start_round(s, b, now))
        return started

    async def _start_round(self, s: AsyncSession, b: Broadcast, now: datetime) -> int:
        assert b.next_round_time is not None
        nxt = self.next_time(b, max(now, b.next_round_time))
        won = await s.execute(update(Broadcast).where(
            Broadcast.id == b.id, Broadcast.state == pb.BROADCAST_STATE_SCHEDULED,
            Broadcast.next_round_time == b.next_round_time, Broadcast.round_count == b.round_count).values(
            round_count=b.round_count + 1, next_round_time=nxt,
            state=pb.BROADCAST_STATE_SCHEDULED if nxt else pb.BROADCAST_STATE_FINISHED))
        if won.rowcount != 1:  # type: ignore[attr-defined]
            return 0
        s.add(BroadcastRound(broadcast_id=b.id, round_no=b.round_count + 1, due_time=b.next_round_time,
                             day=b.next_round_time.astimezone(self.tz).date(), snapshot_version=b.segment_version,
                             cursor="", paged=False, done=False, lease_owner="", target_count=0, delivered_count=0,
                             capped_count=0, reach_sent_count=0, reach_skipped_count=0))
        await s.flush()
        return 1

    # --- delivery --------------------------------------------------------------------------

    async def run_due(self, now: datetime) -> int:
        """Deliver every open round whose lease is free; returns the pages this runner delivered."""
        async with self.sessions() as s:
            r = BroadcastRound
            ids = list((await s.execute(select(r.id).where(r.done.is_(False), or_(
                r.lease_until.is_(None), r.lease_until < now)).order_by(r.id).limit(20))).scalars())
        pages = 0
        for rid in ids:
            pages += await self.run_round(rid, now)
        return pages

    async def _claim(self, s: AsyncSession, round_id: int, owner: str, now: datetime) -> bool:
        r = BroadcastRound
        got = await s.execute(update(r).where(r.id == round_id, r.done.is_(False), or_(
            r.lease_until.is_(None), r.lease_until < now)).values(lease_owner=owner, lease_until=now + self.lease))
        return got.rowcount == 1  # type: ignore[attr-defined]

    async def _read(self, round_id: int) -> tuple[BroadcastRound, Broadcast]:
        async with self.sessions() as s:
            r = await s.get(BroadcastRound, round_id, populate_existing=True)
            assert r is not None
            b = await s.get(Broadcast, r.broadcast_id, populate_existing=True)
            assert b is not None
            return r, b

    async def run_round(self, round_id: int, now: datetime) -> int:
        """Lease the round, deliver page after page, then settle its subscribe messages."""
        owner = str(uuid.uuid4())
        if not await run_transaction(self.sessions, lambda s: self._claim(s, round_id, owner, now)):
            return 0
        pages = 0
        while True:
            r, b = await self._read(round_id)
            if r.done or r.lease_owner != owner:
                return pages
            if r.paged:
                break
            version = r.snapshot_version or "latest"
            ids, snap, token = await self.members.segment_page(f"segments/{b.segment}/snapshots/{version}",
                                                               self.page_size, r.cursor)
            try:
                await run_transaction(self.sessions, lambda s, r=r, b=b, ids=ids, v=snap.version, t=token:
                                      self._deliver_page(s, r, b, ids, v, t, owner, now))
            except Superseded:
                return pages
            except IntegrityError as exc:
                if not is_duplicate_key(exc):
                    raise
                return pages
            pages += 1
            if b.subscribe_message and not await self._settle_reach(r, b, owner, now):
                return pages
        if b.subscribe_message and not await self._settle_reach(r, b, owner, now):
            return pages
        await run_transaction(self.sessions, lambda s: s.execute(update(BroadcastRound).where(
            BroadcastRound.id == round_id, BroadcastRound.lease_owner == owner).values(done=True, lease_until=None)))
        return pages

    async def _deliver_page(self, s: AsyncSession, r: BroadcastRound, b: Broadcast, member_ids: list[int],
                            version: int, next_token: str, owner: str, now: datetime) -> None:
        members = sorted(set(member_ids))
        reached: list[int] = []
        if members:
            await s.execute(insert(BroadcastDelivery.__table__), [
                {"round_id": r.id, "member_id": m, "reach_state": REACH_PENDING if b.subscribe_message else REACH_NONE,
                 "reach_outcome": ""} for m in members])
            reached = await deliver_in_app(s, b.id, r.round_no, r.day, members, self.daily_cap, now)
        rr = BroadcastRound
        moved = await s.execute(update(rr).where(rr.id == r.id, rr.cursor == r.cursor, rr.lease_owner == owner,
                                                 rr.paged.is_(False)).values(
            cursor=next_token, paged=not next_token, snapshot_version=version, lease_until=now + self.lease,
            target_count=rr.target_count + len(members), delivered_count=rr.delivered_count + len(reached),
            capped_count=rr.capped_count + len(members) - len(reached)))
        if moved.rowcount != 1:  # type: ignore[attr-defined]
            raise Superseded()
        await s.execute(update(Broadcast).where(Broadcast.id == b.id).values(
            target_count=Broadcast.target_count + len(members),
            delivered_count=Broadcast.delivered_count + len(reached),
            capped_count=Broadcast.capped_count + len(members) - len(reached)))

    async def _settle_reach(self, r: BroadcastRound, b: Broadcast, owner: str, now: datetime) -> bool:
        """Send the round's pending subscribe messages and record each outcome once; False when
        members is unavailable (the round stays open and is retried after its lease)."""
        d = BroadcastDelivery
        gate = asyncio.Semaphore(self.reach_concurrency)
        data = {"thing1": b.title[:20], "thing2": b.text[:20]}
        page = f"{REACH_PAGE}?broadcast={b.id}"

        async def send(member_id: int) -> tuple[int, str]:
            async with gate:
                try:
                    touch = await self.members.send_reach(member_id, b.template_id, data, page, "community.broadcast",
                                                          request_id(b.id, r.round_no, member_id))
                except grpc.aio.AioRpcError as err:
                    if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                        return member_id, ""
                    return member_id, f"ERROR_{err.code().name}"
            if touch.state == mpb.TOUCH_STATE_SENT:
                return member_id, "SENT"
            return member_id, mpb.SkipReason.Name(touch.skip_reason)

        while True:
            async with self.sessions() as s:
                pending = list((await s.execute(select(d.member_id).where(d.round_id == r.id, d.reach_state == REACH_PENDING)
                                                .order_by(d.member_id).limit(500))).scalars())
            if not pending:
                return True
            outcomes = await asyncio.gather(*(send(m) for m in pending))
            by_outcome: dict[str, list[int]] = {}
            for m, outcome in outcomes:
                if outcome:
                    by_outcome.setdefault(outcome, []).append(m)
            await run_transaction(self.sessions, lambda s, by=by_outcome: self._record_reach(s, r, b, by, owner, now))
            if len(by_outcome) == 0 or sum(map(len, by_outcome.values())) < len(pending):
                return False  # members unavailable for some: retry later

    async def _record_reach(self, s: AsyncSession, r: BroadcastRound, b: Broadcast, by_outcome: dict[str, list[int]],
                            owner: str, now: datetime) -> None:
        d = BroadcastDelivery
        sent = skipped = 0
        for outcome, ids in by_outcome.items():
            state = REACH_SENT if outcome == "SENT" else REACH_SKIPPED
            done = await s.execute(update(d).where(d.round_id == r.id, d.member_id.in_(ids), d.reach_state == REACH_PENDING)
                                   .values(reach_state=state, reach_outcome=outcome[:32]))
            n = done.rowcount  # type: ignore[attr-defined]
            sent, skipped = (sent + n, skipped) if state == REACH_SENT else (sent, skipped + n)
        await s.execute(update(BroadcastRound).where(BroadcastRound.id == r.id).values(
            reach_sent_count=BroadcastRound.reach_sent_count + sent,
            reach_skipped_count=BroadcastRound.reach_skipped_count + skipped,
            lease_until=now + self.lease))
        await s.execute(update(Broadcast).where(Broadcast.id == b.id).values(
            reach_sent_count=Broadcast.reach_sent_count + sent, reach_skipped_count=Broadcast.reach_skipped_count + skipped))
