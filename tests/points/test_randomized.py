"""A randomized run of earn / redeem / cancel / reverse / adjust / expire operations, every request sent
one to three times with the same key (some copies concurrently), interleaved with the expiry job:
afterwards every account equals a replay of its ledger and no key was applied twice."""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from sqlalchemy import func, select

from mall.points.v1 import points_service_pb2 as pb
from mallkit.errors import error_info, status_of
from points import jobs
from points.models import Account, Entry, IdempotencyKeys, Redemption
from tests.fixtures.points import rid

OPS = int(os.environ.get("POINTS_RANDOM_OPS", "1000"))
PARALLEL = 24
ADDRESS = pb.ShippingAddress(recipient="赵六", phone="13600136000", province="广东省", city="深圳市", detail="1 号")
EXPECTED_REFUSALS = {"INSUFFICIENT_POINTS", "OUT_OF_STOCK", "REDEMPTION_STATE", "REDEMPTION_LIMIT_REACHED",
                     "ORDER_POINTS_NOT_FOUND"}


@pytest.mark.mariadb
@pytest.mark.slow
async def test_randomized_retried_operations_keep_every_account_equal_to_its_ledger(points, members):
    rng = random.Random(int(os.environ.get("POINTS_RANDOM_SEED", "20261122")))
    logins = await asyncio.gather(*[members.login() for _ in range(32)])
    member_ids = [int(login.member.name.split("/")[1]) for login, _ in logins]
    items = [await points.create_item(kind=pb.ITEM_KIND_PHYSICAL, points_price=rng.randint(5, 40), stock=100_000,
                                      per_member_limit=0) for _ in range(3)]
    limited = await points.create_item(kind=pb.ITEM_KIND_PHYSICAL, points_price=3, stock=40, per_member_limit=5)
    staff, svc = points.staff_md("operator", staff_id=99), points.service_md
    clock = {"now": datetime(2034, 1, 1, 4, 0, tzinfo=UTC)}
    saved_clock = points.ledger.clock
    points.app.set_clock(lambda: clock["now"])

    redemptions: list[tuple[int, str]] = []
    orders: list[str] = []
    adjust_ids: list[str] = []
    outcomes: Counter = Counter()

    async def send(call, request, md, copies: int):
        """The same request (same key) sent `copies` times, concurrently or one after another."""
        async def once():
            try:
                return await call(request, metadata=md)
            except grpc.aio.AioRpcError as err:
                info = error_info(await status_of(err))
                reason = info.reason if info else err.code().name
                assert reason in EXPECTED_REFUSALS, (reason, err.details())
                return reason
        if rng.random() < 0.5:
            results = await asyncio.gather(*[once() for _ in range(copies)])
        else:
            results = [await once() for _ in range(copies)]
        ok = [r for r in results if not isinstance(r, str)]
        # Every successful copy answers the same; a refusal may later succeed (errors are not stored).
        assert len({r.SerializeToString(deterministic=True) for r in ok}) <= 1
        outcomes["ok" if ok else results[-1]] += 1
        return ok[0] if ok else None

    def op():
        m = rng.randrange(len(member_ids))
        member, md = member_ids[m], points.member_md(member_ids[m])
        copies = rng.randint(1, 3)
        kind = rng.choices(["adjust+", "adjust-", "pend", "confirm", "reverse", "redeem", "cancel"],
                           weights=[20, 4, 10, 10, 3, 35, 18])[0]
        if kind == "adjust+" or kind == "adjust-":
            key = rid()
            delta = rng.randint(1, 200) * (1 if kind == "adjust+" else -1)

            async def run():
                if await send(points.stub.AdjustPoints, pb.AdjustPointsRequest(
                        name=f"members/{member}/pointsAccount", points=delta, reason="random", request_id=key),
                        staff, copies):
                    adjust_ids.append(key)
            return run()
        if kind == "pend":
            order = f"orders/{uuid.uuid4().int % 10**15 + 1}"
            orders.append(order)
            return send(points.stub.PendPurchasePoints, pb.PendPurchasePointsRequest(
                order=order, member=f"members/{member}", paid_amount_fen=rng.randint(100, 50_000), request_id=rid()),
                svc, copies)
        if kind in ("confirm", "reverse") and orders:
            order = rng.choice(orders)
            if kind == "confirm":
                return send(points.stub.ConfirmPurchasePoints, pb.ConfirmPurchasePointsRequest(order=order,
                                                                                               request_id=rid()),
                            svc, copies)
            return send(points.stub.ReversePurchasePoints, pb.ReversePurchasePointsRequest(order=order,
                                                                                           request_id=rid()),
                        svc, copies)
        if kind == "cancel" and redemptions:
            owner, name = rng.choice(redemptions)
            return send(points.stub.CancelRedemption, pb.CancelRedemptionRequest(name=name, request_id=rid()),
                        points.member_md(owner), copies)
        item = limited if rng.random() < 0.1 else rng.choice(items)

        async def redeem():
            r = await send(points.stub.RedeemItem, pb.RedeemItemRequest(
                name=item.name, quantity=rng.randint(1, 3), shipping_address=ADDRESS, request_id=rid()), md, copies)
            if r is not None:
                redemptions.append((member, r.name))
        return redeem()

    try:
        done, epoch = 0, 0
        while done < OPS:
            batch = [op() for _ in range(min(PARALLEL, OPS - done))]
            done += len(batch)
            if done % 200 < PARALLEL:  # now and then a season passes, and the expiry job runs meanwhile
                epoch += 1
                clock["now"] += timedelta(days=90)
                batch.append(jobs.expire(points.app))
            await asyncio.gather(*batch)
        expired_now = await jobs.expire(points.app)
    finally:
        points.app.set_clock(saved_clock)

    assert outcomes["ok"] > OPS // 3, outcomes
    assert epoch >= OPS // 200
    await points.check()
    async with points.engine.connect() as conn:
        # Replay: every member's ledger, summed in Python, equals the account.
        for member in member_ids:
            deltas = (await conn.execute(select(Entry.available_delta, Entry.pending_delta, Entry.id, Entry.kind, Entry.idempotency_key, Entry.create_time)
                                         .where(Entry.member_id == member).order_by(Entry.id))).all()
            available = pending = 0
            for i, (a, p, *_) in enumerate(deltas):
                available += a
                pending += p
                assert available >= 0 and pending >= 0, deltas[max(0, i-5):i+2]  # never below zero at any point of the replay
            account = (await conn.execute(select(Account.available, Account.pending)
                                          .where(Account.member_id == member))).first()
            assert (tuple(account) if account else (0, 0)) == (available, pending)
        # No key applied twice: one ledger entry per adjustment, per redemption, per cancellation.
        keys = (await conn.execute(select(Entry.idempotency_key).where(Entry.member_id.in_(member_ids)))).scalars().all()
        assert len(keys) == len(set(keys))
        for key in adjust_ids:
            assert f"adjust:staff/99:{key}" in keys
        rows = (await conn.execute(select(Redemption.id, Redemption.state).where(
            Redemption.member_id.in_(member_ids)))).all()
        assert len(rows) == len(redemptions) == len(set(redemptions))
        for r_id, state in rows:
            assert f"redeem:{r_id}" in keys
            assert (f"cancel:{r_id}" in keys) == (state == pb.REDEMPTION_STATE_CANCELLED)
        assert sum(k.startswith("adjust:staff/99:") for k in keys) == len(adjust_ids)
        n_keys = (await conn.execute(select(func.count()).select_from(IdempotencyKeys).where(
            IdempotencyKeys.c.scope.like("%RedeemItem%")))).scalar_one()
        assert n_keys >= len(redemptions)
    print(f"\nrandomized run: {OPS} operations, outcomes {dict(outcomes)}, {epoch} expiry passes, "
          f"{len(redemptions)} redemptions, last pass expired {expired_now}")
