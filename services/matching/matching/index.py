"""The matching worker's in-memory directory index: a decision reads its candidates from
process memory and asks the database only for what can change under it at any moment
(load and answer history of those candidates, the referral's tried services, and which
services changed since the last look), in one statement; a run of submissions asks it
once for all its decisions (``lookup_many``).

What it holds: every stored service's parsed snapshot (a ``Record``: the static fields of
a ``domain.Candidate`` in a tuple, the numbers the lookup loop reads in an array of C
doubles, see ``_Store``; a candidate is made only for a service a lookup returns),
bucketed by (category, cell) exactly like ``service_cells`` (radius disks as grid
keys, see ``cells.disk_grid``; service-area geohashes cut to precision 6; ``""`` for
services declaring no area), each with its reach box, plus services per category. A
lookup reads the buckets of the referral's cell prefixes, drops what the reach box and the
exact area check (``eligibility.in_area``) exclude, and returns the rest in ``service_id``
order with their current load and history: the candidates and counts of
``directory.candidates_for`` (the benchmark and the tests compare both, and a linear scan).

How it stays current, with any number of workers, each of which consumes only some
partitions of ``provider.events``:

* every transaction that stores or removes a service also writes ``directory_changes``
  (``directory.note_change``): the service and the id of the writing transaction
  (PostgreSQL ``pg_current_xact_id``; SQLite: a counter, SQLite having one writer at a
  time). The index is derived from the database alone, never from the events it saw;
* every lookup reads the changes committed since its previous look, in the same statement
  as the load: on PostgreSQL, a change the previous look's snapshot could not see was made
  by a transaction in progress then (its ``xip`` list) or not yet begun (an id from its
  ``xmax`` on); so each newly committed change is found exactly once, however the
  transactions' commits interleave (a bare "newer than the newest change seen" would
  miss a transaction that took its id first and committed last). Those services are
  re-read (one more statement, only then);
* the transaction's own uncommitted changes (a service upserted earlier in the same
  consumer batch, or just before ``retry_unmatched``) are staged by the handlers in a
  per-transaction overlay (``stage``) that this transaction's lookups see and nothing
  else does; when the transaction ends, committed or rolled back, its services are
  re-read by the next lookup, so shared memory only ever holds committed rows.

Load accounting stays in the database: the decision's load figures are read with the
candidates, and a place is still taken only by the conditional ``UPDATE``
(``tables.reserve``), so capacity is never exceeded however stale anything else is.
The index is loaded on first use (about 1 s of CPU per 10,000 services).
"""
from __future__ import annotations

import gc
import json
import math
import sys
import threading
import weakref
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from sqlalchemy import bindparam, event, text
from sqlalchemy.orm import Session

from servicekit.geo import COARSE_PRECISION, EARTH_RADIUS_KM

from . import cells, domain, tables
from .directory import ALL, centre
from .eligibility import NEAREST_HINT, in_area

Key = tuple[str, Any]  # (category, geohash prefix or cells.GridKey)
# what ``lookup_many`` looks up: need, geohash, point (None: the cell's centre), referral
Query = tuple[str, str, "tuple[float, float] | None", "str | None"]
LOAD_ZERO = (0, 0, 0, 0, 0, 0.0)  # open, active, answered, accepted, timed, seconds

_COLUMNS = ("v.service_id, v.organization_id, v.status, CAST(v.categories AS TEXT), "
            "CAST(v.locations AS TEXT), v.radius_km, CAST(v.area_geohashes AS TEXT), "
            "v.age_min, v.age_max, CAST(v.genders AS TEXT), CAST(v.populations AS TEXT), "
            "CAST(v.languages AS TEXT), v.interpretation_available, "
            "CAST(v.schedule AS TEXT), v.capacity_max, v.accepting")
_ALL_ROWS = (f"SELECT {_COLUMNS}, COALESCE(c.xact, 0) FROM service_view v "
             "LEFT JOIN directory_changes c ON c.service_id = v.service_id")
# re-read after a change: the change row and the snapshot in one statement (one snapshot);
# no service_view row = removed
_ROWS_BY_ID_PG = (f"SELECT u.sid, {_COLUMNS}, COALESCE(c.xact, 0) "
                  "FROM unnest(%(ids)s::text[]) AS u(sid) "
                  "LEFT JOIN directory_changes c ON c.service_id = u.sid "
                  "LEFT JOIN service_view v ON v.service_id = u.sid")
_ROWS_BY_ID = text(f"SELECT v.service_id, {_COLUMNS}, COALESCE(c.xact, 0) FROM service_view v "
                   "LEFT JOIN directory_changes c ON c.service_id = v.service_id "
                   "WHERE v.service_id IN :ids").bindparams(bindparam("ids", expanding=True))

