"""Proto <-> domain translation of the points service: rows to messages, resource names,
update masks and the validation of incoming fields (no SQL, no business rule)."""

from __future__ import annotations

import re
from datetime import UTC as _UTC

from mall.points.v1 import points_service_pb2 as pb
from mallkit.auth import member_scope
from mallkit.errors import InvalidArgument
from mallkit.names import parse_id
from mallkit.validation import Validator

from .models import Entry, Item, PurchasePoints, Redemption, Task
from .statements import AccountView

PHONE = re.compile(r"1[3-9][0-9]{9}")
COUPON_TEMPLATE = re.compile(r"couponTemplates/[1-9][0-9]{0,17}")
TRACKING = re.compile(r"[A-Za-z0-9-]{1,64}")
SOURCE_REF = re.compile(r"[A-Za-z0-9_./-]{1,128}")
ACCOUNT_SUFFIX = "/pointsAccount"

TASK_FIELDS = {"display_name", "reward_points", "frequency", "limit_per_period", "active"}
ITEM_FIELDS = {"display_name", "description", "points_price", "cash_price_fen", "stock", "per_member_limit",
               "start_time", "end_time", "allowed_tiers", "coupon_template", "state"}


def _ts(msg_field, dt) -> None:
    if dt is not None:
        msg_field.FromDatetime(dt)


def set_date(msg_field, d) -> None:
    if d is not None:
        msg_field.year, msg_field.month, msg_field.day = d.year, d.month, d.day


# --- rows -> protos ------------------------------------------------------------------------

def account_pb(a: AccountView) -> pb.PointsAccount:
    out = pb.PointsAccount(name=f"members/{a.member_id}{ACCOUNT_SUFFIX}", available_points=a.available,
                           pending_points=a.pending, expiring_soon_points=a.expiring_soon,
                           check_in_streak_days=a.streak, checked_in_today=a.checked_in_today)
    _ts(out.next_expire_time, a.next_expire_time)
    set_date(out.last_check_in_date, a.last_check_in)
    return out


def entry_pb(e: Entry) -> pb.PointsEntry:
    out = pb.PointsEntry(name=f"members/{e.member_id}/pointsEntries/{e.id}", kind=e.kind, source=e.source,
                         source_ref=e.source_ref, available_delta=e.available_delta, pending_delta=e.pending_delta,
                         description=e.description, operator=e.operator)
    _ts(out.create_time, e.create_time)
    return out


def task_pb(t: Task) -> pb.Task:
    out = pb.Task(name=f"tasks/{t.id}", kind=t.kind, display_name=t.display_name, reward_points=t.reward_points,
                  frequency=t.frequency, limit_per_period=t.limit_per_period, active=t.active)
    _ts(out.create_time, t.create_time)
    return out


def item_pb(it: Item) -> pb.Item:
    out = pb.Item(name=f"items/{it.id}", display_name=it.display_name, description=it.description, kind=it.kind,
                  points_price=it.points_price, cash_price_fen=it.cash_price_fen, stock=it.stock,
                  per_member_limit=it.per_member_limit,
                  allowed_tiers=[f"tiers/{x}" for x in it.allowed_tiers.split(",") if x],
                  coupon_template=it.coupon_template, state=it.state, redeemed_count=it.redeemed_count)
    _ts(out.start_time, it.start_time)
    _ts(out.end_time, it.end_time)
    _ts(out.create_time, it.create_time)
    _ts(out.update_time, it.update_time)
    return out


def redemption_pb(r: Redemption) -> pb.Redemption:
    out = pb.Redemption(name=f"members/{r.member_id}/redemptions/{r.id}", item=f"items/{r.item_id}",
                        item_display_name=r.item_display_name, item_kind=r.item_kind, quantity=r.quantity,
                        points=r.points, cash_fen=r.cash_fen, state=r.state, carrier=r.carrier,
                        tracking_number=r.tracking_number, coupon_template=r.coupon_template,
                        failure_reason=r.failure_reason)
    if r.recipient:
        out.shipping_address.CopyFrom(pb.ShippingAddress(recipient=r.recipient, phone=r.phone, province=r.province,
                                                         city=r.city, district=r.district, detail=r.detail))
    _ts(out.create_time, r.create_time)
    _ts(out.update_time, r.update_time)
    _ts(out.pay_deadline_time, r.pay_deadline_time)
    _ts(out.pay_time, r.pay_time)
    out.out_trade_no = r.out_trade_no or ""
    return out


def purchase_pb(p: PurchasePoints) -> pb.PurchasePoints:
    return pb.PurchasePoints(order=f"orders/{p.order_id}", member=f"members/{p.member_id}", points=p.points,
                             reversed_points=p.reversed_points, state=p.state, multiplier_percent=p.multiplier_percent)


# --- names ---------------------------------------------------------------------------------

