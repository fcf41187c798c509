"""The points mall: items (coupons, physical and virtual goods, some reserved to tiers) and the
redemptions of members, with their fulfilment (shipping, delivery) and cancellation.

Points, per-member counts and stock move together in one transaction, or not at all.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mall.points.v1 import points_events_pb2 as epb
from mall.points.v1 import points_service_pb2 as pb
from mallkit.db import insert_ignore
from mallkit.errors import FailedPrecondition, NotFound
from mallkit.events import Outbox
from mallkit.pagination import PageTokens
from mallkit.queries import keyset_page

from . import errors as reasons
from .ledger import Ledger
from .models import Account, Item, Lot, LotMove, MemberItemCount, Redemption
from .reach import Reach

# The redemption's statements, built once (Core on the tables: no unit of work, cached compilation).
_items = Item.__table__
ITEM_TO_REDEEM = select(Item.id, Item.display_name, Item.kind, Item.points_price, Item.cash_price_fen,
                        Item.per_member_limit, Item.start_time, Item.end_time, Item.allowed_tiers,
                        Item.coupon_template, Item.state).where(Item.id == bindparam("item"))
INSERT_REDEMPTION = insert(Redemption.__table__)
TAKE_STOCK = (update(_items).where(_items.c.id == bindparam("item"), _items.c.stock >= bindparam("qty"),
                                   _items.c.state == pb.ITEM_STATE_ACTIVE)
              .values(stock=_items.c.stock - bindparam("qty"), redeemed_count=_items.c.redeemed_count + bindparam("qty")))

#: ``redeem(tier_id=TIER_UNKNOWN)``: the caller has not looked the member's tier up (yet).
TIER_UNKNOWN = -1


class TierRequired(Exception):
    """The item is reserved to some tiers: look the member's tier up, then call again."""


