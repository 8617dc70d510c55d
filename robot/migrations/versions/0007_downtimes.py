"""downtimes: outages sites announced (GOCDB, the embedded grid)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 15:20:00.000000
"""
from alembic import op
import sqlalchemy as sa
import robot.storage.models


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('downtime',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('source', sa.String(length=32), nullable=False),
    sa.Column('key', sa.String(length=256), nullable=False),
    sa.Column('site', sa.String(length=128), nullable=False),
    sa.Column('start', robot.storage.models.UTCDateTime(), nullable=False),
    sa.Column('end', robot.storage.models.UTCDateTime(), nullable=False),
    sa.Column('classification', sa.String(length=16), nullable=False),
    sa.Column('severity', sa.String(length=16), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('seen_at', robot.storage.models.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('source', 'key')
    )
    with op.batch_alter_table('downtime', schema=None) as batch_op:
        batch_op.create_index('downtime_end', ['end'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('downtime', schema=None) as batch_op:
        batch_op.drop_index('downtime_end')
    op.drop_table('downtime')
