"""RPCs of funnels and reports (有数): channel arrivals, the funnel, content conversions, CSV exports."""

from __future__ import annotations

from datetime import date

from mall.members.v1 import members_service_pb2 as pb
from mallkit.auth import current_principal
from mallkit.csvbody import csv_body
from mallkit.errors import NotFound
from mallkit.validation import Validator

from .. import errors as reasons
from ..funnels import CONVERSION_COLUMNS, FUNNEL_COLUMNS, MAX_RANGE_DAYS, Conversions, Funnel, rate
from ..messages import SCENE, VISITOR
from .base import RpcBase


def date_range(v: Validator, request) -> tuple[date, date]:
    """start_date..end_date (inclusive), both real dates, in order, at most MAX_RANGE_DAYS days."""
    days: list[date | None] = []
    for name in ("start_date", "end_date"):
        d = getattr(request, name)
        value = None
        if v.check(request.HasField(name), name, "is required"):
            try:
                value = date(d.year, d.month, d.day)
            except ValueError:
                v.fail(name, "must be a valid date (year, month and day)")
        days.append(value)
    start, end = days
    if start is not None and end is not None:
        if v.check(start <= end, "end_date", "must not be before start_date"):
            v.check((end - start).days < MAX_RANGE_DAYS, "end_date",
                    f"must be at most {MAX_RANGE_DAYS} days from start_date (inclusive)")
    v.done()
    assert start is not None and end is not None
    return start, end


def set_date(msg, d: date) -> None:
    msg.year, msg.month, msg.day = d.year, d.month, d.day


def funnel_pb(f: Funnel, start: date, end: date, dimension: int) -> pb.FunnelReport:
    out = pb.FunnelReport(dimension=dimension, time_zone=f.time_zone)
    set_date(out.start_date, start)
    set_date(out.end_date, end)
    for rows, target in ((f.rows, out.rows), (f.totals, out.totals)):
        for r in rows:
            row = pb.FunnelRow(
                key=r.key, display_name=r.display_name, channel_type=r.channel_type, arrivals=r.arrivals,
                registrations=r.registrations, first_orders=r.first_orders, repeat_orders=r.repeat_orders,
                first_order_gmv_fen=r.first_order_gmv_fen, repeat_order_gmv_fen=r.repeat_order_gmv_fen,
                gmv_fen=r.gmv_fen, registration_rate=rate(r.registrations, r.arrivals),
                first_order_rate=rate(r.first_orders, r.registrations),
                repeat_order_rate=rate(r.repeat_orders, r.first_orders))
            if r.day is not None:
                set_date(row.date, r.day)
            target.append(row)
    return out


def conversions_pb(c: Conversions, start: date, end: date) -> pb.ContentConversionReport:
    out = pb.ContentConversionReport()
    set_date(out.start_date, start)
    set_date(out.end_date, end)
    for rows, target in ((c.posts, out.posts), (c.sharers, out.sharers)):
        for x in rows:
            target.append(pb.ContentConversion(
                post=x.post, sharer=f"members/{x.sharer_id}" if x.sharer_id else "", new_members=x.new_members,
                ordering_members=x.ordering_members, orders=x.orders, gmv_fen=x.gmv_fen))
    return out


class FunnelsRpc(RpcBase):
    async def RecordChannelArrival(self, request, context):
        v = Validator()
        v.pattern("scene", request.scene, SCENE, "must be a channel code scene", required=True)
        v.pattern("visitor_id", request.visitor_id, VISITOR, "must be 8 to 40 characters of [A-Za-z0-9_-]",
                  required=True)
        v.done()
        p = current_principal.get()
        member_id = int(p.id) if p is not None and p.is_member else None

        async def use_case(s):
            channel = await self.channels.by_scene(s, request.scene)
            if channel is None:
                raise NotFound("no channel code has this scene", reason=reasons.CHANNEL_CODE_NOT_FOUND,
                               metadata={"field": "scene"}, zh="渠道码不存在")
            new = await self.funnels.record_arrival(s, channel, request.visitor_id, member_id)
            return pb.RecordChannelArrivalResponse(channel_code=f"channelCodes/{channel.id}",
                                                   channel_type=channel.channel_type, already_recorded=not new)

        return await self.idem.run(request, pb.RecordChannelArrivalResponse, use_case)

    async def _funnel(self, request) -> tuple[Funnel, date, date, int]:
        v = Validator()
        v.enum("dimension", request.dimension, pb.FunnelDimension)
        start, end = date_range(v, request)
        dimension = request.dimension or pb.FUNNEL_DIMENSION_CHANNEL_CODE
        async with self.sessions() as s:
            return await self.funnels.funnel(s, start, end, dimension), start, end, dimension

    async def GetFunnelReport(self, request, context):
        f, start, end, dimension = await self._funnel(request)
        return funnel_pb(f, start, end, dimension)

    async def ExportFunnelReport(self, request, context):
        f, start, end, dimension = await self._funnel(request)
        report = funnel_pb(f, start, end, dimension)
        rows = [[f"{r.date.year:04d}-{r.date.month:02d}-{r.date.day:02d}", r.key, r.display_name,
                 pb.ChannelType.Name(r.channel_type) if r.channel_type in pb.ChannelType.values() else r.channel_type,
                 r.arrivals, r.registrations, r.first_orders, r.repeat_orders, r.first_order_gmv_fen,
                 r.repeat_order_gmv_fen, r.gmv_fen, r.registration_rate, r.first_order_rate, r.repeat_order_rate]
                for r in report.rows]
        return csv_body(FUNNEL_COLUMNS, rows)

    async def _conversions(self, request) -> tuple[Conversions, date, date]:
        v = Validator()
        start, end = date_range(v, request)
        async with self.sessions() as s:
            return await self.funnels.conversions(s, start, end, request.post), start, end

    async def GetContentConversionReport(self, request, context):
        c, start, end = await self._conversions(request)
        return conversions_pb(c, start, end)

    async def ExportContentConversionReport(self, request, context):
        c, start, end = await self._conversions(request)
        rows = [[x.post, f"members/{x.sharer_id}" if x.sharer_id else "", x.new_members, x.ordering_members,
                 x.orders, x.gmv_fen] for x in [*c.posts, *c.sharers]]
        return csv_body(CONVERSION_COLUMNS, rows)
