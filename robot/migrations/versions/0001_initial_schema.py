"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-22 03:22:38.652500
"""
from alembic import op
import sqlalchemy as sa
import robot.storage.models


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('cloud',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('event',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('time', robot.storage.models.UTCDateTime(), nullable=False),
    sa.Column('kind', sa.String(length=64), nullable=False),
    sa.Column('subject', sa.String(length=200), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('details', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('event', schema=None) as batch_op:
        batch_op.create_index('event_time', ['time'], unique=False)

    op.create_table('template',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('category', sa.String(length=16), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('payload', sa.String(length=64), nullable=False),
    sa.Column('input_dataset', sa.String(length=512), nullable=False),
    sa.Column('events_per_job', sa.Integer(), nullable=False),
    sa.Column('processing_type', sa.String(length=64), nullable=False),
    sa.Column('settings', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('site',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('cloud_id', sa.Integer(), nullable=False),
    sa.Column('contacts', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['cloud_id'], ['cloud.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('test',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('template_id', sa.Integer(), nullable=False),
    sa.Column('category', sa.String(length=16), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('start_time', robot.storage.models.UTCDateTime(), nullable=False),
    sa.Column('end_time', robot.storage.models.UTCDateTime(), nullable=False),
    sa.Column('created_at', robot.storage.models.UTCDateTime(), nullable=False),
    sa.Column('requested_by', sa.String(length=128), nullable=False),
    sa.ForeignKeyConstraint(['template_id'], ['template.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('test', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_test_state'), ['state'], unique=False)

    op.create_table('queue',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('site_id', sa.Integer(), nullable=False),
    sa.Column('exempt', sa.Boolean(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('status_read_at', robot.storage.models.UTCDateTime(), nullable=True),
    sa.Column('retired_at', robot.storage.models.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['site_id'], ['site.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('storage_endpoint',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('site_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['site_id'], ['site.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('job',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('test_id', sa.Integer(), nullable=False),
    sa.Column('queue_id', sa.Integer(), nullable=False),
    sa.Column('job_name', sa.String(length=200), nullable=False),
    sa.Column('panda_id', sa.BigInteger(), nullable=True),
    sa.Column('phase', sa.String(length=16), nullable=False),
    sa.Column('job_status', sa.String(length=16), nullable=True),
    sa.Column('dataset', sa.String(length=512), nullable=False),
    sa.Column('n_files', sa.Integer(), nullable=False),
    sa.Column('recorded_at', robot.storage.models.UTCDateTime(), nullable=False),
    sa.Column('submitted_at', robot.storage.models.UTCDateTime(), nullable=True),
    sa.Column('status_changed_at', robot.storage.models.UTCDateTime(), nullable=True),
    sa.Column('creation_time', robot.storage.models.UTCDateTime(), nullable=True),
    sa.Column('start_time', robot.storage.models.UTCDateTime(), nullable=True),
    sa.Column('end_time', robot.storage.models.UTCDateTime(), nullable=True),
    sa.Column('trans_exit_code', sa.Integer(), nullable=True),
    sa.Column('pilot_error_code', sa.Integer(), nullable=False),
    sa.Column('pilot_error_diag', sa.Text(), nullable=False),
    sa.Column('exe_error_code', sa.Integer(), nullable=False),
    sa.Column('exe_error_diag', sa.Text(), nullable=False),
    sa.Column('ddm_error_code', sa.Integer(), nullable=False),
    sa.Column('ddm_error_diag', sa.Text(), nullable=False),
    sa.Column('task_buffer_error_code', sa.Integer(), nullable=False),
    sa.Column('task_buffer_error_diag', sa.Text(), nullable=False),
    sa.Column('job_dispatcher_error_code', sa.Integer(), nullable=False),
    sa.Column('job_dispatcher_error_diag', sa.Text(), nullable=False),
    sa.Column('sup_error_code', sa.Integer(), nullable=False),
    sa.Column('n_events', sa.Integer(), nullable=False),
    sa.Column('cpu_consumption_time', sa.Float(), nullable=False),
    sa.Column('max_rss_kb', sa.BigInteger(), nullable=False),
    sa.Column('core_count', sa.Integer(), nullable=False),
    sa.Column('attempt_nr', sa.Integer(), nullable=False),
    sa.Column('time_queue', sa.Double(), nullable=True),
    sa.Column('time_stagein', sa.Double(), nullable=True),
    sa.Column('time_setup', sa.Double(), nullable=True),
    sa.Column('time_payload', sa.Double(), nullable=True),
    sa.Column('time_stageout', sa.Double(), nullable=True),
    sa.Column('outcome', sa.String(length=16), nullable=True),
    sa.Column('error_source', sa.String(length=16), nullable=True),
    sa.Column('error_code', sa.Integer(), nullable=True),
    sa.Column('error_name', sa.String(length=64), nullable=True),
    sa.Column('error_class', sa.String(length=16), nullable=True),
    sa.Column('error_diag', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['queue_id'], ['queue.id'], ),
    sa.ForeignKeyConstraint(['test_id'], ['test.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('job_name')
    )
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_job_panda_id'), ['panda_id'], unique=False)
        batch_op.create_index('job_end', ['end_time'], unique=False)
        batch_op.create_index('job_phase', ['phase'], unique=False)
        batch_op.create_index('job_queue_end', ['queue_id', 'end_time'], unique=False)

    op.create_table('queue_endpoint',
    sa.Column('queue_id', sa.Integer(), nullable=False),
    sa.Column('endpoint_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['endpoint_id'], ['storage_endpoint.id'], ),
    sa.ForeignKeyConstraint(['queue_id'], ['queue.id'], ),
    sa.PrimaryKeyConstraint('queue_id', 'endpoint_id')
    )
    op.create_table('queue_transition',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('queue_id', sa.Integer(), nullable=False),
    sa.Column('time', robot.storage.models.UTCDateTime(), nullable=False),
    sa.Column('old', sa.String(length=16), nullable=False),
    sa.Column('new', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('evidence', sa.JSON(), nullable=False),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.Column('applied', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['queue_id'], ['queue.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('queue_transition', schema=None) as batch_op:
        batch_op.create_index('queue_transition_queue_time', ['queue_id', 'time'], unique=False)

    op.create_table('test_queue',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('test_id', sa.Integer(), nullable=False),
    sa.Column('queue_id', sa.Integer(), nullable=False),
    sa.Column('max_running_jobs', sa.Integer(), nullable=False),
    sa.Column('min_queue_depth', sa.Integer(), nullable=False),
    sa.Column('resubmit_enabled', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['queue_id'], ['queue.id'], ),
    sa.ForeignKeyConstraint(['test_id'], ['test.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('test_id', 'queue_id')
    )
    with op.batch_alter_table('test_queue', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_test_queue_test_id'), ['test_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('test_queue', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_test_queue_test_id'))

    op.drop_table('test_queue')
    with op.batch_alter_table('queue_transition', schema=None) as batch_op:
        batch_op.drop_index('queue_transition_queue_time')

    op.drop_table('queue_transition')
    op.drop_table('queue_endpoint')
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_index('job_queue_end')
        batch_op.drop_index('job_phase')
        batch_op.drop_index('job_end')
        batch_op.drop_index(batch_op.f('ix_job_panda_id'))

    op.drop_table('job')
    op.drop_table('storage_endpoint')
    op.drop_table('queue')
    with op.batch_alter_table('test', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_test_state'))

    op.drop_table('test')
    op.drop_table('site')
    op.drop_table('template')
    with op.batch_alter_table('event', schema=None) as batch_op:
        batch_op.drop_index('event_time')

    op.drop_table('event')
    op.drop_table('cloud')
