"""Rows -> proto messages of mall.orders.v1 (resource names built here only)."""

from __future__ import annotations

import json

from mall.orders.v1 import orders_service_pb2 as pb

from ..bargain import bargain_name, display_state
from ..models import (
    Address,
    Bargain,
    BargainActivity,
    BargainHelp,
    Category,
    Coupon,
    CouponCampaign,
    CouponTemplate,
    FlashSale,
    GroupBuy,
    GroupDeal,
    Order,
    OrderItem,
    Product,
    ProductRating,
    Review,
    Sku,
)


def _ts(field, dt) -> None:
    if dt is not None:
        field.FromDatetime(dt)


def category_pb(c: Category) -> pb.Category:
    return pb.Category(name=f"categories/{c.id}", display_name=c.display_name)


def sku_pb(k: Sku) -> pb.Sku:
    return pb.Sku(name=f"products/{k.product_id}/skus/{k.id}", display_name=k.display_name, price_fen=k.price_fen,
                  stock=k.stock)


def product_pb(p: Product, skus: list[Sku]) -> pb.Product:
    out = pb.Product(name=f"products/{p.id}", display_name=p.display_name, category=f"categories/{p.category_id}",
                     description=p.description, status=p.status, repurchase_cycle_days=p.repurchase_cycle_days,
                     skus=[sku_pb(k) for k in skus])
    _ts(out.create_time, p.create_time)
    return out


def address_pb(a: Address) -> pb.Address:
    return pb.Address(name=f"members/{a.member_id}/addresses/{a.id}", recipient=a.recipient, phone=a.phone,
                      province=a.province, city=a.city, district=a.district, detail=a.detail)


def template_pb(t: CouponTemplate) -> pb.CouponTemplate:
    return pb.CouponTemplate(
        name=f"couponTemplates/{t.id}", display_name=t.display_name, kind=t.kind, amount_off_fen=t.amount_off_fen,
        percent=t.percent, threshold_fen=t.threshold_fen, category=f"categories/{t.category_id}" if t.category_id else "",
        valid_days=t.valid_days, per_member_limit=t.per_member_limit, total_quantity=t.total_quantity,
        issued_count=t.issued_count, claimable=t.claimable, welcome=t.welcome)


def campaign_pb(c: CouponCampaign) -> pb.CouponCampaign:
    out = pb.CouponCampaign(
        name=f"couponCampaigns/{c.id}", coupon_template=f"couponTemplates/{c.template_id}", segment=f"segments/{c.segment}",
        segment_version=c.segment_version, state=c.state, member_count=c.member_count, issued_count=c.issued_count,
        skipped_count=c.skipped_count, pages_done=c.pages_done)
    _ts(out.create_time, c.create_time)
    _ts(out.complete_time, c.complete_time)
    return out


def coupon_pb(c: Coupon) -> pb.Coupon:
    out = pb.Coupon(name=f"members/{c.member_id}/coupons/{c.id}", coupon_template=f"couponTemplates/{c.template_id}",
                    state=c.state, order=f"orders/{c.order_id}" if c.order_id else "", source=c.source)
    _ts(out.issue_time, c.issue_time)
    _ts(out.expire_time, c.expire_time)
    return out


def order_pb(o: Order, items: list[OrderItem]) -> pb.Order:
    out = pb.Order(
        name=f"orders/{o.id}", member=f"members/{o.member_id}", state=o.state, total_fen=o.total_fen,
        tier_discount_fen=o.tier_discount_fen, coupon_discount_fen=o.coupon_discount_fen, payable_fen=o.payable_fen,
        coupon=f"members/{o.member_id}/coupons/{o.coupon_id}" if o.coupon_id else "",
        flash_sale=f"flashSales/{o.flash_sale_id}" if o.flash_sale_id else "", out_trade_no=o.out_trade_no,
        cancel_reason=o.cancel_reason, refunded_fen=o.refunded_fen,
        group=f"groupDeals/{o.group_deal_id}/groups/{o.group_id}" if o.group_id else "",
        bargain=f"bargainActivities/{o.bargain_activity_id}/bargains/{o.bargain_id}" if o.bargain_id else "",
        items=[pb.OrderItem(sku=f"products/{it.product_id}/skus/{it.sku_id}", product=f"products/{it.product_id}",
                            category=f"categories/{it.category_id}", product_display_name=it.product_display_name,
                            sku_display_name=it.sku_display_name, unit_price_fen=it.unit_price_fen,
                            quantity=it.quantity, paid_fen=it.paid_fen) for it in items],
    )
    if o.address:
        out.address.CopyFrom(pb.Address(**json.loads(o.address)))
    for f, v in (("create_time", o.create_time), ("pay_deadline_time", o.pay_deadline_time), ("pay_time", o.pay_time),
                 ("ship_time", o.ship_time), ("close_time", o.close_time)):
        _ts(getattr(out, f), v)
    return out


