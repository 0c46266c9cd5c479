"""reach box on the spatial index rows (service_cells.lat_min/lat_max/lon_min/lon_max)

Revision ID: c4d8e2f6a1b3
Revises: b7c1e5a9d3f2
Create Date: 2026-11-26 22:20:00

A NULL box means "no box": the row is read as before, so the migration is correct even
before the backfill below (which only makes existing rows as selective as new ones).
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'c4d8e2f6a1b3'
down_revision: str | Sequence[str] | None = 'b7c1e5a9d3f2'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BOX = ('lat_min', 'lat_max', 'lon_min', 'lon_max')


def upgrade() -> None:
    with op.batch_alter_table('service_cells', schema=None) as batch_op:
        for name in BOX:
            batch_op.add_column(sa.Column(name, sa.Float(), nullable=True))
    _backfill()


def _backfill() -> None:
    from matching import cells  # pure module: safe to import from a migration

    conn = op.get_bind()
    view = sa.table('service_view', sa.column('service_id'), sa.column('locations', sa.JSON),
                    sa.column('radius_km'), sa.column('area_geohashes', sa.JSON))
    index = sa.table('service_cells', sa.column('service_id'),
                     *(sa.column(name) for name in BOX))
    for row in conn.execute(sa.select(view)).all():
        box = cells.reach_box([(p['lat'], p['lon']) for p in row.locations], row.radius_km,
                              row.area_geohashes)
        if box is not None:
            conn.execute(index.update().where(index.c.service_id == row.service_id)
                         .values(dict(zip(BOX, box, strict=True))))


def downgrade() -> None:
    with op.batch_alter_table('service_cells', schema=None) as batch_op:
        for name in reversed(BOX):
            batch_op.drop_column(name)
