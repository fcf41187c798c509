"""Tables of the members service (its own database)."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Table,
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


class Store(Base):
    __tablename__ = "stores"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    display_name: Mapped[str] = mapped_column(String(64))
    province: Mapped[str] = mapped_column(String(32), default="")
    city: Mapped[str] = mapped_column(String(32), default="")
    address: Mapped[str] = mapped_column(String(256), default="")
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())


class Staff(Base):
    __tablename__ = "staff"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(32), unique=True)
    display_name: Mapped[str] = mapped_column(String(32))
    role: Mapped[int] = mapped_column(SmallInteger)
    store_id: Mapped[int | None] = mapped_column(ForeignKey("stores.id"), nullable=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())


class Tier(Base):
    __tablename__ = "tiers"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    display_name: Mapped[str] = mapped_column(String(32))
    growth_threshold: Mapped[int] = mapped_column(BigInteger, unique=True)
    points_multiplier_percent: Mapped[int] = mapped_column(Integer, default=100)
    discount_percent: Mapped[int] = mapped_column(Integer, default=100)
    flags: Mapped[str] = mapped_column(String(255), default="")  # comma separated
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())


class Member(Base):
    __tablename__ = "members"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    openid: Mapped[str] = mapped_column(String(64), unique=True)
    unionid: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    nickname: Mapped[str] = mapped_column(String(32), default="")
    avatar_url: Mapped[str] = mapped_column(String(512), default="")
    gender: Mapped[int] = mapped_column(SmallInteger, default=0)
    birthday: Mapped[date | None] = mapped_column(Date, nullable=True)
    province: Mapped[str] = mapped_column(String(32), default="")
    city: Mapped[str] = mapped_column(String(32), default="")
    occupation: Mapped[str] = mapped_column(String(32), default="")
    phone: Mapped[str | None] = mapped_column(String(16), nullable=True)
    phone_consent: Mapped[bool] = mapped_column(Boolean, default=False)
    invite_code: Mapped[str] = mapped_column(String(16), unique=True)
    inviter_id: Mapped[int | None] = mapped_column(ForeignKey("members.id"), nullable=True, index=True)
    tier_id: Mapped[int | None] = mapped_column(ForeignKey("tiers.id"), nullable=True, index=True)
    growth_value: Mapped[int] = mapped_column(BigInteger, default=0)
    first_touch_channel_id: Mapped[int | None] = mapped_column(
        ForeignKey("channel_codes.id"), nullable=True, index=True
    )
    first_touch_channel_type: Mapped[int] = mapped_column(SmallInteger, default=0)
    guide_id: Mapped[int | None] = mapped_column(ForeignKey("staff.id"), nullable=True, index=True)
    store_id: Mapped[int | None] = mapped_column(ForeignKey("stores.id"), nullable=True)
    #: The touchpoint credited with the registration (``funnels.py``): set once, by a conditional update.
    acquisition_touchpoint_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True, index=True)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)  # funnels: registrations of a range
    update_time: Mapped[datetime] = mapped_column(UTCDateTime())
    #: Segments' profile conditions (region, gender, age) read this index, not the whole table.
    __table_args__ = (Index("ix_members_province_gender_birthday", "province", "gender", "birthday"),)


class AttributeDefinition(Base):
    __tablename__ = "attribute_definitions"
    key: Mapped[str] = mapped_column(String(32), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(32))
    type: Mapped[int] = mapped_column(SmallInteger)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())


class MemberAttribute(Base):
    __tablename__ = "member_attributes"
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"), primary_key=True)
    key: Mapped[str] = mapped_column(ForeignKey("attribute_definitions.key"), primary_key=True)
    value: Mapped[str] = mapped_column(String(128))


class ChannelCode(Base):
    __tablename__ = "channel_codes"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    display_name: Mapped[str] = mapped_column(String(64))
    channel_type: Mapped[int] = mapped_column(SmallInteger)
    store_id: Mapped[int | None] = mapped_column(ForeignKey("stores.id"), nullable=True)
    guide_id: Mapped[int | None] = mapped_column(ForeignKey("staff.id"), nullable=True)
    scene: Mapped[str] = mapped_column(String(32), unique=True)
    arrival_count: Mapped[int] = mapped_column(BigInteger, default=0)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())


class ChannelCodeTag(Base):
    __tablename__ = "channel_code_tags"
    channel_code_id: Mapped[int] = mapped_column(ForeignKey("channel_codes.id"), primary_key=True)
    tag_id: Mapped[int] = mapped_column(ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True)


class Touchpoint(Base):
    """One arrival of a member: through a channel code (``channel_code_id``, ``scene``) or through a
    content share (``channel_type`` CONTENT_SHARE, ``post``, ``share_id`` and ``sharer_id``, no code).
    ``dedupe_key`` (share touchpoints: ``share:{share}``) makes a redelivered arrival count once."""

    __tablename__ = "touchpoints"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"))
    channel_code_id: Mapped[int | None] = mapped_column(ForeignKey("channel_codes.id"), nullable=True, index=True)
    channel_type: Mapped[int] = mapped_column(SmallInteger)
    scene: Mapped[str] = mapped_column(String(32))
    first_touch: Mapped[bool] = mapped_column(Boolean, default=False)
    post: Mapped[str | None] = mapped_column(String(64), nullable=True)  # "groups/{group}/posts/{post}"
    share_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    sharer_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    dedupe_key: Mapped[str | None] = mapped_column(String(96), nullable=True)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    __table_args__ = (Index("ix_touchpoints_member_id_id", "member_id", "id"),
                      Index("ix_touchpoints_create_time", "create_time"),
                      Index("ix_touchpoints_post_sharer_id", "post", "sharer_id"),
                      UniqueConstraint("member_id", "dedupe_key"))


class ChannelArrival(Base):
    """An arrival through a channel code of a device, signed in or not (the first step of a funnel):
    at most one per code, visitor and brand day (``day``), so a rescan the same day counts once."""

    __tablename__ = "channel_arrivals"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    channel_code_id: Mapped[int] = mapped_column(ForeignKey("channel_codes.id"))
    channel_type: Mapped[int] = mapped_column(SmallInteger)
    visitor_id: Mapped[str] = mapped_column(String(40))
    member_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    day: Mapped[date] = mapped_column(Date)
    arrive_time: Mapped[datetime] = mapped_column(UTCDateTime())
    __table_args__ = (UniqueConstraint("channel_code_id", "visitor_id", "day"),
                      Index("ix_channel_arrivals_arrive_time", "arrive_time"),
                      Index("ix_channel_arrivals_visitor_id_arrive_time", "visitor_id", "arrive_time"))


class TierChange(Base):
    __tablename__ = "tier_changes"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"))
    from_tier_id: Mapped[int | None] = mapped_column(ForeignKey("tiers.id"), nullable=True)
    to_tier_id: Mapped[int | None] = mapped_column(ForeignKey("tiers.id"), nullable=True)
    growth_value: Mapped[int] = mapped_column(BigInteger)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    __table_args__ = (Index("ix_tier_changes_member_id_id", "member_id", "id"),)


class GrowthEntry(Base):
    """Append-only record of growth added to a member."""

    __tablename__ = "growth_entries"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    source: Mapped[str] = mapped_column(String(32))
    source_ref: Mapped[str] = mapped_column(String(128), default="")
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())


class TagGroup(Base):
    __tablename__ = "tag_groups"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    display_name: Mapped[str] = mapped_column(String(32), unique=True)
    selection: Mapped[int] = mapped_column(SmallInteger)
    description: Mapped[str] = mapped_column(String(256), default="")
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())


class Tag(Base):
    __tablename__ = "tags"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("tag_groups.id"))
    display_name: Mapped[str] = mapped_column(String(32))
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    __table_args__ = (UniqueConstraint("group_id", "display_name"),)


class MemberTag(Base):
    """A tag on a member. ``single_group_id`` is the group id when the group is
    single-select (NULL otherwise): its unique key with the member enforces
    "at most one tag of a single-select group" even under concurrency."""

    __tablename__ = "member_tags"
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"), primary_key=True)
    tag_id: Mapped[int] = mapped_column(ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True, index=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("tag_groups.id"))
    single_group_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    source: Mapped[int] = mapped_column(SmallInteger)
    source_ref: Mapped[str] = mapped_column(String(128), default="")
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    __table_args__ = (UniqueConstraint("member_id", "single_group_id"),)


class Subscription(Base):
    """Remaining subscribe-message sends a member allowed for a template."""

    __tablename__ = "subscriptions"
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"), primary_key=True)
    template_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    remaining: Mapped[int] = mapped_column(Integer, default=0)
    update_time: Mapped[datetime] = mapped_column(UTCDateTime())


class ReachCounter(Base):
    """Messages sent to a member on one brand-calendar day (frequency cap)."""

    __tablename__ = "reach_counters"
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    sent: Mapped[int] = mapped_column(Integer, default=0)


class Touch(Base):
    """One reach attempt, sent or skipped with the reason."""

    __tablename__ = "touches"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"))
    template_id: Mapped[str] = mapped_column(String(64))
    purpose: Mapped[str] = mapped_column(String(64))
    state: Mapped[int] = mapped_column(SmallInteger)
    skip_reason: Mapped[int] = mapped_column(SmallInteger, default=0)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    __table_args__ = (Index("ix_touches_member_id_id", "member_id", "id"),)


class MemberPurchase(Base):
    """One paid order of a member, from the orders service's ``order.paid`` (purchase fact for RFM)."""

    __tablename__ = "member_purchases"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"))
    order: Mapped[str] = mapped_column(String(64), unique=True)  # "orders/{order}"
    paid_fen: Mapped[int] = mapped_column(BigInteger)
    refunded_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    categories: Mapped[str] = mapped_column(String(512), default="")  # "categories/1,categories/7"
    pay_time: Mapped[datetime] = mapped_column(UTCDateTime())
    refund_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: Covering for the RFM recompute (GROUP BY member over the window, amounts from the index).
    __table_args__ = (Index("ix_member_purchases_member_id_pay_time_amounts", "member_id", "pay_time", "paid_fen",
                            "refunded_fen"),
                      Index("ix_member_purchases_pay_time", "pay_time"))  # funnels: orders of a date range


