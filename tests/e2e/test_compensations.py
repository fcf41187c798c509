"""Lost effects (issue 8, class 1): a consumer that refuses an event for a business reason leads to
a compensating effect, exactly once, between the real services on the tests' NATS.

- a points-mall coupon that orders cannot issue: the redemption FAILED, points and stock back,
  the member told (a reach queued);
- a community coupon drop that orders cannot issue: the claim given back;
- a welcome coupon that cannot be issued: recorded, nothing to compensate;
- an order.paid of a member that members does not know: recorded and skipped, never retried.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

from sqlalchemy import select

from mall.community.v1 import community_service_pb2 as cpb
from mall.events.v1 import events_pb2
from mall.members.v1 import members_service_pb2 as mpb
from mall.orders.v1 import orders_events_pb2 as oev
from mall.orders.v1 import orders_service_pb2 as opb
from mall.points.v1 import points_events_pb2 as pev
from mall.points.v1 import points_service_pb2 as ppb
from tests.community.helpers import make_group
from tests.fixtures import deliver


def rid() -> str:
    return str(uuid.uuid4())


async def until(predicate: Callable[[], Awaitable[bool]], within: float = 60.0) -> bool:
    """Poll ``predicate`` until it holds or ``within`` seconds passed (a bound, not a guess)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.05)
    return await predicate()


def event(event_type: str, payload, source: str) -> events_pb2.Event:
    e = events_pb2.Event(id=rid(), type=event_type, source=source)
    e.time.GetCurrentTime()
    e.data.Pack(payload)
    return e


async def template(orders, **fields) -> opb.CouponTemplate:
    fields.setdefault("display_name", f"券{uuid.uuid4().hex[:6]}")
    values = dict(kind=opb.COUPON_KIND_AMOUNT_OFF, amount_off_fen=500, valid_days=7, per_member_limit=1,
                  total_quantity=100)
    values.update(fields)
    return await orders.stub.CreateCouponTemplate(opb.CreateCouponTemplateRequest(
        coupon_template=opb.CouponTemplate(**values)), metadata=orders.staff_md)


async def coupons_of(orders, member: str, template_name: str) -> list[opb.Coupon]:
    listed = await orders.stub.ListCoupons(opb.ListCouponsRequest(parent=member, page_size=100),
                                           metadata=orders.staff_md)
    return [c for c in listed.coupons if c.coupon_template == template_name]


async def outbox_events(engine, table, event_type: str, payload_type) -> list[tuple[events_pb2.Event, object]]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(table.c.payload).where(table.c.event_type == event_type))).scalars().all()
    out = []
    for raw in rows:
        e = events_pb2.Event.FromString(raw)
        p = payload_type()
        e.data.Unpack(p)
        out.append((e, p))
    return out


