"""Listing and deleting organizations and locations: roles, confidential sites, the 409 for
an organization that still runs services, and the snapshots re-published when a site goes."""
from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from registry_harness import PROBLEM, Harness
from sqlalchemy import insert, select

from provider_registry import queries
from provider_registry.tables import (
    address,
    attribute,
    phone,
    service_at_location,
    taxonomy_term,
)
from servicekit import events

pytestmark = pytest.mark.integration

OTHER_ORG = "00000000-0000-4000-8000-000000000001"
SHELTER = (47.6111, -122.3222)  # a confidential site's coordinates: never shown to outsiders
STREET = "1 Hidden Lane"


def _org(reg: Harness, name: str = "Harbor Housing") -> str:
    resp = reg.client.post("/v1/organizations", headers=reg.auth("admin"), json={"name": name})
    assert resp.status_code == 201, resp.json
    return str(resp.json["id"])


def _site(reg: Harness, org: str, name: str = "Main office", lat: float = 47.60,
          lon: float = -122.33, confidential: bool = False) -> str:
    resp = reg.client.post("/v1/locations", headers=reg.auth("admin"), json={
        "organization_id": org, "name": name, "latitude": lat, "longitude": lon,
        "confidential": confidential})
    assert resp.status_code == 201, resp.json
    return str(resp.json["id"])


def _service(reg: Harness, org: str, sites: list[str], **overrides: Any) -> str:
    resp = reg.client.post("/v1/services", headers=reg.auth("admin"), json={
        "organization_id": org, "name": "Shelter Intake", "categories": ["housing"],
        "service_area": {"radius_km": 10}, "location_ids": sites,
        "schedule": {"always_open": True, "timezone": "UTC"}, **overrides})
    assert resp.status_code == 201, resp.json
    return str(resp.json["service_id"])


def _shelter(reg: Harness, org: str) -> str:
    """A confidential site with a stored address and phone (as an HSDS import leaves them)."""
    site = _site(reg, org, "Safe House", *SHELTER, confidential=True)
    reg.execute(insert(address).values(
        id=str(uuid.uuid4()), location_id=site, address_1=STREET, city="Seattle",
        state_province="WA", postal_code="98101", country="US", address_type="physical"))
    reg.execute(insert(phone).values(id=str(uuid.uuid4()), location_id=site,
                                     number="+15550100123"))
    return site


def _delete(reg: Harness, url: str, role: str = "admin", org: str | None = None) -> Any:
    return reg.client.delete(url, headers=reg.auth(role, org))


# --- GET /v1/organizations ------------------------------------------------------------------

def test_organizations_are_listed_by_name_a_page_at_a_time_for_every_role(
        reg: Harness) -> None:
    ids = {name: _org(reg, name) for name in ("Cedar", "Alder", "Birch")}
    for role in ("officer", "provider", "supervisor", "admin"):
        page = reg.get("/v1/organizations", role=role, org=OTHER_ORG)
        assert [o["name"] for o in page["items"]] == ["Alder", "Birch", "Cedar"]
        assert (page["total"], page["limit"], page["offset"]) == (3, 50, 0)
    page = reg.get("/v1/organizations?limit=1&offset=1")
    assert [o["id"] for o in page["items"]] == [ids["Birch"]] and page["total"] == 3
    assert page["items"][0] == reg.get(f"/v1/organizations/{ids['Birch']}")
    assert reg.get("/v1/organizations?offset=5")["items"] == []
    bad = reg.client.get("/v1/organizations?colour=red", headers=reg.auth("admin"))
    assert (bad.status_code, bad.mimetype) == (422, PROBLEM) and "colour" in bad.json["detail"]
    assert reg.client.get("/v1/organizations?limit=0", headers=reg.auth("admin")
                          ).status_code == 422
    assert reg.client.get("/v1/organizations").status_code == 401


# --- GET /v1/locations and /v1/locations/{id} ------------------------------------------------

