"""view event ids: views are written in batches, a repeat of a client event id counts once

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 05:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('views', sa.Column('event_id', sa.String(length=64), nullable=True))
    op.create_index('uq_views_post_id_event_id', 'views', ['post_id', 'event_id'], unique=True)


def downgrade() -> None:
    op.drop_index('uq_views_post_id_event_id', table_name='views')
    with op.batch_alter_table('views') as batch:
        batch.drop_column('event_id')