def account_member(name: str, field: str = "name") -> int:
    """``members/{id}/pointsAccount`` (or ``members/me/...``) -> member id, ownership first."""
    if not name.endswith(ACCOUNT_SUFFIX):
        raise InvalidArgument.field(field, "must look like members/{id}/pointsAccount or members/me/pointsAccount")
    return member_scope(name[: -len(ACCOUNT_SUFFIX)], field)


def redemption_name(name: str, field: str = "name") -> tuple[int, int]:
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "members" or parts[2] != "redemptions":
        raise InvalidArgument.field(field, "must look like members/{id}/redemptions/{id}")
    member_id = member_scope(f"members/{parts[1]}", field)
    return member_id, parse_id(f"redemptions/{parts[3]}", "redemptions", field)


def mask(paths, message, allowed: set[str], output_only: set[str], what: str) -> list[str]:
    if not paths:
        paths = [f.name for f, _ in message.ListFields()]
    out = []
    for p in paths:
        if p in output_only:
            continue
        if p not in allowed:
            raise InvalidArgument.field("update_mask", f"{p!r} is not an updatable field of {what}")
        out.append(p)
    return out


def task_fields(v: Validator, t: pb.Task, paths: set[str]) -> dict:
    out: dict = {}
    if "display_name" in paths:
        v.text("task.display_name", t.display_name, max_len=64, min_len=1)
        out["display_name"] = t.display_name
    if "reward_points" in paths:
        v.range("task.reward_points", t.reward_points, 1, 100_000)
        out["reward_points"] = t.reward_points
    if "frequency" in paths:
        v.enum("task.frequency", t.frequency, pb.TaskFrequency, required=True)
        out["frequency"] = t.frequency
    if "limit_per_period" in paths:
        v.range("task.limit_per_period", t.limit_per_period, 0, 1000)
        out["limit_per_period"] = t.limit_per_period or 1
    if "active" in paths:
        out["active"] = t.active
    return out


def item_fields(v: Validator, it: pb.Item, paths: set[str], kind: int) -> dict:
    out: dict = {}
    if "display_name" in paths:
        v.text("item.display_name", it.display_name, max_len=64, min_len=1)
        out["display_name"] = it.display_name
    if "description" in paths:
        v.text("item.description", it.description, max_len=500)
        out["description"] = it.description
    if "points_price" in paths:
        v.range("item.points_price", it.points_price, 1, 10_000_000)
        out["points_price"] = it.points_price
    if "cash_price_fen" in paths:
        v.range("item.cash_price_fen", it.cash_price_fen, 0, 100_000_000)
        out["cash_price_fen"] = it.cash_price_fen
    if "stock" in paths:
        v.range("item.stock", it.stock, 0, 10_000_000)
        out["stock"] = it.stock
    if "per_member_limit" in paths:
        v.range("item.per_member_limit", it.per_member_limit, 0, 1000)
        out["per_member_limit"] = it.per_member_limit
    if "start_time" in paths:
        out["start_time"] = it.start_time.ToDatetime(tzinfo=_UTC) if it.HasField("start_time") else None
    if "end_time" in paths:
        out["end_time"] = it.end_time.ToDatetime(tzinfo=_UTC) if it.HasField("end_time") else None
    if out.get("start_time") and out.get("end_time"):
        v.check(out["end_time"] > out["start_time"], "item.end_time", "must be after start_time")
    if "allowed_tiers" in paths:
        v.check(len(it.allowed_tiers) <= 10, "item.allowed_tiers", "at most 10 tiers")
        ids = []
        for i, name in enumerate(it.allowed_tiers):
            try:
                ids.append(parse_id(name, "tiers", f"item.allowed_tiers[{i}]"))
            except InvalidArgument:
                v.fail(f"item.allowed_tiers[{i}]", "must look like tiers/{id}")
        out["allowed_tiers"] = ",".join(str(x) for x in dict.fromkeys(ids))
    if "coupon_template" in paths:
        if kind == pb.ITEM_KIND_COUPON:
            v.pattern("item.coupon_template", it.coupon_template, COUPON_TEMPLATE,
                      "must look like couponTemplates/{id}", required=True)
        else:
            v.check(not it.coupon_template, "item.coupon_template", "only coupon items carry a coupon template")
        out["coupon_template"] = it.coupon_template
    if "state" in paths:
        v.enum("item.state", it.state, pb.ItemState)
        out["state"] = it.state or pb.ITEM_STATE_ACTIVE
    return out


def address_fields(v: Validator, a: pb.ShippingAddress) -> dict:
    f = "shipping_address"
    v.text(f"{f}.recipient", a.recipient, max_len=32, min_len=1)
    v.pattern(f"{f}.phone", a.phone, PHONE, "must be an 11-digit mainland mobile number", required=True)
    v.text(f"{f}.province", a.province, max_len=32, min_len=1)
    v.text(f"{f}.city", a.city, max_len=32, min_len=1)
    v.text(f"{f}.district", a.district, max_len=32)
    v.text(f"{f}.detail", a.detail, max_len=200, min_len=1)
    return {"recipient": a.recipient, "phone": a.phone, "province": a.province, "city": a.city,
            "district": a.district, "detail": a.detail}
