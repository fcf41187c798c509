"""coupon refusals (a granted coupon that could not be issued, compensated by event)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 23:30:00
"""
import sqlalchemy as sa

import mallkit.db
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'coupon_refusals',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('granted_event_id', sa.String(length=36), nullable=False),
        sa.Column('granted_by', sa.String(length=16), nullable=False),
        sa.Column('source_ref', sa.String(length=128), nullable=False),
        sa.Column('member', sa.String(length=64), nullable=False),
        sa.Column('coupon_template', sa.String(length=64), nullable=False),
        sa.Column('reason', sa.String(length=64), nullable=False),
        sa.Column('compensation_event_id', sa.String(length=36), nullable=False),
        sa.Column('create_time', mallkit.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_coupon_refusals')),
        sa.UniqueConstraint('granted_event_id', name=op.f('uq_coupon_refusals_granted_event_id')),
    )


def downgrade() -> None:
    op.drop_table('coupon_refusals')
