"""outbox per event (events on NATS JetStream)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 23:00:00
"""
from mallkit import migration_ops

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    migration_ops.outbox_per_event_upgrade()


def downgrade() -> None:
    migration_ops.outbox_per_event_downgrade()
