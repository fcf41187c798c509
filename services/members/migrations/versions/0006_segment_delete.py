"""segments can be deleted (soft: delete_time; snapshots stay readable)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 05:20:00
"""
import sqlalchemy as sa
from alembic import op

from mallkit.db import UTCDateTime

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('segments') as batch:
        batch.add_column(sa.Column('delete_time', UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('segments') as batch:
        batch.drop_column('delete_time')
