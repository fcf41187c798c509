"""Tables of the community service (its own database)."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
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


class Group(Base):
    __tablename__ = "groups"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    display_name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(String(512), default="")
    type: Mapped[int] = mapped_column(SmallInteger)
    category: Mapped[str] = mapped_column(String(64), default="")
    end_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    vip_tiers: Mapped[str] = mapped_column(String(255), default="")  # comma-separated tier ids
    vip_min_threshold: Mapped[int] = mapped_column(BigInteger, default=0)
    vip_segment: Mapped[str] = mapped_column(String(64), default="")  # segment key; "" = no segment rule
    stage: Mapped[str] = mapped_column(String(32), default="")
    region: Mapped[str] = mapped_column(String(32), default="")
    owner_staff_id: Mapped[int] = mapped_column(BigInteger)
    capacity: Mapped[int] = mapped_column(Integer)
    join_policy: Mapped[int] = mapped_column(SmallInteger)
    invite_code: Mapped[str] = mapped_column(String(16), unique=True)
    member_count: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[int] = mapped_column(SmallInteger)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    __table_args__ = (Index("ix_groups_state_end_time", "state", "end_time"),)


class Membership(Base):
    """A member in a group; one row per (group, member), re-used on rejoin."""

    __tablename__ = "memberships"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id"))
    member_id: Mapped[int] = mapped_column(BigInteger)
    role: Mapped[int] = mapped_column(SmallInteger)
    state: Mapped[int] = mapped_column(SmallInteger)
    join_time: Mapped[datetime] = mapped_column(UTCDateTime())
    leave_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_active_time: Mapped[datetime] = mapped_column(UTCDateTime())
    __table_args__ = (
        UniqueConstraint("group_id", "member_id"),
        Index("ix_memberships_member_id_state", "member_id", "state"),
    )


class Activity(Base):
    """Append-only record of what a member did (join, post, reply, reaction, quiz answer)."""

    __tablename__ = "activities"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    member_id: Mapped[int] = mapped_column(BigInteger)
    group_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    kind: Mapped[int] = mapped_column(SmallInteger)
    ref: Mapped[str] = mapped_column(String(128), default="")
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    __table_args__ = (
        Index("ix_activities_member_id_create_time", "member_id", "create_time"),
        Index("ix_activities_create_time_member_id", "create_time", "member_id"),
    )


class Post(Base):
    __tablename__ = "posts"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id"))
    kind: Mapped[int] = mapped_column(SmallInteger)
    title: Mapped[str] = mapped_column(String(128))
    body: Mapped[str] = mapped_column(Text, default="")
    product: Mapped[str] = mapped_column(String(64), default="")
    coupon_template: Mapped[str] = mapped_column(String(64), default="")
    coupon_quantity: Mapped[int] = mapped_column(Integer, default=0)
    coupon_claimed: Mapped[int] = mapped_column(Integer, default=0)
    flash_start_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    flash_price_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    quiz_question: Mapped[str] = mapped_column(String(256), default="")
    quiz_options: Mapped[str] = mapped_column(Text, default="")  # JSON list
    quiz_correct: Mapped[int] = mapped_column(SmallInteger, default=0)
    quiz_reward: Mapped[int] = mapped_column(BigInteger, default=0)
    author: Mapped[str] = mapped_column(String(40))
    state: Mapped[int] = mapped_column(SmallInteger)
    publish_time: Mapped[datetime] = mapped_column(UTCDateTime())
    published_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    daily: Mapped[bool] = mapped_column(Boolean, default=False)  # published again every day (a new post each)
    __table_args__ = (
        Index("ix_posts_state_publish_time", "state", "publish_time"),
        Index("ix_posts_group_id_id", "group_id", "id"),
    )


class QuizReward(Base):
    """A correct quiz answer that earned the reward: at most one per (post, member)."""

    __tablename__ = "quiz_rewards"
    post_id: Mapped[int] = mapped_column(ForeignKey("posts.id"), primary_key=True)
    member_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    token: Mapped[str] = mapped_column(String(36))  # which of racing answers won
    event_id: Mapped[str] = mapped_column(String(36), default="")
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())


class QuizAnswer(Base):
    """A member's first answer to a quiz (the one that counts): at most one per (post, member)."""

    __tablename__ = "quiz_answers"
    post_id: Mapped[int] = mapped_column(ForeignKey("posts.id"), primary_key=True)
    member_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    token: Mapped[str] = mapped_column(String(36))  # which of racing answers won
    chosen_option: Mapped[int] = mapped_column(SmallInteger)
    correct: Mapped[bool] = mapped_column(Boolean)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())