# the per-decision statement (PostgreSQL, prepared): load and history of the candidates,
# the changes committed since the previous look, the referral's tried services, and the
# snapshot this statement saw (the next look's starting point); or the same for a run of
# decisions (``lookup_many``: the union of their candidates, every referral's tried
# services, each row naming its referral). Every parameter sits in a sub-select, opaque
# to the planner, so custom and generic plans cost the same and the server settles on the
# generic plan (planning it at every call cost ~4x the execution);
# changes are read in xact order with a LIMIT, so that plan scans ix_directory_changes_xact
# whatever the statistics say (a full batch means there may be more: see ``_look``).
CHANGES_PER_LOOK = 1000
# rows per fetch while the index loads: a batch's rows (JSON text) are at the worker's
# peak memory next to the whole index (at 5,000 rows the peak was ~17 MB higher)
LOAD_BATCH = 500
_LOOK_PG = f"""
SELECT 0, u.sid, COALESCE(l.open_offers, 0), COALESCE(l.active_cases, 0),
       COALESCE(h.answered, 0), COALESCE(h.accepted, 0), COALESCE(h.timed, 0),
       COALESCE(h.response_s_total, 0.0), NULL::bigint, NULL::text
FROM unnest((SELECT %(ids)t::text[])) AS u(sid)
LEFT JOIN service_load l ON l.service_id = u.sid
LEFT JOIN service_history h ON h.service_id = u.sid
UNION ALL
(SELECT 1, c.service_id, NULL, NULL, NULL, NULL, NULL, NULL, c.xact, NULL
 FROM directory_changes c WHERE c.xact >= (SELECT %(since)s::bigint)
 ORDER BY c.xact LIMIT {CHANGES_PER_LOOK})
UNION ALL
SELECT 2, t.service_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, t.referral_id
FROM unnest((SELECT %(rids)t::text[])) AS r(rid) JOIN tried t ON t.referral_id = r.rid
UNION ALL
SELECT 3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, pg_current_snapshot()::text
"""
_CHANGES_SINCE_PG = "SELECT service_id, xact FROM directory_changes WHERE xact >= %(since)s"
_LOAD_BY_ID = text(
    "SELECT v.sid, COALESCE(l.open_offers, 0), COALESCE(l.active_cases, 0), "
    "COALESCE(h.answered, 0), COALESCE(h.accepted, 0), COALESCE(h.timed, 0), "
    "COALESCE(h.response_s_total, 0.0) FROM (SELECT service_id AS sid FROM service_view "
    "WHERE service_id IN :ids) v LEFT JOIN service_load l ON l.service_id = v.sid "
    "LEFT JOIN service_history h ON h.service_id = v.sid"
).bindparams(bindparam("ids", expanding=True))
_CHANGES_SINCE = text("SELECT service_id, xact FROM directory_changes WHERE xact >= :xmax")
_TRIED = text("SELECT referral_id, service_id FROM tried WHERE referral_id IN :rids"
              ).bindparams(bindparam("rids", expanding=True))


# A service's ``Record``: the fields of ``domain.Candidate`` but the load and history ones
# (always zero here), in ``_STATIC`` order, then the transaction that wrote the version
# (0: older than the index). What the parser makes, the overlay holds and ``_with_load``
# makes a candidate of; the index keeps its services' records in a ``_Store``.
Record = tuple[Any, ...]
_STATIC = ("service_id", "organization_id", "categories", "status", "accepting",
           "capacity_max", "age_min", "age_max", "genders", "populations", "languages",
           "interpretation_available", "locations", "radius_km", "area_geohashes", "schedule")
_CATEGORIES, _LOCATIONS, _RADIUS, _AREAS, _XACT = 2, 12, 13, 14, 16
NO_BOX = (-91.0, 91.0, -181.0, 181.0)
_HOT = 8  # doubles per slot in ``_Store.hot`` (64 bytes: what the lookup loop reads)


