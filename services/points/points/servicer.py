"""gRPC servicer of PointsService: validates requests and translates proto <-> rows.

No SQL and no business rule here: each method checks its input, resolves
resource names (ownership first), opens the transaction (through
``Idempotency.run`` for mutations) and calls one use case of ``service.py``.
Reads of the members service (tier, profile) happen before the transaction.
"""

from __future__ import annotations

import re
from datetime import UTC as _UTC

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mall.points.v1 import points_service_pb2 as pb
from mall.points.v1 import points_service_pb2_grpc as pb_grpc
from mallkit.auth import member_scope, principal
from mallkit.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from mallkit.idempotency import Idempotency
from mallkit.names import parse_id
from mallkit.pagination import PageTokens, next_token, page_size
from mallkit.validation import Validator

from . import errors as reasons
from .members_client import MembersClient, profile_complete
from .models import Entry, Item, PurchasePoints, Redemption, Task
from .service import TIER_UNKNOWN, AccountView, PointsService, TierRequired

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


def _date(msg_field, d) -> None:
    if d is not None:
        msg_field.year, msg_field.month, msg_field.day = d.year, d.month, d.day


# --- rows -> protos ------------------------------------------------------------------------

def account_pb(a: AccountView) -> pb.PointsAccount:
    out = pb.PointsAccount(name=f"members/{a.member_id}{ACCOUNT_SUFFIX}", available_points=a.available,
                           pending_points=a.pending, expiring_soon_points=a.expiring_soon,
                           check_in_streak_days=a.streak, checked_in_today=a.checked_in_today)
    _ts(out.next_expire_time, a.next_expire_time)
    _date(out.last_check_in_date, a.last_check_in)
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
                        tracking_number=r.tracking_number, coupon_template=r.coupon_template)
    if r.recipient:
        out.shipping_address.CopyFrom(pb.ShippingAddress(recipient=r.recipient, phone=r.phone, province=r.province,
                                                         city=r.city, district=r.district, detail=r.detail))
    _ts(out.create_time, r.create_time)
    _ts(out.update_time, r.update_time)
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


def _mask(paths, message, allowed: set[str], output_only: set[str], what: str) -> list[str]:
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


def _task_fields(v: Validator, t: pb.Task, paths: set[str]) -> dict:
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


def _item_fields(v: Validator, it: pb.Item, paths: set[str], kind: int) -> dict:
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


def _address(v: Validator, a: pb.ShippingAddress) -> dict:
    f = "shipping_address"
    v.text(f"{f}.recipient", a.recipient, max_len=32, min_len=1)
    v.pattern(f"{f}.phone", a.phone, PHONE, "must be an 11-digit mainland mobile number", required=True)
    v.text(f"{f}.province", a.province, max_len=32, min_len=1)
    v.text(f"{f}.city", a.city, max_len=32, min_len=1)
    v.text(f"{f}.district", a.district, max_len=32)
    v.text(f"{f}.detail", a.detail, max_len=200, min_len=1)
    return {"recipient": a.recipient, "phone": a.phone, "province": a.province, "city": a.city,
            "district": a.district, "detail": a.detail}



