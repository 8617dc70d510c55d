"""exclusion engine

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 03:49:35.857685
"""
from alembic import op
import sqlalchemy as sa
import robot.storage.models


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('setting',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('value', sa.String(length=256), nullable=False),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.Column('changed_at', robot.storage.models.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('silence',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('scope', sa.String(length=16), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('created_at', robot.storage.models.UTCDateTime(), nullable=False),
    sa.Column('until', robot.storage.models.UTCDateTime(), nullable=False),
    sa.Column('cleared_at', robot.storage.models.UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('override',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('queue_id', sa.Integer(), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('created_at', robot.storage.models.UTCDateTime(), nullable=False),
    sa.Column('until', robot.storage.models.UTCDateTime(), nullable=True),
    sa.Column('cleared_at', robot.storage.models.UTCDateTime(), nullable=True),
    sa.Column('applied_at', robot.storage.models.UTCDateTime(), nullable=True),
    sa.Column('ended_at', robot.storage.models.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['queue_id'], ['queue.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('override', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_override_queue_id'), ['queue_id'], unique=False)

    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.create_index('job_status_changed', ['status_changed_at'], unique=False)

    with op.batch_alter_table('queue', schema=None) as batch_op:
        batch_op.add_column(sa.Column('robot_state', sa.String(length=16), server_default='online', nullable=False))
        batch_op.add_column(sa.Column('robot_state_since', robot.storage.models.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('extra_jobs', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('job_gap_seconds', sa.Integer(), server_default='0', nullable=False))

    with op.batch_alter_table('queue_transition', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.String(length=16), server_default='status', nullable=False))
        batch_op.add_column(sa.Column('policy', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('read_back', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('notified_at', robot.storage.models.UTCDateTime(), nullable=True))
        batch_op.create_index('queue_transition_unnotified', ['notified_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('queue_transition', schema=None) as batch_op:
        batch_op.drop_index('queue_transition_unnotified')
        batch_op.drop_column('notified_at')
        batch_op.drop_column('read_back')
        batch_op.drop_column('policy')
        batch_op.drop_column('kind')

    with op.batch_alter_table('queue', schema=None) as batch_op:
        batch_op.drop_column('job_gap_seconds')
        batch_op.drop_column('extra_jobs')
        batch_op.drop_column('robot_state_since')
        batch_op.drop_column('robot_state')

    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_index('job_status_changed')

    with op.batch_alter_table('override', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_override_queue_id'))

    op.drop_table('override')
    op.drop_table('silence')
    op.drop_table('setting')