def test_locations_are_listed_per_organization_and_paged(reg: Harness) -> None:
    harbor, other = _org(reg, "Harbor"), _org(reg, "Other")
    mine = [_site(reg, harbor, f"Site {n}") for n in (3, 1, 2)]
    theirs = _site(reg, other, "Elsewhere")
    page = reg.get(f"/v1/locations?organization_id={harbor}")
    assert [loc["name"] for loc in page["items"]] == ["Site 1", "Site 2", "Site 3"]
    assert page["total"] == 3 and {loc["id"] for loc in page["items"]} == set(mine)
    page = reg.get(f"/v1/locations?organization_id={harbor}&limit=2&offset=2")
    assert [loc["name"] for loc in page["items"]] == ["Site 3"] and page["total"] == 3
    everything = reg.get("/v1/locations")
    assert everything["total"] == 4 and theirs in {loc["id"] for loc in everything["items"]}
    one = reg.get(f"/v1/locations/{theirs}")
    assert one == {"id": theirs, "organization_id": other, "name": "Elsewhere",
                   "location_type": "physical", "description": None, "latitude": 47.6,
                   "longitude": -122.33, "confidential": False, "addresses": []}
    assert reg.get(f"/v1/locations?organization_id={OTHER_ORG}") == {
        "items": [], "total": 0, "limit": 50, "offset": 0}
    missing = reg.client.get(f"/v1/locations/{OTHER_ORG}", headers=reg.auth("officer"))
    assert (missing.status_code, missing.mimetype) == (404, PROBLEM)
    bad = reg.client.get("/v1/locations?organization_id=nope", headers=reg.auth("admin"))
    assert (bad.status_code, bad.mimetype) == (422, PROBLEM)


@pytest.mark.parametrize("caller", [{"role": "officer"}, {"role": "supervisor"},
                                    {"role": "provider", "org": OTHER_ORG}])
def test_a_confidential_site_shows_no_address_or_coordinates_to_outsiders(
        reg: Harness, caller: dict[str, str]) -> None:
    org = _org(reg, "Safe Harbor DV")
    site = _shelter(reg, org)
    public = _site(reg, org, "Drop-in office")
    hidden = {"id": site, "organization_id": org, "confidential": True}
    assert reg.get(f"/v1/locations/{site}", **caller) == hidden
    page = reg.get(f"/v1/locations?organization_id={org}", **caller)
    assert hidden in page["items"] and page["total"] == 2
    assert any(loc["id"] == public and loc["latitude"] == 47.6 for loc in page["items"])
    text = json.dumps(page) + json.dumps(reg.get("/v1/locations", **caller))
    for secret in (str(SHELTER[0]), str(SHELTER[1]), STREET, "Safe House"):
        assert secret not in text


@pytest.mark.parametrize("caller", [{"role": "admin"}, {"role": "provider", "org": "own"}])
def test_admins_and_the_organizations_own_staff_see_a_confidential_site(
        reg: Harness, caller: dict[str, str]) -> None:
    org = _org(reg, "Safe Harbor DV")
    site = _shelter(reg, org)
    who = {**caller, "org": org} if caller.get("org") else caller
    shown = reg.get(f"/v1/locations/{site}", **who)
    assert (shown["latitude"], shown["longitude"], shown["confidential"]) == (*SHELTER, True)
    assert [a["address_1"] for a in shown["addresses"]] == [STREET]
    [listed] = reg.get(f"/v1/locations?organization_id={org}", **who)["items"]
    assert listed == shown


# --- DELETE /v1/organizations/{id} ------------------------------------------------------------

def test_an_organization_that_still_runs_services_is_a_409_naming_them(reg: Harness) -> None:
    org = _org(reg)
    site = _site(reg, org)
    services = sorted([_service(reg, org, [site]), _service(reg, org, [site])])
    before = reg.outbox()
    resp = _delete(reg, f"/v1/organizations/{org}")
    assert (resp.status_code, resp.mimetype) == (409, PROBLEM)
    assert resp.json["errors"] == {"services": services}
    assert "still runs 2 service(s)" in resp.json["detail"]
    assert reg.outbox() == before and reg.count("organization") == 1
    assert reg.count("location") == 1
    for sid in services:  # deleting its services (each emits its removal) unblocks it
        assert _delete(reg, f"/v1/services/{sid}").status_code == 204
    removed = [e for e in reg.outbox() if e.type == events.PROVIDER_SERVICE_REMOVED]
    assert sorted(e.subject for e in removed) == services
    assert _delete(reg, f"/v1/organizations/{org}").status_code == 204
    assert reg.count("organization") == 0 and reg.count("location") == 0