class PointsServicer(pb_grpc.PointsServiceServicer):
    def __init__(self, service: PointsService, sessions: async_sessionmaker[AsyncSession], idempotency: Idempotency,
                 pages: PageTokens, members: MembersClient):
        self.service = service
        self.sessions = sessions
        self.idem = idempotency
        self.pages = pages
        self.members = members

    def _after(self, token: str, filters=()) -> int | None:
        key = self.pages.decode(token, filters)
        return int(key[0]) if key else None

    # --- statements --------------------------------------------------------------------------

    async def GetPointsAccount(self, request, context):
        member_id = account_member(request.name)
        async with self.sessions() as s:
            return account_pb(await self.service.account(s, member_id))

    async def ListPointsEntries(self, request, context):
        member_id = member_scope(request.parent, "parent")
        size = page_size(request.page_size)
        async with self.sessions() as s:
            rows = await self.service.list_entries(s, member_id, size, self._after(request.page_token, [member_id]))
        rows, token = next_token(self.pages, rows, size, lambda e: [e.id], [member_id])
        return pb.ListPointsEntriesResponse(points_entries=[entry_pb(e) for e in rows], next_page_token=token)

    async def CheckIn(self, request, context):
        member_id = account_member(request.name)

        async def use_case(s):
            r = await self.service.check_in(s, member_id)
            out = pb.CheckInResponse(points=r.points, bonus_points=r.bonus, streak_days=r.streak,
                                     account=account_pb(await self.service.account(s, member_id)))
            _date(out.date, r.day)
            return out

        return await self.idem.run(request, pb.CheckInResponse, use_case)

    async def AdjustPoints(self, request, context):
        member_id = account_member(request.name)
        v = Validator()
        v.check(request.points != 0 and -10_000_000 <= request.points <= 10_000_000, "points",
                "must be non-zero, between -10000000 and 10000000")
        v.text("reason", request.reason, max_len=200, min_len=1)
        v.done()
        operator = principal().subject
        if not request.request_id:
            raise InvalidArgument.field("request_id", "is required for this method")
        await self.members.ensure_exists(member_id)  # NOT_FOUND for a member that does not exist

        async def use_case(s):
            e = await self.service.adjust(s, member_id, request.points, request.reason, operator,
                                          key=f"adjust:{operator}:{request.request_id}")
            return entry_pb(e)

        return await self.idem.run(request, pb.PointsEntry, use_case, required=True)

    # --- tasks -------------------------------------------------------------------------------

    async def CreateTask(self, request, context):
        t, v = request.task, Validator()
        v.enum("task.kind", t.kind, pb.TaskKind, required=True)
        fields = _task_fields(v, t, TASK_FIELDS - {"active"})
        v.done()
        fields["kind"] = t.kind
        fields["active"] = t.active

        async def use_case(s):
            return task_pb(await self.service.create_task(s, fields))

        return await self.idem.run(request, pb.Task, use_case)

    async def UpdateTask(self, request, context):
        t = request.task
        task_id = parse_id(t.name, "tasks", "task.name")
        paths = _mask(request.update_mask.paths, t, TASK_FIELDS, {"name", "kind", "create_time"}, "Task")
        v = Validator()
        changes = _task_fields(v, t, set(paths))
        v.done()

        async def use_case(s):
            return task_pb(await self.service.update_task(s, task_id, changes))

        return await self.idem.run(request, pb.Task, use_case)

    async def ListTasks(self, request, context):
        size = page_size(request.page_size)
        active_only = principal().is_member
        async with self.sessions() as s:
            rows = await self.service.list_tasks(s, size, self._after(request.page_token, [active_only]), active_only)
        rows, token = next_token(self.pages, rows, size, lambda t: [t.id], [active_only])
        return pb.ListTasksResponse(tasks=[task_pb(t) for t in rows], next_page_token=token)

    async def CompleteTask(self, request, context):
        member_id = account_member(request.name)
        v = Validator()
        v.enum("kind", request.kind, pb.TaskKind, required=True)
        if request.source_ref:
            v.pattern("source_ref", request.source_ref, SOURCE_REF, "letters, digits, '_', '.', '/' or '-', at most 128")
        v.done()
        source_ref = request.source_ref
        if principal().is_member:
            if request.kind != pb.TASK_KIND_COMPLETE_PROFILE:
                raise PermissionDenied("members may only claim the profile task", reason=reasons.TASK_NOT_CLAIMABLE,
                                       metadata={"field": "kind"}, zh="该任务由系统自动完成")
            source_ref = ""
        if request.kind == pb.TASK_KIND_COMPLETE_PROFILE:
            if not profile_complete(await self.members.member(member_id)):
                raise FailedPrecondition("profile is not complete", reason=reasons.PROFILE_INCOMPLETE,
                                         zh="请先完善昵称、性别、生日和所在城市")
            source_ref = ""

        async def use_case(s):
            r = await self.service.complete_task(s, member_id, request.kind, source_ref)
            return pb.CompleteTaskResponse(points=r.points, outcome=r.outcome,
                                           task=f"tasks/{r.task_id}" if r.task_id else "")

        return await self.idem.run(request, pb.CompleteTaskResponse, use_case)

    # --- items -------------------------------------------------------------------------------

    async def CreateItem(self, request, context):
        it, v = request.item, Validator()
        v.enum("item.kind", it.kind, pb.ItemKind, required=True)
        fields = _item_fields(v, it, ITEM_FIELDS, it.kind)
        v.done()
        fields["kind"] = it.kind

        async def use_case(s):
            return item_pb(await self.service.create_item(s, fields))

        return await self.idem.run(request, pb.Item, use_case)

    async def UpdateItem(self, request, context):
        it = request.item
        item_id = parse_id(it.name, "items", "item.name")
        paths = set(_mask(request.update_mask.paths, it, ITEM_FIELDS,
                          {"name", "kind", "redeemed_count", "create_time", "update_time"}, "Item"))

        async def use_case(s):
            current = await self.service.item(s, item_id)
            v = Validator()
            changes = _item_fields(v, it, paths, current.kind)
            start = changes.get("start_time", current.start_time)
            end = changes.get("end_time", current.end_time)
            if start and end:
                v.check(end > start, "item.end_time", "must be after start_time")
            v.done()
            return item_pb(await self.service.update_item(s, item_id, changes))

        return await self.idem.run(request, pb.Item, use_case)

    async def GetItem(self, request, context):
        item_id = parse_id(request.name, "items", "name")
        async with self.sessions() as s:
            it = await self.service.item(s, item_id)
        if principal().is_member and it.state != pb.ITEM_STATE_ACTIVE:  # withdrawn: as if it did not exist
            raise NotFound("item not found", reason=reasons.ITEM_NOT_FOUND, resource=("item", request.name),
                           zh="商品不存在")
        return item_pb(it)

    async def ListItems(self, request, context):
        size = page_size(request.page_size)
        v = Validator()
        v.enum("kind", request.kind, pb.ItemKind)
        v.done()
        offered_only = principal().is_member
        filters = [request.kind, offered_only]
        async with self.sessions() as s:
            rows = await self.service.list_items(s, size, self._after(request.page_token, filters), request.kind,
                                                 offered_only)
        rows, token = next_token(self.pages, rows, size, lambda it: [it.id], filters)
        return pb.ListItemsResponse(items=[item_pb(it) for it in rows], next_page_token=token)

    # --- redemptions -------------------------------------------------------------------------

    async def RedeemItem(self, request, context):
        item_id = parse_id(request.name, "items", "name")
        member_id = int(principal().id)
        v = Validator()
        v.range("quantity", request.quantity, 0, 99)
        address = _address(v, request.shipping_address) if request.HasField("shipping_address") else None
        v.done()
        quantity = request.quantity or 1
        tier: dict[str, int | None] = {"id": TIER_UNKNOWN}  # looked up only for tier-restricted items

        async def use_case(s):
            return redemption_pb(await self.service.redeem(s, member_id, item_id, quantity, address, tier["id"]))

        try:
            return await self.idem.run(request, pb.Redemption, use_case)
        except TierRequired:  # rolled back before any write; the members call happens outside a transaction
            tier["id"] = await self.members.tier_of(member_id)
            return await self.idem.run(request, pb.Redemption, use_case)

    async def GetRedemption(self, request, context):
        member_id, rid = redemption_name(request.name)
        async with self.sessions() as s:
            return redemption_pb(await self.service.redemption(s, member_id, rid))

    async def ListRedemptions(self, request, context):
        if request.parent == "members/-":
            if principal().is_member:
                raise PermissionDenied("members may only access their own data", reason="NOT_OWNER",
                                       zh="无权访问他人的信息")
            member_id = None
        else:
            member_id = member_scope(request.parent, "parent")
        v = Validator()
        v.enum("state", request.state, pb.RedemptionState)
        v.done()
        size = page_size(request.page_size)
        filters = [member_id, request.state]
        async with self.sessions() as s:
            rows = await self.service.list_redemptions(s, member_id, size, self._after(request.page_token, filters),
                                                       request.state)
        rows, token = next_token(self.pages, rows, size, lambda r: [r.id], filters)
        return pb.ListRedemptionsResponse(redemptions=[redemption_pb(r) for r in rows], next_page_token=token)

    async def CancelRedemption(self, request, context):
        member_id, rid = redemption_name(request.name)

        async def use_case(s):
            return redemption_pb(await self.service.cancel_redemption(s, member_id, rid))

        return await self.idem.run(request, pb.Redemption, use_case)

    async def ShipRedemption(self, request, context):
        member_id, rid = redemption_name(request.name)
        v = Validator()
        v.text("carrier", request.carrier, max_len=32, min_len=1)
        v.pattern("tracking_number", request.tracking_number, TRACKING, "1 to 64 letters, digits or '-'",
                  required=True)
        v.done()

        async def use_case(s):
            return redemption_pb(await self.service.ship_redemption(s, member_id, rid, request.carrier,
                                                                    request.tracking_number))

        return await self.idem.run(request, pb.Redemption, use_case)

    async def DeliverRedemption(self, request, context):
        member_id, rid = redemption_name(request.name)

        async def use_case(s):
            return redemption_pb(await self.service.deliver_redemption(s, member_id, rid))

        return await self.idem.run(request, pb.Redemption, use_case)

    # --- purchase points (internal) ----------------------------------------------------------

    async def PendPurchasePoints(self, request, context):
        order_id = parse_id(request.order, "orders", "order")
        member_id = parse_id(request.member, "members", "member")
        v = Validator()
        v.range("paid_amount_fen", request.paid_amount_fen, 0, 10**11)
        v.done()
        _, multiplier = await self.members.tier_and_multiplier(member_id)

        async def use_case(s):
            return purchase_pb(await self.service.pend_purchase(s, order_id, member_id, request.paid_amount_fen,
                                                                multiplier))

        return await self.idem.run(request, pb.PurchasePoints, use_case)

    async def ConfirmPurchasePoints(self, request, context):
        order_id = parse_id(request.order, "orders", "order")

        async def use_case(s):
            return purchase_pb(await self.service.confirm_purchase(s, order_id))

        return await self.idem.run(request, pb.PurchasePoints, use_case)

    async def ReversePurchasePoints(self, request, context):
        order_id = parse_id(request.order, "orders", "order")

        async def use_case(s):
            return purchase_pb(await self.service.reverse_purchase(s, order_id))

        return await self.idem.run(request, pb.PurchasePoints, use_case)
