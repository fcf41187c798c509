"""RFM reads the purchase facts from one covering index (member_id, pay_time, paid_fen, refunded_fen)

The RFM recompute groups every purchase fact in the window by member. With the index on
(member_id, pay_time) alone MariaDB walks it in member order and fetches each row from the
clustered index for the amounts: 5M random reads at 1M members. The covering index serves the
whole GROUP BY from the index (and everything the old index served, as its prefix).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 05:40:00
"""
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('member_purchases') as batch:
        batch.create_index('ix_member_purchases_member_id_pay_time_amounts',
                           ['member_id', 'pay_time', 'paid_fen', 'refunded_fen'])
        batch.drop_index('ix_member_purchases_member_id_pay_time')


def downgrade() -> None:
    with op.batch_alter_table('member_purchases') as batch:
        batch.create_index('ix_member_purchases_member_id_pay_time', ['member_id', 'pay_time'])
        batch.drop_index('ix_member_purchases_member_id_pay_time_amounts')
