"""The /hsds/ read API against the HSDS 3.0 ``openapi.json``: every path answers with a body
that validates against the spec's response schema (remote refs resolved to the vendored
compiled schemas), its query parameters are accepted, its Page envelope is right."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hsds_examples import CONTACT_IDS, with_contacts
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from registry_harness import Harness

from provider_registry import synthetic
from provider_registry.hsds import taxonomy, validation

pytestmark = pytest.mark.integration
SPEC_ID = "urn:hsds:openapi"
REMOTE = "https://raw.githubusercontent.com/openreferral/specification/3.0/schema/"
DATA = Path(__file__).parent / "data"


def _registry() -> Registry:
    files = {"compiled/service.json": validation.service_schema(),
             "compiled/organization.json": validation.organization_schema()}
    for name in ("service_list", "organization_list", "service_at_location_list"):
        files[f"compiled/{name}.json"] = validation.load(f"{name}.json")
    for name in ("taxonomy", "taxonomy_term", "metadata"):
        files[f"{name}.json"] = validation.load(f"{name}.json")
    resources = [(REMOTE + path, Resource.from_contents(doc, default_specification=DRAFT202012))
                 for path, doc in files.items()]
    spec = Resource.from_contents(validation.load("openapi.json"),
                                  default_specification=DRAFT202012)
    return Registry().with_resources([*resources, (SPEC_ID, spec)])


REGISTRY = _registry()


def _check(path: str, body: Any) -> None:
    """Validate ``body`` against the 200 response schema of ``path`` in the spec."""
    pointer = path.replace("~", "~0").replace("/", "~1")
    schema = {"$ref": f"{SPEC_ID}#/paths/{pointer}/get/responses/200/content/"
                      "application~1json/schema"}
    errors = [f"{list(e.absolute_path)}: {e.message[:200]}" for e in Draft202012Validator(
        schema, registry=REGISTRY, format_checker=FormatChecker()).iter_errors(body)]
    assert errors == [], errors[:5]


def _params(path: str) -> list[str]:
    spec = validation.load("openapi.json")
    return [p["$ref"].rsplit("/", 1)[1] if "$ref" in p else p["name"]
            for p in spec["paths"][path]["get"].get("parameters", [])]


@pytest.fixture
def directory(reg: Harness) -> Harness:
    synthetic.seed_city(reg.db, 30, seed=21)
    body = with_contacts(json.loads((DATA / "service_full.json").read_text()))
    resp = reg.client.post("/v1/import/hsds", json=body, headers=reg.auth("admin"))
    assert resp.json["created"] == 1
    return reg


def test_every_list_and_item_path_conforms_to_the_hsds_openapi(directory: Harness) -> None:
    reg = directory
    root = reg.get("/hsds/")
    _check("/", root)
    assert root["version"] == "3.0"
    services = reg.get("/hsds/services?per_page=5&page=2")
    _check("/services", services)
    assert (services["total_items"], services["total_pages"], services["page_number"],
            services["size"], services["first_page"], services["last_page"],
            services["empty"]) == (31, 7, 2, 5, False, False, False)
    full = reg.get("/hsds/services?per_page=3&full=true")
    _check("/services", full)
    sid = full["contents"][0]["id"]
    _check("/services/{id}", reg.get(f"/hsds/services/{sid}"))
    orgs = reg.get("/hsds/organizations?per_page=4")
    _check("/organizations", orgs)
    org_id = orgs["contents"][0]["id"]
    _check("/organizations/{id}", reg.get(f"/hsds/organizations/{org_id}"))
    _check("/organizations/{id}", reg.get(f"/hsds/organizations/{org_id}?full_service=true"))
    _check("/taxonomies", reg.get("/hsds/taxonomies"))
    _check("/taxonomies/{id}", reg.get(f"/hsds/taxonomies/{taxonomy.TAXONOMY_ID}"))
    terms = reg.get("/hsds/taxonomy_terms?per_page=50")
    _check("/taxonomy_terms", terms)
    _check("/taxonomy_terms/{id}", reg.get(f"/hsds/taxonomy_terms/{terms['contents'][0]['id']}"))
    sals = reg.get("/hsds/service_at_locations?per_page=5")
    _check("/service_at_locations", sals)
    sal = reg.get(f"/hsds/service_at_locations/{sals['contents'][0]['id']}")
    _check("/service_at_locations/{id}", sal)
    assert [s["id"] for s in sal["service_at_locations"]] == [sals["contents"][0]["id"]]


def test_contacts_show_where_the_spec_nests_them_and_conform(directory: Harness) -> None:
    reg = directory
    sid = "ac148810-d857-441c-9679-408f346de14b"
    doc = reg.get(f"/hsds/services/{sid}")
    _check("/services/{id}", doc)
    sal = doc["service_at_locations"][0]
    assert [c["id"] for c in doc["contacts"]] == [CONTACT_IDS["service"]]
    assert [c["id"] for c in doc["organization"]["contacts"]] == [CONTACT_IDS["organization"]]
    assert [c["id"] for c in sal["contacts"]] == [CONTACT_IDS["service_at_location"]]
    assert [c["id"] for c in sal["location"]["contacts"]] == [CONTACT_IDS["location"]]
    assert doc["contacts"][0]["phones"][0]["number"] == "+1 206 555 0100"
    org_id = doc["organization_id"]
    org = reg.get(f"/hsds/organizations/{org_id}?full_service=true")
    _check("/organizations/{id}", org)
    assert [c["id"] for c in org["contacts"]] == [CONTACT_IDS["organization"]]
    assert [c["id"] for c in org["services"][0]["contacts"]] == [CONTACT_IDS["service"]]
    one = reg.get(f"/hsds/service_at_locations/{sal['id']}")
    _check("/service_at_locations/{id}", one)
    assert one["service_at_locations"][0]["contacts"] == sal["contacts"]
    listed = reg.get("/hsds/services?full=true&per_page=100")
    _check("/services", listed)
    assert [d for d in listed["contents"] if d["id"] == sid] == [doc]


def test_the_spec_query_parameters_are_accepted_and_filter(directory: Harness) -> None:
    reg = directory
    term = taxonomy.term_id("housing")
    housing = reg.get(f"/hsds/services?taxonomy_term_id={term}&per_page=100")
    assert housing["total_items"] >= 1
    assert all(any(a["taxonomy_term_id"] == term for a in s.get("attributes", []))
               for s in reg.get(f"/hsds/services?taxonomy_term_id={term}&full=true"
                                "&per_page=100")["contents"])
    assert reg.get(f"/hsds/services?taxonomy_id={taxonomy.TAXONOMY_ID}")["total_items"] == 30
    assert reg.get("/hsds/services?search=community%20counselling")["total_items"] == 1
    minimal = reg.get("/hsds/services?minimal=true&per_page=2")["contents"]
    assert set(minimal[0]) >= {"id", "last_modified"}
    accepted = {"/services": "search=x&page=1&per_page=2&format=json&taxonomy_term_id=a"
                "&taxonomy_id=b&organization_id=c&modified_after=2020-01-01T00:00:00Z"
                "&minimal=false&full=false",
                "/organizations": "search=x&full_service=true&full=true&page=1&per_page=2"
                "&format=json",
                "/taxonomy_terms": "search=x&page=1&per_page=2&format=json&taxonomy_id=a"
                "&top_only=true&parent_id=b",
                "/service_at_locations": "search=x&taxonomy_term_id=a&taxonomy_id=b"
                "&organization_id=c&modified_after=2020-01-01T00:00:00Z&full=true&page=1"
                "&per_page=2&format=json&postcode=98101&proximity=5"}
    for path, query in accepted.items():
        assert {kv.split("=")[0] for kv in query.split("&")} == set(_params(path)), path
        body = reg.get(f"/hsds{path}?{query}")
        _check(path, body)
    bad = reg.client.get("/hsds/services?colour=red", headers=reg.auth("officer"))
    assert bad.status_code == 422
    assert reg.client.get("/hsds/services").status_code == 401


def test_unknown_ids_are_404(directory: Harness) -> None:
    for path in ("services", "organizations", "taxonomies", "taxonomy_terms",
                 "service_at_locations"):
        resp = directory.client.get(f"/hsds/{path}/00000000-0000-4000-8000-000000000000",
                                    headers=directory.auth("officer"))
        assert resp.status_code == 404, path