async def test_a_refused_points_mall_coupon_fails_the_redemption_and_gives_points_and_stock_back_once(
        orders, points, members, points_gateway):
    from orders.models import CouponRefusal, OutboxEvents
    from points.models import ReachRequest

    t = await template(orders, per_member_limit=1)
    item = await points.create_item(kind=ppb.ITEM_KIND_COUPON, points_price=100, stock=10, coupon_template=t.name)
    login, _ = await members.login()
    member = login.member.name
    mid = int(member.split("/")[1])
    await points.grant(mid, 1000)
    md = points.member_md(mid)
    first = await points.stub.RedeemItem(ppb.RedeemItemRequest(name=item.name, request_id=rid()), metadata=md)
    assert await until(lambda: _has_coupons(orders, member, t.name, 1))
    # The member may hold one coupon of this template: orders refuses the second one.
    second = await points.stub.RedeemItem(ppb.RedeemItemRequest(name=item.name, request_id=rid()), metadata=md)
    assert second.state == ppb.REDEMPTION_STATE_COMPLETED and (await points.account(mid)).available_points == 800

    async def failed() -> bool:
        r = await points.stub.GetRedemption(ppb.GetRedemptionRequest(name=second.name), metadata=md)
        return r.state == ppb.REDEMPTION_STATE_FAILED

    assert await until(failed)
    r = await points.stub.GetRedemption(ppb.GetRedemptionRequest(name=second.name), metadata=md)
    assert r.failure_reason == "COUPON_LIMIT_REACHED"
    # What the member sees in the mini-program (through the gateway): failed, why, and the points back.
    headers = {k: v for k, v in md}
    seen = await points_gateway.get(f"/v1/{second.name}", headers=headers)
    assert seen.status_code == 200, seen.text
    assert seen.json()["state"] == "REDEMPTION_STATE_FAILED" and seen.json()["failureReason"] == "COUPON_LIMIT_REACHED"
    account = await points_gateway.get("/v1/members/me/pointsAccount", headers=headers)
    assert account.status_code == 200 and account.json()["availablePoints"] == "900"
    assert (await points.stub.GetRedemption(ppb.GetRedemptionRequest(name=first.name), metadata=md)).state \
        == ppb.REDEMPTION_STATE_COMPLETED
    assert (await points.account(mid)).available_points == 900  # the second redemption's 100 are back
    listed = await points.stub.GetItem(ppb.GetItemRequest(name=item.name), metadata=points.staff_md())
    assert listed.stock == 9 and listed.redeemed_count == 1
    assert len(await coupons_of(orders, member, t.name)) == 1
    async with points.engine.connect() as conn:
        reach = (await conn.execute(select(ReachRequest.purpose, ReachRequest.member_id).where(
            ReachRequest.request_key == f"redemption-failed-{second.name.rsplit('/', 1)[1]}"))).one()
    assert reach == ("points.redemption_failed", mid)  # the member is told

    # Orders recorded the refusal with its compensation, once.
    async with orders.engine.connect() as conn:
        refusal = (await conn.execute(select(CouponRefusal).where(CouponRefusal.source_ref == second.name))).one()
    assert refusal.granted_by == "points" and refusal.reason == "COUPON_LIMIT_REACHED"
    assert refusal.compensation_event_id
    compensations = [(e, p) for e, p in await outbox_events(orders.engine, OutboxEvents, "orders.coupon_refused",
                                                            oev.CouponRefusedEvent) if p.source_ref == second.name]
    assert len(compensations) == 1
    compensation, payload = compensations[0]
    assert compensation.id == refusal.compensation_event_id and payload.member == member

    # Exactly once: the compensation delivered again is a duplicate; the same refusal under another
    # event id changes nothing; the granting event delivered again to orders is a duplicate.
    assert (await deliver(points.app, compensation)).duplicate
    again = await deliver(points.app, event("orders.coupon_refused", payload, "orders"))
    assert not again.duplicate
    assert (await points.account(mid)).available_points == 900
    assert (await points.stub.GetItem(ppb.GetItemRequest(name=item.name), metadata=points.staff_md())).stock == 9
    from points.models import OutboxEvents as PointsOutbox

    redeemed = [e for e, p in await outbox_events(points.engine, PointsOutbox, "points.coupon_redeemed",
                                                  pev.CouponRedeemedEvent) if p.redemption == second.name]
    assert (await deliver(orders.app, redeemed[0])).duplicate
    await points.check()  # the ledger still adds up


async def _has_coupons(orders, member: str, template_name: str, n: int) -> bool:
    return len(await coupons_of(orders, member, template_name)) >= n


