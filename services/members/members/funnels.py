"""Funnels and reports (有数): channel arrivals, the acquisition of a member (which touchpoint is
credited with the registration), content share touchpoints, and the set-wise reports over them.

Attribution (docs/members.md "Funnels and reports"):

* an arrival is a channel code scan of a device (``channel_arrivals``, signed in or not, once
  per code, visitor and brand day) or a touchpoint of a member (channel code or content share);
* a registration is credited, once (a conditional UPDATE of ``members.acquisition_touchpoint_id``),
  to the channel code of the registering login; else to the code the visitor last arrived
  through within ``attribution_window_days`` before registering (a touchpoint at that arrival's
  time); else, when the community service later reports that the visitor had arrived through
  shares (``community.visitor_linked``), to the latest share viewed within the window before
  registering. Last touch before registration, code arrivals first (they are known at login);
* first and repeat orders and GMV are the paid purchase facts of credited members: the first is
  the member's earliest paid order (``member_purchase_stats.first_order_time``), GMV the amount
  paid (refunds are not deducted).

Every report is a handful of GROUP BY statements bounded by the date range (never a scan of
members in Python); days are brand days (``MALL_BRAND_TIMEZONE``, its UTC offset at the start of
the range).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import and_, case, exists, func, literal_column, null, select, union_all, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from mall.members.v1 import members_service_pb2 as pb
from mallkit.db import insert_ignore, utcnow

from .channels import Channels
from .models import ChannelArrival, ChannelCode, Member, MemberPurchase, MemberPurchaseStats, Touchpoint, Visitor

MAX_RANGE_DAYS = 366
CONTENT_SHARES = "contentShares"  # the channel-code key of content share arrivals (they have no code)


def day_of(s: AsyncSession, col, offset_minutes: int):
    """The brand day of a UTC datetime column, in SQL (MariaDB/MySQL or SQLite)."""
    if s.get_bind().dialect.name == "sqlite":
        return func.date(col, f"{offset_minutes:+d} minutes")
    return func.date(func.timestampadd(literal_column("MINUTE"), offset_minutes, col))


def as_date(v) -> date:
    return v if isinstance(v, date) and not isinstance(v, datetime) else date.fromisoformat(str(v)[:10])


def rate(n: int, d: int) -> float:
    return round(n / d, 4) if d else 0.0


@dataclass
class FunnelRow:
    day: date | None
    key: str
    display_name: str
    channel_type: int
    arrivals: int = 0
    registrations: int = 0
    first_orders: int = 0
    repeat_orders: int = 0
    first_order_gmv_fen: int = 0
    repeat_order_gmv_fen: int = 0

    @property
    def gmv_fen(self) -> int:
        return self.first_order_gmv_fen + self.repeat_order_gmv_fen

    def add(self, other: FunnelRow) -> None:
        for f in ("registrations", "first_orders", "repeat_orders", "first_order_gmv_fen", "repeat_order_gmv_fen"):
            setattr(self, f, getattr(self, f) + getattr(other, f))


@dataclass
class Funnel:
    rows: list[FunnelRow]
    totals: list[FunnelRow]
    time_zone: str


@dataclass
class Conversion:
    post: str
    sharer_id: int | None
    new_members: int = 0
    ordering_members: int = 0
    orders: int = 0
    gmv_fen: int = 0


@dataclass
class Conversions:
    posts: list[Conversion] = field(default_factory=list)
    sharers: list[Conversion] = field(default_factory=list)


@dataclass(frozen=True)
class ShareArrival:
    post: str
    share_id: int
    sharer_id: int
    view_time: datetime


class Funnels:
    def __init__(self, channels: Channels, *, brand_timezone: str, window_days: int):
        self.channels = channels
        self.zone = ZoneInfo(brand_timezone)
        self.time_zone = brand_timezone
        self.window = timedelta(days=window_days)

    def brand_day(self, when: datetime) -> date:
        return when.astimezone(self.zone).date()

    def bounds(self, start: date, end: date) -> tuple[datetime, datetime, int]:
        """UTC [from, to) of the brand days start..end, and the offset (minutes) days are counted with."""
        lo = datetime.combine(start, time(), self.zone)
        hi = datetime.combine(end + timedelta(days=1), time(), self.zone)
        offset = lo.utcoffset()
        return lo.astimezone(UTC), hi.astimezone(UTC), int(offset.total_seconds() // 60) if offset else 0

    # -- recording -------------------------------------------------------------------------------
    async def record_arrival(self, s: AsyncSession, channel: ChannelCode, visitor_id: str,
                             member_id: int | None) -> bool:
        """A device's arrival through a code; False when already recorded this brand day."""
        now = utcnow()
        day = self.brand_day(now)
        before = await self._arrival_exists(s, channel.id, visitor_id, day)
        if before:
            return False
        await insert_ignore(s, ChannelArrival.__table__, [{
            "channel_code_id": channel.id, "channel_type": channel.channel_type, "visitor_id": visitor_id,
            "member_id": member_id, "day": day, "arrive_time": now}])
        return True

    async def _arrival_exists(self, s: AsyncSession, channel_id: int, visitor_id: str, day: date) -> bool:
        ca = ChannelArrival
        return (await s.execute(select(ca.id).where(ca.channel_code_id == channel_id, ca.visitor_id == visitor_id,
                                                    ca.day == day))).first() is not None

    async def acquire(self, s: AsyncSession, m: Member, visitor_id: str) -> None:
        """Credit a member's registration (called in the registering login's transaction): the
        touchpoint of this login's scene, else the visitor's last code arrival within the window."""
        tp_id = (await s.execute(select(Touchpoint.id).where(Touchpoint.member_id == m.id)
                                 .order_by(Touchpoint.id.desc()).limit(1))).scalar_one_or_none()
        if tp_id is None and visitor_id:
            ca = ChannelArrival
            last = (await s.execute(
                select(ca.channel_code_id, ca.arrive_time)
                .where(ca.visitor_id == visitor_id, ca.arrive_time >= m.create_time - self.window,
                       ca.arrive_time <= m.create_time)
                .order_by(ca.arrive_time.desc(), ca.id.desc()).limit(1))).first()
            if last is not None:
                channel = await s.get(ChannelCode, last.channel_code_id)
                if channel is not None:
                    tp_id = (await self.channels.record_arrival(s, m, channel, when=last.arrive_time)).id
        if tp_id is not None:
            await self._set_acquisition(s, m.id, tp_id)

    async def _set_acquisition(self, s: AsyncSession, member_id: int, tp_id: int) -> bool:
        done = await s.execute(update(Member).where(Member.id == member_id, Member.acquisition_touchpoint_id.is_(None))
                               .values(acquisition_touchpoint_id=tp_id))
        return done.rowcount == 1  # type: ignore[attr-defined]

    async def record_share_arrivals(self, s: AsyncSession, member_id: int, arrivals: Iterable[ShareArrival]) -> int:
        """One content share touchpoint per share the member (as a visitor) arrived through, once
        however often it is reported; credits the registration to the latest share viewed within
        the window before it, if nothing was credited yet. Returns the touchpoints added."""
        arrivals = sorted(arrivals, key=lambda a: a.view_time)
        if not arrivals:
            return 0
        created = (await s.execute(select(Member.create_time).where(Member.id == member_id))).scalar_one()
        added = 0
        credited: int | None = None
        for a in arrivals:
            key = f"share:{a.share_id}"
            found = select(Touchpoint.id).where(Touchpoint.member_id == member_id, Touchpoint.dedupe_key == key)
            if (await s.execute(found)).first() is None:
                await insert_ignore(s, Touchpoint.__table__, [{
                    "member_id": member_id, "channel_code_id": None, "channel_type": pb.CHANNEL_TYPE_CONTENT_SHARE,
                    "scene": "", "first_touch": False, "post": a.post[:64], "share_id": a.share_id,
                    "sharer_id": a.sharer_id, "dedupe_key": key, "create_time": a.view_time}])
                added += 1
            if created - self.window <= a.view_time <= created:
                credited = (await s.execute(found)).scalar_one()
        if credited is not None:
            await self._set_acquisition(s, member_id, credited)
        return added

    # -- the funnel ------------------------------------------------------------------------------
    async def funnel(self, s: AsyncSession, start: date, end: date, dimension: int) -> Funnel:
        lo, hi, offset = self.bounds(start, end)
        tp = Touchpoint

        def dims(channel_code, channel_type, post):
            if dimension == pb.FUNNEL_DIMENSION_CHANNEL_TYPE:
                return [channel_type.label("channel_type")]
            cols = [channel_code.label("channel_code_id"), channel_type.label("channel_type")]
            if dimension == pb.FUNNEL_DIMENSION_TOUCHPOINT:
                cols.append(post.label("post"))
            return cols

        # arrivals: code scans of devices (resolved to the member a visitor merged into) and touchpoints;
        # distinct members plus distinct visitors not joined to a member (no string concatenation:
        # MariaDB refuses a UNION of columns of different collations)
        ca, v = ChannelArrival, Visitor
        who = func.coalesce(ca.member_id, v.member_id)
        scans = (select(ca.day.label("day"), *dims(ca.channel_code_id, ca.channel_type, null()),
                        who.label("member"), case((who.is_(None), ca.visitor_id), else_=null()).label("visitor"))
                 .select_from(ca).join(v, v.visitor_id == ca.visitor_id, isouter=True)
                 .where(ca.day >= start, ca.day <= end))
        touches = (select(day_of(s, tp.create_time, offset).label("day"), *dims(tp.channel_code_id, tp.channel_type, tp.post),
                          tp.member_id.label("member"), null().label("visitor"))
                   .where(tp.create_time >= lo, tp.create_time < hi))
        arrivals = union_all(scans, touches).subquery()
        distinct_arrivals = (func.count(func.distinct(arrivals.c.member))
                             + func.count(func.distinct(arrivals.c.visitor)))
        group = [c for c in arrivals.c if c.name not in ("member", "visitor")]
        rows: dict[tuple, FunnelRow] = {}
        for r in (await s.execute(select(*group, distinct_arrivals).group_by(*group))).tuples():
            self._row(rows, dimension, r[:-1]).arrivals = int(r[-1])

        # registrations credited to each key
        acquired = tp.id == Member.acquisition_touchpoint_id
        reg_day = day_of(s, Member.create_time, offset).label("day")
        reg_dims = dims(tp.channel_code_id, tp.channel_type, tp.post)
        q = (select(reg_day, *reg_dims, func.count())
             .select_from(Member).join(tp, acquired)
             .where(Member.acquisition_touchpoint_id.is_not(None), Member.create_time >= lo, Member.create_time < hi)
             .group_by(reg_day, *reg_dims))
        for r in (await s.execute(q)).tuples():
            self._row(rows, dimension, r[:-1]).registrations = int(r[-1])

        # first and repeat orders of credited members, by pay day
        mp, st = MemberPurchase, MemberPurchaseStats
        earlier = aliased(MemberPurchase)
        # the earliest paid order; of two paid in the same second, the one recorded first
        first = and_(mp.pay_time == st.first_order_time,
                     ~exists().where(earlier.member_id == mp.member_id, earlier.pay_time == mp.pay_time,
                                     earlier.id < mp.id))
        paid = (select(day_of(s, mp.pay_time, offset).label("day"), *reg_dims, mp.paid_fen.label("paid_fen"),
                       case((first, 1), else_=0).label("first"))  # the EXISTS evaluated once per purchase
                .select_from(mp).join(Member, Member.id == mp.member_id).join(tp, acquired)
                .join(st, st.member_id == mp.member_id)
                .where(mp.pay_time >= lo, mp.pay_time < hi)).subquery()
        keys = [c for c in paid.c if c.name not in ("paid_fen", "first")]
        q = (select(*keys, func.sum(paid.c.first), func.sum(1 - paid.c.first),
                    func.sum(paid.c.first * paid.c.paid_fen), func.sum((1 - paid.c.first) * paid.c.paid_fen))
             .group_by(*keys))
        for r in (await s.execute(q)).tuples():
            row = self._row(rows, dimension, r[:-4])
            row.first_orders, row.repeat_orders, row.first_order_gmv_fen, row.repeat_order_gmv_fen = (
                int(x or 0) for x in r[-4:])

        # totals per key; arrivals over the range are distinct over the range, not a sum of days
        totals: dict[tuple, FunnelRow] = {}
        for row in rows.values():
            totals.setdefault((row.key,), FunnelRow(None, row.key, "", row.channel_type)).add(row)
        group = [c for c in group if c.name != "day"]
        for r in (await s.execute(select(*group, distinct_arrivals).group_by(*group))).tuples():
            key = self._row({}, dimension, (None, *r[:-1]))
            totals.setdefault((key.key,), FunnelRow(None, key.key, key.display_name, key.channel_type)).arrivals = int(r[-1])
        await self._names(s, [*rows.values(), *totals.values()])
        ordered = sorted(rows.values(), key=lambda x: (x.day, x.key))
        return Funnel(ordered, sorted(totals.values(), key=lambda x: x.key), self.time_zone)

    @staticmethod
    def _row(rows: dict[tuple, FunnelRow], dimension: int, values: tuple) -> FunnelRow:
        day = as_date(values[0]) if values[0] is not None else None
        if dimension == pb.FUNNEL_DIMENSION_CHANNEL_TYPE:
            channel_type = int(values[1])
            key = pb.ChannelType.Name(channel_type) if channel_type in pb.ChannelType.values() else str(channel_type)
        else:
            channel_id, channel_type = values[1], int(values[2])
            post = values[3] if dimension == pb.FUNNEL_DIMENSION_TOUCHPOINT else None
            if channel_id is not None:
                key = f"channelCodes/{int(channel_id)}"
            else:
                key = post or CONTENT_SHARES
        row = rows.get((day, key))
        if row is None:
            row = rows[(day, key)] = FunnelRow(day, key, "", channel_type)
        return row

    @staticmethod
    async def _names(s: AsyncSession, rows: list[FunnelRow]) -> None:
        """Rows keyed by a channel code get the code's display name (one query for all of them)."""
        ids = {int(r.key.split("/")[1]) for r in rows if r.key.startswith("channelCodes/")}
        if not ids:
            return
        codes = {c.id: c for c in (await s.execute(select(ChannelCode).where(ChannelCode.id.in_(ids)))).scalars()}
        for r in rows:
            if r.key.startswith("channelCodes/"):
                c = codes.get(int(r.key.split("/")[1]))
                r.display_name = c.display_name if c else ""

    # -- content conversions -----------------------------------------------------------------------
    async def conversions(self, s: AsyncSession, start: date, end: date, post: str) -> Conversions:
        lo, hi, _ = self.bounds(start, end)
        tp, mp = Touchpoint, MemberPurchase
        share = [tp.channel_type == pb.CHANNEL_TYPE_CONTENT_SHARE, tp.post.is_not(None)]
        if post:
            share.append(tp.post == post)
        out = Conversions()
        for by_sharer, target in ((False, out.posts), (True, out.sharers)):
            keys = [tp.post, tp.sharer_id] if by_sharer else [tp.post]
            found: dict[tuple, Conversion] = {}

            def conv(r, keys=keys, found=found, by_sharer=by_sharer) -> Conversion:
                k = tuple(r[:len(keys)])
                if k not in found:
                    found[k] = Conversion(k[0], int(k[1]) if by_sharer else None)
                return found[k]

            q = (select(*keys, func.count()).select_from(Member).join(tp, tp.id == Member.acquisition_touchpoint_id)
                 .where(*share, Member.acquisition_touchpoint_id.is_not(None), Member.create_time >= lo,
                        Member.create_time < hi).group_by(*keys))
            for r in (await s.execute(q)).tuples():
                conv(r).new_members = int(r[-1])
            q = (select(*keys, func.count(func.distinct(mp.member_id)), func.count(), func.sum(mp.paid_fen))
                 .select_from(mp).join(Member, Member.id == mp.member_id)
                 .join(tp, tp.id == Member.acquisition_touchpoint_id)
                 .where(*share, mp.pay_time >= lo, mp.pay_time < hi).group_by(*keys))
            for r in (await s.execute(q)).tuples():
                c = conv(r)
                c.ordering_members, c.orders, c.gmv_fen = int(r[-3]), int(r[-2]), int(r[-1] or 0)
            target.extend(sorted(found.values(), key=lambda c: (c.post, c.sharer_id or 0)))
        return out


# -- CSV -----------------------------------------------------------------------------------------------
FUNNEL_COLUMNS = ["date", "key", "display_name", "channel_type", "arrivals", "registrations", "first_orders",
                  "repeat_orders", "first_order_gmv_fen", "repeat_order_gmv_fen", "gmv_fen", "registration_rate",
                  "first_order_rate", "repeat_order_rate"]
CONVERSION_COLUMNS = ["post", "sharer", "new_members", "ordering_members", "orders", "gmv_fen"]

