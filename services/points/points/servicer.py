"""gRPC servicer of PointsService: validates requests and translates proto <-> domain.

No SQL and no business rule here: each method checks its input, resolves
resource names (ownership first), opens the transaction (through
``Idempotency.run`` for mutations) and calls one use case of a sub-domain
(``ledger``, ``statements``, ``check_in``, ``tasks``, ``mall``, ``purchases``).
Reads of the members service (tier, profile) happen before the transaction.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mall.members.v1 import members_service_pb2 as mpb
from mall.points.v1 import points_service_pb2 as pb
from mall.points.v1 import points_service_pb2_grpc as pb_grpc
from mallkit.auth import member_scope, principal
from mallkit.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from mallkit.idempotency import Idempotency
from mallkit.members import MembersClient
from mallkit.names import parse_id
from mallkit.pagination import page_size
from mallkit.validation import Validator

from . import errors as reasons
from .cash import CashPayments
from .cash_servicer import CashRpcs
from .check_in import CheckIns
from .ledger import Ledger
from .mall import TIER_UNKNOWN, Mall, TierRequired
from .messages import (
    ITEM_FIELDS,
    SOURCE_REF,
    TASK_FIELDS,
    TRACKING,
    account_member,
    account_pb,
    address_fields,
    entry_pb,
    item_fields,
    item_pb,
    mask,
    purchase_pb,
    redemption_name,
    redemption_pb,
    set_date,
    task_fields,
    task_pb,
)
from .purchases import Purchases
from .statements import Statements
from .tasks import Tasks


def profile_complete(m: mpb.Member) -> bool:
    """The profile task's rule: nickname, gender, birthday and city filled in."""
    return bool(m.nickname and m.gender and m.birthday.year and m.region.city)


