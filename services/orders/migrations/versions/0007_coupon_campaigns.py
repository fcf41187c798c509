"""coupon campaigns: a coupon template issued to a segment snapshot

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 05:00:00
"""
from alembic import op
import sqlalchemy as sa
import mallkit.db


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('coupon_campaigns',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('template_id', sa.BigInteger(), nullable=False),
    sa.Column('segment', sa.String(length=64), nullable=False),
    sa.Column('segment_version', sa.Integer(), nullable=False),
    sa.Column('state', sa.SmallInteger(), nullable=False),
    sa.Column('member_count', sa.BigInteger(), nullable=False),
    sa.Column('issued_count', sa.BigInteger(), nullable=False),
    sa.Column('skipped_count', sa.BigInteger(), nullable=False),
    sa.Column('pages_done', sa.Integer(), nullable=False),
    sa.Column('cursor', sa.String(length=512), nullable=False),
    sa.Column('lease_owner', sa.String(length=36), nullable=False),
    sa.Column('lease_until', mallkit.db.UTCDateTime(), nullable=True),
    sa.Column('create_time', mallkit.db.UTCDateTime(), nullable=False),
    sa.Column('complete_time', mallkit.db.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['template_id'], ['coupon_templates.id'],
                            name=op.f('fk_coupon_campaigns_template_id_coupon_templates')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_coupon_campaigns'))
    )
    with op.batch_alter_table('coupon_campaigns', schema=None) as batch_op:
        batch_op.create_index('ix_coupon_campaigns_state', ['state'], unique=False)
    op.create_table('coupon_campaign_recipients',
    sa.Column('campaign_id', sa.BigInteger(), nullable=False),
    sa.Column('member_id', sa.BigInteger(), nullable=False),
    sa.Column('outcome', sa.SmallInteger(), nullable=False),
    sa.PrimaryKeyConstraint('campaign_id', 'member_id', name=op.f('pk_coupon_campaign_recipients'))
    )


def downgrade() -> None:
    op.drop_table('coupon_campaign_recipients')
    with op.batch_alter_table('coupon_campaigns', schema=None) as batch_op:
        batch_op.drop_index('ix_coupon_campaigns_state')
    op.drop_table('coupon_campaigns')
