"""HSDS contact: the named contacts of organizations, services, locations and services at
locations, and the phones of a contact (``phone.contact_id``).

Revision ID: f4c8a2e6b1d3
Revises: e7b2c4d9a1f6
Create Date: 2026-12-05 07:35:00

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'f4c8a2e6b1d3'
down_revision: str | Sequence[str] | None = 'e7b2c4d9a1f6'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OWNERS = (('organization_id', 'organization'), ('service_id', 'service'),
          ('service_at_location_id', 'service_at_location'), ('location_id', 'location'))


def upgrade() -> None:
    op.create_table(
        'contact',
        sa.Column('id', sa.String(length=36), nullable=False),
        *(sa.Column(column, sa.String(length=36), nullable=True) for column, _ in OWNERS),
        sa.Column('name', sa.String(length=500), nullable=True),
        sa.Column('title', sa.String(length=500), nullable=True),
        sa.Column('department', sa.String(length=500), nullable=True),
        sa.Column('email', sa.String(length=320), nullable=True),
        *(sa.ForeignKeyConstraint([column], [f'{table}.id'],
                                  name=op.f(f'fk_contact_{column}_{table}'), ondelete='CASCADE')
          for column, table in OWNERS),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_contact')),
    )
    with op.batch_alter_table('contact', schema=None) as batch_op:
        for column, _ in OWNERS:
            batch_op.create_index(batch_op.f(f'ix_contact_{column}'), [column], unique=False)
    with op.batch_alter_table('phone', schema=None) as batch_op:
        batch_op.add_column(sa.Column('contact_id', sa.String(length=36), nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_phone_contact_id_contact'), 'contact',
                                    ['contact_id'], ['id'], ondelete='CASCADE')
        batch_op.create_index(batch_op.f('ix_phone_contact_id'), ['contact_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('phone', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_phone_contact_id'))
        batch_op.drop_constraint(batch_op.f('fk_phone_contact_id_contact'), type_='foreignkey')
        batch_op.drop_column('contact_id')
    with op.batch_alter_table('contact', schema=None) as batch_op:
        for column, _ in OWNERS:
            batch_op.drop_index(batch_op.f(f'ix_contact_{column}'))
    op.drop_table('contact')