async def test_a_refused_community_coupon_gives_the_claim_back_once(orders, community, members):
    from community.models import CouponClaim

    t = await template(orders, per_member_limit=1)
    login, _ = await members.login()
    member = login.member.name
    mid = int(member.split("/")[1])
    group = await make_group(community)
    await community.stub.JoinGroup(cpb.JoinGroupRequest(name=group.name), metadata=community.member_md(mid))

    async def drop() -> cpb.Post:
        return await community.stub.CreatePost(cpb.CreatePostRequest(parent=group.name, post=cpb.Post(
            kind=cpb.POST_KIND_COUPON_DROP, title="群券", coupon=cpb.CouponDrop(coupon_template=t.name, quantity=5))),
            metadata=community.staff_md())

    first, second = await drop(), await drop()
    md = community.member_md(mid)
    await community.stub.ClaimCoupon(cpb.ClaimCouponRequest(name=first.name, request_id=rid()), metadata=md)
    assert await until(lambda: _has_coupons(orders, member, t.name, 1))
    # A second drop of the same template: the member is at the template's limit, orders refuses.
    claimed = await community.stub.ClaimCoupon(cpb.ClaimCouponRequest(name=second.name, request_id=rid()), metadata=md)
    assert not claimed.already_claimed

    async def claimed_count(post: cpb.Post) -> int:
        posts = await community.stub.ListPosts(cpb.ListPostsRequest(parent=group.name, page_size=100),
                                               metadata=community.staff_md())
        return next(p for p in posts.posts if p.name == post.name).coupon.claimed_count

    async def given_back() -> bool:
        async with community.engine.connect() as conn:
            rows = (await conn.execute(select(CouponClaim.member_id).where(
                CouponClaim.post_id == int(second.name.rsplit("/", 1)[1])))).all()
        return not rows

    assert await until(given_back)
    assert await claimed_count(second) == 0 and await claimed_count(first) == 1
    assert len(await coupons_of(orders, member, t.name)) == 1
    # The claim is the member's again: claiming is a fresh claim (not "already claimed").
    again = await community.stub.ClaimCoupon(cpb.ClaimCouponRequest(name=second.name, request_id=rid()), metadata=md)
    assert not again.already_claimed

    # Once: the first refusal delivered again is a duplicate and gives nothing more back.
    from orders.models import OutboxEvents

    refusals = [(e, p) for e, p in await outbox_events(orders.engine, OutboxEvents, "orders.coupon_refused",
                                                       oev.CouponRefusedEvent)
                if p.source_ref == second.name and p.member == member]
    assert refusals and all(p.granted_by == "community" and p.reason == "COUPON_LIMIT_REACHED" for _, p in refusals)
    assert (await deliver(community.app, refusals[0][0])).duplicate
    assert await until(given_back)  # the second claim is refused and given back too
    assert await claimed_count(second) == 0


async def test_a_welcome_coupon_that_cannot_be_issued_is_recorded_without_compensation(orders):
    from orders.models import CouponRefusal, OutboxEvents

    t = await template(orders, total_quantity=1, welcome=True)
    members_ = [f"members/{8_000_000_000 + uuid.uuid4().int % 10**9}" for _ in range(2)]
    events = [event("member.registered", mpb.MemberRegisteredEvent(member=m), "members") for m in members_]
    for e in events:
        assert not (await deliver(orders.app, e)).duplicate
    assert len(await coupons_of(orders, members_[0], t.name)) == 1
    assert await coupons_of(orders, members_[1], t.name) == []
    async with orders.engine.connect() as conn:
        refusal = (await conn.execute(select(CouponRefusal).where(
            CouponRefusal.granted_event_id == events[1].id, CouponRefusal.coupon_template == t.name))).one()
    assert refusal.reason == "COUPON_EXHAUSTED" and refusal.granted_by == "members"
    assert refusal.compensation_event_id == ""  # a gift: nothing was taken, nothing to give back
    assert not [p for _, p in await outbox_events(orders.engine, OutboxEvents, "orders.coupon_refused",
                                                  oev.CouponRefusedEvent) if p.member == members_[1]]


async def test_purchase_of_an_unknown_member_is_recorded_and_skipped_not_retried(members, points):
    from prometheus_client import REGISTRY

    from members.models import MemberPurchase

    ghost = f"members/{9_000_000_000 + uuid.uuid4().int % 10**9}"
    order = f"orders/{uuid.uuid4().int % 10**9}"
    paid = oev.OrderPaidEvent(order=order, member=ghost, paid_amount_fen=10_000, points_multiplier_percent=100)
    paid.pay_time.GetCurrentTime()
    e = event("order.paid", paid, "orders")

    def refused() -> float:
        return REGISTRY.get_sample_value("mall_events_refused_total", {
            "service": "members", "event_type": "order.paid", "reason": "MEMBER_NOT_FOUND"}) or 0.0

    before = refused()
    # members: applied (no exception, so no redelivery), nothing recorded for the ghost, counted.
    assert not (await deliver(members.app, e)).duplicate
    assert refused() == before + 1
    assert (await deliver(members.app, e)).duplicate  # recorded in the inbox: never applied again
    async with members.engine.connect() as conn:
        assert (await conn.execute(select(MemberPurchase.id).where(MemberPurchase.order == order))).first() is None
    # points never asks members (order.paid carries the multiplier): it applies once, it does not retry;
    # the pending points sit on an account no one can sign in to.
    from points.models import PurchasePoints

    assert not (await deliver(points.app, e)).duplicate
    assert (await deliver(points.app, e)).duplicate
    async with points.engine.connect() as conn:
        pended = (await conn.execute(select(PurchasePoints.points).where(
            PurchasePoints.order_id == int(order.split("/")[1])))).scalar_one()
    assert pended == 100


