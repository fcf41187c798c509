"""Schema changes of the platform's own tables, shared by every service's migrations.

Each function is the body of one migration and is frozen once released: a later
change of these tables gets a new function (and a new migration in every
service), never an edit of an old one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_BLOB = sa.LargeBinary(length=16 * 1024 * 1024)


def _dt():
    from mallkit.db import UTCDateTime

    return UTCDateTime()


def outbox_per_event_upgrade() -> None:
    """Outbox v2 (NATS JetStream): one row per event instead of one per subscriber.

    Events not yet delivered to every subscriber are kept once, due at once: the
    consumers' inboxes drop what a subscriber had already applied.
    """
    with op.batch_alter_table("outbox_events") as b:
        b.drop_index("ix_outbox_events_due")
    op.rename_table("outbox_events", "outbox_events_v1")
    op.create_table(
        "outbox_events",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("payload", _BLOB, nullable=False),
        sa.Column("create_time", _dt(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_time", _dt(), nullable=False),
        sa.Column("lease_until", _dt(), nullable=True),
        sa.Column("lease_owner", sa.String(36), nullable=True),
        sa.Column("published_time", _dt(), nullable=True),
        sa.Column("last_error", sa.String(255), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_outbox_events"),
        sa.UniqueConstraint("event_id", name="uq_outbox_events_event_id"),
    )
    op.create_index("ix_outbox_events_due", "outbox_events", ["published_time", "next_attempt_time"])
    op.execute(
        "INSERT INTO outbox_events (event_id, event_type, payload, create_time, attempts, next_attempt_time) "
        "SELECT event_id, MIN(event_type), MIN(payload), MIN(create_time), 0, MIN(create_time) "
        "FROM outbox_events_v1 WHERE delivered_time IS NULL GROUP BY event_id"
    )
    op.drop_table("outbox_events_v1")


def outbox_per_event_downgrade() -> None:
    """Back to one row per subscriber: unpublished events are dropped (the push relay
    needs a destination that v2 no longer records)."""
    op.drop_index("ix_outbox_events_due", table_name="outbox_events")
    op.drop_table("outbox_events")
    op.create_table(
        "outbox_events",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("destination", sa.String(32), nullable=False),
        sa.Column("payload", _BLOB, nullable=False),
        sa.Column("create_time", _dt(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_time", _dt(), nullable=False),
        sa.Column("lease_until", _dt(), nullable=True),
        sa.Column("delivered_time", _dt(), nullable=True),
        sa.Column("last_error", sa.String(255), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_outbox_events"),
        sa.UniqueConstraint("event_id", "destination", name="uq_outbox_events_event_id_destination"),
    )
    op.create_index("ix_outbox_events_due", "outbox_events", ["delivered_time", "next_attempt_time"])
