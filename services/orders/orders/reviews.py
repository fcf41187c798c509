"""Order reviews (评价): one per item of a completed order, moderated by staff, public once approved.

A review is unique per (order, SKU). Moderation is the conditional PENDING ->
APPROVED | REJECTED UPDATE: an approval, once, adds the rating to the product's
counters (conditional increments, never read-modify-write) and publishes
``order.reviewed`` for the order's first approved review (a conditional UPDATE
of ``orders.review_time``), which the points service turns into the
review-order task: rewarded once per order.
"""

from __future__ import annotations

import json

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from mall.orders.v1 import orders_events_pb2 as events
from mallkit.db import insert_ignore, is_duplicate_key, utcnow
from mallkit.errors import FailedPrecondition, NotFound
from mallkit.events import Outbox
from mallkit.pagination import PageTokens
from mallkit.queries import keyset_page

from . import errors as reasons
from .lifecycle import Lifecycle
from .models import COMPLETED, REVIEW_APPROVED, REVIEW_PENDING, Order, ProductRating, Review


class Reviews:
    def __init__(self, *, lifecycle: Lifecycle, outbox: Outbox, pages: PageTokens):
        self.lifecycle = lifecycle
        self.outbox = outbox
        self.pages = pages

    async def create(self, s: AsyncSession, order_id: int, member_id: int, product_id: int, sku_id: int,
                     rating: int, text: str, image_urls: list[str]) -> Review:
        o = await self.lifecycle.order(s, order_id, member_id=member_id)
        if o.state != COMPLETED:
            raise FailedPrecondition("only completed orders can be reviewed", reason=reasons.REVIEW_NOT_ALLOWED,
                                     metadata={"field": "parent"}, zh="订单完成后才能评价")
        items = (await self.lifecycle.items_of(s, [order_id]))[order_id]
        if not any(it.sku_id == sku_id and it.product_id == product_id for it in items):
            raise FailedPrecondition("the order has no such item", reason=reasons.REVIEW_NOT_ALLOWED,
                                     metadata={"field": "review.sku"}, zh="订单中没有该商品")
        r = Review(order_id=order_id, member_id=member_id, product_id=product_id, sku_id=sku_id, rating=rating,
                   text=text, image_urls=json.dumps(image_urls, ensure_ascii=False), state=REVIEW_PENDING,
                   create_time=utcnow())
        try:
            async with s.begin_nested():
                s.add(r)
                await s.flush()
        except IntegrityError as exc:
            if not is_duplicate_key(exc):
                raise
            raise FailedPrecondition("this item of the order is already reviewed", reason=reasons.REVIEW_EXISTS,
                                     metadata={"field": "review.sku"}, zh="该商品已评价") from None
        return r

    async def review(self, s: AsyncSession, review_id: int) -> Review:
        r = await s.get(Review, review_id, populate_existing=True)
        if r is None:
            raise NotFound("review not found", reason=reasons.REVIEW_NOT_FOUND,
                           resource=("review", f"reviews/{review_id}"), zh="评价不存在")
        return r

    async def moderate(self, s: AsyncSession, review_id: int, state: int) -> Review:
        r = await self.review(s, review_id)
        now = utcnow()
        done = await s.execute(update(Review).where(Review.id == review_id, Review.state == REVIEW_PENDING)
                               .values(state=state, moderate_time=now))
        if done.rowcount != 1:  # type: ignore[attr-defined]
            raise FailedPrecondition("the review is already moderated", reason=reasons.REVIEW_STATE_CONFLICT,
                                     zh="该评价已审核")
        if state == REVIEW_APPROVED:
            await insert_ignore(s, ProductRating.__table__, [{
                "product_id": r.product_id, "review_count": 0, "rating_sum": 0, "stars_1": 0, "stars_2": 0,
                "stars_3": 0, "stars_4": 0, "stars_5": 0}])
            stars = getattr(ProductRating, f"stars_{r.rating}")
            await s.execute(update(ProductRating).where(ProductRating.product_id == r.product_id).values(
                {ProductRating.review_count: ProductRating.review_count + 1,
                 ProductRating.rating_sum: ProductRating.rating_sum + r.rating, stars: stars + 1}))
            first = await s.execute(update(Order).where(Order.id == r.order_id, Order.review_time.is_(None))
                                    .values(review_time=now))
            if first.rowcount == 1:  # type: ignore[attr-defined]  # the order's first approved review
                await self.outbox.add(s, "order.reviewed", events.OrderReviewedEvent(
                    order=f"orders/{r.order_id}", member=f"members/{r.member_id}", review=f"reviews/{r.id}",
                    rating=r.rating), subject=f"orders/{r.order_id}")
        return await self.review(s, review_id)

    async def list(self, s: AsyncSession, *, state: int, size: int, token: str) -> tuple[list[Review], str]:
        q = select(Review)
        if state:
            q = q.where(Review.state == state)
        return await keyset_page(s, q, key=Review.id.desc(), tokens=self.pages, page_size=size, page_token=token,
                                 filters=[state])

    async def of_product(self, s: AsyncSession, product_id: int, size: int, token: str) -> tuple[list[Review], str]:
        q = select(Review).where(Review.product_id == product_id, Review.state == REVIEW_APPROVED)
        return await keyset_page(s, q, key=Review.id.desc(), tokens=self.pages, page_size=size, page_token=token,
                                 filters=[product_id])

    async def rating(self, s: AsyncSession, product_id: int) -> ProductRating | None:
        return await s.get(ProductRating, product_id, populate_existing=True)