async def test_a_refund_before_its_paid_event_is_retried_until_the_growth_can_be_taken_back(members):
    """Redeliveries may reorder order.paid and order.refunded: the refund waits (retried), so the
    growth the paid event gives is still taken back; a refund of an unknown member is skipped."""
    from mallkit.errors import FailedPrecondition

    login, _ = await members.login()
    name = login.member.name
    order = f"orders/{uuid.uuid4().int % 10**9}"
    refund = oev.OrderRefundedEvent(order=order, member=name, refund_amount_fen=50_000)
    early = event("order.refunded", refund, "orders")
    try:
        await deliver(members.app, early)
        raise AssertionError("an early refund must be retried, not dropped")
    except FailedPrecondition as err:
        assert err.reason == "ORDER_NOT_APPLIED_YET"
    paid = oev.OrderPaidEvent(order=order, member=name, paid_amount_fen=50_000)
    paid.pay_time.GetCurrentTime()
    await deliver(members.app, event("order.paid", paid, "orders"))
    grown = (await members.stub.GetMember(mpb.GetMemberRequest(name=name), metadata=members.service_md)).growth_value
    assert grown >= 500
    assert not (await deliver(members.app, early)).duplicate  # the redelivery now applies
    after = (await members.stub.GetMember(mpb.GetMemberRequest(name=name), metadata=members.service_md)).growth_value
    assert after == grown - 500
    ghost = oev.OrderRefundedEvent(order=f"orders/{uuid.uuid4().int % 10**9}",
                                   member=f"members/{9_100_000_000 + uuid.uuid4().int % 10**8}", refund_amount_fen=1)
    assert not (await deliver(members.app, event("order.refunded", ghost, "orders"))).duplicate


async def test_a_quiz_reward_the_points_rules_refuse_is_recorded_not_retried(points):
    """The quiz task's cap reached: no points, the refusal counted, the event applied once (the
    quiz stays answered in community; nothing was taken from the member, nothing to give back)."""
    from prometheus_client import REGISTRY

    from mall.community.v1 import community_events_pb2 as cev
    from points.models import Entry
    from tests.community.test_real_consumers import _quiz_task
    from tests.fixtures.points import fresh_member_id

    await _quiz_task(points)
    tasks = await points.stub.ListTasks(ppb.ListTasksRequest(page_size=100), metadata=points.staff_md())
    task = next(t for t in tasks.tasks if t.kind == ppb.TASK_KIND_ANSWER_QUIZ)
    member = fresh_member_id()

    def refused() -> float:
        return REGISTRY.get_sample_value("mall_events_refused_total", {
            "service": "points", "event_type": "community.quiz_answered", "reason": "LIMIT_REACHED"}) or 0.0

    def answered(n: int) -> events_pb2.Event:
        return event("community.quiz_answered", cev.QuizAnsweredEvent(
            post=f"groups/1/posts/{900_000 + n}", member=f"members/{member}", reward_points=5), "community")

    for n in range(task.limit_per_period):
        await deliver(points.app, answered(n))
    before = refused()
    over = answered(task.limit_per_period)
    assert not (await deliver(points.app, over)).duplicate  # applied (no exception): never redelivered
    assert refused() == before + 1
    assert (await deliver(points.app, over)).duplicate
    async with points.engine.connect() as conn:
        rewarded = (await conn.execute(select(Entry.source_ref).where(Entry.member_id == member))).scalars().all()
    assert len(rewarded) == task.limit_per_period and f"groups/1/posts/{900_000 + task.limit_per_period}" not in rewarded
