"""stress tests

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 04:24:04.040909
"""
from alembic import op
import sqlalchemy as sa
import robot.storage.models


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.add_column(sa.Column('retry_of', sa.Integer(), nullable=True))
        batch_op.create_foreign_key('fk_job_retry_of', 'job', ['retry_of'], ['id'])

    with op.batch_alter_table('test', schema=None) as batch_op:
        batch_op.add_column(sa.Column('max_jobs', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('concurrency', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('allow_excluded', sa.Boolean(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('approved_by', sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column('approved_at', robot.storage.models.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('comment', sa.Text(), server_default='', nullable=False))
        batch_op.add_column(sa.Column('outcome', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('report', sa.JSON(), nullable=True))

    with op.batch_alter_table('test_queue', schema=None) as batch_op:
        batch_op.add_column(sa.Column('max_jobs', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('retries', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('stopped_at', robot.storage.models.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('stop_reason', sa.Text(), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('test_queue', schema=None) as batch_op:
        batch_op.drop_column('stop_reason')
        batch_op.drop_column('stopped_at')
        batch_op.drop_column('retries')
        batch_op.drop_column('max_jobs')

    with op.batch_alter_table('test', schema=None) as batch_op:
        batch_op.drop_column('report')
        batch_op.drop_column('outcome')
        batch_op.drop_column('comment')
        batch_op.drop_column('approved_at')
        batch_op.drop_column('approved_by')
        batch_op.drop_column('allow_excluded')
        batch_op.drop_column('concurrency')
        batch_op.drop_column('max_jobs')

    with op.batch_alter_table('job', schema=None) as batch_op:
        # WARNING: constraint name is None; this directive will fail as
        # rendered.  Add a name, or use a naming convention; see
        # https://alembic.sqlalchemy.org/en/latest/naming.html
        batch_op.drop_constraint('fk_job_retry_of', type_='foreignkey')
        batch_op.drop_column('retry_of')

