"""Search table: each row carries its service's interpretation_available flag, in the box
index (INCLUDE on PostgreSQL), so a search by need, place and language no longer reads the
service row of every candidate in the box to apply "speaks it or can interpret".

Revision ID: e7b2c4d9a1f6
Revises: d3f1a7c9e5b2
Create Date: 2026-11-28 01:10:00

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'e7b2c4d9a1f6'
down_revision: str | Sequence[str] | None = 'd3f1a7c9e5b2'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BOX = ['category', 'lat_band', 'longitude', 'latitude', 'service_id']


def upgrade() -> None:
    with op.batch_alter_table('service_site_need', schema=None) as batch_op:
        batch_op.add_column(sa.Column('interpretation_available', sa.Boolean(),
                                      server_default=sa.false(), nullable=False))
        batch_op.drop_index('ix_service_site_need_box')
        batch_op.create_index('ix_service_site_need_box', BOX, unique=False,
                              postgresql_include=['interpretation_available'])
    op.execute(
        "UPDATE service_site_need SET interpretation_available = ("
        "SELECT s.interpretation_available FROM service s "
        "WHERE s.id = service_site_need.service_id)")


def downgrade() -> None:
    with op.batch_alter_table('service_site_need', schema=None) as batch_op:
        batch_op.drop_index('ix_service_site_need_box')
        batch_op.create_index('ix_service_site_need_box', BOX, unique=False)
        batch_op.drop_column('interpretation_available')
