"""several robot processes: heartbeats (worker), the leader's lease, who recorded each job

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27 15:00:00.000000
"""
from alembic import op
import sqlalchemy as sa
import robot.storage.models


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('worker',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('hostname', sa.String(length=255), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('started_at', robot.storage.models.UTCDateTime(), nullable=False),
    sa.Column('last_beat_at', robot.storage.models.UTCDateTime(), nullable=False),
    sa.Column('stopped_at', robot.storage.models.UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('lease',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('holder', sa.Integer(), nullable=True),
    sa.Column('expires_at', robot.storage.models.UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('name')
    )
    op.execute("INSERT INTO lease (name) VALUES ('leader')")
    with op.batch_alter_table('job') as batch_op:
        batch_op.add_column(sa.Column('worker_id', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('job') as batch_op:
        batch_op.drop_column('worker_id')
    op.drop_table('lease')
    op.drop_table('worker')
