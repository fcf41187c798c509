"""segment broadcasts in rounds (scheduled, daily, subscribe messages), daily posts, VIP groups by segment

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 05:20:00
"""
from alembic import op
import sqlalchemy as sa
import mallkit.db


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('broadcasts', schema=None) as b:
        b.add_column(sa.Column('state', sa.SmallInteger(), nullable=False, server_default='1'))
        b.add_column(sa.Column('segment', sa.String(length=64), nullable=False, server_default=''))
        b.add_column(sa.Column('segment_version', sa.Integer(), nullable=False, server_default='0'))
        b.add_column(sa.Column('subscribe_message', sa.Boolean(), nullable=False, server_default=sa.false()))
        b.add_column(sa.Column('template_id', sa.String(length=64), nullable=False, server_default=''))
        b.add_column(sa.Column('send_time', mallkit.db.UTCDateTime(), nullable=True))
        b.add_column(sa.Column('daily', sa.Boolean(), nullable=False, server_default=sa.false()))
        b.add_column(sa.Column('end_time', mallkit.db.UTCDateTime(), nullable=True))
        b.add_column(sa.Column('next_round_time', mallkit.db.UTCDateTime(), nullable=True))
        b.add_column(sa.Column('round_count', sa.Integer(), nullable=False, server_default='0'))
        b.add_column(sa.Column('reach_sent_count', sa.BigInteger(), nullable=False, server_default='0'))
        b.add_column(sa.Column('reach_skipped_count', sa.BigInteger(), nullable=False, server_default='0'))
        b.create_index('ix_broadcasts_state_next_round_time', ['state', 'next_round_time'], unique=False)
    op.create_table('broadcast_rounds',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('broadcast_id', sa.BigInteger(), nullable=False),
    sa.Column('round_no', sa.Integer(), nullable=False),
    sa.Column('due_time', mallkit.db.UTCDateTime(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('snapshot_version', sa.Integer(), nullable=False),
    sa.Column('cursor', sa.String(length=512), nullable=False),
    sa.Column('paged', sa.Boolean(), nullable=False),
    sa.Column('done', sa.Boolean(), nullable=False),
    sa.Column('lease_owner', sa.String(length=36), nullable=False),
    sa.Column('lease_until', mallkit.db.UTCDateTime(), nullable=True),
    sa.Column('target_count', sa.Integer(), nullable=False),
    sa.Column('delivered_count', sa.Integer(), nullable=False),
    sa.Column('capped_count', sa.Integer(), nullable=False),
    sa.Column('reach_sent_count', sa.Integer(), nullable=False),
    sa.Column('reach_skipped_count', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_broadcast_rounds')),
    sa.UniqueConstraint('broadcast_id', 'round_no', name=op.f('uq_broadcast_rounds_broadcast_id_round_no'))
    )
    with op.batch_alter_table('broadcast_rounds', schema=None) as b:
        b.create_index('ix_broadcast_rounds_done', ['done'], unique=False)
    op.create_table('broadcast_deliveries',
    sa.Column('round_id', sa.BigInteger(), nullable=False),
    sa.Column('member_id', sa.BigInteger(), nullable=False),
    sa.Column('reach_state', sa.SmallInteger(), nullable=False),
    sa.Column('reach_outcome', sa.String(length=32), nullable=False),
    sa.PrimaryKeyConstraint('round_id', 'member_id', name=op.f('pk_broadcast_deliveries'))
    )
    # A message per (broadcast, round, member): the new key first (it also serves the foreign key on
    # broadcast_id), then the old one goes.
    with op.batch_alter_table('messages', schema=None) as b:
        b.add_column(sa.Column('round_no', sa.Integer(), nullable=False, server_default='0'))
    with op.batch_alter_table('messages', schema=None) as b:
        b.create_unique_constraint(op.f('uq_messages_broadcast_id_round_no_member_id'),
                                   ['broadcast_id', 'round_no', 'member_id'])
    with op.batch_alter_table('messages', schema=None) as b:
        b.drop_constraint(op.f('uq_messages_broadcast_id_member_id'), type_='unique')
    with op.batch_alter_table('groups', schema=None) as b:
        b.add_column(sa.Column('vip_segment', sa.String(length=64), nullable=False, server_default=''))
    with op.batch_alter_table('posts', schema=None) as b:
        b.add_column(sa.Column('daily', sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table('posts', schema=None) as b:
        b.drop_column('daily')
    with op.batch_alter_table('groups', schema=None) as b:
        b.drop_column('vip_segment')
    op.execute("DELETE FROM messages WHERE round_no > 1")  # the old key holds one message per broadcast
    with op.batch_alter_table('messages', schema=None) as b:
        b.create_unique_constraint(op.f('uq_messages_broadcast_id_member_id'), ['broadcast_id', 'member_id'])
    with op.batch_alter_table('messages', schema=None) as b:
        b.drop_constraint(op.f('uq_messages_broadcast_id_round_no_member_id'), type_='unique')
        b.drop_column('round_no')
    op.drop_table('broadcast_deliveries')
    with op.batch_alter_table('broadcast_rounds', schema=None) as b:
        b.drop_index('ix_broadcast_rounds_done')
    op.drop_table('broadcast_rounds')
    with op.batch_alter_table('broadcasts', schema=None) as b:
        b.drop_index('ix_broadcasts_state_next_round_time')
        for c in ('reach_skipped_count', 'reach_sent_count', 'round_count', 'next_round_time', 'end_time', 'daily',
                  'send_time', 'template_id', 'subscribe_message', 'segment_version', 'segment', 'state'):
            b.drop_column(c)
