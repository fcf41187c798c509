"""Tables of the points service (its own database).

The ledger (``points_entries``) is append-only; ``points_accounts`` caches the
balances it sums to, ``points_lots`` splits the available balance by when it
was earned (first earned, first spent; expiry by lot) and ``lot_moves`` records
every change of a lot by the entry that made it, so a checker can prove the
three agree. Member ids are the members service's ids (no foreign key across
databases).
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from mallkit import events, idempotency
from mallkit.db import UTCDateTime, new_metadata

# BIGINT on MySQL, INTEGER on SQLite (so that it is SQLite's rowid alias).
ID = BigInteger().with_variant(Integer, "sqlite")


class Base(DeclarativeBase):
    metadata = new_metadata()


IdempotencyKeys = idempotency.define_table(Base.metadata)
OutboxEvents, InboxEvents = events.define_tables(Base.metadata)


class Account(Base):
    """Cached balances of one member (the ledger is the truth)."""

    __tablename__ = "points_accounts"
    member_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    available: Mapped[int] = mapped_column(BigInteger, default=0)
    pending: Mapped[int] = mapped_column(BigInteger, default=0)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    update_time: Mapped[datetime] = mapped_column(UTCDateTime())
    __table_args__ = (
        CheckConstraint("available >= 0", name="available_not_negative"),
        CheckConstraint("pending >= 0", name="pending_not_negative"),
    )


class Entry(Base):
    """One append-only ledger entry; ``idempotency_key`` makes each effect happen once."""

    __tablename__ = "points_entries"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    member_id: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[int] = mapped_column(SmallInteger)
    source: Mapped[int] = mapped_column(SmallInteger)
    source_ref: Mapped[str] = mapped_column(String(128), default="")
    available_delta: Mapped[int] = mapped_column(BigInteger, default=0)
    pending_delta: Mapped[int] = mapped_column(BigInteger, default=0)
    description: Mapped[str] = mapped_column(String(200), default="")
    operator: Mapped[str] = mapped_column(String(64), default="")
    idempotency_key: Mapped[str] = mapped_column(String(190), unique=True)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    __table_args__ = (Index("ix_points_entries_member_id_id", "member_id", "id"),)


class Lot(Base):
    """Points earned together, spent first-earned-first and expiring together."""

    __tablename__ = "points_lots"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    member_id: Mapped[int] = mapped_column(BigInteger)
    entry_id: Mapped[int] = mapped_column(ForeignKey("points_entries.id"))
    amount: Mapped[int] = mapped_column(BigInteger)
    remaining: Mapped[int] = mapped_column(BigInteger)
    earn_time: Mapped[datetime] = mapped_column(UTCDateTime())
    expire_time: Mapped[datetime] = mapped_column(UTCDateTime())
    expired: Mapped[bool] = mapped_column(Boolean, default=False)
    reminded_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    __table_args__ = (
        CheckConstraint("remaining >= 0", name="remaining_not_negative"),
        Index("ix_points_lots_member_id_expire_time", "member_id", "expire_time"),
        Index("ix_points_lots_expire_time", "expire_time"),
    )


class LotMove(Base):
    """A change of one lot's remaining points by one entry."""

    __tablename__ = "points_lot_moves"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    entry_id: Mapped[int] = mapped_column(ForeignKey("points_entries.id"), index=True)
    lot_id: Mapped[int] = mapped_column(ForeignKey("points_lots.id"), index=True)
    delta: Mapped[int] = mapped_column(BigInteger)


class CheckInDay(Base):
    """One check-in per member and brand calendar day (the primary key decides)."""

    __tablename__ = "check_ins"
    member_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    streak: Mapped[int] = mapped_column(Integer)
    points: Mapped[int] = mapped_column(BigInteger)
    bonus: Mapped[int] = mapped_column(BigInteger, default=0)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())


class Task(Base):
    __tablename__ = "tasks"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    kind: Mapped[int] = mapped_column(SmallInteger, unique=True)
    display_name: Mapped[str] = mapped_column(String(64))
    reward_points: Mapped[int] = mapped_column(BigInteger)
    frequency: Mapped[int] = mapped_column(SmallInteger)
    limit_per_period: Mapped[int] = mapped_column(Integer, default=1)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    update_time: Mapped[datetime] = mapped_column(UTCDateTime())


class TaskCompletion(Base):
    """A rewarded completion: one per (task, member, period, source_ref)."""

    __tablename__ = "task_completions"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"))
    member_id: Mapped[int] = mapped_column(BigInteger)
    period: Mapped[str] = mapped_column(String(16))
    source_ref: Mapped[str] = mapped_column(String(128), default="")
    points: Mapped[int] = mapped_column(BigInteger)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    __table_args__ = (UniqueConstraint("task_id", "member_id", "period", "source_ref"),)


