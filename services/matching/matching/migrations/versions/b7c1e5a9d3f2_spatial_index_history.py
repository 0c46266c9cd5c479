"""spatial candidate index, category counts, answer history, offered_at, one decision per
attempt

Revision ID: b7c1e5a9d3f2
Revises: 54d5e50d762a
Create Date: 2026-11-26 21:15:00

Existing snapshots are indexed here (the index is derived data: a republish of
``provider.events`` rebuilds it too).
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'b7c1e5a9d3f2'
down_revision: str | Sequence[str] | None = '54d5e50d762a'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'service_cells',
        sa.Column('category', sa.String(length=40), nullable=False),
        sa.Column('cell', sa.String(length=12), nullable=False),
        sa.Column('service_id', sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint('category', 'cell', 'service_id',
                                name=op.f('pk_service_cells')))
    with op.batch_alter_table('service_cells', schema=None) as batch_op:
        batch_op.create_index('ix_service_cells_service', ['service_id'], unique=False)
    op.create_table(
        'registry_counts',
        sa.Column('category', sa.String(length=40), nullable=False),
        sa.Column('services', sa.Integer(), server_default='0', nullable=False),
        sa.PrimaryKeyConstraint('category', name=op.f('pk_registry_counts')))
    op.create_table(
        'service_history',
        sa.Column('service_id', sa.String(length=200), nullable=False),
        sa.Column('answered', sa.Integer(), server_default='0', nullable=False),
        sa.Column('accepted', sa.Integer(), server_default='0', nullable=False),
        sa.Column('timed', sa.Integer(), server_default='0', nullable=False),
        sa.Column('response_s_total', sa.Float(), server_default='0', nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('service_id', name=op.f('pk_service_history')))
    with op.batch_alter_table('referral_view', schema=None) as batch_op:
        batch_op.add_column(sa.Column('offered_at', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('decisions', schema=None) as batch_op:
        batch_op.create_index('uq_decisions_referral_attempt', ['referral_id', 'attempt'],
                              unique=True)
    _index_existing_services()


def _index_existing_services() -> None:
    from matching import cells  # pure module: safe to import from a migration

    conn = op.get_bind()
    view = sa.table('service_view', sa.column('service_id'), sa.column('categories', sa.JSON),
                    sa.column('locations', sa.JSON), sa.column('radius_km'),
                    sa.column('area_geohashes', sa.JSON))
    index = sa.table('service_cells', sa.column('category'), sa.column('cell'),
                     sa.column('service_id'))
    count_table = sa.table('registry_counts', sa.column('category'), sa.column('services'))
    counts: dict[str, int] = {'*': 0}
    for row in conn.execute(sa.select(view)):
        covered = cells.service_cells([(p['lat'], p['lon']) for p in row.locations],
                                      row.radius_km, row.area_geohashes)
        counts['*'] += 1
        for category in sorted(set(row.categories)):
            counts[category] = counts.get(category, 0) + 1
            conn.execute(index.insert(), [{'category': category, 'cell': c,
                                           'service_id': row.service_id} for c in covered])
    if counts['*']:
        conn.execute(count_table.insert(), [{'category': k, 'services': v}
                                            for k, v in counts.items()])


def downgrade() -> None:
    with op.batch_alter_table('decisions', schema=None) as batch_op:
        batch_op.drop_index('uq_decisions_referral_attempt')
    with op.batch_alter_table('referral_view', schema=None) as batch_op:
        batch_op.drop_column('offered_at')
    op.drop_table('service_history')
    op.drop_table('registry_counts')
    with op.batch_alter_table('service_cells', schema=None) as batch_op:
        batch_op.drop_index('ix_service_cells_service')
    op.drop_table('service_cells')