class _Store:
    """The index's services, one slot each: the record (``locations`` None for a simple
    service, one radius around one location, the usual one) and, in one array of C
    doubles, ``_HOT`` per slot, what the lookup loop reads of a simple service: its
    location's latitude and longitude, the half-height and half-width of a box around its
    disk centred on the location (a superset of ``cells.disk_cover``'s reach box: see
    ``put``), the latitude in radians and its cosine, and the radius. Other services keep
    their locations in the record, and their reach box and candidate (for the area check)
    in ``others``.

    A Python float costs 24 bytes and a one-point locations tuple ~180 bytes with its
    floats: held per service (a candidate, and a tuple of floats per service for the
    loop) they were most of the index's memory; the lookup makes the location's point
    again for a service it returns (the same floats, so the same candidate)."""

    def __init__(self) -> None:
        self.records: list[Record | None] = []
        self.hot = array("d")
        self.others: dict[int, tuple[float, float, float, float, domain.Candidate]] = {}
        self.free: list[int] = []

    def put(self, rec: Record) -> tuple[int, bool, list[Key]]:
        """Store ``rec``: its slot, whether it is simple, and the buckets it sits in."""
        box, keys, simple = placement(rec)
        if self.free:
            slot = self.free.pop()
        else:
            slot = len(self.records)
            self.records.append(None)
            self.hot.extend(_ZEROS)
        if simple:
            here, radius = rec[_LOCATIONS][0], rec[_RADIUS]
            phi = math.radians(here.lat)
            # every point of the reach box is within these of the location (a float
            # difference is monotonic in the point), and the reach box holds the disk
            half_lat, half_lon = ((math.inf, math.inf) if box is None else
                                  (max(here.lat - box[0], box[1] - here.lat),
                                   max(here.lon - box[2], box[3] - here.lon)))
            start = slot * _HOT
            self.hot[start:start + _HOT] = array("d", (
                here.lat, here.lon, half_lat, half_lon, phi, math.cos(phi), radius, 0.0))
            rec = (*rec[:_LOCATIONS], None, *rec[_LOCATIONS + 1:])
        else:
            self.others[slot] = (*(box or NO_BOX), candidate(rec))
        self.records[slot] = rec
        return slot, simple, keys

    def record(self, slot: int) -> Record:
        """The record stored in ``slot``, with its locations."""
        rec = self.records[slot]
        assert rec is not None
        if rec[_LOCATIONS] is None:
            rec = (*rec[:_LOCATIONS], self._here(slot), *rec[_LOCATIONS + 1:])
        return rec

    def _here(self, slot: int) -> tuple[domain.Point]:
        here = object.__new__(domain.Point)  # without the frozen __init__'s setattrs
        start = slot * _HOT
        object.__setattr__(here, "__dict__", {"lat": self.hot[start],
                                              "lon": self.hot[start + 1]})
        return (here,)

    def candidate(self, slot: int, load: Sequence[Any], hint: Any) -> domain.Candidate:
        """``_with_load`` of the record in ``slot``."""
        rec = self.records[slot]
        assert rec is not None
        return _with_load(rec, load, hint,
                          self._here(slot) if rec[_LOCATIONS] is None else rec[_LOCATIONS])

    def drop(self, slot: int) -> None:
        self.records[slot] = None
        self.others.pop(slot, None)
        self.free.append(slot)


_ZEROS = array("d", bytes(8 * _HOT))


def placement(rec: Record) -> tuple[tuple[float, float, float, float] | None, list[Key], bool]:
    """The reach box of a service, the buckets it sits in (the same every time for the
    same record: ``_drop`` finds them again this way), and whether it is simple (one
    radius around one location)."""
    locations, radius, areas = rec[_LOCATIONS], rec[_RADIUS], rec[_AREAS]
    if radius is not None and not areas and len(locations) == 1:
        here = locations[0]
        box, grid = cells.disk_cover(here.lat, here.lon, radius)
        return box, [(category, g) for category in rec[_CATEGORIES] for g in grid], True
    box = cells.reach_box([(p.lat, p.lon) for p in locations], radius, areas)
    return box, list(entry_keys(candidate(rec))), False



@dataclass
class Found:
    """What a lookup found: the candidates covering the point with their load and history
    (``service_id`` order), the pre-filter counts, the referral's tried services, and how
    many index entries it examined (the cost of the lookup)."""

    candidates: list[domain.Candidate]
    pre: dict[str, int]
    tried: frozenset[str]
    examined: int


@dataclass
class _Look:
    loads: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    changes: list[tuple[str, int]] = field(default_factory=list)
    tried: dict[str, set[str]] = field(default_factory=dict)  # by referral
    snapshot: tuple[int, list[int]] | None = None


class _Point:
    """What the area check reads of a referral (``domain.Referral`` without the rest)."""

    __slots__ = ("geohash", "lat", "lon", "need")

    def __init__(self, need: str, geohash: str, lat: float, lon: float):
        self.need, self.geohash, self.lat, self.lon = need, geohash, lat, lon


