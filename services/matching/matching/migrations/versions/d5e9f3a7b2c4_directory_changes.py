"""directory_changes: the transaction that last changed each service (the workers'
in-memory directory index follows it)

Revision ID: d5e9f3a7b2c4
Revises: c4d8e2f6a1b3
Create Date: 2026-11-27 09:00:00

Existing services get xact 0: older than any index a worker loads, which reads them whole.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'd5e9f3a7b2c4'
down_revision: str | Sequence[str] | None = 'c4d8e2f6a1b3'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'directory_changes',
        sa.Column('service_id', sa.String(length=200), nullable=False),
        sa.Column('xact', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('service_id', name=op.f('pk_directory_changes')))
    with op.batch_alter_table('directory_changes', schema=None) as batch_op:
        batch_op.create_index('ix_directory_changes_xact', ['xact'], unique=False)
    op.execute("INSERT INTO directory_changes (service_id, xact) "
               "SELECT service_id, 0 FROM service_view")


def downgrade() -> None:
    with op.batch_alter_table('directory_changes', schema=None) as batch_op:
        batch_op.drop_index('ix_directory_changes_xact')
    op.drop_table('directory_changes')