class Mall:
    def __init__(self, ledger: Ledger, outbox: Outbox, pages: PageTokens, reach: Reach | None = None,
                 reach_template: str = "redemption_failed"):
        self.ledger = ledger
        self.pages = pages
        self.outbox = outbox
        self.reach = reach
        self.reach_template = reach_template

    # --- items ---------------------------------------------------------------------------------

    async def item(self, s: AsyncSession, item_id: int) -> Item:
        it = await s.get(Item, item_id, populate_existing=True)
        if it is None:
            raise NotFound("item not found", reason=reasons.ITEM_NOT_FOUND, resource=("item", f"items/{item_id}"),
                           zh="商品不存在")
        return it

    async def create_item(self, s: AsyncSession, fields: dict) -> Item:
        now = self.ledger.clock()
        it = Item(redeemed_count=0, create_time=now, update_time=now, **fields)
        s.add(it)
        await s.flush()
        return it

    async def update_item(self, s: AsyncSession, item_id: int, changes: dict) -> Item:
        it = await self.item(s, item_id)
        for k, v in changes.items():
            setattr(it, k, v)
        it.update_time = self.ledger.clock()
        await s.flush()
        return it

    async def list_items(self, s: AsyncSession, size: int, token: str, kind: int,
                         offered_only: bool) -> tuple[list[Item], str]:
        q = select(Item)
        if kind:
            q = q.where(Item.kind == kind)
        if offered_only:
            now = self.ledger.clock()
            q = q.where(Item.state == pb.ITEM_STATE_ACTIVE, (Item.start_time.is_(None)) | (Item.start_time <= now),
                        (Item.end_time.is_(None)) | (Item.end_time > now))
        return await keyset_page(s, q, key=Item.id.desc(), tokens=self.pages, page_size=size, page_token=token,
                                 filters=[kind, offered_only])

    def offered(self, it: Item, now: datetime) -> bool:
        return (it.state == pb.ITEM_STATE_ACTIVE and (it.start_time is None or it.start_time <= now)
                and (it.end_time is None or it.end_time > now))

    # --- redemptions ---------------------------------------------------------------------------

    async def redeem(self, s: AsyncSession, member_id: int, item_id: int, quantity: int, address: dict | None,
                     tier_id: int | None, hold: Callable[[], dict] | None = None) -> Redemption:
        """Points and per-member count move, the redemption is written; the caller runs
        :meth:`take_stock` last (after the idempotency key), so the hot item row is locked only
        until the commit. Nothing is re-read: the redemption returned is the row as written.

        ``hold``: the fields of a points + cash redemption awaiting its payment (points.cash)."""
        now = self.ledger.clock()
        it = (await s.execute(ITEM_TO_REDEEM, {"item": item_id})).first()
        if it is None:
            raise NotFound("item not found", reason=reasons.ITEM_NOT_FOUND, resource=("item", f"items/{item_id}"),
                           zh="商品不存在")
        if not self.offered(it, now):
            raise FailedPrecondition("item is not offered now", reason=reasons.ITEM_NOT_AVAILABLE,
                                     metadata={"item": f"items/{item_id}"}, zh="该商品当前不可兑换")
        allowed = [int(x) for x in it.allowed_tiers.split(",") if x]
        if allowed and tier_id == TIER_UNKNOWN:
            raise TierRequired(item_id)
        if allowed and tier_id not in allowed:
            raise FailedPrecondition("item is reserved to other tiers", reason=reasons.TIER_NOT_ALLOWED,
                                     metadata={"item": f"items/{item_id}"}, zh="您的会员等级不能兑换该商品")
        if it.kind == pb.ITEM_KIND_PHYSICAL and not address:
            raise FailedPrecondition("a physical item needs a shipping address",
                                     reason=reasons.SHIPPING_ADDRESS_REQUIRED,
                                     metadata={"field": "shipping_address"}, zh="请填写收货地址")
        cost = it.points_price * quantity
        state = pb.REDEMPTION_STATE_PENDING_SHIPMENT if it.kind == pb.ITEM_KIND_PHYSICAL else pb.REDEMPTION_STATE_COMPLETED
        if it.cash_price_fen:  # points + cash: held until the cash part is paid (points.cash)
            state = pb.REDEMPTION_STATE_PENDING_PAYMENT
        # Lock order: the member's account, then rows of this member, then (take_stock, last) the item.
        await self.ledger.take(s, member_id, cost)  # locks the account row (or fails: no points)
        values = dict(member_id=member_id, item_id=item_id, item_display_name=it.display_name, item_kind=it.kind,
                      quantity=quantity, points=cost, cash_fen=it.cash_price_fen * quantity, state=state,
                      coupon_template=it.coupon_template if it.kind == pb.ITEM_KIND_COUPON else "",
                      create_time=now, update_time=now, carrier="", tracking_number="", failure_reason="",
                      out_trade_no=None, pay_deadline_time=None, pay_time=None)
        values.update({"recipient": "", "phone": "", "province": "", "city": "", "district": "", "detail": "",
                       **(address or {})})
        if state == pb.REDEMPTION_STATE_PENDING_PAYMENT and hold is not None:
            values.update(hold())
        conn = await s.connection()
        r = Redemption(id=(await conn.execute(INSERT_REDEMPTION, values)).inserted_primary_key[0], **values)
        entry_id = await self.ledger.append_entry(s, {
            "member_id": member_id, "kind": pb.ENTRY_KIND_SPEND, "source": pb.ENTRY_SOURCE_REDEMPTION,
            "source_ref": f"items/{item_id}", "available_delta": -cost, "pending_delta": 0,
            "description": f"兑换 {it.display_name} x{quantity}"[:200], "operator": "", "idempotency_key": f"redeem:{r.id}",
            "create_time": now})
        await self.ledger.consume_lots_of(s, member_id, entry_id, cost)
        if it.per_member_limit:
            await insert_ignore(s, MemberItemCount.__table__, [{"item_id": item_id, "member_id": member_id,
                                                                "quantity": 0}])
            counted = await s.execute(update(MemberItemCount).where(
                MemberItemCount.item_id == item_id, MemberItemCount.member_id == member_id,
                MemberItemCount.quantity + quantity <= it.per_member_limit)
                .values(quantity=MemberItemCount.quantity + quantity))
            if counted.rowcount != 1:
                raise FailedPrecondition("per-member limit reached", reason=reasons.REDEMPTION_LIMIT_REACHED,
                                         metadata={"limit": it.per_member_limit}, zh="已达到该商品的兑换上限")
        if it.kind == pb.ITEM_KIND_COUPON and state != pb.REDEMPTION_STATE_PENDING_PAYMENT:
            await self.coupon_redeemed(s, r, now)
        return r

    async def take_stock(self, s: AsyncSession, item_id: int, quantity: int) -> None:
        """The hot-row conditional UPDATE of the item's stock, the last statement of a redemption."""
        taken = await (await s.connection()).execute(TAKE_STOCK, {"item": item_id, "qty": quantity})
        if taken.rowcount != 1:
            raise FailedPrecondition("out of stock", reason=reasons.OUT_OF_STOCK,
                                     metadata={"item": f"items/{item_id}"}, zh="商品已兑完")

    async def coupon_redeemed(self, s: AsyncSession, r: Redemption, now: datetime) -> None:
        """The orders service issues the coupon of a coupon redemption (event points.coupon_redeemed)."""
        event = epb.CouponRedeemedEvent(redemption=f"members/{r.member_id}/redemptions/{r.id}",
                                        member=f"members/{r.member_id}", coupon_template=r.coupon_template)
        event.redeem_time.FromDatetime(now)
        await self.outbox.add(s, "points.coupon_redeemed", event, subject=f"members/{r.member_id}")

    async def redemption(self, s: AsyncSession, member_id: int, redemption_id: int) -> Redemption:
        r = await s.get(Redemption, redemption_id, populate_existing=True)
        if r is None or r.member_id != member_id:
            raise NotFound("redemption not found", reason=reasons.REDEMPTION_NOT_FOUND,
                           resource=("redemption", f"members/{member_id}/redemptions/{redemption_id}"),
                           zh="兑换记录不存在")
        return r

    async def list_redemptions(self, s: AsyncSession, member_id: int | None, size: int, token: str,
                               state: int) -> tuple[list[Redemption], str]:
        """Redemptions of one member (or of all: ``member_id`` None), newest first."""
        q = select(Redemption)
        if member_id is not None:
            q = q.where(Redemption.member_id == member_id)
        if state:
            q = q.where(Redemption.state == state)
        return await keyset_page(s, q, key=Redemption.id.desc(), tokens=self.pages, page_size=size, page_token=token,
                                 filters=[member_id, state])

    async def _transition(self, s: AsyncSession, r: Redemption, from_state: int, values: dict) -> None:
        moved = await s.execute(update(Redemption).where(Redemption.id == r.id, Redemption.state == from_state)
                                .values(update_time=self.ledger.clock(), **values))
        if moved.rowcount != 1:
            raise FailedPrecondition("redemption is not in a state that allows this", reason=reasons.REDEMPTION_STATE,
                                     metadata={"state": pb.RedemptionState.Name(r.state)}, zh="当前状态不允许此操作")

    async def cancel_redemption(self, s: AsyncSession, member_id: int, redemption_id: int, *,
                                from_state: int = pb.REDEMPTION_STATE_PENDING_SHIPMENT,
                                to_state: int = pb.REDEMPTION_STATE_CANCELLED) -> Redemption:
        """Points back to the lots they came from, stock and count back; once (the state transition guards it).

        Also the expiry of an unpaid points + cash redemption (PENDING_PAYMENT -> EXPIRED)."""
        now = self.ledger.clock()
        await self.ledger.lock(s, member_id, now)
        r = await self.redemption(s, member_id, redemption_id)
        await self._transition(s, r, from_state, {"state": to_state})
        if r.transaction_id is not None:  # a paid points + cash redemption: its cash is refunded too (points.cash)
            await s.execute(update(Redemption).where(Redemption.id == r.id, Redemption.refund_state == 0)
                            .values(refund_state=1))
        await self._give_back(s, r, "cancel", f"取消兑换 {r.item_display_name}", now)
        return await self.redemption(s, member_id, redemption_id)

    async def fail_redemption(self, s: AsyncSession, member_id: int, redemption_id: int, reason: str) -> bool:
        """A coupon redemption the orders service refused: COMPLETED -> FAILED with the reason, points back to
        their lots, stock and count back, the member told. Once: False when it is not (or no longer) COMPLETED."""
        now = self.ledger.clock()
        await self.ledger.lock(s, member_id, now)
        r = await s.get(Redemption, redemption_id, populate_existing=True)
        if r is None or r.member_id != member_id or r.item_kind != pb.ITEM_KIND_COUPON:
            return False
        moved = await s.execute(update(Redemption).where(Redemption.id == r.id,
                                                         Redemption.state == pb.REDEMPTION_STATE_COMPLETED)
                                .values(state=pb.REDEMPTION_STATE_FAILED, failure_reason=reason[:64], update_time=now))
        if moved.rowcount != 1:
            return False  # already failed (a refusal is applied once)
        await self._give_back(s, r, "fail", f"兑换失败 {r.item_display_name} 积分退回", now)
        if self.reach is not None:
            await self.reach.queue(
                s, member_id, f"redemption-failed-{r.id}", self.reach_template, "points.redemption_failed",
                {"thing1": r.item_display_name[:20], "number2": str(r.points), "thing3": "优惠券未能发放,积分已退回"},
                "pages/points/redemptions")
        return True

    async def _give_back(self, s: AsyncSession, r: Redemption, key: str, description: str, now: datetime) -> None:
        """Return a redemption's points to the lots they came from (the account is locked), and its stock and
        per-member count. Points returned to lots past their expiry expire again at once."""
        member_id = r.member_id
        spent = await self.ledger.applied(s, f"redeem:{r.id}")
        e = await self.ledger.entry(s, member_id, f"{key}:{r.id}", pb.ENTRY_KIND_REVERSE, pb.ENTRY_SOURCE_REDEMPTION,
                                    f"items/{r.item_id}", r.points, 0, now, description, fresh=True)
        await s.execute(update(Account).where(Account.member_id == member_id)
                        .values(available=Account.available + r.points))
        moves = [(lot_id, delta, expired or expire_time <= now) for lot_id, delta, expired, expire_time in (
            await s.execute(select(LotMove.lot_id, LotMove.delta, Lot.expired, Lot.expire_time)
                            .join(Lot, Lot.id == LotMove.lot_id).where(LotMove.entry_id == spent.id))).all()
        ] if spent else []
        expired_back = 0
        for lot_id, delta, expired in moves:
            await s.execute(update(Lot).where(Lot.id == lot_id).values(remaining=Lot.remaining - delta))
            s.add(LotMove(entry_id=e.id, lot_id=lot_id, delta=-delta))
            if expired:
                expired_back += -delta
        if expired_back:  # points returned to lots past their expiry expire again at once
            x = await self.ledger.entry(s, member_id, f"{key}-expire:{r.id}", pb.ENTRY_KIND_EXPIRE,
                                        pb.ENTRY_SOURCE_EXPIRY, f"items/{r.item_id}", -expired_back, 0, now,
                                        "退回的积分已过期")
            await s.execute(update(Account).where(Account.member_id == member_id)
                            .values(available=Account.available - expired_back))
            for lot_id, delta, expired in moves:
                if expired:
                    await s.execute(update(Lot).where(Lot.id == lot_id).values(remaining=Lot.remaining + delta))
                    s.add(LotMove(entry_id=x.id, lot_id=lot_id, delta=delta))
        await s.execute(update(Item).where(Item.id == r.item_id)
                        .values(stock=Item.stock + r.quantity, redeemed_count=Item.redeemed_count - r.quantity))
        await s.execute(update(MemberItemCount).where(MemberItemCount.item_id == r.item_id,
                                                      MemberItemCount.member_id == member_id)
                        .values(quantity=MemberItemCount.quantity - r.quantity))
        await s.flush()

    async def ship_redemption(self, s: AsyncSession, member_id: int, redemption_id: int, carrier: str,
                              tracking: str) -> Redemption:
        r = await self.redemption(s, member_id, redemption_id)
        await self._transition(s, r, pb.REDEMPTION_STATE_PENDING_SHIPMENT,
                               {"state": pb.REDEMPTION_STATE_SHIPPED, "carrier": carrier, "tracking_number": tracking})
        return await self.redemption(s, member_id, redemption_id)

    async def deliver_redemption(self, s: AsyncSession, member_id: int, redemption_id: int) -> Redemption:
        r = await self.redemption(s, member_id, redemption_id)
        await self._transition(s, r, pb.REDEMPTION_STATE_SHIPPED, {"state": pb.REDEMPTION_STATE_COMPLETED})
        return await self.redemption(s, member_id, redemption_id)
