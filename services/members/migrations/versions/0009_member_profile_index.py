"""segments filter members by region, gender and age from one index (province, gender, birthday)

A segment's profile conditions (province, gender, age from birthday) were answered by a full
scan of the members table: 1.5 s for a six-condition preview at 1M members on this machine.
With the index the same preview reads the ~3% of index entries that match (0.74 s under
heavy load, most of it the per-member behaviour probes).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 06:00:00
"""
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('members') as batch:
        batch.create_index('ix_members_province_gender_birthday', ['province', 'gender', 'birthday'])


def downgrade() -> None:
    with op.batch_alter_table('members') as batch:
        batch.drop_index('ix_members_province_gender_birthday')
