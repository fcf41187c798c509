"""order tier snapshot: the member's tier and points multiplier when the order was priced

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 22:50:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.add_column(sa.Column('tier', sa.String(length=32), server_default='', nullable=False))
        batch_op.add_column(sa.Column('points_multiplier_percent', sa.Integer(), server_default='0', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_column('points_multiplier_percent')
        batch_op.drop_column('tier')
