"""Directory search against PostgreSQL: place and radius, need, language, age, accepting,
open now in each service's own time zone, and bad queries."""
from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from registry_harness import PROBLEM, Harness
from sqlalchemy import update as sql_update

from provider_registry import bootstrap, synthetic, tables
from servicekit import geo
from servicekit.db import run_migrations

pytestmark = pytest.mark.integration
HOME = (47.6062, -122.3321)  # where the officer searches from
DAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")


def _org(reg: Harness) -> str:
    resp = reg.client.post("/v1/organizations", headers=reg.auth("admin"), json={"name": "Org"})
    return str(resp.json["id"])


def _service(reg: Harness, org: str, name: str, lat: float, lon: float, **fields: Any) -> str:
    body = {"organization_id": org, "name": name, "categories": ["housing"],
            "service_area": {"radius_km": 30},
            "schedule": {"always_open": True, "timezone": "America/Los_Angeles"},
            "locations": [{"latitude": lat, "longitude": lon}],
            "capacity": {"maximum": 5, "accepting": True}, **fields}
    resp = reg.client.post("/v1/services", headers=reg.auth("admin"), json=body)
    assert resp.status_code == 201, resp.json
    return str(resp.json["service_id"])


def _search(reg: Harness, query: str) -> list[dict[str, Any]]:
    return reg.get(f"/v1/services?{query}")["items"]  # type: ignore[no-any-return]


def test_nearest_first_with_distance_in_km_and_radius_respected(reg: Harness) -> None:
    org = _org(reg)
    far = _service(reg, org, "Far", 47.70, -122.33)  # ~10.4 km north
    near = _service(reg, org, "Near", 47.61, -122.335)
    mid = _service(reg, org, "Mid", 47.65, -122.35)
    _service(reg, org, "Tacoma", 47.2529, -122.4443)  # ~40 km away
    items = _search(reg, f"lat={HOME[0]}&lon={HOME[1]}&radius_km=15")
    assert [i["service_id"] for i in items] == [near, mid, far]
    assert items[0]["distance_km"] == round(geo.haversine_km(*HOME, 47.61, -122.335), 2)
    assert 10 < items[2]["distance_km"] < 11
    assert reg.get(f"/v1/services?lat={HOME[0]}&lon={HOME[1]}&radius_km=4")["total"] == 1


def test_need_language_age_and_accepting_filters(reg: Harness) -> None:
    org = _org(reg)
    youth_es = _service(reg, org, "Youth ES", 47.61, -122.33, categories=["youth"],
                        languages=["es-MX"], minimum_age=12, maximum_age=24)
    interp = _service(reg, org, "Interp", 47.62, -122.33, categories=["youth"],
                      interpretation_available=True, minimum_age=18)
    _service(reg, org, "Housing", 47.61, -122.33, languages=["es"])
    full = _service(reg, org, "Full", 47.615, -122.33, categories=["youth"],
                    capacity={"maximum": 5, "accepting": False})
    place = f"lat={HOME[0]}&lon={HOME[1]}&radius_km=10"
    ids = lambda q: {i["service_id"] for i in _search(reg, f"{place}&{q}")}
    assert ids("need=youth") == {youth_es, interp, full}
    assert ids("need=youth&language=es") == {youth_es, interp}  # or can interpret
    assert ids("need=youth&age=15") == {youth_es, full}
    assert ids("need=youth&age=30") == {interp, full}
    assert ids("need=youth&accepting=true") == {youth_es, interp}


def _window(zone: str, now: datetime) -> dict[str, str]:
    local = now.astimezone(ZoneInfo(zone))
    opens = max(local - timedelta(hours=1), local.replace(hour=0, minute=0))
    closes = min(local + timedelta(hours=1), local.replace(hour=23, minute=59))
    return {"byday": DAYS[local.weekday()], "opens_at": opens.strftime("%H:%M"),
            "closes_at": "24:00" if closes.strftime("%H:%M") == "23:59"
            else closes.strftime("%H:%M")}


def test_open_now_reads_each_schedule_in_its_own_time_zone(reg: Harness) -> None:
    org = _org(reg)
    now = datetime.now(UTC)
    tokyo = _window("Asia/Tokyo", now)
    open_tokyo = _service(reg, org, "Tokyo", 47.61, -122.33, schedule={
        "always_open": False, "timezone": "Asia/Tokyo", "hours": [tokyo]})
    la_day = DAYS[now.astimezone(ZoneInfo("America/Los_Angeles")).weekday()]
    _service(reg, org, "Same hours, LA time", 47.61, -122.33, schedule={
        "always_open": False, "timezone": "America/Los_Angeles",
        "hours": [{**tokyo, "byday": la_day}]})
    always = _service(reg, org, "24/7", 47.62, -122.33)
    ended = _service(reg, org, "Ended", 47.62, -122.33, schedule={
        "always_open": True, "timezone": "UTC", "valid_to": "2020-12-31"})
    found = {i["service_id"] for i in _search(reg, "open_now=true")}
    assert found == {open_tokyo, always}
    assert ended not in found and len(_search(reg, "open_now=false")) == 4


