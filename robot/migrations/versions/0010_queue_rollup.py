"""queue rollup: the job rollup summed over the templates, per queue and period, filled from it

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27 20:10:00.000000
"""
from alembic import op
import sqlalchemy as sa
import robot.storage.models


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

SUMS = ('jobs', 'failed', 'completed', 'cancelled', 'unknown', 'failed_site', 'failed_user', 'failed_central',
        'failed_unknown', 'events', 'wall_seconds', 'cpu_seconds', 'payload_events', 'payload_seconds')


def upgrade() -> None:
    op.create_table('queue_rollup',
    sa.Column('span', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('start', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('queue_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('jobs', sa.Integer(), nullable=False),
    sa.Column('failed', sa.Integer(), nullable=False),
    sa.Column('completed', sa.Integer(), nullable=False),
    sa.Column('cancelled', sa.Integer(), nullable=False),
    sa.Column('unknown', sa.Integer(), nullable=False),
    sa.Column('failed_site', sa.Integer(), nullable=False),
    sa.Column('failed_user', sa.Integer(), nullable=False),
    sa.Column('failed_central', sa.Integer(), nullable=False),
    sa.Column('failed_unknown', sa.Integer(), nullable=False),
    sa.Column('events', sa.BigInteger(), nullable=False),
    sa.Column('wall_seconds', sa.Float(), nullable=False),
    sa.Column('cpu_seconds', sa.Float(), nullable=False),
    sa.Column('payload_events', sa.BigInteger(), nullable=False),
    sa.Column('payload_seconds', sa.Float(), nullable=False),
    sa.Column('last_end', robot.storage.models.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['queue_id'], ['queue.id'], name='fk_queue_rollup_queue_id'),
    sa.PrimaryKeyConstraint('span', 'start', 'queue_id', name='pk_queue_rollup'),
    sqlite_with_rowid=False
    )
    # the rows of an existing job rollup, summed over the templates
    columns = ', '.join(SUMS)
    op.execute(f"INSERT INTO queue_rollup (span, start, queue_id, {columns}, last_end) "
               f"SELECT span, start, queue_id, {', '.join(f'sum({c})' for c in SUMS)}, max(last_end) "
               "FROM job_rollup GROUP BY span, start, queue_id ORDER BY span, start, queue_id")


def downgrade() -> None:
    op.drop_table('queue_rollup')
