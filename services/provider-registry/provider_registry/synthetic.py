"""A realistic synthetic city for demos, tests and the benchmark (`referrals seed
--providers N --seed S`): deterministic for a given (N, S), entirely made up, no personal
data. Organizations run one to four services across the need categories, at sites spread
over a bounding box; schedules include 24/7 crisis lines, weekday hours, evenings and
weekends (America/Los_Angeles); languages, age ranges, capacities, some stale listings and
a few confidential domestic-violence shelters.

The city is written through the HSDS import pipeline (``bundle_of`` rules, bulk writes,
snapshots on the outbox), so seeding twice with the same arguments changes nothing.
"""
from __future__ import annotations

import random
import uuid
from dataclasses import replace
from datetime import date, timedelta
from typing import Any

from servicekit import events
from servicekit.db import Database

from . import domain
from .hsds import importer, taxonomy
from .hsds.mapping import Bundle
from .hsds.sources import Source

BBOX = (47.48, 47.76, -122.44, -122.22)  # lat min, lat max, lon min, lon max
TIMEZONE = "America/Los_Angeles"
NAMESPACE = uuid.UUID("0b9e5a7c-6d3f-4e21-8f4a-2c7d9e1b3a55")
NEED_WEIGHTS = {"housing": 18, "mental_health": 16, "substance_use": 10, "youth": 9,
                "food": 14, "domestic_violence": 6, "medical": 10, "legal": 6,
                "employment": 8, "other": 3}
LANGUAGES = ["es", "vi", "zh", "so", "ru", "ko", "am", "tl", "uk", "ar"]
KINDS = {"housing": "Shelter", "mental_health": "Counselling", "substance_use": "Recovery",
         "youth": "Youth Drop-in", "food": "Food Bank", "domestic_violence": "Safe House",
         "medical": "Clinic", "legal": "Legal Aid", "employment": "Job Center",
         "other": "Community Hub"}
STREETS = ["Pine", "Cedar", "Harbor", "Rainier", "Alder", "Union", "Madison", "Jackson"]


def _id(seed: int, kind: str, n: int) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{seed}:{kind}:{n}"))


def _schedule(rng: random.Random, need: str, sid: str) -> list[dict[str, Any]]:
    if need in ("mental_health", "domestic_violence") and rng.random() < 0.35:
        return [{"id": _id(0, sid, 0), "freq": "WEEKLY", "byday": "MO,TU,WE,TH,FR,SA,SU",
                 "opens_at": "00:00", "closes_at": "23:59", "description": "24/7 line"}]
    pattern = rng.choice([("MO,TU,WE,TH,FR", "09:00", "17:00"), ("MO,TU,WE,TH,FR", "08:00",
                          "20:00"), ("MO,WE,FR", "10:00", "16:00"), ("SA,SU", "10:00", "14:00"),
                          ("TU,TH", "17:00", "21:00"), ("MO,TU,WE,TH,FR,SA,SU", "19:00",
                                                         "07:00")])
    return [{"id": _id(0, sid, 1), "freq": "WEEKLY", "byday": pattern[0],
             "opens_at": pattern[1], "closes_at": pattern[2]}]


def _ages(rng: random.Random, need: str) -> tuple[int | None, int | None]:
    if need == "youth":
        return 12, 24
    return rng.choice([(18, None), (None, None), (18, 64), (55, None), (None, 17)]) \
        if rng.random() < 0.5 else (18, None)


def _site(rng: random.Random, seed: int, org_id: str, n: int, confidential: bool
          ) -> dict[str, Any]:
    loc_id = _id(seed, "location", n)
    lat = round(rng.uniform(BBOX[0], BBOX[1]), 5)
    lon = round(rng.uniform(BBOX[2], BBOX[3]), 5)
    doc: dict[str, Any] = {
        "id": loc_id, "location_type": "physical", "organization_id": org_id,
        "name": f"{rng.choice(STREETS)} site {n}", "latitude": lat, "longitude": lon,
        "addresses": [{"id": _id(seed, "address", n), "address_1": f"{rng.randint(100, 9999)} "
                       f"{rng.choice(STREETS)} St", "city": "Seattle", "state_province": "WA",
                       "postal_code": f"981{rng.randint(0, 99):02d}", "country": "US",
                       "address_type": "physical"}]}
    if confidential:
        doc["attributes"] = [{"id": _id(seed, "confidential", n), "link_id": loc_id,
                              "link_entity": "location", "taxonomy_term":
                              taxonomy.CONFIDENTIAL_TERM,
                              "taxonomy_term_id": taxonomy.CONFIDENTIAL_TERM["id"]}]
    return doc


