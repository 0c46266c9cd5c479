"""Directory search against PostgreSQL: place and radius, need, language, age, accepting,
open now in each service's own time zone, and bad queries."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from registry_harness import PROBLEM, Harness

from servicekit import geo

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
