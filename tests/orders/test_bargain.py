"""Bargaining (砍价): concurrent helpers never pass the floor, each cuts once, the owner buys once."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from sqlalchemy import func, select, update

from mall.members.v1 import members_service_pb2 as mpb
from mall.orders.v1 import orders_service_pb2 as pb
from mallkit.errors import error_info, status_of
from orders.bargain import plan_cuts
from orders.models import Bargain, BargainHelp, OutboxEvents
from tests.fixtures import directory

pytestmark = pytest.mark.mariadb


def rid() -> str:
    return str(uuid.uuid4())


async def _reason(call) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call
    info = error_info(await status_of(e.value))
    return info.reason if info else e.value.code().name


async def _until(predicate, within: float = 30.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.05)
    return await predicate()


async def _activity(orders, *, start: int, floor: int, helpers: int, mode=pb.BARGAIN_CUT_MODE_RANDOM, limit: int = 1,
                    stock: int = 100, share_scene: str = "") -> tuple[pb.BargainActivity, pb.Product]:
    product = await orders.product(price_fen=start, stock=stock)
    a = pb.BargainActivity(sku=product.skus[0].name, start_price_fen=start, floor_price_fen=floor,
                           helpers_needed=helpers, cut_mode=mode, per_member_limit=limit, share_scene=share_scene)
    a.start_time.FromDatetime(datetime.now(UTC) - timedelta(minutes=1))
    a.end_time.FromDatetime(datetime.now(UTC) + timedelta(days=1))
    a.bargain_duration.seconds = 86400
    created = await orders.stub.CreateBargainActivity(pb.CreateBargainActivityRequest(bargain_activity=a),
                                                      metadata=orders.staff_md)
    return created, product


async def _owner(orders, members):
    login, _ = await members.login()
    member_id = int(login.member.name.split("/")[1])
    return login, member_id, orders.member_md(member_id)


def test_planned_cuts_sum_exactly_to_the_distance():
    for _ in range(2000):
        helpers = random.randint(1, 300)
        distance = random.randint(helpers, 100_000)
        for mode in (pb.BARGAIN_CUT_MODE_EVEN, pb.BARGAIN_CUT_MODE_RANDOM):
            cuts = plan_cuts(distance, helpers, mode)
            assert len(cuts) == helpers and sum(cuts) == distance and min(cuts) >= 1


async def test_200_helpers_cut_concurrently_each_once_never_past_the_floor_and_buy_once(orders, members):
    start, floor, needed = 29_900, 9_900, 150
    activity, product = await _activity(orders, start=start, floor=floor, helpers=needed)
    login, owner_id, owner_md = await _owner(orders, members)
    bargain = await orders.stub.StartBargain(pb.StartBargainRequest(activity=activity.name, request_id=rid()),
                                             metadata=owner_md)
    assert bargain.current_price_fen == start and bargain.state == pb.BARGAIN_STATE_ACTIVE
    assert bargain.sharer_invite_code == login.member.invite_code
    stock_before = (await orders.stub.GetProduct(pb.GetProductRequest(name=product.name))).skus[0].stock

    # 200 helpers, each sending two cuts at once (different request ids): 400 concurrent calls.
    helper_ids = directory().new_members(200)  # real members: tokens of unknown ones are refused
    helps: list[pb.BargainHelp] = []
    refused: Counter[str] = Counter()

    async def cut(helper_id: int):
        try:
            helps.append(await orders.stub.HelpBargain(pb.HelpBargainRequest(bargain=bargain.name, request_id=rid()),
                                                       metadata=orders.member_md(helper_id)))
        except grpc.aio.AioRpcError as e:
            info = error_info(await status_of(e))
            refused[info.reason if info else e.code().name] += 1

    await asyncio.gather(*[cut(h) for h in helper_ids for _ in range(2)])
    assert len(helps) == needed, refused
    assert set(refused) <= {"BARGAIN_FLOOR_REACHED", "BARGAIN_ALREADY_HELPED"}, refused
    per_helper = Counter(h.helper for h in helps)
    assert max(per_helper.values()) == 1  # one cut per helper
    assert sorted(h.sequence for h in helps) == list(range(1, needed + 1))
    assert sum(h.cut_fen for h in helps) == start - floor  # the cuts sum to the distance travelled
    assert min(h.price_after_fen for h in helps) == floor and all(h.cut_fen >= 1 for h in helps)
    got = await orders.stub.GetBargain(pb.GetBargainRequest(name=bargain.name), metadata=owner_md)
    assert got.current_price_fen == floor and got.helper_count == needed
    async with orders.engine.connect() as conn:
        bid = int(bargain.name.split("/")[-1])
        rows = (await conn.execute(select(BargainHelp.cut_fen, BargainHelp.price_after_fen)
                                   .where(BargainHelp.bargain_id == bid))).all()
        assert len(rows) == needed and sum(r[0] for r in rows) == start - floor
        assert min(r[1] for r in rows) >= floor
        planned = json.loads((await conn.execute(select(Bargain.cuts).where(Bargain.id == bid))).scalar_one())
        assert sorted(planned) == sorted(r[0] for r in rows)
        helped_events = (await conn.execute(select(func.count()).select_from(OutboxEvents).where(
            OutboxEvents.c.event_type == "order.bargain_helped"))).scalar_one()
        assert helped_events >= needed

    # A helper who never cut cannot pass the floor either.
    assert await _reason(orders.stub.HelpBargain(pb.HelpBargainRequest(bargain=bargain.name),
                                                 metadata=orders.member_md(directory().new_member()))) == "BARGAIN_FLOOR_REACHED"

    # The owner buys: 10 attempts at once with different request ids, one order, at the final price.
    address = await orders.address(owner_md)
    addr = address.name.replace(address.name.split("/")[1], "me", 1)
    bought: list[pb.Order] = []
    reasons: Counter[str] = Counter()

    async def buy():
        try:
            bought.append(await orders.stub.BuyBargain(pb.BuyBargainRequest(
                bargain=bargain.name, address=addr, request_id=rid()), metadata=owner_md))
        except grpc.aio.AioRpcError as e:
            info = error_info(await status_of(e))
            reasons[info.reason if info else e.code().name] += 1
    await asyncio.gather(*[buy() for _ in range(10)])
    assert len(bought) == 1 and reasons == Counter({"BARGAIN_ALREADY_BOUGHT": 9})
    order = bought[0]
    assert order.payable_fen == floor and order.bargain == bargain.name and len(order.items) == 1
    assert (await orders.stub.GetProduct(pb.GetProductRequest(name=product.name))).skus[0].stock == stock_before - 1
    got = await orders.stub.GetBargain(pb.GetBargainRequest(name=bargain.name), metadata=owner_md)
    assert got.state == pb.BARGAIN_STATE_BOUGHT and got.order == order.name
    # Paid once at that price; nobody can cut a bought bargain.
    await orders.pay(owner_md, order)
    paid = await orders.stub.GetOrder(pb.GetOrderRequest(name=order.name), metadata=owner_md)
    assert paid.state == pb.ORDER_STATE_PAID and paid.payable_fen == floor


async def test_rules_limit_own_cut_expiry_and_cancel_gives_the_bargain_back(orders, members):
    activity, _ = await _activity(orders, start=10_000, floor=5_000, helpers=5, mode=pb.BARGAIN_CUT_MODE_EVEN)
    _, owner_id, owner_md = await _owner(orders, members)
    bargain = await orders.stub.StartBargain(pb.StartBargainRequest(activity=activity.name, request_id=rid()),
                                             metadata=owner_md)
    assert await _reason(orders.stub.StartBargain(pb.StartBargainRequest(activity=activity.name, request_id=rid()),
                                                  metadata=owner_md)) == "BARGAIN_LIMIT_REACHED"
    assert await _reason(orders.stub.HelpBargain(pb.HelpBargainRequest(bargain=bargain.name),
                                                 metadata=owner_md)) == "BARGAIN_OWN"
    helper = orders.member_md(directory().new_member())
    h = await orders.stub.HelpBargain(pb.HelpBargainRequest(bargain=bargain.name), metadata=helper)
    assert h.cut_fen == 1_000 and h.price_after_fen == 9_000 and h.sequence == 1
    assert await _reason(orders.stub.HelpBargain(pb.HelpBargainRequest(bargain=bargain.name),
                                                 metadata=helper)) == "BARGAIN_ALREADY_HELPED"
    # Another member cannot buy it.
    assert await _reason(orders.stub.BuyBargain(pb.BuyBargainRequest(bargain=bargain.name, request_id=rid()),
                                                metadata=orders.member_md(directory().new_member()))) == "NOT_OWNER"
    # Bought at the price reached so far, cancelled unpaid: the bargain is the owner's again, stock back.
    o = await orders.stub.BuyBargain(pb.BuyBargainRequest(bargain=bargain.name, request_id=rid()), metadata=owner_md)
    assert o.payable_fen == 9_000
    await orders.stub.CancelOrder(pb.CancelOrderRequest(name=o.name), metadata=owner_md)
    again = await orders.stub.GetBargain(pb.GetBargainRequest(name=bargain.name), metadata=owner_md)
    assert again.state == pb.BARGAIN_STATE_ACTIVE and again.order == ""
    # Past its deadline: no cut, no purchase, shown EXPIRED.
    async with orders.engine.begin() as conn:
        await conn.execute(update(Bargain).where(Bargain.id == int(bargain.name.split("/")[-1]))
                           .values(deadline_time=datetime.now(UTC) - timedelta(seconds=1)))
    assert await _reason(orders.stub.HelpBargain(pb.HelpBargainRequest(bargain=bargain.name),
                                                 metadata=orders.member_md(directory().new_member()))) == "BARGAIN_EXPIRED"
    assert await _reason(orders.stub.BuyBargain(pb.BuyBargainRequest(bargain=bargain.name, request_id=rid()),
                                                metadata=owner_md)) == "BARGAIN_EXPIRED"
    expired = await orders.stub.GetBargain(pb.GetBargainRequest(name=bargain.name), metadata=owner_md)
    assert expired.state == pb.BARGAIN_STATE_EXPIRED and expired.current_price_fen == 9_000


async def test_helpers_through_the_share_are_touchpoints_and_new_ones_referrals(orders, members):
    staff = await members.staff()
    code = await members.stub.CreateChannelCode(mpb.CreateChannelCodeRequest(channel_code=mpb.ChannelCode(
        display_name="砍价分享", channel_type=mpb.CHANNEL_TYPE_CONTENT_SHARE)), metadata=staff)
    activity, _ = await _activity(orders, start=5_000, floor=1_000, helpers=4, share_scene=code.scene)
    sharer, _, owner_md = await _owner(orders, members)
    bargain = await orders.stub.StartBargain(pb.StartBargainRequest(activity=activity.name, request_id=rid()),
                                             metadata=owner_md)
    assert bargain.share_scene == code.scene
    # A visitor opens the share and logs in with the sharer's invite code: a new member, the sharer's referral.
    visitor, visitor_md = await members.login(invite_code=bargain.sharer_invite_code)
    assert visitor.member.inviter == sharer.member.name
    visitor_id = int(visitor.member.name.split("/")[1])
    await orders.stub.HelpBargain(pb.HelpBargainRequest(bargain=bargain.name), metadata=orders.member_md(visitor_id))

    async def touched() -> bool:
        tps = await members.stub.ListTouchpoints(mpb.ListTouchpointsRequest(parent=visitor.member.name),
                                                 metadata=staff)
        return any(t.channel_code == code.name and t.channel_type == mpb.CHANNEL_TYPE_CONTENT_SHARE
                   for t in tps.touchpoints)
    assert await _until(touched)
