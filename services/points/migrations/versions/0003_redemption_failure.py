"""redemption failure reason (a coupon the orders service refused)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 23:30:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('redemptions') as batch:
        batch.add_column(sa.Column('failure_reason', sa.String(length=64), nullable=False, server_default=''))


def downgrade() -> None:
    with op.batch_alter_table('redemptions') as batch:
        batch.drop_column('failure_reason')