class MemberPurchaseStats(Base):
    """Per-member purchase aggregates (recency, frequency, monetary; single vs repeat buyer)."""

    __tablename__ = "member_purchase_stats"
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"), primary_key=True)
    order_count: Mapped[int] = mapped_column(Integer, default=0)
    total_paid_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    refund_count: Mapped[int] = mapped_column(Integer, default=0)
    total_refunded_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    first_order_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_order_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    update_time: Mapped[datetime] = mapped_column(UTCDateTime())


class MemberPurchaseCategory(Base):
    """What a member bought per category (segments by categories bought)."""

    __tablename__ = "member_purchase_categories"
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"), primary_key=True)
    category: Mapped[str] = mapped_column(String(64), primary_key=True)  # "categories/{category}"
    order_count: Mapped[int] = mapped_column(Integer, default=0)
    amount_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    last_order_time: Mapped[datetime] = mapped_column(UTCDateTime())


class BehaviourEvent(Base):
    """One thing a member or an anonymous visitor did (append-only; ``behaviour.py``).

    ``dedupe_key`` makes every event count once: ``{visitor_id}/{client_event_id}`` for
    client events, ``{source}:{event id}`` for server events. ``occur_ms`` (epoch
    milliseconds) is the time: an integer sorts and pages the same on every database.
    """

    __tablename__ = "behaviour_events"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    dedupe_key: Mapped[str] = mapped_column(String(96), unique=True)
    member_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    visitor_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    kind: Mapped[int] = mapped_column(SmallInteger)
    source: Mapped[str] = mapped_column(String(16))  # "client", "orders", "community", "points", "members"
    target: Mapped[str] = mapped_column(String(128), default="")
    detail: Mapped[str] = mapped_column(String(256), default="")
    touchpoint: Mapped[str] = mapped_column(String(64), default="")
    value_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    occur_ms: Mapped[int] = mapped_column(BigInteger)
    receive_time: Mapped[datetime] = mapped_column(UTCDateTime())
    __table_args__ = (
        Index("ix_behaviour_events_member_id_occur_ms", "member_id", "occur_ms", "id"),
        Index("ix_behaviour_events_member_id_kind_occur_ms", "member_id", "kind", "occur_ms"),
        Index("ix_behaviour_events_visitor_id_member_id", "visitor_id", "member_id"),
    )


