"""users' own jobs: hourly aggregate counts per queue (no user data)

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27 17:30:00.000000
"""
from alembic import op
import sqlalchemy as sa
import robot.storage.models


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('user_job_hour',
    sa.Column('queue', sa.String(length=128), nullable=False),
    sa.Column('hour', robot.storage.models.UTCDateTime(), nullable=False),
    sa.Column('source', sa.String(length=32), nullable=False),
    sa.Column('ended', sa.Integer(), nullable=False),
    sa.Column('failed', sa.Integer(), nullable=False),
    sa.Column('failed_site', sa.Integer(), nullable=False),
    sa.Column('failed_user', sa.Integer(), nullable=False),
    sa.Column('failed_central', sa.Integer(), nullable=False),
    sa.Column('failed_unknown', sa.Integer(), nullable=False),
    sa.Column('codes', sa.JSON(), nullable=False),
    sa.Column('read_at', robot.storage.models.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('queue', 'hour')
    )
    with op.batch_alter_table('user_job_hour', schema=None) as batch_op:
        batch_op.create_index('user_job_hour_hour', ['hour'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('user_job_hour', schema=None) as batch_op:
        batch_op.drop_index('user_job_hour_hour')
    op.drop_table('user_job_hour')