class CouponClaim(Base):
    """A claimed coupon of a drop: at most one per (post, member)."""

    __tablename__ = "coupon_claims"
    post_id: Mapped[int] = mapped_column(ForeignKey("posts.id"), primary_key=True)
    member_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    token: Mapped[str] = mapped_column(String(36))  # which of racing claims won
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())


class Reply(Base):
    __tablename__ = "replies"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    post_id: Mapped[int] = mapped_column(ForeignKey("posts.id"))
    member_id: Mapped[int] = mapped_column(BigInteger)
    text: Mapped[str] = mapped_column(String(1000))
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    __table_args__ = (Index("ix_replies_post_id_id", "post_id", "id"),)


class Reaction(Base):
    __tablename__ = "reactions"
    post_id: Mapped[int] = mapped_column(ForeignKey("posts.id"), primary_key=True)
    member_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    kind: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    token: Mapped[str] = mapped_column(String(36))
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())


class Share(Base):
    """A member's share of a post (one per member and post), placed in a chain."""

    __tablename__ = "shares"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    post_id: Mapped[int] = mapped_column(ForeignKey("posts.id"))
    sharer_id: Mapped[int] = mapped_column(BigInteger)
    token: Mapped[str] = mapped_column(String(24), unique=True)
    parent_share_id: Mapped[int | None] = mapped_column(ForeignKey("shares.id"), nullable=True)
    depth: Mapped[int] = mapped_column(Integer)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    __table_args__ = (UniqueConstraint("post_id", "sharer_id"),)


class ShareAncestor(Base):
    """Closure of the share chains: every (share, ancestor-or-self, hops) pair."""

    __tablename__ = "share_ancestors"
    share_id: Mapped[int] = mapped_column(ForeignKey("shares.id"), primary_key=True)
    ancestor_id: Mapped[int] = mapped_column(ForeignKey("shares.id"), primary_key=True, index=True)
    distance: Mapped[int] = mapped_column(Integer)


class View(Base):
    """One view of a post, by a member or an anonymous visitor, maybe through a share."""

    __tablename__ = "views"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    post_id: Mapped[int] = mapped_column(BigInteger)
    member_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    visitor_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    share_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    anonymous: Mapped[bool] = mapped_column(Boolean, default=False)  # viewed before the viewer was known
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    # The client's id of the view: a repeat counts once (NULL for views recorded before revision 0004).
    event_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    __table_args__ = (
        Index("ix_views_post_id_share_id", "post_id", "share_id"),
        Index("uq_views_post_id_event_id", "post_id", "event_id", unique=True),
        Index("ix_views_visitor_id", "visitor_id"),
        Index("ix_views_member_id_create_time", "member_id", "create_time"),
    )


class VisitorLink(Base):
    """An anonymous visitor id joined to the member who signed in with it."""

    __tablename__ = "visitor_links"
    visitor_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    member_id: Mapped[int] = mapped_column(BigInteger, index=True)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())


class Broadcast(Base):
    __tablename__ = "broadcasts"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    title: Mapped[str] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(String(1000))
    post: Mapped[str] = mapped_column(String(64), default="")
    target_groups: Mapped[str] = mapped_column(Text, default="")  # comma-separated group ids
    target_members: Mapped[str] = mapped_column(Text, default="")  # comma-separated member ids
    sender: Mapped[str] = mapped_column(String(40))
    day: Mapped[date] = mapped_column(Date)
    target_count: Mapped[int] = mapped_column(Integer, default=0)
    delivered_count: Mapped[int] = mapped_column(Integer, default=0)
    capped_count: Mapped[int] = mapped_column(Integer, default=0)
    opened_count: Mapped[int] = mapped_column(Integer, default=0)
    clicked_count: Mapped[int] = mapped_column(Integer, default=0)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    # --- segment broadcasts (delivered by the job in rounds: targeting.py) ---
    state: Mapped[int] = mapped_column(SmallInteger, default=1)  # BroadcastState; 1 = SENT
    segment: Mapped[str] = mapped_column(String(64), default="")  # the segment key
    segment_version: Mapped[int] = mapped_column(Integer, default=0)  # 0: the latest at each round
    subscribe_message: Mapped[bool] = mapped_column(Boolean, default=False)
    template_id: Mapped[str] = mapped_column(String(64), default="")
    send_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    daily: Mapped[bool] = mapped_column(Boolean, default=False)
    end_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    next_round_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    round_count: Mapped[int] = mapped_column(Integer, default=0)
    reach_sent_count: Mapped[int] = mapped_column(BigInteger, default=0)
    reach_skipped_count: Mapped[int] = mapped_column(BigInteger, default=0)
    __table_args__ = (Index("ix_broadcasts_state_next_round_time", "state", "next_round_time"),)