class Visitor(Base):
    """An anonymous visitor id of the mini-program, and the member it was merged into (at most one).

    Every ingest and merge of a visitor locks its row first, so a merge and a concurrent
    anonymous batch never miss each other, and two members never both take one visitor.
    """

    __tablename__ = "visitors"
    visitor_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    member_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True, index=True)
    merged_count: Mapped[int] = mapped_column(Integer, default=0)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    link_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


#: The inbox of the behaviour consumer (members-behaviour): it reads event types the
#: apply consumer also reads, and an inbox is keyed on the event id alone.
BehaviourInbox = Table(
    "behaviour_inbox", Base.metadata,
    Column("event_id", String(36), primary_key=True),
    Column("event_type", String(64), nullable=False),
    Column("source", String(32), nullable=False),
    Column("receive_time", UTCDateTime(), nullable=False),
)


class Segment(Base):
    """A saved audience (分群): a rule tree (JSON, ``segments.py``) over members, materialized into
    numbered snapshots. ``key`` is the resource id: ``segments/{key}``."""

    __tablename__ = "segments"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(63), unique=True)
    display_name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(String(256), default="")
    rule: Mapped[str] = mapped_column(Text)
    builtin: Mapped[bool] = mapped_column(Boolean, default=False)
    last_version: Mapped[int] = mapped_column(Integer, default=0)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    update_time: Mapped[datetime] = mapped_column(UTCDateTime())
    #: Set by DeleteSegment: the segment is gone for operators; its snapshots stay readable.
    delete_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class SegmentSnapshot(Base):
    """One materialization of a segment: version N holds the member ids matching the rule then."""

    __tablename__ = "segment_snapshots"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    segment_id: Mapped[int] = mapped_column(ForeignKey("segments.id"))
    version: Mapped[int] = mapped_column(Integer)
    rule: Mapped[str] = mapped_column(Text)  # the rule as it was materialized
    member_count: Mapped[int] = mapped_column(Integer, default=0)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    __table_args__ = (UniqueConstraint("segment_id", "version"),)