@pytest.mark.parametrize("query, field", [
    ("lat=47.6", "lon"), ("radius_km=5", "radius_km"), ("lat=100&lon=0", "lat"),
    ("age=-1", "age"), ("language=not a tag", "language"), ("open_now=maybe", "open_now"),
])
def test_bad_search_parameters_are_422_naming_the_field(reg: Harness, query: str,
                                                        field: str) -> None:
    resp = reg.client.get(f"/v1/services?{query}", headers=reg.auth("officer"))
    assert (resp.status_code, resp.mimetype) == (422, PROBLEM)
    assert field in resp.json["detail"]


def test_need_and_radius_search_follows_every_write(reg: Harness) -> None:
    """The search table (service_site_need) is rebuilt in the transaction of each write:
    a moved site, a changed need and a deleted service show at once; totals are exact."""
    org = _org(reg)
    moved = _service(reg, org, "Moved", 47.61, -122.335)
    stays = _service(reg, org, "Stays", 47.62, -122.335)
    query = f"need=housing&lat={HOME[0]}&lon={HOME[1]}&radius_km=5"
    assert [i["service_id"] for i in _search(reg, query)] == [moved, stays]
    assert reg.get(f"/v1/services?{query}&limit=1")["total"] == 2
    site = reg.get(f"/v1/services/{moved}")["locations"][0]["location_id"]
    resp = reg.client.put(f"/v1/locations/{site}", headers=reg.auth("admin"),
                          json={"latitude": 47.2529, "longitude": -122.4443})  # Tacoma
    assert resp.status_code == 200, resp.json
    assert [i["service_id"] for i in _search(reg, query)] == [stays]
    tacoma = "need=housing&lat=47.2529&lon=-122.4443&radius_km=2"
    assert [i["service_id"] for i in _search(reg, tacoma)] == [moved]
    body = reg.get(f"/v1/services/{stays}")
    resp = reg.client.put(f"/v1/services/{stays}", headers=reg.auth("admin"), json={
        "name": "Stays", "categories": ["food"], "service_area": {"radius_km": 30},
        "schedule": {"always_open": True, "timezone": "America/Los_Angeles"},
        "location_ids": [e["location_id"] for e in body["locations"]]})
    assert resp.status_code == 200, resp.json
    assert _search(reg, query) == []
    food = query.replace("need=housing", "need=food")
    assert [i["service_id"] for i in _search(reg, food)] == [stays]
    assert reg.client.delete(f"/v1/services/{stays}",
                             headers=reg.auth("admin")).status_code == 204
    assert reg.get(f"/v1/services?{food}")["total"] == 0


