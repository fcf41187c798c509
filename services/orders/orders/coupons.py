"""Coupons: templates, issuing (claim, staff, services, events, welcome) and use by orders.

The per-member limit is a counter row (``coupon_holdings``: insert-ignore, then
``count < limit``), the total quantity ``issued_count < total_quantity``: both by
conditional UPDATE, never read-modify-write.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mallkit.db import insert_ignore, utcnow
from mallkit.errors import FailedPrecondition, NotFound
from mallkit.pagination import PageTokens
from mallkit.queries import get_or_not_found, keyset_page

from . import errors as reasons
from .catalog import Catalog
from .models import COUPON_AVAILABLE, COUPON_USED, Coupon, CouponHolding, CouponTemplate


class Coupons:
    def __init__(self, *, catalog: Catalog, pages: PageTokens):
        self.catalog = catalog
        self.pages = pages

    # --- templates -------------------------------------------------------------------------

    async def create_template(self, s: AsyncSession, fields: dict) -> CouponTemplate:
        if fields.get("category_id"):
            await self.catalog.category(s, fields["category_id"], "coupon_template.category")
        t = CouponTemplate(issued_count=0, create_time=utcnow(), **fields)
        s.add(t)
        await s.flush()
        return t

    async def template(self, s: AsyncSession, template_id: int, field: str = "coupon_template") -> CouponTemplate:
        return await get_or_not_found(s, CouponTemplate, template_id, lambda: NotFound(
            "coupon template not found", reason=reasons.COUPON_TEMPLATE_NOT_FOUND, metadata={"field": field},
            resource=("couponTemplate", f"couponTemplates/{template_id}"), zh="优惠券不存在"))

    async def list_templates(self, s: AsyncSession, size: int, page_token: str) -> tuple[list[CouponTemplate], str]:
        return await keyset_page(s, select(CouponTemplate), key=CouponTemplate.id.desc(), tokens=self.pages,
                                 page_size=size, page_token=page_token)

    # --- issuing ---------------------------------------------------------------------------

    async def issue(self, s: AsyncSession, template_id: int, member_id: int, source: str,
                    *, claim: bool = False) -> Coupon:
        """One coupon to one member: per-member limit and total quantity by conditional UPDATE."""
        t = await self.template(s, template_id)
        if claim and not t.claimable:
            raise FailedPrecondition("this coupon cannot be claimed", reason=reasons.COUPON_NOT_CLAIMABLE, zh="该优惠券不可领取")
        await insert_ignore(s, CouponHolding.__table__, [{"template_id": template_id, "member_id": member_id, "count": 0}])
        held = await s.execute(update(CouponHolding)
                               .where(CouponHolding.template_id == template_id, CouponHolding.member_id == member_id,
                                      CouponHolding.count < t.per_member_limit)
                               .values(count=CouponHolding.count + 1))
        if held.rowcount != 1:  # type: ignore[attr-defined]
            raise FailedPrecondition("per-member limit of this coupon reached", reason=reasons.COUPON_LIMIT_REACHED,
                                     zh="已达到领取上限")
        taken = await s.execute(update(CouponTemplate)
                                .where(CouponTemplate.id == template_id, CouponTemplate.issued_count < CouponTemplate.total_quantity)
                                .values(issued_count=CouponTemplate.issued_count + 1))
        if taken.rowcount != 1:  # type: ignore[attr-defined]
            await s.execute(update(CouponHolding)
                            .where(CouponHolding.template_id == template_id, CouponHolding.member_id == member_id)
                            .values(count=CouponHolding.count - 1))
            raise FailedPrecondition("this coupon is all given out", reason=reasons.COUPON_EXHAUSTED, zh="优惠券已领完")
        now = utcnow()
        c = Coupon(template_id=template_id, member_id=member_id, state=COUPON_AVAILABLE, source=source, issue_time=now,
                   expire_time=now + timedelta(days=t.valid_days))
        s.add(c)
        await s.flush()
        return c

    async def issue_many(self, s: AsyncSession, template_id: int, member_ids: list[int], source: str) -> tuple[int, list[int]]:
        """One coupon to each member (duplicates once); returns (issued count, members skipped at a limit)."""
        await self.template(s, template_id)
        issued, skipped = 0, []
        for mid in dict.fromkeys(member_ids):
            try:
                async with s.begin_nested():
                    await self.issue(s, template_id, mid, source)
                issued += 1
            except FailedPrecondition:
                skipped.append(mid)
        return issued, skipped

    async def issue_welcome(self, s: AsyncSession, member_id: int) -> tuple[int, list[tuple[int, str]]]:
        """Every welcome template to a new member; returns (issued, [(template, reason)] skipped at a limit)."""
        ids = (await s.execute(select(CouponTemplate.id).where(CouponTemplate.welcome.is_(True))
                               .order_by(CouponTemplate.id))).scalars().all()
        n, skipped = 0, []
        for tid in ids:
            try:
                async with s.begin_nested():
                    await self.issue(s, tid, member_id, "welcome")
                n += 1
            except FailedPrecondition as err:
                skipped.append((tid, err.reason))
        return n, skipped

    async def list_of(self, s: AsyncSession, member_id: int, size: int, page_token: str) -> tuple[list[Coupon], str]:
        return await keyset_page(s, select(Coupon).where(Coupon.member_id == member_id), key=Coupon.id.desc(),
                                 tokens=self.pages, page_size=size, page_token=page_token, filters=[member_id])

    # --- use by orders ---------------------------------------------------------------------

    async def for_order(self, s: AsyncSession, member_id: int, coupon_id: int) -> tuple[Coupon, CouponTemplate]:
        """The member's coupon and its template (NOT_FOUND on field ``coupon`` otherwise)."""
        coupon = await s.get(Coupon, coupon_id)
        if coupon is None or coupon.member_id != member_id:
            raise NotFound("coupon not found", reason=reasons.COUPON_NOT_FOUND, metadata={"field": "coupon"},
                           zh="优惠券不存在")
        return coupon, await self.template(s, coupon.template_id, "coupon")

    async def use(self, s: AsyncSession, coupon_id: int, member_id: int, order_id: int, now: datetime) -> None:
        """AVAILABLE and unexpired -> USED by this order; of concurrent orders one wins."""
        used = await s.execute(update(Coupon)
                               .where(Coupon.id == coupon_id, Coupon.member_id == member_id,
                                      Coupon.state == COUPON_AVAILABLE, Coupon.expire_time > now)
                               .values(state=COUPON_USED, order_id=order_id))
        if used.rowcount != 1:  # type: ignore[attr-defined]
            raise FailedPrecondition("coupon is used or expired", reason=reasons.COUPON_UNAVAILABLE,
                                     metadata={"field": "coupon"}, zh="优惠券已使用或已过期")

    async def release(self, s: AsyncSession, coupon_id: int, order_id: int) -> None:
        """The coupon of a cancelled order becomes available again."""
        await s.execute(update(Coupon).where(Coupon.id == coupon_id, Coupon.order_id == order_id,
                                             Coupon.state == COUPON_USED)
                        .values(state=COUPON_AVAILABLE, order_id=None))