class SegmentSnapshotMember(Base):
    __tablename__ = "segment_snapshot_members"
    snapshot_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    member_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)


class MemberRfm(Base):
    """A member's RFM value model (``rfm.py``): recomputed set-wise by a job, with the time computed."""

    __tablename__ = "member_rfm"
    member_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    recency_days: Mapped[int | None] = mapped_column(Integer, nullable=True)  # None: no paid order in the window
    frequency: Mapped[int] = mapped_column(Integer, default=0)
    monetary_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    r_score: Mapped[int] = mapped_column(SmallInteger)
    f_score: Mapped[int] = mapped_column(SmallInteger)
    m_score: Mapped[int] = mapped_column(SmallInteger)
    segment: Mapped[int] = mapped_column(SmallInteger, index=True)
    compute_time: Mapped[datetime] = mapped_column(UTCDateTime())


class JobLease(Base):
    """One row per set-wise job (``rfm``): the replica holding the lease runs it."""

    __tablename__ = "job_leases"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(32), unique=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_run_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class TagRule(Base):
    """An auto-tag rule: members matching ``rule`` (the segment language) hold ``tag_id`` (source RULE)."""

    __tablename__ = "tag_rules"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    display_name: Mapped[str] = mapped_column(String(64))
    tag_id: Mapped[int] = mapped_column(ForeignKey("tags.id", ondelete="CASCADE"))
    rule: Mapped[str] = mapped_column(Text)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_run_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())