def flash_pb(f: FlashSale, product_id: int) -> pb.FlashSale:
    out = pb.FlashSale(name=f"flashSales/{f.id}", sku=f"products/{product_id}/skus/{f.sku_id}", price_fen=f.price_fen,
                       total_stock=f.total_stock, remaining_stock=f.remaining, per_member_limit=f.per_member_limit)
    _ts(out.start_time, f.start_time)
    _ts(out.end_time, f.end_time)
    return out


def group_deal_pb(d: GroupDeal, product_id: int) -> pb.GroupDeal:
    out = pb.GroupDeal(name=f"groupDeals/{d.id}", sku=f"products/{product_id}/skus/{d.sku_id}", price_fen=d.price_fen,
                       group_size=d.group_size)
    out.fill_duration.seconds = d.fill_seconds
    return out


def group_pb(g: GroupBuy) -> pb.Group:
    out = pb.Group(name=f"groupDeals/{g.deal_id}/groups/{g.id}", leader=f"members/{g.leader_id}", state=g.state,
                   group_size=g.group_size, joined_count=g.joined_count, paid_count=g.paid_count)
    _ts(out.deadline_time, g.deadline_time)
    return out


def bargain_activity_pb(a: BargainActivity, product_id: int) -> pb.BargainActivity:
    out = pb.BargainActivity(
        name=f"bargainActivities/{a.id}", sku=f"products/{product_id}/skus/{a.sku_id}",
        start_price_fen=a.start_price_fen, floor_price_fen=a.floor_price_fen, helpers_needed=a.helpers_needed,
        cut_mode=a.cut_mode, per_member_limit=a.per_member_limit, share_scene=a.share_scene)
    _ts(out.start_time, a.start_time)
    _ts(out.end_time, a.end_time)
    out.bargain_duration.seconds = a.bargain_seconds
    return out


def bargain_pb(b: Bargain, share_scene: str, now) -> pb.Bargain:
    out = pb.Bargain(
        name=bargain_name(b), owner=f"members/{b.member_id}", state=display_state(b, now),
        start_price_fen=b.start_price_fen, floor_price_fen=b.floor_price_fen, current_price_fen=b.current_price_fen,
        helper_count=b.helper_count, helpers_needed=b.helpers_needed, order=f"orders/{b.order_id}" if b.order_id else "",
        sharer_invite_code=b.sharer_invite_code, share_scene=share_scene)
    _ts(out.deadline_time, b.deadline_time)
    _ts(out.create_time, b.create_time)
    return out


def bargain_help_pb(h: BargainHelp, b: Bargain) -> pb.BargainHelp:
    return pb.BargainHelp(bargain=bargain_name(b), helper=f"members/{h.helper_id}", cut_fen=h.cut_fen,
                          sequence=h.sequence, price_after_fen=h.price_after_fen)


def review_pb(r: Review) -> pb.Review:
    out = pb.Review(name=f"reviews/{r.id}", order=f"orders/{r.order_id}", sku=f"products/{r.product_id}/skus/{r.sku_id}",
                    product=f"products/{r.product_id}", member=f"members/{r.member_id}", rating=r.rating, text=r.text,
                    image_urls=json.loads(r.image_urls or "[]"), state=r.state)
    _ts(out.create_time, r.create_time)
    _ts(out.moderate_time, r.moderate_time)
    return out


def rating_pb(product_id: int, r: ProductRating | None) -> pb.ProductRating:
    out = pb.ProductRating(name=f"products/{product_id}/rating")
    if r is not None and r.review_count:
        out.review_count = r.review_count
        out.average_rating = round(r.rating_sum / r.review_count, 2)
        out.rating_counts.extend([r.stars_1, r.stars_2, r.stars_3, r.stars_4, r.stars_5])
    else:
        out.rating_counts.extend([0, 0, 0, 0, 0])
    return out
