"""funnels: channel arrivals, share touchpoints, the acquisition touchpoint of a member

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 04:46:52.474018
"""
from alembic import op
import sqlalchemy as sa
import mallkit.db


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('channel_arrivals',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('channel_code_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('channel_type', sa.SmallInteger(), nullable=False),
    sa.Column('visitor_id', sa.String(length=40), nullable=False),
    sa.Column('member_id', sa.BigInteger(), nullable=True),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('arrive_time', mallkit.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['channel_code_id'], ['channel_codes.id'], name=op.f('fk_channel_arrivals_channel_code_id_channel_codes')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_channel_arrivals')),
    sa.UniqueConstraint('channel_code_id', 'visitor_id', 'day', name=op.f('uq_channel_arrivals_channel_code_id_visitor_id_day'))
    )
    with op.batch_alter_table('channel_arrivals', schema=None) as batch_op:
        batch_op.create_index('ix_channel_arrivals_arrive_time', ['arrive_time'], unique=False)
        batch_op.create_index('ix_channel_arrivals_visitor_id_arrive_time', ['visitor_id', 'arrive_time'], unique=False)

    with op.batch_alter_table('members', schema=None) as batch_op:
        batch_op.add_column(sa.Column('acquisition_touchpoint_id', sa.BigInteger(), nullable=True))
        batch_op.create_index(batch_op.f('ix_members_acquisition_touchpoint_id'), ['acquisition_touchpoint_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_members_create_time'), ['create_time'], unique=False)

    with op.batch_alter_table('member_purchases', schema=None) as batch_op:
        batch_op.create_index('ix_member_purchases_pay_time', ['pay_time'], unique=False)

    with op.batch_alter_table('touchpoints', schema=None) as batch_op:
        batch_op.add_column(sa.Column('post', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('share_id', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('sharer_id', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('dedupe_key', sa.String(length=96), nullable=True))
        batch_op.alter_column('channel_code_id',
               existing_type=sa.BigInteger().with_variant(sa.Integer(), 'sqlite'),
               nullable=True)
        batch_op.create_index('ix_touchpoints_create_time', ['create_time'], unique=False)
        batch_op.create_index('ix_touchpoints_post_sharer_id', ['post', 'sharer_id'], unique=False)
        batch_op.create_unique_constraint(batch_op.f('uq_touchpoints_member_id_dedupe_key'), ['member_id', 'dedupe_key'])



def downgrade() -> None:
    # Share touchpoints have no channel code: they cannot survive the NOT NULL of the older schema.
    op.execute("UPDATE members SET acquisition_touchpoint_id = NULL")
    op.execute("DELETE FROM touchpoints WHERE channel_code_id IS NULL")
    with op.batch_alter_table('touchpoints', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_touchpoints_member_id_dedupe_key'), type_='unique')
        batch_op.drop_index('ix_touchpoints_post_sharer_id')
        batch_op.drop_index('ix_touchpoints_create_time')
        batch_op.alter_column('channel_code_id',
               existing_type=sa.BigInteger().with_variant(sa.Integer(), 'sqlite'),
               nullable=False)
        batch_op.drop_column('dedupe_key')
        batch_op.drop_column('sharer_id')
        batch_op.drop_column('share_id')
        batch_op.drop_column('post')

    with op.batch_alter_table('member_purchases', schema=None) as batch_op:
        batch_op.drop_index('ix_member_purchases_pay_time')

    with op.batch_alter_table('members', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_members_create_time'))
        batch_op.drop_index(batch_op.f('ix_members_acquisition_touchpoint_id'))
        batch_op.drop_column('acquisition_touchpoint_id')

    with op.batch_alter_table('channel_arrivals', schema=None) as batch_op:
        batch_op.drop_index('ix_channel_arrivals_visitor_id_arrive_time')
        batch_op.drop_index('ix_channel_arrivals_arrive_time')

    op.drop_table('channel_arrivals')
