"""Search table service_site_need: one row per service x site x need category, keyed
(category, lat_band, longitude, latitude, service_id), backfilled from the directory.

Revision ID: d3f1a7c9e5b2
Revises: b9a65da1d7ce
Create Date: 2026-11-26 22:20:00

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'd3f1a7c9e5b2'
down_revision: str | Sequence[str] | None = 'b9a65da1d7ce'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'service_site_need',
        sa.Column('service_id', sa.String(length=36), nullable=False),
        sa.Column('location_id', sa.String(length=36), nullable=False),
        sa.Column('category', sa.String(length=40), nullable=False),
        sa.Column('lat_band', sa.Integer(), nullable=False),
        sa.Column('latitude', sa.Float(), nullable=False),
        sa.Column('longitude', sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(['service_id'], ['service.id'],
                                name=op.f('fk_service_site_need_service_id_service'),
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['location_id'], ['location.id'],
                                name=op.f('fk_service_site_need_location_id_location'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('service_id', 'location_id', 'category',
                                name=op.f('pk_service_site_need')),
    )
    with op.batch_alter_table('service_site_need', schema=None) as batch_op:
        batch_op.create_index('ix_service_site_need_box',
                              ['category', 'lat_band', 'longitude', 'latitude', 'service_id'],
                              unique=False)
    # backfill; lat_band = floor((latitude + 90) * 20): PostgreSQL's CAST rounds, SQLite's
    # truncates (and latitude + 90 >= 0), see search_index.band_expr
    scaled = "(l.latitude + 90) * 20"
    band = f"floor({scaled})" if op.get_bind().dialect.name == "postgresql" else scaled
    op.execute(
        "INSERT INTO service_site_need "
        "(service_id, location_id, category, lat_band, latitude, longitude) "
        "SELECT sc.service_id, sal.location_id, sc.category, "
        f"CAST({band} AS INTEGER), l.latitude, l.longitude "
        "FROM service_category sc "
        "JOIN service_at_location sal ON sal.service_id = sc.service_id "
        "JOIN location l ON l.id = sal.location_id")


def downgrade() -> None:
    with op.batch_alter_table('service_site_need', schema=None) as batch_op:
        batch_op.drop_index('ix_service_site_need_box')
    op.drop_table('service_site_need')
