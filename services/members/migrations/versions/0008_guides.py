"""guides: guide assignments (history), guide tasks and their items

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 04:46:49.019956
"""
from alembic import op
import sqlalchemy as sa
import mallkit.db


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('guide_tasks',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('display_name', sa.String(length=64), nullable=False),
    sa.Column('snapshot_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('segment_key', sa.String(length=63), nullable=False),
    sa.Column('snapshot_version', sa.Integer(), nullable=False),
    sa.Column('script', sa.Text(), nullable=False),
    sa.Column('quick_reply', sa.String(length=96), nullable=False),
    sa.Column('start_time', mallkit.db.UTCDateTime(), nullable=False),
    sa.Column('due_time', mallkit.db.UTCDateTime(), nullable=False),
    sa.Column('recurrence', sa.SmallInteger(), nullable=False),
    sa.Column('end_time', mallkit.db.UTCDateTime(), nullable=True),
    sa.Column('reminder_template_id', sa.String(length=64), nullable=False),
    sa.Column('reminder_lead_seconds', sa.Integer(), nullable=False),
    sa.Column('round_count', sa.Integer(), nullable=False),
    sa.Column('next_round_time', mallkit.db.UTCDateTime(), nullable=True),
    sa.Column('item_count', sa.Integer(), nullable=False),
    sa.Column('creator', sa.String(length=40), nullable=False),
    sa.Column('create_time', mallkit.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['snapshot_id'], ['segment_snapshots.id'], name=op.f('fk_guide_tasks_snapshot_id_segment_snapshots')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_guide_tasks'))
    )
    with op.batch_alter_table('guide_tasks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_guide_tasks_next_round_time'), ['next_round_time'], unique=False)

    op.create_table('guide_task_items',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('task_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('round', sa.Integer(), nullable=False),
    sa.Column('member_id', sa.BigInteger(), nullable=False),
    sa.Column('guide_id', sa.BigInteger(), nullable=True),
    sa.Column('store_id', sa.BigInteger(), nullable=True),
    sa.Column('state', sa.SmallInteger(), nullable=False),
    sa.Column('note', sa.String(length=500), nullable=False),
    sa.Column('due_time', mallkit.db.UTCDateTime(), nullable=False),
    sa.Column('remind_time', mallkit.db.UTCDateTime(), nullable=True),
    sa.Column('remind_state', sa.SmallInteger(), nullable=False),
    sa.Column('reminder_touch_id', sa.BigInteger(), nullable=True),
    sa.Column('completed_by', sa.String(length=40), nullable=False),
    sa.Column('complete_time', mallkit.db.UTCDateTime(), nullable=True),
    sa.Column('create_time', mallkit.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['task_id'], ['guide_tasks.id'], name=op.f('fk_guide_task_items_task_id_guide_tasks')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_guide_task_items')),
    sa.UniqueConstraint('task_id', 'round', 'member_id', name=op.f('uq_guide_task_items_task_id_round_member_id'))
    )
    with op.batch_alter_table('guide_task_items', schema=None) as batch_op:
        batch_op.create_index('ix_guide_task_items_guide_id_state_id', ['guide_id', 'state', 'id'], unique=False)
        batch_op.create_index('ix_guide_task_items_member_id_state', ['member_id', 'state'], unique=False)
        batch_op.create_index('ix_guide_task_items_remind_state_remind_time', ['remind_state', 'remind_time'], unique=False)
        batch_op.create_index('ix_guide_task_items_store_id_state_id', ['store_id', 'state', 'id'], unique=False)

    op.create_table('guide_assignments',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('member_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('guide_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('previous_guide_id', sa.BigInteger(), nullable=True),
    sa.Column('store_id', sa.BigInteger(), nullable=True),
    sa.Column('reason', sa.String(length=256), nullable=False),
    sa.Column('assigned_by', sa.String(length=40), nullable=False),
    sa.Column('moved_item_count', sa.Integer(), nullable=False),
    sa.Column('create_time', mallkit.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['guide_id'], ['staff.id'], name=op.f('fk_guide_assignments_guide_id_staff')),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_guide_assignments_member_id_members')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_guide_assignments'))
    )
    with op.batch_alter_table('guide_assignments', schema=None) as batch_op:
        batch_op.create_index('ix_guide_assignments_member_id_id', ['member_id', 'id'], unique=False)



def downgrade() -> None:
    # Dropping a table drops its indexes (MariaDB refuses to drop one a foreign key needs first).
    op.drop_table('guide_assignments')
    op.drop_table('guide_task_items')
    op.drop_table('guide_tasks')