class BroadcastRound(Base):
    """One round of a segment broadcast (the only one, or one per day): a snapshot paged under a lease."""

    __tablename__ = "broadcast_rounds"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    broadcast_id: Mapped[int] = mapped_column(BigInteger)
    round_no: Mapped[int] = mapped_column(Integer)
    due_time: Mapped[datetime] = mapped_column(UTCDateTime())
    day: Mapped[date] = mapped_column(Date)  # brand day of due_time (the in-app cap's day)
    snapshot_version: Mapped[int] = mapped_column(Integer, default=0)  # resolved on the first page
    cursor: Mapped[str] = mapped_column(String(512), default="")
    paged: Mapped[bool] = mapped_column(Boolean, default=False)  # every page delivered in-app
    done: Mapped[bool] = mapped_column(Boolean, default=False)  # and every subscribe message settled
    lease_owner: Mapped[str] = mapped_column(String(36), default="")
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    target_count: Mapped[int] = mapped_column(Integer, default=0)
    delivered_count: Mapped[int] = mapped_column(Integer, default=0)
    capped_count: Mapped[int] = mapped_column(Integer, default=0)
    reach_sent_count: Mapped[int] = mapped_column(Integer, default=0)
    reach_skipped_count: Mapped[int] = mapped_column(Integer, default=0)
    __table_args__ = (UniqueConstraint("broadcast_id", "round_no"), Index("ix_broadcast_rounds_done", "done"))


class BroadcastDelivery(Base):
    """A member of a round: the key that makes each (broadcast, round, member) happen once, with the
    state of its subscribe message (0 none asked, 1 pending, 2 sent, 3 skipped by reach)."""

    __tablename__ = "broadcast_deliveries"
    round_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    member_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    reach_state: Mapped[int] = mapped_column(SmallInteger, default=0)
    reach_outcome: Mapped[str] = mapped_column(String(32), default="")


class BroadcastDay(Base):
    """Broadcasts a member received on one brand-calendar day (the daily cap)."""

    __tablename__ = "broadcast_days"
    member_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    sent: Mapped[int] = mapped_column(Integer, default=0)
    last_broadcast_id: Mapped[int] = mapped_column(BigInteger, default=0)


class Message(Base):
    """A broadcast delivered to a member (in-app message) with open and click records."""

    __tablename__ = "messages"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    broadcast_id: Mapped[int] = mapped_column(ForeignKey("broadcasts.id"))
    round_no: Mapped[int] = mapped_column(Integer, default=0)  # 0: a broadcast delivered when created
    member_id: Mapped[int] = mapped_column(BigInteger)
    deliver_time: Mapped[datetime] = mapped_column(UTCDateTime())
    open_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    click_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    __table_args__ = (
        UniqueConstraint("broadcast_id", "round_no", "member_id"),
        Index("ix_messages_member_id_id", "member_id", "id"),
    )


class QuickReplyCategory(Base):
    __tablename__ = "quick_reply_categories"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    display_name: Mapped[str] = mapped_column(String(32), unique=True)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())


class QuickReply(Base):
    __tablename__ = "quick_replies"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    category_id: Mapped[int] = mapped_column(ForeignKey("quick_reply_categories.id"))
    kind: Mapped[int] = mapped_column(SmallInteger)
    title: Mapped[str] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(String(2000), default="")
    image_url: Mapped[str] = mapped_column(String(512), default="")
    page_path: Mapped[str] = mapped_column(String(256), default="")
    keywords: Mapped[str] = mapped_column(String(200), default="")  # " kw1 kw2 " (space-delimited)
    usage_count: Mapped[int] = mapped_column(BigInteger, default=0)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    __table_args__ = (Index("ix_quick_replies_category_id_usage_count", "category_id", "usage_count"),)
