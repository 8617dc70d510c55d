"""dashboard sessions: a session stamp per user, failed sign-ins for throttling

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 14:40:00.000000
"""
import secrets

from alembic import op
import sqlalchemy as sa
import robot.storage.models


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('user', schema=None) as batch_op:
        batch_op.add_column(sa.Column('session_stamp', sa.String(length=64), nullable=True))
    user = sa.table('user', sa.column('id', sa.Integer()), sa.column('session_stamp', sa.String()))
    connection = op.get_bind()
    for (user_id,) in connection.execute(sa.select(user.c.id)).all():  # every existing user: a stamp of their own
        connection.execute(user.update().where(user.c.id == user_id).values(session_stamp=secrets.token_hex(16)))
    with op.batch_alter_table('user', schema=None) as batch_op:
        batch_op.alter_column('session_stamp', existing_type=sa.String(length=64), nullable=False)

    op.create_table('login_failure',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('address', sa.String(length=64), nullable=False),
    sa.Column('time', robot.storage.models.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name='pk_login_failure')
    )
    with op.batch_alter_table('login_failure', schema=None) as batch_op:
        batch_op.create_index('login_failure_address', ['address', 'time'], unique=False)
        batch_op.create_index('login_failure_name', ['name', 'time'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('login_failure', schema=None) as batch_op:
        batch_op.drop_index('login_failure_name')
        batch_op.drop_index('login_failure_address')

    op.drop_table('login_failure')
    with op.batch_alter_table('user', schema=None) as batch_op:
        batch_op.drop_column('session_stamp')