class PointsServicer(CashRpcs, pb_grpc.PointsServiceServicer):
    def __init__(self, *, ledger: Ledger, statements: Statements, check_ins: CheckIns, tasks: Tasks, mall: Mall,
                 purchases: Purchases, members: MembersClient, sessions: async_sessionmaker[AsyncSession],
                 idempotency: Idempotency, cash: CashPayments):
        self.ledger = ledger
        self.statements = statements
        self.check_ins = check_ins
        self.tasks = tasks
        self.mall = mall
        self.purchases = purchases
        self.members = members
        self.sessions = sessions
        self.idem = idempotency
        self.cash = cash

    # --- statements --------------------------------------------------------------------------

    async def GetPointsAccount(self, request, context):
        member_id = account_member(request.name)
        async with self.sessions() as s:
            return account_pb(await self.statements.account(s, member_id))

    async def ListPointsEntries(self, request, context):
        member_id = member_scope(request.parent, "parent")
        size = page_size(request.page_size)
        async with self.sessions() as s:
            rows, token = await self.statements.list_entries(s, member_id, size, request.page_token)
        return pb.ListPointsEntriesResponse(points_entries=[entry_pb(e) for e in rows], next_page_token=token)

    async def CheckIn(self, request, context):
        member_id = account_member(request.name)

        async def use_case(s):
            r = await self.check_ins.check_in(s, member_id)
            out = pb.CheckInResponse(points=r.points, bonus_points=r.bonus, streak_days=r.streak,
                                     account=account_pb(await self.statements.account(s, member_id)))
            set_date(out.date, r.day)
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
            e = await self.ledger.adjust(s, member_id, request.points, request.reason, operator,
                                         key=f"adjust:{operator}:{request.request_id}")
            return entry_pb(e)

        return await self.idem.run(request, pb.PointsEntry, use_case, required=True)

    # --- tasks -------------------------------------------------------------------------------

    async def CreateTask(self, request, context):
        t, v = request.task, Validator()
        v.enum("task.kind", t.kind, pb.TaskKind, required=True)
        fields = task_fields(v, t, TASK_FIELDS - {"active"})
        v.done()
        fields["kind"] = t.kind
        fields["active"] = t.active

        async def use_case(s):
            return task_pb(await self.tasks.create_task(s, fields))

        return await self.idem.run(request, pb.Task, use_case)

    async def UpdateTask(self, request, context):
        t = request.task
        task_id = parse_id(t.name, "tasks", "task.name")
        paths = mask(request.update_mask.paths, t, TASK_FIELDS, {"name", "kind", "create_time"}, "Task")
        v = Validator()
        changes = task_fields(v, t, set(paths))
        v.done()

        async def use_case(s):
            return task_pb(await self.tasks.update_task(s, task_id, changes))

        return await self.idem.run(request, pb.Task, use_case)

    async def ListTasks(self, request, context):
        size = page_size(request.page_size)
        active_only = principal().is_member
        async with self.sessions() as s:
            rows, token = await self.tasks.list_tasks(s, size, request.page_token, active_only)
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
            r = await self.tasks.complete_task(s, member_id, request.kind, source_ref)
            return pb.CompleteTaskResponse(points=r.points, outcome=r.outcome,
                                           task=f"tasks/{r.task_id}" if r.task_id else "")

        return await self.idem.run(request, pb.CompleteTaskResponse, use_case)

    # --- items -------------------------------------------------------------------------------

    async def CreateItem(self, request, context):
        it, v = request.item, Validator()
        v.enum("item.kind", it.kind, pb.ItemKind, required=True)
        fields = item_fields(v, it, ITEM_FIELDS, it.kind)
        v.done()
        fields["kind"] = it.kind

        async def use_case(s):
            return item_pb(await self.mall.create_item(s, fields))

        return await self.idem.run(request, pb.Item, use_case)

    async def UpdateItem(self, request, context):
        it = request.item
        item_id = parse_id(it.name, "items", "item.name")
        paths = set(mask(request.update_mask.paths, it, ITEM_FIELDS,
                         {"name", "kind", "redeemed_count", "create_time", "update_time"}, "Item"))

        async def use_case(s):
            current = await self.mall.item(s, item_id)
            v = Validator()
            changes = item_fields(v, it, paths, current.kind)
            start = changes.get("start_time", current.start_time)
            end = changes.get("end_time", current.end_time)
            if start and end:
                v.check(end > start, "item.end_time", "must be after start_time")
            v.done()
            return item_pb(await self.mall.update_item(s, item_id, changes))

        return await self.idem.run(request, pb.Item, use_case)

    async def GetItem(self, request, context):
        item_id = parse_id(request.name, "items", "name")
        async with self.sessions() as s:
            it = await self.mall.item(s, item_id)
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
        async with self.sessions() as s:
            rows, token = await self.mall.list_items(s, size, request.page_token, request.kind, offered_only)
        return pb.ListItemsResponse(items=[item_pb(it) for it in rows], next_page_token=token)

    # --- redemptions -------------------------------------------------------------------------

    async def RedeemItem(self, request, context):
        item_id = parse_id(request.name, "items", "name")
        member_id = int(principal().id)
        v = Validator()
        v.range("quantity", request.quantity, 0, 99)
        address = address_fields(v, request.shipping_address) if request.HasField("shipping_address") else None
        v.done()
        quantity = request.quantity or 1
        tier: dict[str, int | None] = {"id": TIER_UNKNOWN}  # looked up only for tier-restricted items

        async def use_case(s):  # points + cash: held (trade number, deadline) until its payment
            return redemption_pb(await self.mall.redeem(s, member_id, item_id, quantity, address, tier["id"],
                                                        hold=self.cash.hold))

        async def take_stock(s):  # after the key: the hot item row is held only until the commit
            await self.mall.take_stock(s, item_id, quantity)

        try:
            return await self.idem.run(request, pb.Redemption, use_case, last=take_stock)
        except TierRequired:  # rolled back before any write; the members call happens outside a transaction
            m = await self.members.member(member_id)
            tier["id"] = int(m.tier.rsplit("/", 1)[1]) if m.tier else None
            return await self.idem.run(request, pb.Redemption, use_case, last=take_stock)

    async def GetRedemption(self, request, context):
        member_id, rid = redemption_name(request.name)
        async with self.sessions() as s:
            return redemption_pb(await self.mall.redemption(s, member_id, rid))

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
        async with self.sessions() as s:
            rows, token = await self.mall.list_redemptions(s, member_id, size, request.page_token, request.state)
        return pb.ListRedemptionsResponse(redemptions=[redemption_pb(r) for r in rows], next_page_token=token)

    async def CancelRedemption(self, request, context):
        member_id, rid = redemption_name(request.name)

        async def use_case(s):
            return redemption_pb(await self.mall.cancel_redemption(s, member_id, rid))

        return await self.idem.run(request, pb.Redemption, use_case)

    async def ShipRedemption(self, request, context):
        member_id, rid = redemption_name(request.name)
        v = Validator()
        v.text("carrier", request.carrier, max_len=32, min_len=1)
        v.pattern("tracking_number", request.tracking_number, TRACKING, "1 to 64 letters, digits or '-'",
                  required=True)
        v.done()

        async def use_case(s):
            return redemption_pb(await self.mall.ship_redemption(s, member_id, rid, request.carrier,
                                                                 request.tracking_number))

        return await self.idem.run(request, pb.Redemption, use_case)

    async def DeliverRedemption(self, request, context):
        member_id, rid = redemption_name(request.name)

        async def use_case(s):
            return redemption_pb(await self.mall.deliver_redemption(s, member_id, rid))

        return await self.idem.run(request, pb.Redemption, use_case)

    # --- purchase points (internal) ----------------------------------------------------------

    async def PendPurchasePoints(self, request, context):
        order_id = parse_id(request.order, "orders", "order")
        member_id = parse_id(request.member, "members", "member")
        v = Validator()
        v.range("paid_amount_fen", request.paid_amount_fen, 0, 10**11)
        v.done()
        _, t = await self.members.member_tier(member_id)  # outside any transaction
        multiplier = (t.benefits.points_multiplier_percent or 100) if t is not None else 100

        async def use_case(s):
            return purchase_pb(await self.purchases.pend(s, order_id, member_id, request.paid_amount_fen,
                                                         multiplier))

        return await self.idem.run(request, pb.PurchasePoints, use_case)

    async def ConfirmPurchasePoints(self, request, context):
        order_id = parse_id(request.order, "orders", "order")

        async def use_case(s):
            return purchase_pb(await self.purchases.confirm(s, order_id))

        return await self.idem.run(request, pb.PurchasePoints, use_case)

    async def ReversePurchasePoints(self, request, context):
        order_id = parse_id(request.order, "orders", "order")

        async def use_case(s):
            return purchase_pb(await self.purchases.reverse(s, order_id))

        return await self.idem.run(request, pb.PurchasePoints, use_case)
