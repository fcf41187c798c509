"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-22 16:37:02.931571
"""
from alembic import op
import sqlalchemy as sa
import mallkit.db


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('attribute_definitions',
    sa.Column('key', sa.String(length=32), nullable=False),
    sa.Column('display_name', sa.String(length=32), nullable=False),
    sa.Column('type', sa.SmallInteger(), nullable=False),
    sa.Column('create_time', mallkit.db.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_attribute_definitions'))
    )
    op.create_table('idempotency_keys',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('scope', sa.String(length=190), nullable=False),
    sa.Column('request_id', sa.String(length=64), nullable=False),
    sa.Column('request_hash', sa.String(length=64), nullable=False),
    sa.Column('response', sa.LargeBinary(length=16777216), nullable=True),
    sa.Column('create_time', mallkit.db.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_idempotency_keys')),
    sa.UniqueConstraint('scope', 'request_id', name=op.f('uq_idempotency_keys_scope_request_id'))
    )
    op.create_table('inbox_events',
    sa.Column('event_id', sa.String(length=36), nullable=False),
    sa.Column('event_type', sa.String(length=64), nullable=False),
    sa.Column('source', sa.String(length=32), nullable=False),
    sa.Column('receive_time', mallkit.db.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('event_id', name=op.f('pk_inbox_events'))
    )
    op.create_table('outbox_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('event_id', sa.String(length=36), nullable=False),
    sa.Column('event_type', sa.String(length=64), nullable=False),
    sa.Column('destination', sa.String(length=32), nullable=False),
    sa.Column('payload', sa.LargeBinary(length=16777216), nullable=False),
    sa.Column('create_time', mallkit.db.UTCDateTime(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_time', mallkit.db.UTCDateTime(), nullable=False),
    sa.Column('lease_until', mallkit.db.UTCDateTime(), nullable=True),
    sa.Column('delivered_time', mallkit.db.UTCDateTime(), nullable=True),
    sa.Column('last_error', sa.String(length=255), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox_events')),
    sa.UniqueConstraint('event_id', 'destination', name=op.f('uq_outbox_events_event_id_destination'))
    )
    with op.batch_alter_table('outbox_events', schema=None) as batch_op:
        batch_op.create_index('ix_outbox_events_due', ['delivered_time', 'next_attempt_time'], unique=False)

    op.create_table('stores',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('display_name', sa.String(length=64), nullable=False),
    sa.Column('province', sa.String(length=32), nullable=False),
    sa.Column('city', sa.String(length=32), nullable=False),
    sa.Column('address', sa.String(length=256), nullable=False),
    sa.Column('create_time', mallkit.db.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_stores'))
    )
    op.create_table('tag_groups',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('display_name', sa.String(length=32), nullable=False),
    sa.Column('selection', sa.SmallInteger(), nullable=False),
    sa.Column('description', sa.String(length=256), nullable=False),
    sa.Column('create_time', mallkit.db.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tag_groups')),
    sa.UniqueConstraint('display_name', name=op.f('uq_tag_groups_display_name'))
    )
    op.create_table('tiers',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('display_name', sa.String(length=32), nullable=False),
    sa.Column('growth_threshold', sa.BigInteger(), nullable=False),
    sa.Column('points_multiplier_percent', sa.Integer(), nullable=False),
    sa.Column('discount_percent', sa.Integer(), nullable=False),
    sa.Column('flags', sa.String(length=255), nullable=False),
    sa.Column('create_time', mallkit.db.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tiers')),
    sa.UniqueConstraint('growth_threshold', name=op.f('uq_tiers_growth_threshold'))
    )
    op.create_table('staff',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('username', sa.String(length=32), nullable=False),
    sa.Column('display_name', sa.String(length=32), nullable=False),
    sa.Column('role', sa.SmallInteger(), nullable=False),
    sa.Column('store_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('password_hash', sa.String(length=255), nullable=False),
    sa.Column('disabled', sa.Boolean(), nullable=False),
    sa.Column('create_time', mallkit.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['store_id'], ['stores.id'], name=op.f('fk_staff_store_id_stores')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_staff')),
    sa.UniqueConstraint('username', name=op.f('uq_staff_username'))
    )
    op.create_table('tags',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('group_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('display_name', sa.String(length=32), nullable=False),
    sa.Column('create_time', mallkit.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['group_id'], ['tag_groups.id'], name=op.f('fk_tags_group_id_tag_groups')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tags')),
    sa.UniqueConstraint('group_id', 'display_name', name=op.f('uq_tags_group_id_display_name'))
    )
    op.create_table('channel_codes',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('display_name', sa.String(length=64), nullable=False),
    sa.Column('channel_type', sa.SmallInteger(), nullable=False),
    sa.Column('store_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('guide_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('scene', sa.String(length=32), nullable=False),
    sa.Column('arrival_count', sa.BigInteger(), nullable=False),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.Column('create_time', mallkit.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['guide_id'], ['staff.id'], name=op.f('fk_channel_codes_guide_id_staff')),
    sa.ForeignKeyConstraint(['store_id'], ['stores.id'], name=op.f('fk_channel_codes_store_id_stores')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_channel_codes')),
    sa.UniqueConstraint('scene', name=op.f('uq_channel_codes_scene'))
    )
    op.create_table('channel_code_tags',
    sa.Column('channel_code_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('tag_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.ForeignKeyConstraint(['channel_code_id'], ['channel_codes.id'], name=op.f('fk_channel_code_tags_channel_code_id_channel_codes')),
    sa.ForeignKeyConstraint(['tag_id'], ['tags.id'], name=op.f('fk_channel_code_tags_tag_id_tags'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('channel_code_id', 'tag_id', name=op.f('pk_channel_code_tags'))
    )
    op.create_table('members',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('openid', sa.String(length=64), nullable=False),
    sa.Column('unionid', sa.String(length=64), nullable=True),
    sa.Column('nickname', sa.String(length=32), nullable=False),
    sa.Column('avatar_url', sa.String(length=512), nullable=False),
    sa.Column('gender', sa.SmallInteger(), nullable=False),
    sa.Column('birthday', sa.Date(), nullable=True),
    sa.Column('province', sa.String(length=32), nullable=False),
    sa.Column('city', sa.String(length=32), nullable=False),
    sa.Column('occupation', sa.String(length=32), nullable=False),
    sa.Column('phone', sa.String(length=16), nullable=True),
    sa.Column('phone_consent', sa.Boolean(), nullable=False),
    sa.Column('invite_code', sa.String(length=16), nullable=False),
    sa.Column('inviter_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('tier_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('growth_value', sa.BigInteger(), nullable=False),
    sa.Column('first_touch_channel_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('first_touch_channel_type', sa.SmallInteger(), nullable=False),
    sa.Column('guide_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('store_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('create_time', mallkit.db.UTCDateTime(), nullable=False),
    sa.Column('update_time', mallkit.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['first_touch_channel_id'], ['channel_codes.id'], name=op.f('fk_members_first_touch_channel_id_channel_codes')),
    sa.ForeignKeyConstraint(['guide_id'], ['staff.id'], name=op.f('fk_members_guide_id_staff')),
    sa.ForeignKeyConstraint(['inviter_id'], ['members.id'], name=op.f('fk_members_inviter_id_members')),
    sa.ForeignKeyConstraint(['store_id'], ['stores.id'], name=op.f('fk_members_store_id_stores')),
    sa.ForeignKeyConstraint(['tier_id'], ['tiers.id'], name=op.f('fk_members_tier_id_tiers')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_members')),
    sa.UniqueConstraint('invite_code', name=op.f('uq_members_invite_code')),
    sa.UniqueConstraint('openid', name=op.f('uq_members_openid'))
    )
    with op.batch_alter_table('members', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_members_first_touch_channel_id'), ['first_touch_channel_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_members_guide_id'), ['guide_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_members_inviter_id'), ['inviter_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_members_tier_id'), ['tier_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_members_unionid'), ['unionid'], unique=False)

    op.create_table('growth_entries',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('member_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('source', sa.String(length=32), nullable=False),
    sa.Column('source_ref', sa.String(length=128), nullable=False),
    sa.Column('create_time', mallkit.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_growth_entries_member_id_members')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_growth_entries'))
    )
    with op.batch_alter_table('growth_entries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_growth_entries_member_id'), ['member_id'], unique=False)

    op.create_table('member_attributes',
    sa.Column('member_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('key', sa.String(length=32), nullable=False),
    sa.Column('value', sa.String(length=128), nullable=False),
    sa.ForeignKeyConstraint(['key'], ['attribute_definitions.key'], name=op.f('fk_member_attributes_key_attribute_definitions')),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_member_attributes_member_id_members')),
    sa.PrimaryKeyConstraint('member_id', 'key', name=op.f('pk_member_attributes'))
    )
    op.create_table('member_tags',
    sa.Column('member_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('tag_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('group_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('single_group_id', sa.Integer(), nullable=True),
    sa.Column('source', sa.SmallInteger(), nullable=False),
    sa.Column('source_ref', sa.String(length=128), nullable=False),
    sa.Column('create_time', mallkit.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['group_id'], ['tag_groups.id'], name=op.f('fk_member_tags_group_id_tag_groups')),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_member_tags_member_id_members')),
    sa.ForeignKeyConstraint(['tag_id'], ['tags.id'], name=op.f('fk_member_tags_tag_id_tags'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('member_id', 'tag_id', name=op.f('pk_member_tags')),
    sa.UniqueConstraint('member_id', 'single_group_id', name=op.f('uq_member_tags_member_id_single_group_id'))
    )
    with op.batch_alter_table('member_tags', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_member_tags_tag_id'), ['tag_id'], unique=False)

    op.create_table('reach_counters',
    sa.Column('member_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('sent', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_reach_counters_member_id_members')),
    sa.PrimaryKeyConstraint('member_id', 'day', name=op.f('pk_reach_counters'))
    )
    op.create_table('subscriptions',
    sa.Column('member_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('template_id', sa.String(length=64), nullable=False),
    sa.Column('remaining', sa.Integer(), nullable=False),
    sa.Column('update_time', mallkit.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_subscriptions_member_id_members')),
    sa.PrimaryKeyConstraint('member_id', 'template_id', name=op.f('pk_subscriptions'))
    )
    op.create_table('tier_changes',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('member_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('from_tier_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('to_tier_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('growth_value', sa.BigInteger(), nullable=False),
    sa.Column('create_time', mallkit.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['from_tier_id'], ['tiers.id'], name=op.f('fk_tier_changes_from_tier_id_tiers')),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_tier_changes_member_id_members')),
    sa.ForeignKeyConstraint(['to_tier_id'], ['tiers.id'], name=op.f('fk_tier_changes_to_tier_id_tiers')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tier_changes'))
    )
    with op.batch_alter_table('tier_changes', schema=None) as batch_op:
        batch_op.create_index('ix_tier_changes_member_id_id', ['member_id', 'id'], unique=False)

    op.create_table('touches',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('member_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('template_id', sa.String(length=64), nullable=False),
    sa.Column('purpose', sa.String(length=64), nullable=False),
    sa.Column('state', sa.SmallInteger(), nullable=False),
    sa.Column('skip_reason', sa.SmallInteger(), nullable=False),
    sa.Column('create_time', mallkit.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_touches_member_id_members')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_touches'))
    )
    with op.batch_alter_table('touches', schema=None) as batch_op:
        batch_op.create_index('ix_touches_member_id_id', ['member_id', 'id'], unique=False)

    op.create_table('touchpoints',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('member_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('channel_code_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('channel_type', sa.SmallInteger(), nullable=False),
    sa.Column('scene', sa.String(length=32), nullable=False),
    sa.Column('first_touch', sa.Boolean(), nullable=False),
    sa.Column('create_time', mallkit.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['channel_code_id'], ['channel_codes.id'], name=op.f('fk_touchpoints_channel_code_id_channel_codes')),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_touchpoints_member_id_members')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_touchpoints'))
    )
    with op.batch_alter_table('touchpoints', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_touchpoints_channel_code_id'), ['channel_code_id'], unique=False)
        batch_op.create_index('ix_touchpoints_member_id_id', ['member_id', 'id'], unique=False)



def downgrade() -> None:
    # drop_table also drops the table's indexes (MySQL refuses to drop an index a foreign key uses).
    op.drop_table('touchpoints')
    op.drop_table('touches')
    op.drop_table('tier_changes')
    op.drop_table('subscriptions')
    op.drop_table('reach_counters')
    op.drop_table('member_tags')
    op.drop_table('member_attributes')
    op.drop_table('growth_entries')
    op.drop_table('members')
    op.drop_table('channel_code_tags')
    op.drop_table('channel_codes')
    op.drop_table('tags')
    op.drop_table('staff')
    op.drop_table('tiers')
    op.drop_table('tag_groups')
    op.drop_table('stores')
    op.drop_table('outbox_events')
    op.drop_table('inbox_events')
    op.drop_table('idempotency_keys')
    op.drop_table('attribute_definitions')
