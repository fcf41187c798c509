"""Tables of the orders service (its own database)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, SmallInteger, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from mall.orders.v1 import orders_service_pb2 as pb
from mallkit import events, idempotency
from mallkit.db import UTCDateTime, new_metadata

# BIGINT on MySQL, INTEGER on SQLite (so that it is SQLite's rowid alias).
ID = BigInteger().with_variant(Integer, "sqlite")

# Enum values of mall.orders.v1 (the generated protos), short names for the queries.
PENDING_PAYMENT, PAID, SHIPPED, COMPLETED, CANCELLED, REFUND_REQUESTED, REFUNDED = (
    pb.ORDER_STATE_PENDING_PAYMENT, pb.ORDER_STATE_PAID, pb.ORDER_STATE_SHIPPED, pb.ORDER_STATE_COMPLETED,
    pb.ORDER_STATE_CANCELLED, pb.ORDER_STATE_REFUND_REQUESTED, pb.ORDER_STATE_REFUNDED)
COUPON_AVAILABLE, COUPON_USED = pb.COUPON_STATE_AVAILABLE, pb.COUPON_STATE_USED
CAMPAIGN_RUNNING, CAMPAIGN_COMPLETED = pb.COUPON_CAMPAIGN_STATE_RUNNING, pb.COUPON_CAMPAIGN_STATE_COMPLETED
# Outcomes of a campaign recipient (internal: no proto enum).
RECIPIENT_ISSUED, RECIPIENT_LIMIT_REACHED, RECIPIENT_EXHAUSTED = 1, 2, 3
GROUP_OPEN, GROUP_FULL, GROUP_FAILED = pb.GROUP_STATE_OPEN, pb.GROUP_STATE_FULL, pb.GROUP_STATE_FAILED
BARGAIN_ACTIVE, BARGAIN_BOUGHT = pb.BARGAIN_STATE_ACTIVE, pb.BARGAIN_STATE_BOUGHT
REVIEW_PENDING, REVIEW_APPROVED, REVIEW_REJECTED = (pb.REVIEW_STATE_PENDING, pb.REVIEW_STATE_APPROVED,
                                                    pb.REVIEW_STATE_REJECTED)
ACTIVE = pb.PRODUCT_STATUS_ACTIVE
AMOUNT_OFF, PERCENT_OFF = pb.COUPON_KIND_AMOUNT_OFF, pb.COUPON_KIND_PERCENT_OFF
# Refund states (internal: no proto enum).
REFUND_PENDING, REFUND_SUCCEEDED = 1, 2


class Base(DeclarativeBase):
    metadata = new_metadata()


IdempotencyKeys = idempotency.define_table(Base.metadata)
OutboxEvents, InboxEvents = events.define_tables(Base.metadata)


class Category(Base):
    __tablename__ = "categories"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    display_name: Mapped[str] = mapped_column(String(32), unique=True)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())


class Product(Base):
    __tablename__ = "products"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    category_id: Mapped[int] = mapped_column(ForeignKey("categories.id"))
    display_name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(String(1000), default="")
    status: Mapped[int] = mapped_column(SmallInteger)
    repurchase_cycle_days: Mapped[int] = mapped_column(Integer, default=0)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    update_time: Mapped[datetime] = mapped_column(UTCDateTime())
    __table_args__ = (Index("ix_products_category_id_id", "category_id", "id"),)


class Sku(Base):
    __tablename__ = "skus"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"), index=True)
    display_name: Mapped[str] = mapped_column(String(64))
    price_fen: Mapped[int] = mapped_column(BigInteger)
    stock: Mapped[int] = mapped_column(BigInteger)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())


class CartItem(Base):
    __tablename__ = "cart_items"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    member_id: Mapped[int] = mapped_column(BigInteger)
    sku_id: Mapped[int] = mapped_column(ForeignKey("skus.id"))
    quantity: Mapped[int] = mapped_column(Integer)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    __table_args__ = (UniqueConstraint("member_id", "sku_id"),)


class Address(Base):
    __tablename__ = "addresses"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    member_id: Mapped[int] = mapped_column(BigInteger, index=True)
    recipient: Mapped[str] = mapped_column(String(32))
    phone: Mapped[str] = mapped_column(String(16))
    province: Mapped[str] = mapped_column(String(32))
    city: Mapped[str] = mapped_column(String(32))
    district: Mapped[str] = mapped_column(String(32), default="")
    detail: Mapped[str] = mapped_column(String(128))
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())


class CouponTemplate(Base):
    __tablename__ = "coupon_templates"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    display_name: Mapped[str] = mapped_column(String(32))
    kind: Mapped[int] = mapped_column(SmallInteger)
    amount_off_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    percent: Mapped[int] = mapped_column(Integer, default=0)
    threshold_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    category_id: Mapped[int | None] = mapped_column(ForeignKey("categories.id"), nullable=True)
    valid_days: Mapped[int] = mapped_column(Integer)
    per_member_limit: Mapped[int] = mapped_column(Integer)
    total_quantity: Mapped[int] = mapped_column(BigInteger)
    issued_count: Mapped[int] = mapped_column(BigInteger, default=0)
    claimable: Mapped[bool] = mapped_column(Boolean, default=False)
    welcome: Mapped[bool] = mapped_column(Boolean, default=False)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())


class CouponRefusal(Base):
    """A coupon granted by another service (points redemption, community drop, welcome) that could not be
    issued, with the reason; written with the compensating event, once per granting event."""

    __tablename__ = "coupon_refusals"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    granted_event_id: Mapped[str] = mapped_column(String(36), unique=True)
    granted_by: Mapped[str] = mapped_column(String(16))
    source_ref: Mapped[str] = mapped_column(String(128))
    member: Mapped[str] = mapped_column(String(64))
    coupon_template: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(64))
    compensation_event_id: Mapped[str] = mapped_column(String(36), default="")
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())


class CouponHolding(Base):
    """How many coupons of a template a member has received (the per-member limit counter)."""

    __tablename__ = "coupon_holdings"
    # No foreign key: its check would share-lock the template row that the same transaction
    # then updates, and two claimers would deadlock on it.
    template_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    member_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)


class Coupon(Base):
    __tablename__ = "coupons"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    template_id: Mapped[int] = mapped_column(ForeignKey("coupon_templates.id"))
    member_id: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[int] = mapped_column(SmallInteger)
    order_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    source: Mapped[str] = mapped_column(String(16))
    issue_time: Mapped[datetime] = mapped_column(UTCDateTime())
    expire_time: Mapped[datetime] = mapped_column(UTCDateTime())
    __table_args__ = (Index("ix_coupons_member_id_id", "member_id", "id"),)


class CouponCampaign(Base):
    """A coupon template issued to a members' segment snapshot, page by page (``campaigns.py``).

    ``cursor`` is the members' page token of the next snapshot page ("" before the first page);
    it advances in the same transaction as the page's coupons, under the lease of ``lease_owner``.
    """

    __tablename__ = "coupon_campaigns"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    template_id: Mapped[int] = mapped_column(ForeignKey("coupon_templates.id"))
    segment: Mapped[str] = mapped_column(String(64))  # the segment key
    segment_version: Mapped[int] = mapped_column(Integer)
    state: Mapped[int] = mapped_column(SmallInteger)
    member_count: Mapped[int] = mapped_column(BigInteger, default=0)
    issued_count: Mapped[int] = mapped_column(BigInteger, default=0)
    skipped_count: Mapped[int] = mapped_column(BigInteger, default=0)
    pages_done: Mapped[int] = mapped_column(Integer, default=0)
    cursor: Mapped[str] = mapped_column(String(512), default="")
    lease_owner: Mapped[str] = mapped_column(String(36), default="")
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    complete_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    __table_args__ = (Index("ix_coupon_campaigns_state", "state"),)


class CouponCampaignRecipient(Base):
    """One member of a campaign: the unique key that makes each member get one coupon at most."""

    __tablename__ = "coupon_campaign_recipients"
    campaign_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    member_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    outcome: Mapped[int] = mapped_column(SmallInteger)


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    member_id: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[int] = mapped_column(SmallInteger)
    total_fen: Mapped[int] = mapped_column(BigInteger)
    tier_discount_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    coupon_discount_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    payable_fen: Mapped[int] = mapped_column(BigInteger)
    coupon_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    address: Mapped[str] = mapped_column(Text, default="")  # JSON snapshot
    flash_sale_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    group_deal_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    group_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True, index=True)
    bargain_activity_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    bargain_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # When the order's first review was approved (order.reviewed is published then, once per order).
    review_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    out_trade_no: Mapped[str] = mapped_column(String(32), unique=True)
    transaction_id: Mapped[str | None] = mapped_column(String(32), unique=True, nullable=True)
    prepay_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    openid: Mapped[str] = mapped_column(String(64), default="")
    tracking_number: Mapped[str] = mapped_column(String(64), default="")
    cancel_reason: Mapped[str] = mapped_column(String(16), default="")
    refunded_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    reminded: Mapped[bool] = mapped_column(Boolean, default=False)
    # The member's tier and its points multiplier when the order was priced ("tiers/{t}" or "";
    # 0: not snapshotted, i.e. orders older than revision 0003), carried by order.paid.
    tier: Mapped[str] = mapped_column(String(32), default="", server_default="")
    points_multiplier_percent: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    pay_deadline_time: Mapped[datetime] = mapped_column(UTCDateTime())
    pay_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    ship_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    close_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    __table_args__ = (
        Index("ix_orders_member_id_id", "member_id", "id"),
        Index("ix_orders_state_pay_deadline_time", "state", "pay_deadline_time"),
        Index("ix_orders_state_ship_time", "state", "ship_time"),
    )


class OrderItem(Base):
    __tablename__ = "order_items"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    sku_id: Mapped[int] = mapped_column(BigInteger)
    product_id: Mapped[int] = mapped_column(BigInteger)
    category_id: Mapped[int] = mapped_column(BigInteger)
    product_display_name: Mapped[str] = mapped_column(String(64))
    sku_display_name: Mapped[str] = mapped_column(String(64))
    unit_price_fen: Mapped[int] = mapped_column(BigInteger)
    quantity: Mapped[int] = mapped_column(Integer)
    paid_fen: Mapped[int] = mapped_column(BigInteger)
    repurchase_cycle_days: Mapped[int] = mapped_column(Integer, default=0)


class PaymentNotification(Base):
    """Every accepted notification id once (duplicates are acknowledged, never reapplied)."""

    __tablename__ = "payment_notifications"
    notification_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    order_id: Mapped[int] = mapped_column(BigInteger)
    transaction_id: Mapped[str] = mapped_column(String(32))
    outcome: Mapped[str] = mapped_column(String(16))  # paid | late_refund | duplicate
    receive_time: Mapped[datetime] = mapped_column(UTCDateTime())


class Refund(Base):
    __tablename__ = "refunds"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    order_id: Mapped[int] = mapped_column(BigInteger)
    out_refund_no: Mapped[str] = mapped_column(String(64), unique=True)
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(16))  # member | late_payment
    state: Mapped[int] = mapped_column(SmallInteger)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    success_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    __table_args__ = (Index("ix_refunds_state_id", "state", "id"),)


class FlashSale(Base):
    __tablename__ = "flash_sales"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    sku_id: Mapped[int] = mapped_column(ForeignKey("skus.id"))
    price_fen: Mapped[int] = mapped_column(BigInteger)
    total_stock: Mapped[int] = mapped_column(BigInteger)
    remaining: Mapped[int] = mapped_column(BigInteger)
    per_member_limit: Mapped[int] = mapped_column(Integer)
    start_time: Mapped[datetime] = mapped_column(UTCDateTime())
    end_time: Mapped[datetime] = mapped_column(UTCDateTime())
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())


class FlashPurchase(Base):
    """Units a member bought in a flash sale (the per-member limit counter)."""

    __tablename__ = "flash_purchases"
    # No foreign key: its check would share-lock the hot flash_sales row before the stock UPDATE.
    flash_sale_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    member_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    quantity: Mapped[int] = mapped_column(Integer, default=0)


class JourneyStep(Base):
    """One step of the after-sales care journey; sent once (unique per order and step)."""

    __tablename__ = "journey_steps"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    order_id: Mapped[int] = mapped_column(BigInteger)
    member_id: Mapped[int] = mapped_column(BigInteger)
    step: Mapped[str] = mapped_column(String(16))
    due_time: Mapped[datetime] = mapped_column(UTCDateTime())
    sent_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    outcome: Mapped[str] = mapped_column(String(32), default="")
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    __table_args__ = (UniqueConstraint("order_id", "step"), Index("ix_journey_steps_sent_time_due_time", "sent_time", "due_time"))


class GroupDeal(Base):
    """A group-buying deal (拼团活动)."""

    __tablename__ = "group_deals"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    sku_id: Mapped[int] = mapped_column(ForeignKey("skus.id"))
    price_fen: Mapped[int] = mapped_column(BigInteger)
    group_size: Mapped[int] = mapped_column(Integer)
    fill_seconds: Mapped[int] = mapped_column(Integer)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())


class GroupBuy(Base):
    """One group of a deal: places taken (joined) and paid, by conditional UPDATE."""

    __tablename__ = "group_buys"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    deal_id: Mapped[int] = mapped_column(BigInteger)
    leader_id: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[int] = mapped_column(SmallInteger)
    group_size: Mapped[int] = mapped_column(Integer)
    joined_count: Mapped[int] = mapped_column(Integer)
    paid_count: Mapped[int] = mapped_column(Integer, default=0)
    deadline_time: Mapped[datetime] = mapped_column(UTCDateTime())
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    __table_args__ = (Index("ix_group_buys_state_deadline_time", "state", "deadline_time"),)


class GroupMember(Base):
    """A member's place in a group (once per member and group)."""

    __tablename__ = "group_members"
    group_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    member_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    order_id: Mapped[int] = mapped_column(BigInteger)