def entry_keys(c: domain.Candidate) -> frozenset[Key]:
    """The buckets of a service: (category, cell) for every cell ``service_cells`` would
    index it under, radius cells as grid keys."""
    areas = {g.lower()[:6] for g in c.area_geohashes}
    where: set[Any] = set(areas)
    if c.radius_km is None and not areas:
        where.add(cells.EVERYWHERE)
    elif c.radius_km is not None:
        for p in c.locations:
            where |= cells.disk_grid(p.lat, p.lon, c.radius_km)
    return frozenset((category, w) for category in c.categories for w in where)


def lookup_keys(need: str, geohash: str) -> list[Key]:
    """The buckets a referral in ``geohash`` reads (every prefix of its cell)."""
    return ([(need, g) for g in cells.lookup_cells(geohash)]
            + [(need, k) for k in cells.lookup_grid(geohash)])


def record(c: domain.Candidate, xact: int = 0) -> Record:
    """The ``Record`` of ``c`` (its load and history dropped)."""
    return (*(getattr(c, name) for name in _STATIC), xact)


def _with_load(rec: Record, load: Sequence[Any], hint: Any,
               locations: tuple[domain.Point, ...]) -> domain.Candidate:
    """The candidate of ``rec`` with load and history (without the frozen dataclass'
    per-field ``__init__``: a tenth of the cost; runs once per candidate and decision), its
    fields in declaration order, ``locations`` for the record's (``_Store`` holds none for
    a simple service), carrying the distance ``_covering`` computed
    (``eligibility.NEAREST_HINT``) when it did."""
    d = {"service_id": rec[0], "organization_id": rec[1], "categories": rec[2],
         "status": rec[3], "accepting": rec[4], "capacity_max": rec[5],
         "open_offers": load[0], "active_cases": load[1], "age_min": rec[6],
         "age_max": rec[7], "genders": rec[8], "populations": rec[9], "languages": rec[10],
         "interpretation_available": rec[11], "locations": locations, "radius_km": rec[13],
         "area_geohashes": rec[14], "schedule": rec[15], "answered": load[2],
         "accepted": load[3], "mean_response_s": load[5] / load[4] if load[4] else None}
    if hint is not None:
        d[NEAREST_HINT] = hint
    c = object.__new__(domain.Candidate)
    object.__setattr__(c, "__dict__", d)
    return c


def candidate(rec: Record) -> domain.Candidate:
    """The candidate of ``rec``, with zero load and history."""
    return _with_load(rec, LOAD_ZERO, None, rec[_LOCATIONS])


class _Parser:
    """Snapshot columns (JSON as text) to a ``Record``. Values many services share
    (category lists, languages, schedules) are parsed once, by their text, and the strings
    they share (organization, status) are interned: one copy each in memory."""

    LIMIT = 100_000

    def __init__(self) -> None:
        self._memo: dict[tuple[str, str | None], Any] = {}

    def _shared(self, kind: str, raw: str | None, build: Callable[[Any], Any]) -> Any:
        key = (kind, raw)
        hit = self._memo.get(key)
        if hit is None:
            if len(self._memo) >= self.LIMIT:
                self._memo.clear()
            hit = self._memo[key] = build(None if raw is None else json.loads(raw))
        return hit

    @staticmethod
    def _schedule(s: Any) -> domain.Schedule:
        s = s or {}
        return domain.Schedule(
            always_open=bool(s.get("always_open")), timezone=s.get("timezone", "UTC"),
            hours=tuple(domain.OpeningHours(h["byday"], h["opens_at"], h["closes_at"])
                        for h in s.get("hours", [])),
            valid_from=s.get("valid_from"), valid_to=s.get("valid_to"))

    def record(self, row: Sequence[Any]) -> Record:
        """From the ``_COLUMNS`` of a row (the 16 columns from ``row[0]`` on) and the
        change's xact after them, in ``_STATIC`` order (a test holds the candidate made
        of it to the database's)."""
        (sid, org, status, cats, locs, radius, areas, age_min, age_max, genders, pops,
         langs, interp, sched, cap, accepting, xact) = row[:17]
        frozen = self._shared
        return (sid, sys.intern(org), frozen("set", cats, frozenset), sys.intern(status),
                bool(accepting), cap, age_min, age_max, frozen("set", genders, frozenset),
                frozen("set", pops, frozenset), frozen("set", langs, frozenset),
                bool(interp),
                tuple(domain.Point(p["lat"], p["lon"]) for p in json.loads(locs)),
                radius, frozen("tuple", areas, tuple),
                frozen("schedule", sched, self._schedule), int(xact))


def candidate_of(row: dict[str, Any]) -> domain.Candidate:
    """A ``handlers.service_row`` as a candidate with zero load (what ``stage`` holds)."""
    return tables.to_candidate(SimpleNamespace(**row, open_offers=0, active_cases=0))


