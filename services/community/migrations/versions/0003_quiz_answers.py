"""quiz answers: a member's first answer counts (the correct option is revealed after it)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 23:30:00
"""
import sqlalchemy as sa
from alembic import op

import mallkit.db

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'quiz_answers',
        sa.Column('post_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('member_id', sa.BigInteger(), nullable=False),
        sa.Column('token', sa.String(length=36), nullable=False),
        sa.Column('chosen_option', sa.SmallInteger(), nullable=False),
        sa.Column('correct', sa.Boolean(), nullable=False),
        sa.Column('create_time', mallkit.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(['post_id'], ['posts.id'], name=op.f('fk_quiz_answers_post_id_posts')),
        sa.PrimaryKeyConstraint('post_id', 'member_id', name=op.f('pk_quiz_answers')),
    )
    # Members rewarded before this table existed answered correctly first (as far as anyone can tell).
    op.execute("INSERT INTO quiz_answers (post_id, member_id, token, chosen_option, correct, create_time) "
               "SELECT r.post_id, r.member_id, r.token, p.quiz_correct, 1, r.create_time "
               "FROM quiz_rewards r JOIN posts p ON p.id = r.post_id")


def downgrade() -> None:
    op.drop_table('quiz_answers')