class TagRuleChange(Base):
    """History of an auto-tag rule: each member it tagged or untagged, per run."""

    __tablename__ = "tag_rule_changes"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    run: Mapped[str] = mapped_column(String(36))
    rule_id: Mapped[int] = mapped_column(BigInteger)
    member_id: Mapped[int] = mapped_column(BigInteger)
    action: Mapped[int] = mapped_column(SmallInteger)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    __table_args__ = (Index("ix_tag_rule_changes_run_action", "run", "action"),
                      Index("ix_tag_rule_changes_rule_id_id", "rule_id", "id"))


class GuideAssignment(Base):
    """History of a member's exclusive guide (append-only; ``guides.py``)."""

    __tablename__ = "guide_assignments"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"))
    guide_id: Mapped[int] = mapped_column(ForeignKey("staff.id"))
    previous_guide_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    store_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    reason: Mapped[str] = mapped_column(String(256))
    assigned_by: Mapped[str] = mapped_column(String(40))  # "staff/{id}"
    moved_item_count: Mapped[int] = mapped_column(Integer, default=0)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    __table_args__ = (Index("ix_guide_assignments_member_id_id", "member_id", "id"),)


class GuideTask(Base):
    """A guide task (导购任务) over a segment snapshot; recurring tasks get a new round per period."""

    __tablename__ = "guide_tasks"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    display_name: Mapped[str] = mapped_column(String(64))
    snapshot_id: Mapped[int] = mapped_column(ForeignKey("segment_snapshots.id"))
    segment_key: Mapped[str] = mapped_column(String(63))
    snapshot_version: Mapped[int] = mapped_column(Integer)
    script: Mapped[str] = mapped_column(Text)
    quick_reply: Mapped[str] = mapped_column(String(96), default="")
    start_time: Mapped[datetime] = mapped_column(UTCDateTime())
    due_time: Mapped[datetime] = mapped_column(UTCDateTime())
    recurrence: Mapped[int] = mapped_column(SmallInteger, default=0)
    end_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    reminder_template_id: Mapped[str] = mapped_column(String(64), default="")
    reminder_lead_seconds: Mapped[int] = mapped_column(Integer, default=86400)
    round_count: Mapped[int] = mapped_column(Integer, default=0)
    next_round_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True, index=True)
    item_count: Mapped[int] = mapped_column(Integer, default=0)
    creator: Mapped[str] = mapped_column(String(40))
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())


class GuideTaskItem(Base):
    """One member's item of a task round: to their guide, or to the store's pool (``guide_id`` NULL).
    Unique (task, round, member): every round holds each member once, however often it is created."""

    __tablename__ = "guide_task_items"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("guide_tasks.id"))
    round: Mapped[int] = mapped_column(Integer)
    member_id: Mapped[int] = mapped_column(BigInteger)
    guide_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    store_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    state: Mapped[int] = mapped_column(SmallInteger)
    note: Mapped[str] = mapped_column(String(500), default="")
    due_time: Mapped[datetime] = mapped_column(UTCDateTime())
    remind_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    remind_state: Mapped[int] = mapped_column(SmallInteger, default=0)  # 0 to send, 1 sent or skipped
    reminder_touch_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    completed_by: Mapped[str] = mapped_column(String(40), default="")
    complete_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    __table_args__ = (UniqueConstraint("task_id", "round", "member_id"),
                      Index("ix_guide_task_items_guide_id_state_id", "guide_id", "state", "id"),
                      Index("ix_guide_task_items_store_id_state_id", "store_id", "state", "id"),
                      Index("ix_guide_task_items_member_id_state", "member_id", "state"),
                      Index("ix_guide_task_items_remind_state_remind_time", "remind_state", "remind_time"))
