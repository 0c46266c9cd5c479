"""matching's tables (a view of the registry, provider load, referral facts, decisions) and
the repository functions beside them. Nothing here holds personal data: referral facts are
the de-identified ones carried by ``referral.submitted``."""
from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Table,
    bindparam,
    case,
    delete,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from servicekit.db import add_kit_tables, locked, new_metadata, upsert

from . import domain

metadata = new_metadata()
add_kit_tables(metadata)

service_view = Table(
    "service_view", metadata,  # latest provider.service_upserted snapshot per service
    Column("service_id", String(200), primary_key=True),
    Column("organization_id", String(200), nullable=False),
    Column("status", String(40), nullable=False),
    Column("categories", JSON, nullable=False),
    Column("locations", JSON, nullable=False),  # [{location_id, lat, lon, geohash}]
    Column("radius_km", Float, nullable=True),
    Column("area_geohashes", JSON, nullable=False),
    Column("age_min", Integer, nullable=True), Column("age_max", Integer, nullable=True),
    Column("genders", JSON, nullable=False),
    Column("populations", JSON, nullable=False),
    Column("languages", JSON, nullable=False),
    Column("interpretation_available", Boolean, nullable=False),
    Column("schedule", JSON, nullable=False),  # {always_open, timezone, hours}
    Column("capacity_max", Integer, nullable=False),
    Column("accepting", Boolean, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("snapshot", JSON, nullable=False),  # the whole event data, for later scoring
)

service_categories = Table(
    "service_categories", metadata,  # lets SQL pick candidates by need first
    Column("service_id", String(200), primary_key=True),
    Column("category", String(40), primary_key=True),
    Index("ix_service_categories_category", "category", "service_id"),
)

service_cells = Table(
    "service_cells", metadata,  # spatial candidate index: (need, geohash cell) -> service
    Column("category", String(40), primary_key=True),
    Column("cell", String(12), primary_key=True),  # "" = everywhere (see cells.py)
    Column("service_id", String(200), primary_key=True),
    # the service's reach box (cells.reach_box), NULL: no box (reaches any point of the cell)
    Column("lat_min", Float), Column("lat_max", Float),
    Column("lon_min", Float), Column("lon_max", Float),
    Index("ix_service_cells_service", "service_id"),
)

registry_counts = Table(
    "registry_counts", metadata,  # services per category ("*": all), for elimination counts
    Column("category", String(40), primary_key=True),
    Column("services", Integer, nullable=False, server_default="0"),
)

directory_changes = Table(
    "directory_changes", metadata,  # per service: the transaction that last changed it
    Column("service_id", String(200), primary_key=True),  # kept after a removal (tombstone)
    # PostgreSQL: the writer's transaction id (pg_current_xact_id); SQLite: a counter
    Column("xact", BigInteger, nullable=False),
    Index("ix_directory_changes_xact", "xact"),
)

service_history = Table(
    "service_history", metadata,  # answers to offers, kept from referral.events, for scoring
    Column("service_id", String(200), primary_key=True),
    Column("answered", Integer, nullable=False, server_default="0"),
    Column("accepted", Integer, nullable=False, server_default="0"),
    Column("timed", Integer, nullable=False, server_default="0"),  # answers with a known delay
    Column("response_s_total", Float, nullable=False, server_default="0"),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

service_load = Table(
    "service_load", metadata,  # changed only by conditional UPDATEs (see reserve)
    Column("service_id", String(200), primary_key=True),
    Column("open_offers", Integer, nullable=False, server_default="0"),
    Column("active_cases", Integer, nullable=False, server_default="0"),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

referral_view = Table(
    "referral_view", metadata,
    Column("referral_id", String(36), primary_key=True),
    Column("need", String(40), nullable=False),
    Column("urgency", String(20), nullable=False),
    Column("geohash", String(12), nullable=True),  # NULL after erasure
    Column("lat", Float, nullable=True), Column("lon", Float, nullable=True),
    Column("eligibility", JSON, nullable=False),
    Column("status", String(30), nullable=False),
    Column("attempt", Integer, nullable=False, server_default="0"),  # decisions made so far
    Column("agency_id", String(200), nullable=False),
    Column("service_id", String(200), nullable=True),  # service holding the offer or case
    Column("offered_at", DateTime(timezone=True), nullable=True),  # when the open offer began
    Column("submitted_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_referral_view_status", "status", "need"),
)

tried = Table(
    "tried", metadata,  # services never to be proposed again for a referral
    Column("referral_id", String(36), primary_key=True),
    Column("service_id", String(200), primary_key=True),
    Column("tried_at", DateTime(timezone=True), nullable=False),
)

decisions = Table(
    "decisions", metadata,
    Column("id", String(36), primary_key=True),
    Column("referral_id", String(36), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("outcome", String(20), nullable=False),  # proposed | exhausted
    Column("service_id", String(200), nullable=True),
    Column("organization_id", String(200), nullable=True),
    Column("score", Float, nullable=True),
    Column("reasons", JSON, nullable=False),  # [{code, text}]
    Column("eliminated", JSON, nullable=False),  # constraint code -> count
    Column("candidates", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("event_id", String(36), nullable=False, unique=True),  # = proposal_id at intake
    Index("ix_decisions_referral", "referral_id", "attempt"),
    Index("uq_decisions_referral_attempt", "referral_id", "attempt", unique=True),
)


# --- repository: services and load -----------------------------------------------------------
def upsert_service(session: Session, row: dict[str, Any], categories: list[str]) -> bool:
    """Store a snapshot unless a newer one is already stored (then False)."""
    stmt = upsert(session, service_view).values(**row)
    stmt = stmt.on_conflict_do_update(
        index_elements=[service_view.c.service_id],
        set_={k: stmt.excluded[k] for k in row if k != "service_id"},
        where=service_view.c.updated_at <= stmt.excluded.updated_at,
    ).returning(service_view.c.service_id)
    if session.execute(stmt).first() is None:
        return False  # a newer snapshot is stored
    sid = row["service_id"]
    session.execute(delete(service_categories).where(service_categories.c.service_id == sid))
    for category in sorted(set(categories)):
        session.execute(service_categories.insert().values(service_id=sid, category=category))
    return True


def delete_service(session: Session, service_id: str) -> None:
    """Forget a service; its load row stays so outstanding offers still settle."""
    session.execute(delete(service_categories).where(
        service_categories.c.service_id == service_id))
    session.execute(delete(service_view).where(service_view.c.service_id == service_id))


def ensure_load(session: Session, service_id: str, now: datetime) -> None:
    session.execute(upsert(session, service_load).values(
        service_id=service_id, open_offers=0, active_cases=0, updated_at=now,
    ).on_conflict_do_nothing(index_elements=[service_load.c.service_id]))


@lru_cache(maxsize=1)
def _reserve_statement() -> Any:
    load = service_load.c
    return (update(service_load)
            .where(load.service_id == bindparam("sid"),
                   load.open_offers + load.active_cases < bindparam("cap"))
            .values(open_offers=load.open_offers + 1, updated_at=bindparam("now")))


def reserve(session: Session, service_id: str, capacity_max: int, now: datetime) -> bool:
    """Take one place atomically; False when the service is full (another worker won).
    (Statements of the per-decision path are built once and run on the session's
    connection: building one costs more than running it.)"""
    result = session.connection().execute(
        _reserve_statement(), {"sid": service_id, "cap": capacity_max, "now": now})
    return int(result.rowcount) == 1


def reserve_many(session: Session, places: list[tuple[str, int, int, datetime]]) -> int:
    """``reserve`` of ``n`` places at once at each (service_id, n, capacity_max, now), in
    service_id order, with the same guard (load plus ``n`` within capacity) and load rows
    made first for services predating the load table; returns how many services took
    theirs (a service that had no longer room for all ``n`` takes none)."""
    conn = session.connection()
    if session.get_bind().dialect.name == "postgresql":
        rows = [{"sid": sid, "n": n, "cap": cap, "now": now.isoformat()}
                for sid, n, cap, now in places]
        conn.execute(_ENSURE_LOADS_PG, {"rows": json.dumps(rows)})
        return len(conn.execute(_RESERVE_MANY_PG, {"rows": json.dumps(rows)}).all())
    for sid, _n, _cap, now in places:
        ensure_load(session, sid, now)
    load = service_load.c
    stmt = (update(service_load)
            .where(load.service_id == bindparam("sid"),
                   load.open_offers + load.active_cases + bindparam("n") <= bindparam("cap"))
            .values(open_offers=load.open_offers + bindparam("n"),
                    updated_at=bindparam("now")))
    return sum(int(conn.execute(stmt, {"sid": sid, "n": n, "cap": cap, "now": now}).rowcount)
               for sid, n, cap, now in places)


_ENSURE_LOADS_PG = text(
    "INSERT INTO service_load (service_id, open_offers, active_cases, updated_at) "
    "SELECT r.sid, 0, 0, r.now FROM json_to_recordset(CAST(:rows AS json)) "
    "AS r(sid text, n int, cap int, now timestamptz) ORDER BY r.sid "
    "ON CONFLICT (service_id) DO NOTHING")
_RESERVE_MANY_PG = text(
    "UPDATE service_load l SET open_offers = l.open_offers + r.n, updated_at = r.now "
    "FROM json_to_recordset(CAST(:rows AS json)) AS r(sid text, n int, cap int, "
    "now timestamptz) "
    "WHERE l.service_id = r.sid AND l.open_offers + l.active_cases + r.n <= r.cap "
    "RETURNING l.service_id")


def _moved(column: Any, delta: int) -> ColumnElement[Any]:
    if delta >= 0:
        return column + delta  # type: ignore[no-any-return]
    return case((column + delta >= 0, column + delta), else_=0)


def adjust_load(session: Session, service_id: str, open_offers: int, active_cases: int,
                now: datetime) -> None:
    """Move the counters by the given deltas in one statement, never below zero."""
    if not (open_offers or active_cases):
        return
    ensure_load(session, service_id, now)
    load = service_load.c
    session.execute(update(service_load).where(load.service_id == service_id).values(
        open_offers=_moved(load.open_offers, open_offers),
        active_cases=_moved(load.active_cases, active_cases), updated_at=now))


def add_loads(session: Session, loads: list[tuple[str, int, int, datetime]]) -> None:
    """``adjust_load`` of several services at once, by (service_id, open_offers,
    active_cases, now) in service_id order, for increments only (what a decrement leaves
    depends on the order, since counters stop at 0): load rows made as needed, one
    statement."""
    if not loads:
        return
    if any(o < 0 or a < 0 for _sid, o, a, _now in loads):
        raise ValueError("add_loads takes increments only")
    conn = session.connection()
    if session.get_bind().dialect.name == "postgresql":
        rows = [{"sid": sid, "o": o, "a": a, "now": now.isoformat()}
                for sid, o, a, now in loads]
        conn.execute(_ADD_LOADS_PG, {"rows": json.dumps(rows)})
        return
    conn.execute(_add_loads_statement(), [{"sid": sid, "o": o, "a": a, "now": now}
                                          for sid, o, a, now in loads])


@lru_cache(maxsize=1)
def _add_loads_statement() -> Any:
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    stmt = sqlite_insert(service_load).values(
        service_id=bindparam("sid"), open_offers=bindparam("o"), active_cases=bindparam("a"),
        updated_at=bindparam("now", type_=service_load.c.updated_at.type))
    load = service_load.c
    return stmt.on_conflict_do_update(index_elements=[load.service_id], set_={
        "open_offers": load.open_offers + stmt.excluded.open_offers,
        "active_cases": load.active_cases + stmt.excluded.active_cases,
        "updated_at": stmt.excluded.updated_at})


_ADD_LOADS_PG = text(
    "INSERT INTO service_load (service_id, open_offers, active_cases, updated_at) "
    "SELECT r.sid, r.o, r.a, r.now FROM json_to_recordset(CAST(:rows AS json)) "
    "AS r(sid text, o int, a int, now timestamptz) ORDER BY r.sid "
    "ON CONFLICT (service_id) DO UPDATE SET "
    "open_offers = service_load.open_offers + excluded.open_offers, "
    "active_cases = service_load.active_cases + excluded.active_cases, "
    "updated_at = excluded.updated_at")


# --- repository: referrals -------------------------------------------------------------------
@lru_cache(maxsize=4)
def _insert_referral_statement(dialect: str, columns: tuple[str, ...]) -> Any:
    from sqlalchemy.dialects.postgresql import insert as pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    return (insert(referral_view).values({c: bindparam(c) for c in columns})
            .on_conflict_do_nothing(index_elements=[referral_view.c.referral_id])
            .returning(referral_view.c.referral_id))


def insert_referrals(session: Session, rows: list[dict[str, Any]]) -> set[str]:
    """Store several referrals' facts (one statement); the ids of those not known before."""
    if not rows:
        return set()
    stmt = _insert_referral_statement(session.get_bind().dialect.name, tuple(rows[0]))
    return set(session.connection().execute(stmt, rows).scalars())


def insert_referral(session: Session, row: dict[str, Any]) -> bool:
    """Store a referral's facts; False when it is already known."""
    stmt = _insert_referral_statement(session.get_bind().dialect.name, tuple(row))
    # (INSERT rowcount is unreliable)
    return session.connection().execute(stmt, row).first() is not None


def referral(session: Session, referral_id: str, *, lock: bool = False,
             skip_locked: bool = False) -> Any:
    """One referral's facts; ``lock`` takes its row lock (``skip_locked``: None when another
    transaction holds it, for opportunistic retries that must not wait or deadlock)."""
    query = select(referral_view).where(referral_view.c.referral_id == referral_id)
    if skip_locked and session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    elif lock or skip_locked:
        query = locked(session, query)
    return session.execute(query).first()


def referral_offers(session: Session, referral_ids: list[str]) -> list[Any]:
    """The known ones of ``referral_ids``, each with the service holding its offer or case
    and when the offer began; their rows locked in id order (one statement)."""
    v = referral_view.c
    return list(session.execute(locked(session, select(v.referral_id, v.service_id,
                                                       v.offered_at)
                                        .where(v.referral_id.in_(referral_ids))
                                        .order_by(v.referral_id))))


def follow_statuses(session: Session, refs: list[Any]) -> None:
    """Set several referrals' status, service, offer time and updated_at (attributes of
    each of ``refs``, by ``referral_id``): one statement."""
    if not refs:
        return
    conn = session.connection()
    if session.get_bind().dialect.name == "postgresql":
        rows = [{"rid": r.referral_id, "status": r.status, "sid": r.service_id,
                 "offered_at": None if r.offered_at is None else r.offered_at.isoformat(),
                 "now": r.updated_at.isoformat()} for r in refs]
        conn.execute(_FOLLOW_STATUSES_PG, {"rows": json.dumps(rows)})
        return
    conn.execute(_follow_statement(), [
        {"rid": r.referral_id, "status": r.status, "sid": r.service_id,
         "offered_at": r.offered_at, "now": r.updated_at} for r in refs])


@lru_cache(maxsize=1)
def _follow_statement() -> Any:
    v = referral_view.c
    return (update(referral_view).where(v.referral_id == bindparam("rid"))
            .values(status=bindparam("status"), service_id=bindparam("sid"),
                    offered_at=bindparam("offered_at", type_=v.offered_at.type),
                    updated_at=bindparam("now", type_=v.updated_at.type)))


_FOLLOW_STATUSES_PG = text(
    "UPDATE referral_view v SET status = r.status, service_id = r.sid, "
    "offered_at = r.offered_at, updated_at = r.now "
    "FROM json_to_recordset(CAST(:rows AS json)) AS r(rid text, status text, sid text, "
    "offered_at timestamptz, now timestamptz) WHERE v.referral_id = r.rid")


URGENCY_ORDER = {"emergency": 0, "urgent": 1, "routine": 2}


def unmatched_referrals(session: Session, categories: list[str], limit: int = 100) -> list[str]:
    """Unmatched referrals needing one of ``categories``: most urgent, then oldest, first."""
    rank = case(URGENCY_ORDER, value=referral_view.c.urgency, else_=9)
    rows = session.execute(select(referral_view.c.referral_id)
                           .where(referral_view.c.status == "unmatched",
                                  referral_view.c.need.in_(categories))
                           .order_by(rank, referral_view.c.submitted_at,
                                     referral_view.c.referral_id).limit(limit))
    return list(rows.scalars())


def tried_services(session: Session, referral_id: str) -> frozenset[str]:
    rows = session.execute(select(tried.c.service_id).where(tried.c.referral_id == referral_id))
    return frozenset(rows.scalars())


def mark_tried(session: Session, referral_id: str, service_id: str, now: datetime) -> None:
    session.execute(upsert(session, tried).values(
        referral_id=referral_id, service_id=service_id, tried_at=now,
    ).on_conflict_do_nothing(index_elements=[tried.c.referral_id, tried.c.service_id]))


def decision_by_event(session: Session, event_id: str) -> Any:
    return session.execute(select(decisions).where(decisions.c.event_id == event_id)).first()


def decision_services(session: Session, event_ids: list[str]) -> dict[str, str | None]:
    """``decision_by_event`` of several events, each found one's service (one statement)."""
    if not event_ids:
        return {}
    d = decisions.c
    return {r.event_id: r.service_id for r in session.execute(
        select(d.event_id, d.service_id).where(d.event_id.in_(event_ids)))}


# --- rows -> domain ----------------------------------------------------------------------------
def to_candidate(row: Any) -> domain.Candidate:
    sched = row.schedule or {}
    timed = getattr(row, "timed", 0) or 0
    return domain.Candidate(
        service_id=row.service_id, organization_id=row.organization_id,
        categories=frozenset(row.categories), status=row.status, accepting=row.accepting,
        capacity_max=row.capacity_max, open_offers=row.open_offers,
        active_cases=row.active_cases, age_min=row.age_min, age_max=row.age_max,
        genders=frozenset(row.genders), populations=frozenset(row.populations),
        languages=frozenset(row.languages),
        interpretation_available=row.interpretation_available,
        locations=tuple(domain.Point(p["lat"], p["lon"]) for p in row.locations),
        radius_km=row.radius_km, area_geohashes=tuple(row.area_geohashes),
        schedule=domain.Schedule(
            always_open=bool(sched.get("always_open")), timezone=sched.get("timezone", "UTC"),
            hours=tuple(domain.OpeningHours(h["byday"], h["opens_at"], h["closes_at"])
                        for h in sched.get("hours", [])),
            valid_from=sched.get("valid_from"), valid_to=sched.get("valid_to")),
        answered=getattr(row, "answered", 0) or 0, accepted=getattr(row, "accepted", 0) or 0,
        mean_response_s=(row.response_s_total / timed) if timed else None,
    )


def to_referral(row: Any, tried_ids: frozenset[str]) -> domain.Referral:
    elig = row.eligibility or {}
    return domain.Referral(
        referral_id=row.referral_id, need=row.need, urgency=row.urgency, lat=row.lat,
        lon=row.lon, geohash=row.geohash, age=elig.get("age"), age_band=elig.get("age_band"),
        gender=elig.get("gender"), preferred_language=elig.get("preferred_language"),
        needs_interpreter=bool(elig.get("needs_interpreter")),
        flags=frozenset(elig.get("flags") or ()), tried=tried_ids,
    )
