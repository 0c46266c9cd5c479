"""provider-registry's tables (HSDS 3.0 names where HSDS has the concept) and the
repository functions that read them into domain objects.

Registry extensions to HSDS, kept as columns until the HSDS import/export issue maps them:
``organization.notification_channels``; ``service.interpretation_available``, ``genders``,
``populations``, ``languages`` (HSDS: language table), ``service_area_radius_km`` and
``service_area_geohashes`` (HSDS: service_area), ``always_open``, ``timezone`` and
``opening_hours`` (HSDS: schedule); ``service_category`` (HSDS: taxonomy terms).
The directory holds no personal data: organizations, services and public sites only.
"""
from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    ColumnElement,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    any_,
    bindparam,
    cast,
    false,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session
from sqlalchemy.types import NullType

from servicekit.db import add_kit_tables, locked, new_metadata

from . import domain

metadata = new_metadata()
add_kit_tables(metadata)

organization = Table(
    "organization", metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(500), nullable=False),
    Column("description", Text, nullable=True),
    Column("notification_channels", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_modified", DateTime(timezone=True), nullable=False),
    Column("alternate_name", String(500), nullable=True),
    Column("email", String(320), nullable=True),  # the organization's public address
    Column("website", String(2000), nullable=True),
)

service = Table(
    "service", metadata,
    Column("id", String(36), primary_key=True),
    Column("organization_id", String(36), ForeignKey("organization.id"), nullable=False,
           index=True),
    Column("name", String(500), nullable=False),
    Column("description", Text, nullable=True),
    Column("status", String(30), nullable=False),
    Column("minimum_age", Integer, nullable=True),
    Column("maximum_age", Integer, nullable=True),
    Column("interpretation_available", Boolean, nullable=False),
    Column("genders", JSON, nullable=False),
    Column("populations", JSON, nullable=False),
    Column("languages", JSON, nullable=False),
    Column("service_area_radius_km", Float, nullable=True),
    Column("service_area_geohashes", JSON, nullable=False),
    Column("always_open", Boolean, nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("opening_hours", JSON, nullable=False),  # [{byday, opens_at, closes_at}]
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_modified", DateTime(timezone=True), nullable=False),
    Column("alternate_name", String(500), nullable=True),
    Column("url", String(2000), nullable=True),
    Column("email", String(320), nullable=True),  # the service's public address
    Column("schedule_valid_from", Date, nullable=True),  # HSDS schedule.valid_from/valid_to
    Column("schedule_valid_to", Date, nullable=True),
    # freshness: the last time staff or an import confirmed the listing (HSDS assured_date)
    Column("last_confirmed", DateTime(timezone=True), nullable=True),
    Column("import_digest", String(64), nullable=True),  # re-importing unchanged data is a no-op
)

service_language = Table(  # derived from service.languages: the indexed language filter
    "service_language", metadata,
    Column("service_id", String(36), ForeignKey("service.id", ondelete="CASCADE"),
           primary_key=True),
    Column("code", String(20), primary_key=True),  # primary subtag, lower case ("es")
    Index("ix_service_language_code", "code", "service_id"),
)

service_category = Table(
    "service_category", metadata,
    Column("service_id", String(36), ForeignKey("service.id", ondelete="CASCADE"),
           primary_key=True),
    Column("category", String(40), primary_key=True),
    Index("ix_service_category_need", "category", "service_id"),
)

location = Table(
    "location", metadata,
    Column("id", String(36), primary_key=True),
    Column("organization_id", String(36), ForeignKey("organization.id"), nullable=False,
           index=True),
    Column("location_type", String(20), nullable=False),  # HSDS: physical|postal|virtual
    Column("name", String(500), nullable=True),
    Column("latitude", Float, nullable=False),
    Column("longitude", Float, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_modified", DateTime(timezone=True), nullable=False),
    # e.g. a domestic-violence shelter: routing uses it, search/export/HSDS never show it
    Column("confidential", Boolean, nullable=False, server_default=false()),
    Column("description", Text, nullable=True),
    Index("ix_location_lat_lon", "latitude", "longitude", "id"),  # bounding box, index-only
)

address = Table(  # HSDS address of a location (hidden with it when confidential)
    "address", metadata,
    Column("id", String(36), primary_key=True),
    Column("location_id", String(36), ForeignKey("location.id", ondelete="CASCADE"),
           nullable=False, index=True),
    Column("attention", String(500), nullable=True),
    Column("address_1", String(500), nullable=False),
    Column("address_2", String(500), nullable=True),
    Column("city", String(200), nullable=False),
    Column("region", String(200), nullable=True),
    Column("state_province", String(200), nullable=False),
    Column("postal_code", String(50), nullable=False),
    Column("country", String(100), nullable=False),
    Column("address_type", String(20), nullable=False),
)

contact = Table(  # HSDS contact of a service, organization, location or service at location
    "contact", metadata,
    Column("id", String(36), primary_key=True),
    Column("organization_id", String(36), ForeignKey("organization.id", ondelete="CASCADE"),
           nullable=True, index=True),
    Column("service_id", String(36), ForeignKey("service.id", ondelete="CASCADE"),
           nullable=True, index=True),
    Column("service_at_location_id", String(36),
           ForeignKey("service_at_location.id", ondelete="CASCADE"), nullable=True, index=True),
    Column("location_id", String(36), ForeignKey("location.id", ondelete="CASCADE"),
           nullable=True, index=True),
    Column("name", String(500), nullable=True),
    Column("title", String(500), nullable=True),
    Column("department", String(500), nullable=True),
    Column("email", String(320), nullable=True),
)

phone = Table(  # HSDS phone of a service, organization, location or contact (public numbers)
    "phone", metadata,
    Column("id", String(36), primary_key=True),
    Column("organization_id", String(36), ForeignKey("organization.id", ondelete="CASCADE"),
           nullable=True, index=True),
    Column("service_id", String(36), ForeignKey("service.id", ondelete="CASCADE"),
           nullable=True, index=True),
    Column("location_id", String(36), ForeignKey("location.id", ondelete="CASCADE"),
           nullable=True, index=True),
    Column("contact_id", String(36), ForeignKey("contact.id", ondelete="CASCADE"),
           nullable=True, index=True),
    Column("number", String(100), nullable=False),
    Column("extension", String(20), nullable=True),
    Column("type", String(20), nullable=True),
    Column("description", Text, nullable=True),
)

taxonomy = Table(
    "taxonomy", metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(500), nullable=False),
    Column("description", Text, nullable=False),
    Column("uri", String(2000), nullable=True),
    Column("version", String(100), nullable=True),
)

taxonomy_term = Table(
    "taxonomy_term", metadata,
    Column("id", String(36), primary_key=True),
    Column("code", String(200), nullable=True),
    Column("name", String(500), nullable=False),
    Column("description", Text, nullable=False),
    Column("parent_id", String(36), nullable=True),
    Column("taxonomy", String(500), nullable=True),
    Column("language", String(20), nullable=True),
    Column("taxonomy_id", String(36), nullable=True, index=True),  # may be an external one
    Column("term_uri", String(2000), nullable=True),
)

attribute = Table(  # HSDS attribute: a service or location classified by a taxonomy term
    "attribute", metadata,
    Column("id", String(36), primary_key=True),
    Column("link_id", String(36), nullable=False, index=True),  # a service or a location
    Column("link_type", String(200), nullable=True),
    Column("link_entity", String(50), nullable=False),
    Column("taxonomy_term_id", String(36), ForeignKey("taxonomy_term.id"), nullable=False,
           index=True),
    Column("value", Text, nullable=True),
    Column("label", String(500), nullable=True),
)

service_at_location = Table(
    "service_at_location", metadata,
    Column("id", String(36), primary_key=True),
    Column("service_id", String(36), ForeignKey("service.id", ondelete="CASCADE"),
           nullable=False),
    Column("location_id", String(36), ForeignKey("location.id"), nullable=False),
    UniqueConstraint("service_id", "location_id"),
    Index("ix_service_at_location_site", "location_id", "service_id"),  # index-only in search
)

service_site_need = Table(  # derived search table, see search_index.py
    "service_site_need", metadata,
    Column("service_id", String(36), ForeignKey("service.id", ondelete="CASCADE"),
           primary_key=True),
    Column("location_id", String(36), ForeignKey("location.id", ondelete="CASCADE"),
           primary_key=True),
    Column("category", String(40), primary_key=True),
    Column("lat_band", Integer, nullable=False),  # floor((latitude + 90) * 20)
    Column("latitude", Float, nullable=False),
    Column("longitude", Float, nullable=False),
    # the service's flag: the language filter ("speaks it or can interpret") without
    # reading the service row of every candidate in the box
    Column("interpretation_available", Boolean, nullable=False, server_default=false()),
    Index("ix_service_site_need_box", "category", "lat_band", "longitude", "latitude",
          "service_id", postgresql_include=["interpretation_available"]),
)

service_capacity = Table(  # HSDS 3.1 service_capacity, one row per service, plus `accepting`
    "service_capacity", metadata,
    Column("id", String(36), primary_key=True),
    Column("service_id", String(36), ForeignKey("service.id", ondelete="CASCADE"),
           nullable=False, unique=True),
    Column("maximum", Integer, nullable=False),
    Column("available", Integer, nullable=True),
    Column("accepting", Boolean, nullable=False),
    Column("updated", DateTime(timezone=True), nullable=False),
)


# --- repository --------------------------------------------------------------------------

def one_of(session: Session, column: Any, values: Iterable[str]) -> ColumnElement[bool]:
    """``column IN values`` for bulk work. On PostgreSQL ``= ANY(array)`` with ONE text
    parameter, the array's literal (``pg_array_literal``): an IN list of a thousand ids is
    a thousand parameters that psycopg re-parses on every statement, and a list parameter
    is dumped element by element in Python (3 ms per thousand ids); ``= ANY`` stays an
    index condition, also inside an OR. Elsewhere ``IN``."""
    values = list(values)
    if session.get_bind().dialect.name == "postgresql":
        # an untyped parameter: PostgreSQL reads it as the array itself (a constant, or a
        # parameter of the array type); a text parameter CAST to an array would be an
        # expression, re-parsed for every row a sequential scan filters
        array = cast(bindparam(None, pg_array_literal(values), type_=NullType()), ARRAY(String))
        return column == any_(array)  # type: ignore[no-any-return]
    return column.in_(values)  # type: ignore[no-any-return]


def pg_array_literal(values: list[str | None]) -> str:
    """The PostgreSQL text form of a one-dimensional array of strings: every element
    double-quoted (backslash and double quote escaped), None as NULL."""
    if None not in values:
        plain = "".join(values)  # type: ignore[arg-type]
        if '"' not in plain and "\\" not in plain:  # ids: nothing to escape
            return '{"' + '","'.join(values) + '"}' if values else "{}"  # type: ignore[arg-type]
    return "{" + ",".join("NULL" if v is None else '"' + v.replace("\\", "\\\\")
                          .replace('"', '\\"') + '"' for v in values) + "}"


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def fetch_organization(session: Session, org_id: str) -> domain.Organization | None:
    row = session.execute(select(organization).where(organization.c.id == org_id)).first()
    if row is None:
        return None
    return domain.Organization(id=row.id, name=row.name,
                               notification_channels=tuple(row.notification_channels))


def _to_service(row: Any, categories: list[str]) -> domain.Service:
    hours = tuple(domain.OpeningHours(**h) for h in row.opening_hours)
    return domain.Service(
        id=row.id, organization_id=row.organization_id, name=row.name, status=row.status,
        categories=tuple(sorted(categories)), minimum_age=row.minimum_age,
        maximum_age=row.maximum_age, genders=tuple(row.genders),
        populations=tuple(row.populations), languages=tuple(row.languages),
        interpretation_available=row.interpretation_available,
        service_area=domain.ServiceArea(radius_km=row.service_area_radius_km,
                                        geohashes=tuple(row.service_area_geohashes)),
        schedule=domain.Schedule(always_open=row.always_open, timezone=row.timezone,
                                 hours=hours, valid_from=row.schedule_valid_from,
                                 valid_to=row.schedule_valid_to),
        last_modified=as_utc(row.last_modified),
        last_confirmed=row.last_confirmed and as_utc(row.last_confirmed),
    )


def fetch_service(session: Session, service_id: str, *, lock: bool = False
                  ) -> domain.Service | None:
    """The service, row-locked when ``lock`` so its snapshots are emitted in order."""
    query = select(service).where(service.c.id == service_id)
    row = session.execute(locked(session, query) if lock else query).first()
    if row is None:
        return None
    categories = session.execute(select(service_category.c.category).where(
        service_category.c.service_id == service_id)).scalars().all()
    return _to_service(row, list(categories))


def service_ids_of_organization(session: Session, org_id: str, *, lock: bool = False
                                ) -> list[str]:
    query = (select(service.c.id).where(service.c.organization_id == org_id)
             .order_by(service.c.id))
    return list(session.execute(locked(session, query) if lock else query).scalars())


def service_ids_at_location(session: Session, location_id: str, *, lock: bool = False
                            ) -> list[str]:
    query = (select(service.c.id).join(service_at_location,
                                       service_at_location.c.service_id == service.c.id)
             .where(service_at_location.c.location_id == location_id).order_by(service.c.id))
    return list(session.execute(locked(session, query) if lock else query).scalars())


def location_organizations(session: Session, location_ids: list[str]) -> dict[str, str]:
    """location id -> owning organization id, for the ids that exist."""
    rows = session.execute(select(location.c.id, location.c.organization_id)
                           .where(location.c.id.in_(location_ids))).all()
    return {r.id: r.organization_id for r in rows}