class BargainActivity(Base):
    """A bargain activity (砍价活动) on one SKU."""

    __tablename__ = "bargain_activities"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    sku_id: Mapped[int] = mapped_column(ForeignKey("skus.id"))
    start_price_fen: Mapped[int] = mapped_column(BigInteger)
    floor_price_fen: Mapped[int] = mapped_column(BigInteger)
    helpers_needed: Mapped[int] = mapped_column(Integer)
    cut_mode: Mapped[int] = mapped_column(SmallInteger)
    start_time: Mapped[datetime] = mapped_column(UTCDateTime())
    end_time: Mapped[datetime] = mapped_column(UTCDateTime())
    bargain_seconds: Mapped[int] = mapped_column(Integer)
    per_member_limit: Mapped[int] = mapped_column(Integer)
    share_scene: Mapped[str] = mapped_column(String(64), default="")
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())


class Bargain(Base):
    """A member's bargain: the price falls by the next planned cut per helper, by conditional UPDATE."""

    __tablename__ = "bargains"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    activity_id: Mapped[int] = mapped_column(BigInteger)
    member_id: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[int] = mapped_column(SmallInteger)
    start_price_fen: Mapped[int] = mapped_column(BigInteger)
    floor_price_fen: Mapped[int] = mapped_column(BigInteger)
    current_price_fen: Mapped[int] = mapped_column(BigInteger)
    helper_count: Mapped[int] = mapped_column(Integer, default=0)
    helpers_needed: Mapped[int] = mapped_column(Integer)
    cuts: Mapped[str] = mapped_column(Text)  # JSON list of the planned cuts in fen (sum = start - floor)
    sharer_invite_code: Mapped[str] = mapped_column(String(32), default="")
    deadline_time: Mapped[datetime] = mapped_column(UTCDateTime())
    order_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    __table_args__ = (Index("ix_bargains_activity_id_member_id", "activity_id", "member_id"),)


