"""tier downgrades: a tier change may leave every tier (to_tier_id nullable)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 23:30:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('tier_changes') as batch:
        batch.alter_column('to_tier_id', existing_type=sa.BigInteger().with_variant(sa.Integer(), 'sqlite'),
                           nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM tier_changes WHERE to_tier_id IS NULL")
    with op.batch_alter_table('tier_changes') as batch:
        batch.alter_column('to_tier_id', existing_type=sa.BigInteger().with_variant(sa.Integer(), 'sqlite'),
                           nullable=False)