class DirectoryIndex:
    """One worker's in-memory directory (see the module docstring). Bound to the first
    database it reads; used by ``decide.route`` when the ``Policy`` carries one."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._store = _Store()
        self._slots: dict[str, int] = {}  # by service
        # per bucket, the slots of its services (a service not simple: ~slot) as C ints, not
        # a dict by service: an item costs 4 bytes, a dict's ~50, and a service leaves its
        # buckets only when it changes or goes
        self._buckets: dict[Key, array[int]] = {}
        # buckets per cell length (geohash keys) and per grid precision (grid keys): a
        # lookup reads only the prefixes some bucket can have
        self._lengths: dict[int, int] = {}
        self._precisions: dict[int, int] = {}
        self._counts: dict[str, int] = {}
        self._snapshot: tuple[int, list[int]] | None = None  # None: not loaded
        self._recheck: set[str] = set()
        self._parser = _Parser()
        self._bound: Any = None
        self._overlay_key = f"matching.index.{id(self)}"
        self.loads = 0  # full loads (1 unless the database was swapped under it)

    # --- the transaction's own changes -------------------------------------------------------
    def stage(self, session: Session, service_id: str, row: dict[str, Any] | None) -> None:
        """The handler stored (``row``: ``handlers.service_row``) or removed (None)
        ``service_id`` in ``session``'s transaction: its lookups see that at once; everyone
        else once the transaction committed (re-read from the database)."""
        overlay = self._overlay(session, create=True)
        overlay[service_id] = None if row is None else record(candidate_of(row))

    def _overlay(self, session: Session, create: bool = False) -> dict[str, Record | None]:
        overlay: dict[str, Record | None] | None = session.info.get(self._overlay_key)
        if overlay is None:
            overlay = {}
            if create:
                session.info[self._overlay_key] = overlay
                if not session.info.get(self._overlay_key + ".hooked"):
                    session.info[self._overlay_key + ".hooked"] = True
                    event.listen(session, "after_transaction_end", self._transaction_ended)
        return overlay

    def _transaction_ended(self, session: Session, transaction: Any) -> None:
        if transaction.parent is not None:
            return  # a savepoint or subtransaction: the outer transaction goes on
        overlay = session.info.pop(self._overlay_key, None)
        if overlay:
            with self._lock:  # committed or rolled back: read what the database holds
                self._recheck.update(overlay)

    # --- lookups -----------------------------------------------------------------------------
    def lookup(self, session: Session, need: str, geohash: str,
               at: tuple[float, float] | None = None, referral_id: str | None = None
               ) -> Found:
        """Candidates offering ``need`` whose area covers the point ``at`` (default: the
        centre of ``geohash``), with load and history, the pre-filter counts of
        ``directory.candidates_for``, and ``referral_id``'s tried services."""
        return self.lookup_many(session, [(need, geohash, at, referral_id)])[0]

    def lookup_many(self, session: Session, queries: Sequence[Query]) -> list[Found]:
        """``lookup`` of each of ``queries`` (need, geohash, at, referral_id), as they
        would find in turn in this transaction with nothing written between them (a run of
        submissions: the run's own places are counted by ``decide.Held``, not in the
        database), in one look for them all: each referral's candidates from memory, then
        the union's load and history, the changes committed since the last look and every
        referral's tried services in one statement. The changes are applied before any
        referral's candidates are final, as the first ``lookup`` of the run would apply them
        and the later ones would find none more; if memory changed, the candidates are
        found again and the load of those not read yet is read (one more statement, only
        then)."""
        if not queries:
            return []
        points = [_Point(need, geohash, *(at if at is not None else centre(geohash)))
                  for need, geohash, at, _rid in queries]
        rids = sorted({rid for *_, rid in queries if rid is not None})
        overlay = self._overlay(session)
        with self._lock:
            self._ensure_loaded(session, overlay)
            covered = [self._covering(self._keys(p.need, p.geohash), p, overlay)
                       for p in points]
            look = self._look(session, _service_ids(covered), rids)
            if self._catch_up(session, look, overlay):
                covered = [self._covering(self._keys(p.need, p.geohash), p, overlay)
                           for p in points]
                missing = [sid for sid in _service_ids(covered) if sid not in look.loads]
                if missing:
                    look.loads.update(self._read_loads(session, missing))
            totals = {need: self._totals(need, overlay) for need in {p.need for p in points}}
            loads, tried, store = look.loads, look.tried, self._store
            found = []
            for (_need, _geohash, _at, rid), p, (statics, examined) in zip(
                    queries, points, covered, strict=True):
                lat, lon = p.lat, p.lon
                # made under the lock: a slot is another service's once this one changed
                candidates = [
                    store.candidate(held, loads.get(sid, LOAD_ZERO),
                                    None if km is None else (lat, lon, km))
                    if isinstance(held, int) else
                    _with_load(held, loads.get(sid, LOAD_ZERO), None, held[_LOCATIONS])
                    for sid, held, km in statics]
                total, offering = totals[p.need]
                pre = {"category": max(0, total - offering),
                       "out_of_area": max(0, offering - len(candidates))}
                found.append(Found(candidates, pre, frozenset(tried.get(rid, ())), examined))
        return found

    def candidates_for(self, session: Session, need: str, geohash: str,
                       at: tuple[float, float] | None = None
                       ) -> tuple[list[domain.Candidate], dict[str, int]]:
        """``directory.candidates_for`` from memory."""
        found = self.lookup(session, need, geohash, at)
        return found.candidates, found.pre

    def _covering(self, keys: Iterable[Key], point: Any,
                  overlay: dict[str, Record | None]
                  ) -> tuple[list[tuple[str, int | Record, float | None]], int]:
        """Services in the buckets whose area covers ``point`` (``eligibility.in_area``),
        as (``service_id``, slot or the overlay's record, distance when it was computed),
        in ``service_id`` order; and how many distinct entries were examined.

        A simple service (one radius around one location) sits in the buckets of one grid
        precision only, and a point lies in one cell per precision, so it is met at most
        once per lookup: only the other services need the ``seen`` set."""
        lat, lon = point.lat, point.lon
        radians, sin, asin, sqrt = math.radians, math.sin, math.asin, math.sqrt
        phi1 = radians(lat)
        cos1 = math.cos(phi1)
        seen: set[str] = set()
        out: list[tuple[str, int | Record, float | None]] = []
        simple = 0
        buckets, store = self._buckets, self._store
        records, hot, others = store.records, store.hot, store.others
        for key in keys:
            bucket = buckets.get(key)
            if not bucket:
                continue
            for slot in bucket:
                if slot < 0:  # not simple
                    slot = ~slot
                    sid = records[slot][0]  # type: ignore[index]
                    if sid in seen:
                        continue
                    seen.add(sid)
                    lat_min, lat_max, lon_min, lon_max, c = others[slot]
                    if (lat_min <= lat <= lat_max and lon_min <= lon <= lon_max
                            and not (overlay and sid in overlay) and in_area(point, c)):
                        out.append((sid, slot, None))
                    continue
                simple += 1
                at = slot * 8  # * _HOT
                slon = hot[at + 1]
                if abs(lat - hot[at]) > hot[at + 2] or abs(lon - slon) > hot[at + 3]:
                    continue
                sid = records[slot][0]  # type: ignore[index]
                if overlay and sid in overlay:
                    continue
                # in_area of a one-location radius service: eligibility.haversine_km's
                # arithmetic, operation for operation (the same float), inline
                a = (sin((hot[at + 4] - phi1) / 2) ** 2
                     + cos1 * hot[at + 5] * sin(radians(slon - lon) / 2) ** 2)
                km = 2 * EARTH_RADIUS_KM * asin(min(1.0, sqrt(a)))
                if km <= hot[at + 6]:
                    out.append((sid, slot, km))
        for sid, staged in overlay.items():
            if (staged is not None and point.need in staged[_CATEGORIES]
                    and in_area(point, candidate(staged))):
                out.append((sid, staged, None))
        out.sort()  # by service_id: unique here, so the rest of a triple is never compared
        return out, simple + len(seen)

    def _totals(self, need: str, overlay: dict[str, Record | None]) -> tuple[int, int]:
        total, offering = self._counts.get(ALL, 0), self._counts.get(need, 0)
        for sid, staged in overlay.items():
            held = self._slots.get(sid)
            if held is not None:
                total -= 1
                offering -= need in self._store.records[held][_CATEGORIES]  # type: ignore[index]
            if staged is not None:
                total += 1
                offering += need in staged[_CATEGORIES]
        return total, offering

    # --- reading the database ----------------------------------------------------------------
    @staticmethod
    def _pg(session: Session) -> bool:
        return session.get_bind().dialect.name == "postgresql"

    def _look(self, session: Session, ids: list[str], referral_ids: Sequence[str]) -> _Look:
        """Load and history of ``ids``, changes since the last look, the tried services of
        ``referral_ids``."""
        assert self._snapshot is not None
        xmax, xip = self._snapshot
        look = _Look()
        conn = session.connection()
        if self._pg(session):
            # changes the last look could not see yet: made by transactions that were in
            # progress then (``xip``) or had not begun (ids from ``xmax`` on); read as one
            # range from the oldest of them, and the rest (seen before) skipped here
            since = min([xmax, *xip])
            fresh = set(xip)
            cur = _cursor(_driver(conn))
            rows = cur.execute(_LOOK_PG, {"ids": text_array(ids), "since": since,
                                          "rids": text_array(referral_ids)},
                               prepare=True).fetchall()
            loads, changes, read = look.loads, look.changes, 0
            for row in rows:
                kind = row[0]
                if kind == 0:
                    loads[row[1]] = row[2:8]
                elif kind == 1:
                    read += 1
                    if row[8] >= xmax or row[8] in fresh:
                        changes.append((row[1], row[8]))
                elif kind == 2:
                    look.tried.setdefault(row[9], set()).add(row[1])
                else:
                    look.snapshot = _parse_snapshot(row[9])
            if read >= CHANGES_PER_LOOK:  # a full batch: there may be more (the same snapshot)
                for sid, xact in cur.execute(_CHANGES_SINCE_PG, {"since": since}).fetchall():
                    if xact >= xmax or xact in fresh:
                        changes.append((sid, xact))
            return look
        if ids:
            look.loads.update(self._read_loads(session, ids))
        look.changes = [(r[0], r[1]) for r in conn.execute(_CHANGES_SINCE, {"xmax": xmax})]
        if referral_ids:
            for rid, sid in conn.execute(_TRIED, {"rids": list(referral_ids)}):
                look.tried.setdefault(rid, set()).add(sid)
        return look

    @staticmethod
    def _read_loads(session: Session, ids: list[str]) -> dict[str, tuple[Any, ...]]:
        rows = session.connection().execute(_LOAD_BY_ID, {"ids": ids})
        return {r[0]: tuple(r[1:7]) for r in rows}

    def _catch_up(self, session: Session, look: _Look, overlay: dict[str, Record | None]
                  ) -> bool:
        """Apply what changed since the last look; True if memory changed."""
        assert self._snapshot is not None
        pending = {sid for sid, xact in look.changes if sid not in overlay
                   and ((held := self._slots.get(sid)) is None
                        or self._store.records[held][_XACT] != xact)}  # type: ignore[index]
        if self._recheck:
            pending |= self._recheck - overlay.keys()
        if pending:
            self._reread(session, sorted(pending))
            self._recheck -= pending
        if look.snapshot is not None:  # PostgreSQL
            self._snapshot = look.snapshot
        else:  # SQLite: a counter; the transaction's own (uncommitted) rows excluded
            seen = [xact for sid, xact in look.changes if sid not in overlay]
            self._snapshot = (max([self._snapshot[0], *(x + 1 for x in seen)]), [])
        return bool(pending)

    def _reread(self, session: Session, ids: list[str]) -> None:
        conn = session.connection()
        if self._pg(session):
            with _driver(conn).cursor() as cur:
                rows = cur.execute(_ROWS_BY_ID_PG, {"ids": ids}).fetchall()
        else:
            rows = list(conn.execute(_ROWS_BY_ID, {"ids": ids}))
        got = set()
        for row in rows:
            sid, snapshot = row[0], row[1:]
            got.add(sid)
            if snapshot[0] is None:
                self._drop(sid)
            else:
                self._put(self._parser.record(snapshot))
        for sid in set(ids) - got:  # not stored (any more)
            self._drop(sid)

    def _ensure_loaded(self, session: Session, overlay: dict[str, Record | None]) -> None:
        bind = session.get_bind()
        if self._snapshot is not None and self._bound is bind:
            return
        self._clear()
        self._bound = bind
        conn = session.connection()
        collecting = gc.isenabled()
        gc.disable()  # millions of new long-lived objects: no point scanning them meanwhile
        try:
            top = 0

            def put_all(rows: Iterable[Sequence[Any]]) -> None:
                nonlocal top
                for row in rows:
                    if row[0] in overlay:  # this transaction's own version: re-read after
                        self._recheck.add(row[0])
                        continue
                    rec = self._parser.record(row)
                    top = max(top, rec[_XACT])
                    self._put(rec)

            if self._pg(session):
                snap = conn.exec_driver_sql("SELECT pg_current_snapshot()::text").scalar_one()
                # a server-side cursor, read in batches: the whole result at once (rows of
                # JSON text) cost as much memory as the index, kept by the allocators after
                with _driver(conn).cursor(name=f"matching_index_{id(self)}") as cur:
                    cur.itersize = LOAD_BATCH
                    cur.execute(_ALL_ROWS)
                    put_all(cur)
            else:
                put_all(conn.exec_driver_sql(_ALL_ROWS))
            self._snapshot = _parse_snapshot(snap) if self._pg(session) else (top + 1, [])
            self.loads += 1
        except BaseException:
            self._clear()
            raise
        finally:
            if collecting:
                gc.enable()

    # --- memory ------------------------------------------------------------------------------
    def _clear(self) -> None:
        self._store = _Store()
        self._slots.clear()
        self._buckets.clear()
        self._lengths.clear()
        self._precisions.clear()
        self._counts.clear()
        self._snapshot = None

    def _put(self, rec: Record) -> None:
        sid = rec[0]
        self._drop(sid)
        slot, simple, keys = self._store.put(rec)
        self._slots[sid] = slot
        held = slot if simple else ~slot
        buckets = self._buckets
        for key in keys:
            bucket = buckets.get(key)
            if bucket is None:
                bucket = buckets[key] = array("i")
                self._level(key, 1)
            bucket.append(held)
        counts = self._counts
        counts[ALL] = counts.get(ALL, 0) + 1
        for category in rec[_CATEGORIES]:
            counts[category] = counts.get(category, 0) + 1

    def _drop(self, sid: str) -> None:
        slot = self._slots.pop(sid, None)
        if slot is None:
            return
        rec = self._store.record(slot)
        _box, keys, simple = placement(rec)  # the buckets ``_put`` placed it in
        held = slot if simple else ~slot
        for key in keys:
            bucket = self._buckets[key]
            bucket.remove(held)
            if not bucket:
                del self._buckets[key]
                self._level(key, -1)
        self._store.drop(slot)
        counts = self._counts
        counts[ALL] -= 1
        for category in rec[_CATEGORIES]:
            counts[category] -= 1

    def _level(self, key: Key, change: int) -> None:
        """Count a bucket made (1) or emptied (-1) under its cell length or grid precision."""
        where = key[1]
        counts, level = ((self._lengths, len(where)) if isinstance(where, str)
                         else (self._precisions, where[0]))
        left = counts.get(level, 0) + change
        if left:
            counts[level] = left
        else:
            del counts[level]

    def _keys(self, need: str, geohash: str) -> list[Key]:
        """``lookup_keys`` without the prefixes no bucket has (cell lengths and grid
        precisions of no bucket at all: most of them, a directory's radii being alike)."""
        lengths, precisions = self._lengths, self._precisions
        cell = geohash[:COARSE_PRECISION]
        keys: list[Key] = [(need, cell[:n]) for n in range(len(cell) + 1) if n in lengths]
        if precisions:
            keys += [(need, k) for k in cells.lookup_grid(geohash) if k[0] in precisions]
        return keys

    def __len__(self) -> int:
        return len(self._slots)