def _same_json(a: Any, b: Any) -> bool:
    """Equal as JSON texts: 25 and 25.0 differ, as they would on the wire."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_search_items_are_exactly_the_service_views_plus_the_distance(reg: Harness) -> None:
    """A search page is assembled in one statement and answered without a schema dump
    (listing.py): each item must be exactly what GET /v1/services/{id} shows the same
    caller (confidential sites hidden unless admin or the organization's own staff), plus
    distance_km to the nearest site (a hidden site's rounded up to whole km)."""
    org, other = _org(reg), _org(reg)
    dv = _service(reg, org, "Safe House", 47.6100, -122.3300, categories=["housing"],
                  locations=[{"latitude": 47.6100, "longitude": -122.3300, "name": "Hidden",
                              "confidential": True},
                             {"latitude": 47.6500, "longitude": -122.3500, "name": "Office"}],
                  languages=["es-MX", "en"], minimum_age=18, service_area={"radius_km": 12.5},
                  schedule={"always_open": False, "timezone": "America/New_York",
                            "valid_from": "2020-01-01", "valid_to": "2099-12-31",
                            "hours": [{"byday": "MO", "opens_at": "09:00",
                                       "closes_at": "17:00"}]})
    bare = reg.client.post("/v1/services", headers=reg.auth("admin"), json={  # no capacity
        "organization_id": other, "name": "Drop-in", "categories": ["housing", "food"],
        "service_area": {"geohashes": ["c23nb"]}, "location_ids": [],
        "schedule": {"always_open": True, "timezone": "UTC"}}).json["service_id"]
    _service(reg, other, "Interpreting", 47.6200, -122.3400, interpretation_available=True)
    reg.execute(sql_update(tables.service).where(tables.service.c.id == dv)
                .values(last_confirmed=datetime(2020, 1, 1, tzinfo=UTC)))  # stale
    queries = [f"need=housing&lat={HOME[0]}&lon={HOME[1]}&radius_km=10",
               f"need=housing&lat={HOME[0]}&lon={HOME[1]}&radius_km=10&language=es",
               f"lat={HOME[0]}&lon={HOME[1]}&radius_km=10&limit=2&offset=1",
               "need=housing", "need=housing&open_now=false", "stale=true"]
    callers = [("officer", None), ("admin", None), ("provider", org), ("provider", other)]
    seen_hidden = seen_shown = 0
    for query in queries:
        for role, staff_of in callers:
            page = reg.get(f"/v1/services?{query}", role=role, org=staff_of)
            assert page["items"], (query, role)
            for item in page["items"]:
                view = reg.get(f"/v1/services/{item['service_id']}", role=role, org=staff_of)
                distance = item.pop("distance_km", None)
                assert _same_json(item, view), (query, role)
                if "lat=" not in query:
                    assert distance is None
                    continue
                sites = {s["location_id"]: s for s in _sites_of(reg, item["service_id"])}
                km, nearest = min((geo.haversine_km(*HOME, s["lat"], s["lon"]), i)
                                  for i, s in sites.items())
                hidden = not any(e["location_id"] == nearest and "lat" in e
                                 for e in item["locations"])
                seen_hidden += hidden
                seen_shown += not hidden and sites[nearest]["confidential"]
                assert isinstance(distance, float)
                assert distance == (float(math.ceil(km)) if hidden else round(km, 2))
    assert seen_hidden and seen_shown  # both cases of the confidential rule were checked
    assert bare in {i["service_id"] for i in reg.get("/v1/services?need=food")["items"]}


def _sites_of(reg: Harness, service_id: str) -> list[dict[str, Any]]:
    """Every site of a service with its coordinates (as an admin sees them)."""
    return reg.get(f"/v1/services/{service_id}", role="admin")["locations"]  # type: ignore[no-any-return]


def test_the_interpretation_flag_in_the_search_table_follows_service_edits(
        reg: Harness) -> None:
    org = _org(reg)
    sid = _service(reg, org, "Clinic", 47.61, -122.33, languages=["en"])
    query = f"need=housing&lat={HOME[0]}&lon={HOME[1]}&radius_km=5&language=es"
    assert _search(reg, query) == []
    body = reg.get(f"/v1/services/{sid}")
    fields = {"name": "Clinic", "categories": ["housing"], "service_area": {"radius_km": 30},
              "schedule": {"always_open": True, "timezone": "America/Los_Angeles"},
              "location_ids": [e["location_id"] for e in body["locations"]]}
    for interprets in (True, False):
        resp = reg.client.put(f"/v1/services/{sid}", headers=reg.auth("admin"),
                              json={**fields, "interpretation_available": interprets})
        assert resp.status_code == 200, resp.json
        assert [i["service_id"] for i in _search(reg, query)] == ([sid] if interprets else [])


def test_search_on_sqlite_the_embedded_database(make_settings: Any, tmp_path: Path) -> None:
    """The embedded mode (`referrals up`) runs the registry on SQLite: the one-statement
    page (json_group_array), the bound-parameter searches and the bulk import writes must
    give the same views there."""
    settings = make_settings("provider-registry",
                             REGISTRY_DATABASE_URL=f"sqlite:///{tmp_path}/registry.db")
    run_migrations(settings.database_url, bootstrap.MIGRATIONS)
    app = bootstrap.create_app(settings)
    lite = Harness(settings, app.extensions["db"], app.test_client())
    try:
        first = synthetic.seed_city(lite.db, 120, seed=4)
        again = synthetic.seed_city(lite.db, 120, seed=4)
        assert (first.created, again.unchanged, len(lite.outbox())) == (120, 120, 120)
        for query in ["need=housing&lat=47.6&lon=-122.33&radius_km=10&language=es",
                      "need=mental_health&lat=47.6&lon=-122.33&radius_km=20&age=30",
                      "lat=47.6&lon=-122.33&radius_km=3", "open_now=true&limit=5",
                      "need=food&limit=5&offset=3"]:
            page = lite.get(f"/v1/services?{query}", role="admin")
            assert page["items"], query
            for item in page["items"]:
                item.pop("distance_km", None)
                view = lite.get(f"/v1/services/{item['service_id']}", role="admin")
                assert _same_json(item, view), query
    finally:
        lite.db.dispose()
