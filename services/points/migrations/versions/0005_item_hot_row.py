"""no foreign keys to the hot items row

A redemption takes the item's stock with the last statement of its transaction (the
row lock is then held only until the commit). The foreign keys of ``redemptions`` and
``member_item_counts`` to ``items`` would share-lock that row earlier, at their inserts,
and two concurrent redeemers of one item would deadlock upgrading it. Items are never
deleted; the item id is written only by the redemption path, which has just read the item.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 05:25:00
"""
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('redemptions', schema=None) as batch_op:
        batch_op.drop_constraint('fk_redemptions_item_id_items', type_='foreignkey')
    with op.batch_alter_table('member_item_counts', schema=None) as batch_op:
        batch_op.drop_constraint('fk_member_item_counts_item_id_items', type_='foreignkey')


def downgrade() -> None:
    with op.batch_alter_table('member_item_counts', schema=None) as batch_op:
        batch_op.create_foreign_key('fk_member_item_counts_item_id_items', 'items', ['item_id'], ['id'])
    with op.batch_alter_table('redemptions', schema=None) as batch_op:
        batch_op.create_foreign_key('fk_redemptions_item_id_items', 'items', ['item_id'], ['id'])