def _service_ids(covered: Sequence[tuple[list[tuple[str, Any, Any]], int]]) -> list[str]:
    """The services ``_covering`` found for any of the points, each once."""
    return sorted({sid for statics, _examined in covered for sid, _c, _km in statics})


def _driver(conn: Any) -> Any:
    """The psycopg connection under a SQLAlchemy one."""
    raw = conn.connection.driver_connection
    assert raw is not None
    return raw


_CURSORS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _cursor(driver_connection: Any) -> Any:
    """The binary cursor of the per-decision statement, one per database connection (kept:
    making one cost a third of running the statement; binary rows cost a third less than
    text for ~50 candidates). A connection serves one session at a time."""
    cur = _CURSORS.get(driver_connection)
    if cur is None or cur.closed:
        cur = _CURSORS[driver_connection] = driver_connection.cursor(binary=True)
    return cur


def text_array(items: Sequence[str]) -> str:
    """``items`` as a PostgreSQL array literal (text; every element quoted, so any string
    is one element). Sent as one text parameter: a quarter of the per-decision statement's
    client cost was psycopg dumping a list element by element."""
    if not items:
        return "{}"
    joined = '","'.join(items)
    if "\\" in joined or joined.count('"') != 2 * (len(items) - 1):
        joined = '","'.join(s.replace("\\", "\\\\").replace('"', '\\"') for s in items)
    return '{"' + joined + '"}'


def _parse_snapshot(raw: str) -> tuple[int, list[int]]:
    """``pg_current_snapshot()`` text (``xmin:xmax:xip,...``) as (xmax, xip)."""
    _xmin, xmax, xip = raw.split(":")
    return int(xmax), [int(x) for x in xip.split(",") if x]
