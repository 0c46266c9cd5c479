"""Write an HSDS ``Source`` into the registry, in chunks, with a per-record report.

Each chunk is one transaction written with bulk statements (that is what makes thousands of
services a second possible); every record was checked completely before (``bundle_of``), so
a record is written whole or not at all. Should the database still refuse a chunk, its
records are retried one transaction each and the refused ones reported. A service whose
document is byte-for-byte what was imported last time is left alone ("unchanged": no
write, no event), so re-importing the same data never duplicates anything. Live capacity is
never touched by an import; a new service starts unsized (maximum 0, not accepting).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from servicekit import events, outbox
from servicekit.db import Database

from .. import domain
from .. import tables as t
from ..handlers import SOURCE
from . import taxonomy, writer
from .bundle import bundle_of, organization_contacts, organization_row
from .mapping import Bundle, RecordError, _phones, digest
from .sources import Source, gc_paused

Progress = Callable[[int, int], None]


@dataclass
class Report:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    organizations: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)  # rejected or with warnings

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def add(self, other: Report) -> None:
        """Count in what ``other`` (one committed transaction's share) found."""
        self.created += other.created
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.rejected += other.rejected
        self.organizations += other.organizations
        self.records += other.records


@dataclass(frozen=True)
class Options:
    """How bundles are built and written. ``adjust`` rewrites a checked bundle (the seeder
    uses it to give services an IANA time zone, which HSDS 3.0 cannot carry); ``capacities``
    are written for services that have none yet (an import never touches live capacity)."""

    default_radius_km: float
    adjust: Callable[[Bundle], Bundle] | None = None
    capacities: Mapping[str, domain.Capacity] = field(default_factory=dict)


def import_source(db: Database, src: Source, *, default_radius_km: float, chunk_size: int = 500,
                  progress: Progress | None = None, adjust: Callable[[Bundle], Bundle] | None
                  = None, capacities: Mapping[str, domain.Capacity] | None = None) -> Report:
    with gc_paused():
        return _import_source(db, src, default_radius_km=default_radius_km,
                              chunk_size=chunk_size, progress=progress, adjust=adjust,
                              capacities=capacities)


def _import_source(db: Database, src: Source, *, default_radius_km: float, chunk_size: int,
                   progress: Progress | None, adjust: Callable[[Bundle], Bundle] | None,
                   capacities: Mapping[str, domain.Capacity] | None) -> Report:
    report = Report(rejected=len(src.rejected),
                    records=[{k: v for k, v in r.items() if k not in ("owners", "table",
                                                                       "row_id")}
                             for r in src.rejected])
    now = datetime.now(UTC)
    opts = Options(default_radius_km, adjust, capacities or {})
    orgs, org_contacts = [], []
    for label, o in src.organizations:
        try:
            rows, warnings = organization_contacts(o)
        except RecordError as exc:
            _reject(report, label, exc.reasons)
            continue
        orgs.append(o)
        org_contacts += rows
        if warnings:
            report.records.append({"record": label, "status": "imported",
                                   "warnings": warnings})
    with db.transaction() as session:
        writer.write_taxonomy(session, list(src.taxonomies.values()), list(src.terms.values()))
        org_ids = [o["id"] for o in orgs]
        report.organizations += writer.write_organizations(
            session, [organization_row(o) for o in orgs], now)
        contact_phones = writer.write_contacts(
            session, org_contacts, service_ids=[], location_ids=[], sal_ids=[],
            organization_ids=org_ids)
        writer.write_phones(session, [p for o in orgs
                                      for p in _phones(o.get("phones") or [],
                                                       organization_id=o["id"])]
                            + contact_phones,
                            service_ids=[], location_ids=[], organization_ids=org_ids)
    done = 0
    touched: dict[str, set[str]] = {"org": set(), "loc": set(), "svc": set()}
    for start in range(0, len(src.services), chunk_size):
        chunk = src.services[start:start + chunk_size]
        if _import_committed(db, chunk, src, report, now, opts, touched) is not None:
            for one in chunk:  # find the record the database refuses; keep the others
                if (refusal := _import_committed(db, [one], src, report, now, opts, touched)
                        ) is not None:
                    _reject(report, one[0], [
                        f"database refused the record ({type(refusal).__name__})"])
        done += len(chunk)
        if progress:
            progress(done, len(src.services))
    with db.transaction() as session:
        writer.republish_neighbours(session, touched, now)
    return report


def _import_committed(db: Database, chunk: list[tuple[str, dict[str, Any]]], src: Source,
                      report: Report, now: datetime, opts: Options,
                      touched: dict[str, set[str]]) -> SQLAlchemyError | None:
    """Import ``chunk`` in one transaction; only once it committed do its counts, report
    records and touched ids join ``report`` and ``touched`` (a refused chunk is redone
    record by record, which must not count anything twice). The database's refusal, if
    it refused the chunk."""
    mine = Report()
    seen: dict[str, set[str]] = {"org": set(), "loc": set(), "svc": set()}
    try:
        with db.transaction() as session:
            _import_chunk(session, chunk, src, mine, now, opts, seen)
    except SQLAlchemyError as exc:
        return exc
    report.add(mine)
    for kind, ids in seen.items():
        touched[kind] |= ids
    return None


def _known_terms(session: Session, src: Source) -> dict[str, dict[str, Any]]:
    stored = {r.id: dict(r._mapping) for r in session.execute(select(t.taxonomy_term))}
    return {**stored, **taxonomy.OWN_TERMS, **src.terms}


def _reject(report: Report, label: str, reasons: list[str]) -> None:
    report.rejected += 1
    report.records.append({"record": label, "status": "rejected", "errors": reasons})


def _import_chunk(session: Session, chunk: list[tuple[str, dict[str, Any]]], src: Source,
                  report: Report, now: datetime, opts: Options,
                  touched: dict[str, set[str]]) -> None:
    terms = _known_terms(session, src)
    ids = [doc.get("id") for _, doc in chunk]
    stored = {r.id: r for r in session.execute(
        select(t.service.c.id, t.service.c.import_digest, t.service.c.organization_id)
        .where(t.one_of(session, t.service.c.id, ids)))}
    bundles: list[tuple[str, Bundle]] = []
    for label, doc in chunk:
        old = stored.get(doc.get("id"))
        doc_digest = digest(doc)
        if old is not None and old.import_digest == doc_digest:
            report.unchanged += 1
            continue
        try:
            b = bundle_of(doc, known_terms=terms, default_radius_km=opts.default_radius_km,
                          now=now, doc_digest=doc_digest)
            b = opts.adjust(b) if opts.adjust else b
        except RecordError as exc:
            _reject(report, label, exc.reasons)
            continue
        if old is not None and old.organization_id != b.organization_id:
            _reject(report, label, ["organization_id: the service belongs to another org"])
        else:
            bundles.append((label, b))
    bundles = _check_references(session, bundles, report)
    if not bundles:
        return
    locations = writer.write_bundles(session, [b for _, b in bundles], now)
    writer.write_capacities(session, {b.service_id: opts.capacities[b.service_id]
                                      for _, b in bundles if b.service_id in opts.capacities},
                            now)
    for label, b in bundles:
        if stored.get(b.service_id) is None:
            report.created += 1
        else:
            report.updated += 1
        if b.warnings:
            report.records.append({"record": label, "status": "imported",
                                   "warnings": b.warnings})
        touched["org"].add(b.organization_id)
        touched["loc"].update(b.site_ids)
        touched["svc"].add(b.service_id)
    outbox.emit_many(session, events.PROVIDER_SERVICE_UPSERTED,
                     _snapshots(session, [b for _, b in bundles], locations), source=SOURCE,
                     validate_each=False)  # one builder: the first is validated in full, see emit_many


def _snapshots(session: Session, bundles: list[Bundle], locations: dict[str, dict[str, Any]]
               ) -> list[tuple[str, dict[str, Any]]]:
    """The routing snapshots of just-written bundles, built from the bundles themselves
    (no re-reading of the rows just written): only what an import does not write comes
    from the database, the organizations' names and notification channels (an import
    keeps the channels; a service may name an organization imported earlier) and live
    capacity. Values take the types the database gives back (coordinates and radius are
    floats), so each snapshot is exactly ``queries.snapshot_of`` of the stored service."""
    org_ids = {b.organization_id for b in bundles}
    orgs = {r.id: domain.Organization(id=r.id, name=r.name,
                                      notification_channels=tuple(r.notification_channels))
            for r in session.execute(
                select(t.organization.c.id, t.organization.c.name,
                       t.organization.c.notification_channels)
                .where(t.one_of(session, t.organization.c.id, org_ids)))}
    capacity = t.service_capacity.c
    caps = {r.service_id: domain.Capacity(maximum=r.maximum, accepting=r.accepting,
                                          available=r.available)
            for r in session.execute(
                select(capacity.service_id, capacity.maximum, capacity.accepting,
                       capacity.available)
                .where(t.one_of(session, capacity.service_id, [b.service_id for b in bundles])))}
    sites = {i: domain.Location(id=i, latitude=float(loc["latitude"]),
                                longitude=float(loc["longitude"]), name=loc["name"],
                                confidential=bool(loc["confidential"]))
             for i, loc in locations.items()}
    out = []
    for b in bundles:
        svc, area = b.service, b.service.service_area
        if area.radius_km is not None and type(area.radius_km) is not float:  # e.g. 25
            svc = replace(svc, service_area=replace(area, radius_km=float(area.radius_km)))
        out.append((b.service_id, domain.routing_snapshot(
            orgs[b.organization_id], svc, [sites[i] for i in b.site_ids],
            caps.get(b.service_id, domain.NO_CAPACITY))))
    return out


def _check_references(session: Session, bundles: list[tuple[str, Bundle]], report: Report
                      ) -> list[tuple[str, Bundle]]:
    """Foreign keys to missing records: organizations must exist or come with the record;
    a location without coordinates must be a stored (confidential) one."""
    org_ids = {b.organization_id for _, b in bundles} | {
        loc["organization_id"] for _, b in bundles for loc in b.locations}
    existing_orgs = set(session.execute(select(t.organization.c.id)
                                        .where(t.one_of(session, t.organization.c.id, org_ids))).scalars())
    existing_orgs |= {b.organization_id for _, b in bundles if b.organization}
    loc_ids = [loc["id"] for _, b in bundles for loc in b.locations if loc["latitude"] is None]
    coords = {r.id: (r.latitude, r.longitude) for r in session.execute(
        select(t.location.c.id, t.location.c.latitude, t.location.c.longitude)
        .where(t.one_of(session, t.location.c.id, loc_ids)))}
    good = []
    for label, b in bundles:
        if b.organization_id not in existing_orgs:
            _reject(report, label, ["organization_id: no such organization"])
            continue
        for loc in b.locations:
            if loc["organization_id"] not in existing_orgs:
                b.warnings.append(f"location {loc['id']}: organization "
                                  f"{loc['organization_id']} unknown; filed under the "
                                  "service's organization")
                loc["organization_id"] = b.organization_id
            if loc["latitude"] is None and loc["id"] in coords:
                loc["latitude"], loc["longitude"] = coords[loc["id"]]
        missing = [loc["id"] for loc in b.locations if loc["latitude"] is None]
        if missing:
            _reject(report, label, [f"location {i}: confidential location without "
                                    "coordinates that is not stored yet" for i in missing])
            continue
        good.append((label, b))
    return good