def city(n_services: int, seed: int, today: date) -> tuple[list[dict[str, Any]],
                                                          dict[str, domain.Capacity]]:
    """``n_services`` HSDS service documents and their capacities."""
    rng = random.Random(seed)
    needs, weights = list(NEED_WEIGHTS), list(NEED_WEIGHTS.values())
    docs: list[dict[str, Any]] = []
    capacities: dict[str, domain.Capacity] = {}
    org: dict[str, Any] = {}
    left_in_org = 0
    for i in range(n_services):
        if left_in_org == 0:
            o = len(docs)
            org = {"id": _id(seed, "organization", o), "name": f"Org {seed}-{o} Community "
                   "Services", "description": "Synthetic organization for the demo city."}
            left_in_org = rng.randint(1, 4)
        left_in_org -= 1
        need = rng.choices(needs, weights)[0]
        sid = _id(seed, "service", i)
        low, high = _ages(rng, need)
        confidential = need == "domestic_violence" and rng.random() < 0.5
        sites = [_site(rng, seed, org["id"], i * 2 + k, confidential)
                 for k in range(rng.choice([1, 1, 1, 2]))]
        langs = ["en"] + rng.sample(LANGUAGES, rng.choice([0, 0, 1, 1, 2]))
        stale = rng.random() < 0.05
        term = taxonomy.need_term(need)
        docs.append({
            "id": sid, "organization_id": org["id"], "organization": org, "status": "active",
            "name": f"{KINDS[need]} {i}", "description": f"Synthetic {need} service.",
            "minimum_age": low, "maximum_age": high,
            "assured_date": (today - timedelta(days=400 if stale else rng.randint(0, 60)))
            .isoformat(),
            "interpretation_services": "Phone interpretation" if rng.random() < 0.2 else None,
            "schedules": _schedule(rng, need, sid),
            "languages": [{"id": _id(seed, f"lang:{code}", i), "code": code} for code in langs],
            "service_areas": [{"id": _id(seed, "area", i),
                               "extent": f"radius_km={rng.choice([5, 10, 15, 25])}",
                               "extent_type": "text"}],
            "attributes": [{"id": _id(seed, "need", i), "link_id": sid,
                            "link_entity": "service", "taxonomy_term_id": term["id"],
                            "taxonomy_term": term}],
            "service_at_locations": [{"id": _id(seed, "sal", i * 2 + k), "service_id": sid,
                                      "location_id": s["id"], "location": s}
                                     for k, s in enumerate(sites)]})
        maximum = rng.choice([0, 5, 10, 20, 40])
        capacities[sid] = domain.Capacity(maximum=maximum,
                                          accepting=maximum > 0 and rng.random() < 0.85)
    return [{k: v for k, v in d.items() if v is not None} for d in docs], capacities


def _local_time(bundle: Bundle) -> Bundle:
    schedule = replace(bundle.service.schedule, timezone=TIMEZONE)
    return replace(bundle, service=replace(bundle.service, schedule=schedule))


def seed_city(db: Database, n_services: int, seed: int, *, today: date | None = None,
              progress: importer.Progress | None = None) -> importer.Report:
    """Write the synthetic city (idempotent for the same arguments)."""
    docs, capacities = city(n_services, seed, today or date(2026, 11, 1))
    src = Source(services=[(f"service {d['id']}", d) for d in docs])
    assert all(d["attributes"][0]["taxonomy_term"]["code"] in events.NEEDS for d in docs)
    return importer.import_source(db, src, default_radius_km=25.0, adjust=_local_time,
                                  capacities=capacities, progress=progress, chunk_size=1000)
