"""Order reviews: once per item of a completed order, moderated, public once approved, the review task rewarded once."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, timedelta

import grpc
import pytest
from sqlalchemy import select

from mall.orders.v1 import orders_service_pb2 as pb
from mall.points.v1 import points_service_pb2 as ppb
from mallkit.errors import error_info, status_of
from orders import jobs
from points.models import Entry, Task

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


async def _review_task(points) -> None:
    async with points.engine.connect() as conn:
        found = (await conn.execute(select(Task.id).where(Task.kind == ppb.TASK_KIND_REVIEW_ORDER))).scalar_one_or_none()
    task = ppb.Task(kind=ppb.TASK_KIND_REVIEW_ORDER, display_name="评价订单", reward_points=15,
                    frequency=ppb.TASK_FREQUENCY_DAILY, limit_per_period=5, active=True)
    if found is None:
        await points.stub.CreateTask(ppb.CreateTaskRequest(task=task, request_id=rid()), metadata=points.staff_md())
    else:
        task.name = f"tasks/{found}"
        await points.stub.UpdateTask(ppb.UpdateTaskRequest(task=task, request_id=rid()), metadata=points.staff_md())


async def completed_order(orders, md, skus: list[str]) -> pb.Order:
    address = await orders.address(md)
    o = await orders.stub.CreateOrder(pb.CreateOrderRequest(
        lines=[pb.OrderLine(sku=k, quantity=1) for k in skus],
        address=address.name.replace(address.name.split("/")[1], "me", 1), request_id=rid()), metadata=md)
    await orders.pay(md, o)
    await orders.stub.ShipOrder(pb.ShipOrderRequest(name=o.name), metadata=orders.staff_md)
    shipped = (await orders.stub.GetOrder(pb.GetOrderRequest(name=o.name), metadata=md)).ship_time.ToDatetime()
    await jobs.complete_due(orders.app, shipped.replace(tzinfo=UTC)
                            + timedelta(days=orders.app.settings.after_sales_days, seconds=1))
    done = await orders.stub.GetOrder(pb.GetOrderRequest(name=o.name), metadata=md)
    assert done.state == pb.ORDER_STATE_COMPLETED
    return done


async def test_review_once_per_item_moderated_rating_public_and_task_rewarded_once(orders, members, points):
    await _review_task(points)
    login, md = await members.login()
    member_id = int(login.member.name.split("/")[1])
    p1, p2 = await orders.product(price_fen=1_000), await orders.product(price_fen=2_000)
    o = await completed_order(orders, md, [p1.skus[0].name, p2.skus[0].name])

    def review(sku: str, rating: int, text: str = "很好用") -> pb.CreateReviewRequest:
        return pb.CreateReviewRequest(parent=o.name, review=pb.Review(
            sku=sku, rating=rating, text=text, image_urls=["https://img.example.com/a.jpg"]), request_id=rid())

    r1 = await orders.stub.CreateReview(review(p1.skus[0].name, 5), metadata=md)
    assert r1.state == pb.REVIEW_STATE_PENDING and r1.product == p1.name and r1.member == login.member.name
    # Concurrent second reviews of the same item: refused, one review stays.
    answers = await asyncio.gather(*[_reason(orders.stub.CreateReview(review(p1.skus[0].name, 1), metadata=md))
                                     for _ in range(5)])
    assert answers == ["REVIEW_EXISTS"] * 5
    r2 = await orders.stub.CreateReview(review(p2.skus[0].name, 3), metadata=md)
    # Not the member's order; not completed; not an item of the order.
    other, other_md = await members.login()
    assert await _reason(orders.stub.CreateReview(review(p2.skus[0].name, 4), metadata=other_md)) == "NOT_OWNER"
    unpaid = await orders.order(md, p1.skus[0].name)
    assert await _reason(orders.stub.CreateReview(pb.CreateReviewRequest(parent=unpaid.name, review=pb.Review(
        sku=p1.skus[0].name, rating=4)), metadata=md)) == "REVIEW_NOT_ALLOWED"
    stranger = await orders.product()
    assert await _reason(orders.stub.CreateReview(review(stranger.skus[0].name, 4), metadata=md)) == "REVIEW_NOT_ALLOWED"

    # Pending reviews are not public; members cannot moderate.
    public = await orders.stub.ListProductReviews(pb.ListProductReviewsRequest(parent=p1.name))
    assert list(public.reviews) == []
    assert await _reason(orders.stub.ModerateReview(pb.ModerateReviewRequest(
        name=r1.name, state=pb.REVIEW_STATE_APPROVED), metadata=md)) == "ROLE_NOT_ALLOWED"
    queue = await orders.stub.ListReviews(pb.ListReviewsRequest(state=pb.REVIEW_STATE_PENDING, page_size=100),
                                          metadata=orders.staff_md)
    assert {r1.name, r2.name} <= {r.name for r in queue.reviews}

    approved = await asyncio.gather(*[orders.stub.ModerateReview(pb.ModerateReviewRequest(
        name=r.name, state=pb.REVIEW_STATE_APPROVED), metadata=orders.staff_md) for r in (r1, r2)])
    assert all(a.state == pb.REVIEW_STATE_APPROVED for a in approved)
    assert await _reason(orders.stub.ModerateReview(pb.ModerateReviewRequest(
        name=r1.name, state=pb.REVIEW_STATE_REJECTED), metadata=orders.staff_md)) == "REVIEW_STATE_CONFLICT"

    public = await orders.stub.ListProductReviews(pb.ListProductReviewsRequest(parent=p1.name))
    assert [r.name for r in public.reviews] == [r1.name] and public.reviews[0].text == "很好用"
    rating = await orders.stub.GetProductRating(pb.GetProductRatingRequest(name=f"{p1.name}/rating"))
    assert rating.review_count == 1 and rating.average_rating == 5.0 and list(rating.rating_counts) == [0, 0, 0, 0, 1]

    # Two items reviewed and approved: the review-order task pays once for the order.
    async def rewarded() -> bool:
        async with points.engine.connect() as conn:
            rows = (await conn.execute(select(Entry.available_delta).where(
                Entry.member_id == member_id, Entry.source == ppb.ENTRY_SOURCE_TASK))).scalars().all()
        return list(rows) == [15]
    assert await _until(rewarded)
    await asyncio.sleep(0.5)
    assert await rewarded()