class TaskCounter(Base):
    """Rewarded completions of a task by a member in a period (the cap)."""

    __tablename__ = "task_counters"
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), primary_key=True)
    member_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    period: Mapped[str] = mapped_column(String(16), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    display_name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(String(500), default="")
    kind: Mapped[int] = mapped_column(SmallInteger)
    points_price: Mapped[int] = mapped_column(BigInteger)
    cash_price_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    stock: Mapped[int] = mapped_column(BigInteger)
    redeemed_count: Mapped[int] = mapped_column(BigInteger, default=0)
    per_member_limit: Mapped[int] = mapped_column(Integer, default=0)
    start_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    end_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    allowed_tiers: Mapped[str] = mapped_column(String(255), default="")  # comma-separated tier ids
    coupon_template: Mapped[str] = mapped_column(String(64), default="")
    state: Mapped[int] = mapped_column(SmallInteger)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    update_time: Mapped[datetime] = mapped_column(UTCDateTime())
    __table_args__ = (CheckConstraint("stock >= 0", name="stock_not_negative"),)


class MemberItemCount(Base):
    """Units of an item a member holds (redeemed, not cancelled): the per-member limit."""

    __tablename__ = "member_item_counts"
    # No foreign key: its check would share-lock the hot items row before the stock UPDATE (0005).
    item_id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=False)
    member_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    quantity: Mapped[int] = mapped_column(Integer, default=0)


class Redemption(Base):
    __tablename__ = "redemptions"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    member_id: Mapped[int] = mapped_column(BigInteger)
    item_id: Mapped[int] = mapped_column(ID, index=True)  # no foreign key to the hot row (0005)
    item_display_name: Mapped[str] = mapped_column(String(64))
    item_kind: Mapped[int] = mapped_column(SmallInteger)
    quantity: Mapped[int] = mapped_column(Integer)
    points: Mapped[int] = mapped_column(BigInteger)
    cash_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    state: Mapped[int] = mapped_column(SmallInteger)
    recipient: Mapped[str] = mapped_column(String(32), default="")
    phone: Mapped[str] = mapped_column(String(16), default="")
    province: Mapped[str] = mapped_column(String(32), default="")
    city: Mapped[str] = mapped_column(String(32), default="")
    district: Mapped[str] = mapped_column(String(32), default="")
    detail: Mapped[str] = mapped_column(String(200), default="")
    carrier: Mapped[str] = mapped_column(String(32), default="")
    tracking_number: Mapped[str] = mapped_column(String(64), default="")
    coupon_template: Mapped[str] = mapped_column(String(64), default="")
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    update_time: Mapped[datetime] = mapped_column(UTCDateTime())
    failure_reason: Mapped[str] = mapped_column(String(64), default="", server_default="")
    # Points + cash: the cash part through WeChat Pay (see points.cash).
    out_trade_no: Mapped[str | None] = mapped_column(String(32), unique=True, nullable=True)
    prepay_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    transaction_id: Mapped[str | None] = mapped_column(String(32), unique=True, nullable=True)
    pay_deadline_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    pay_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    refund_state: Mapped[int] = mapped_column(SmallInteger, default=0, server_default="0")  # 0 none, 1 due, 2 done
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    __table_args__ = (Index("ix_redemptions_member_id_id", "member_id", "id"),
                      Index("ix_redemptions_state_pay_deadline_time", "state", "pay_deadline_time"),
                      Index("ix_redemptions_refund_state", "refund_state"))


class CashNotification(Base):
    """Every WeChat Pay notification applied to a points + cash redemption, once."""

    __tablename__ = "cash_notifications"
    notification_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    redemption_id: Mapped[int] = mapped_column(BigInteger)
    outcome: Mapped[str] = mapped_column(String(16))  # paid | late_refund | refunded
    receive_time: Mapped[datetime] = mapped_column(UTCDateTime())


class PurchasePoints(Base):
    """An order's purchase points: pending, then confirmed or reversed."""

    __tablename__ = "purchase_points"
    order_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    member_id: Mapped[int] = mapped_column(BigInteger, index=True)
    paid_amount_fen: Mapped[int] = mapped_column(BigInteger)
    multiplier_percent: Mapped[int] = mapped_column(Integer)
    points: Mapped[int] = mapped_column(BigInteger)
    reversed_points: Mapped[int] = mapped_column(BigInteger, default=0)
    state: Mapped[int] = mapped_column(SmallInteger)
    lot_id: Mapped[int | None] = mapped_column(ForeignKey("points_lots.id"), nullable=True)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    update_time: Mapped[datetime] = mapped_column(UTCDateTime())


class ReachRequest(Base):
    """A message to send a member through the members service (SendReach), queued in
    the transaction that decided it; ``request_key`` is the SendReach request_id."""

    __tablename__ = "reach_requests"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    request_key: Mapped[str] = mapped_column(String(64), unique=True)
    member_id: Mapped[int] = mapped_column(BigInteger)
    template_id: Mapped[str] = mapped_column(String(64))
    purpose: Mapped[str] = mapped_column(String(64))
    page: Mapped[str] = mapped_column(String(256), default="")
    data: Mapped[str] = mapped_column(Text, default="{}")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_time: Mapped[datetime] = mapped_column(UTCDateTime())
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    sent_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_error: Mapped[str] = mapped_column(String(255), default="")
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    __table_args__ = (Index("ix_reach_requests_due", "sent_time", "next_attempt_time"),)