def test_deleting_an_organization_removes_its_sites_and_everything_on_them(
        reg: Harness) -> None:
    org, keep = _org(reg, "Closing down"), _org(reg, "Staying")
    _shelter(reg, org)
    _site(reg, org)
    kept_site = _shelter(reg, keep)
    reg.execute(insert(phone).values(id=str(uuid.uuid4()), organization_id=org,
                                     number="+15550100124"))
    reg.execute(insert(taxonomy_term).values(id="term-1", name="Shelter", description="x"))
    reg.execute(insert(attribute).values(id="attr-1", link_id=_site(reg, org),
                                         link_entity="location", taxonomy_term_id="term-1"))
    resp = _delete(reg, f"/v1/organizations/{org}", role="provider", org=org)  # own org
    assert resp.status_code == 204, resp.json
    assert reg.count("organization") == 1 and reg.count("location") == 1
    assert (reg.count("address"), reg.count("phone"), reg.count("attribute")) == (1, 1, 0)
    assert reg.get(f"/v1/locations/{kept_site}", role="admin")["addresses"]
    assert reg.outbox() == []  # no services, nothing to publish
    again = _delete(reg, f"/v1/organizations/{org}")
    assert (again.status_code, again.mimetype) == (404, PROBLEM)  # as DELETE service
    gone = reg.client.get(f"/v1/organizations/{org}", headers=reg.auth("officer"))
    assert gone.status_code == 404


@pytest.mark.parametrize("caller,status", [
    ({"role": "provider", "org": OTHER_ORG}, 403), ({"role": "officer"}, 403),
    ({"role": "supervisor"}, 403)])
def test_only_admins_and_own_staff_may_delete_an_organization(
        reg: Harness, caller: dict[str, str], status: int) -> None:
    org = _org(reg)
    _site(reg, org)
    resp = _delete(reg, f"/v1/organizations/{org}", **caller)
    assert (resp.status_code, resp.mimetype) == (status, PROBLEM)
    assert reg.count("organization") == 1 and reg.count("location") == 1


# --- DELETE /v1/locations/{id} ----------------------------------------------------------------

def test_deleting_a_site_republishes_every_service_that_was_there(reg: Harness) -> None:
    org = _org(reg)
    gone, stays = _site(reg, org, "Closing"), _site(reg, org, "Staying", lat=47.7)
    both = _service(reg, org, [gone, stays])
    area = _service(reg, org, [gone], service_area={"geohashes": ["c23nb"]})
    elsewhere = _service(reg, org, [stays])
    before = reg.outbox()
    resp = _delete(reg, f"/v1/locations/{gone}", role="provider", org=org)
    assert resp.status_code == 204, resp.json
    new = reg.outbox()[len(before):]
    assert sorted(e.subject for e in new) == sorted([both, area])  # not `elsewhere`
    latest = {e.subject: e.sequence for e in before}
    for env in new:  # each is the full snapshot without the site, next in its sequence
        assert env.type == events.PROVIDER_SERVICE_UPSERTED
        assert env.sequence == latest[env.subject] + 1
        assert gone not in {loc["location_id"] for loc in env.data["locations"]}
        with reg.db.uow() as uow:  # exactly the stored snapshot, through the contract
            stored = queries.snapshot_of(uow.session, env.subject)
        assert env.data == events.new_event(events.PROVIDER_SERVICE_UPSERTED, sequence=1,
                                            subject=env.subject, data=stored,
                                            source="test").data
    by_subject = {e.subject: e.data for e in new}
    assert [loc["location_id"] for loc in by_subject[both]["locations"]] == [stays]
    assert by_subject[area]["locations"] == []
    shown = reg.get(f"/v1/services/{both}", role="admin")
    assert [loc["location_id"] for loc in shown["locations"]] == [stays]
    assert reg.count("location") == 1 and reg.count("service_at_location") == 2
    with reg.db.engine.connect() as conn:  # the search table forgot the site too
        table = reg.db.metadata.tables["service_site_need"]
        assert gone not in set(conn.execute(select(table.c.location_id)).scalars())
    near_gone = reg.get("/v1/services?need=housing&lat=47.6&lon=-122.33&radius_km=2")
    assert near_gone["items"] == []
    assert elsewhere in {i["service_id"] for i in reg.get(
        "/v1/services?need=housing&lat=47.7&lon=-122.33&radius_km=2")["items"]}
    again = _delete(reg, f"/v1/locations/{gone}")
    assert (again.status_code, again.mimetype) == (404, PROBLEM)
    assert len(reg.outbox()) == len(before) + 2