class BargainHelp(Base):
    """One helper's cut (once per helper and bargain; one helper per sequence number)."""

    __tablename__ = "bargain_helps"
    bargain_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    helper_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    sequence: Mapped[int] = mapped_column(Integer)
    cut_fen: Mapped[int] = mapped_column(BigInteger)
    price_after_fen: Mapped[int] = mapped_column(BigInteger)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    __table_args__ = (UniqueConstraint("bargain_id", "sequence"),)


class BargainStart(Base):
    """Bargains a member started on an activity (the per-member limit counter)."""

    __tablename__ = "bargain_starts"
    activity_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    member_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)


class Review(Base):
    """A member's review of one item of a completed order (once per order and SKU)."""

    __tablename__ = "reviews"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    order_id: Mapped[int] = mapped_column(BigInteger)
    member_id: Mapped[int] = mapped_column(BigInteger)
    product_id: Mapped[int] = mapped_column(BigInteger)
    sku_id: Mapped[int] = mapped_column(BigInteger)
    rating: Mapped[int] = mapped_column(SmallInteger)
    text: Mapped[str] = mapped_column(String(500), default="")
    image_urls: Mapped[str] = mapped_column(Text)  # JSON list
    state: Mapped[int] = mapped_column(SmallInteger)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    moderate_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    __table_args__ = (
        UniqueConstraint("order_id", "sku_id"),
        Index("ix_reviews_product_id_state_id", "product_id", "state", "id"),
        Index("ix_reviews_state_id", "state", "id"),
    )


class ProductRating(Base):
    """Approved reviews of a product, counted per rating (changed by conditional UPDATEs)."""

    __tablename__ = "product_ratings"
    product_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    review_count: Mapped[int] = mapped_column(BigInteger, default=0)
    rating_sum: Mapped[int] = mapped_column(BigInteger, default=0)
    stars_1: Mapped[int] = mapped_column(BigInteger, default=0)
    stars_2: Mapped[int] = mapped_column(BigInteger, default=0)
    stars_3: Mapped[int] = mapped_column(BigInteger, default=0)
    stars_4: Mapped[int] = mapped_column(BigInteger, default=0)
    stars_5: Mapped[int] = mapped_column(BigInteger, default=0)
