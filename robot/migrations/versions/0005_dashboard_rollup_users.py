"""dashboard: job rollup, sign-in users, job index for stress counts

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 09:00:00.000000
"""
from alembic import op
import sqlalchemy as sa
import robot.storage.models


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('job_rollup',
    sa.Column('span', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('start', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('queue_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('template_id', sa.Integer(), autoincrement=False, nullable=False),
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
    sa.ForeignKeyConstraint(['queue_id'], ['queue.id'], name='fk_job_rollup_queue_id'),
    sa.ForeignKeyConstraint(['template_id'], ['template.id'], name='fk_job_rollup_template_id'),
    sa.PrimaryKeyConstraint('span', 'start', 'queue_id', 'template_id', name='pk_job_rollup'),
    sqlite_with_rowid=False
    )
    with op.batch_alter_table('job_rollup', schema=None) as batch_op:
        batch_op.create_index('job_rollup_queue', ['queue_id', 'span', 'start'], unique=False)

    op.create_table('user',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('password_hash', sa.String(length=256), nullable=False),
    sa.Column('created_at', robot.storage.models.UTCDateTime(), nullable=False),
    sa.Column('disabled', sa.Boolean(), server_default='0', nullable=False),
    sa.PrimaryKeyConstraint('id', name='pk_user'),
    sa.UniqueConstraint('name', name='uq_user_name')
    )
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.create_index('job_test_outcome', ['test_id', 'outcome'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_index('job_test_outcome')

    op.drop_table('user')
    with op.batch_alter_table('job_rollup', schema=None) as batch_op:
        batch_op.drop_index('job_rollup_queue')

    op.drop_table('job_rollup')