def test_a_site_a_radius_service_cannot_do_without_is_a_409_and_nothing_changes(
        reg: Harness) -> None:
    org = _org(reg)
    only = _site(reg, org)
    sid = _service(reg, org, [only])
    before = reg.outbox()
    resp = _delete(reg, f"/v1/locations/{only}")
    assert (resp.status_code, resp.mimetype) == (409, PROBLEM)
    assert resp.json["errors"] == {"services": [sid]}
    assert reg.outbox() == before and reg.count("location") == 1
    assert reg.count("service_at_location") == 1


@pytest.mark.parametrize("caller", [{"role": "provider", "org": OTHER_ORG},
                                    {"role": "officer"}, {"role": "supervisor"}])
def test_others_cannot_delete_a_site_and_nothing_is_written(
        reg: Harness, caller: dict[str, str]) -> None:
    org = _org(reg)
    site = _site(reg, org)
    _service(reg, org, [site], service_area={"geohashes": ["c23nb"]})
    before = reg.outbox()
    resp = _delete(reg, f"/v1/locations/{site}", **caller)
    assert (resp.status_code, resp.mimetype) == (403, PROBLEM)
    assert reg.outbox() == before and reg.count("location") == 1


def test_a_deleted_confidential_site_takes_its_address_and_phones_along(reg: Harness) -> None:
    org = _org(reg)
    site = _shelter(reg, org)
    assert _delete(reg, f"/v1/locations/{site}").status_code == 204
    assert (reg.count("location"), reg.count("address"), reg.count("phone")) == (0, 0, 0)
    missing = _delete(reg, f"/v1/locations/{site}", role="provider", org=org)
    assert missing.status_code == 404 and STREET not in missing.get_data(as_text=True)


def test_the_openapi_documents_the_new_endpoints_with_their_answers(reg: Harness) -> None:
    paths = reg.client.get("/openapi.json").json["paths"]
    for path in ("/v1/organizations/{org_id}", "/v1/locations/{location_id}"):
        assert {"204", "409"} <= set(paths[path]["delete"]["responses"])
    listing = paths["/v1/locations"]["get"]
    assert {"organization_id", "limit", "offset"} <= {p["name"] for p in listing["parameters"]}
    assert {"limit", "offset"} == {p["name"] for p in paths["/v1/organizations"]["get"]
                                   ["parameters"]}
    assert paths["/v1/locations/{location_id}"]["get"]["responses"]["200"]


def test_deleting_an_organization_republishes_other_services_offered_at_its_sites(
        reg: Harness) -> None:
    closing, partner = _org(reg, "Closing"), _org(reg, "Partner")
    hosted_site = _site(reg, closing, "Hosted at Closing")
    sid = _service(reg, partner, [_site(reg, partner)])
    # an HSDS import may link a service to another organization's site
    reg.execute(insert(service_at_location).values(id=str(uuid.uuid4()), service_id=sid,
                                                   location_id=hosted_site))
    before = reg.outbox()
    assert _delete(reg, f"/v1/organizations/{closing}").status_code == 204
    [env] = reg.outbox()[len(before):]
    assert (env.type, env.subject) == (events.PROVIDER_SERVICE_UPSERTED, sid)
    assert hosted_site not in {loc["location_id"] for loc in env.data["locations"]}
    assert len(env.data["locations"]) == 1 and reg.count("service_at_location") == 1
