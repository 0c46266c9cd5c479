"""Typed address -> coordinates: the offline gazetteer over an OpenAddresses-layout file, and
the Nominatim adapter against a local HTTP server speaking Nominatim's search API."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from console_testkit import Served
from flask import Flask, jsonify, request

from console import forms, geocode

ROWS = [
    {"LON": "-122.33250", "LAT": "47.60672", "NUMBER": "1000", "STREET": "4th Ave",
     "CITY": "Seattle", "REGION": "WA", "POSTCODE": "98104", "NAME": "Central Library"},
    {"LON": "-122.33650", "LAT": "47.61050", "NUMBER": "1501", "STREET": "4th Ave",
     "CITY": "Seattle", "REGION": "WA", "POSTCODE": "98101"},
    {"LON": "-122.32750", "LAT": "47.59950", "NUMBER": "500", "STREET": "S Main St",
     "CITY": "Seattle", "REGION": "WA"},
    {"LON": "-122.31780", "LAT": "47.59990", "NUMBER": "500", "STREET": "N Main St",
     "CITY": "Seattle", "REGION": "WA"},
    {"LON": "x", "LAT": "47.6", "NUMBER": "1", "STREET": "Broken St"},  # no coordinates
    {"LON": "-200", "LAT": "47.6", "NUMBER": "2", "STREET": "Nowhere St"},  # impossible
    {"LON": "-122.3", "LAT": "47.6", "NUMBER": "", "STREET": "Pine St"},  # a street, no point
]


@pytest.fixture(scope="module")
def gazetteer() -> geocode.Gazetteer:
    return geocode.Gazetteer.from_rows(ROWS)


def labels(places: list[geocode.Place]) -> list[str]:
    return [p.label for p in places]


def test_rows_without_usable_coordinates_or_a_point_are_left_out(
        gazetteer: geocode.Gazetteer) -> None:
    assert len(gazetteer) == 4


@pytest.mark.parametrize("typed", ["1000 4th Ave", "1000 Fourth Avenue, Seattle, WA 98104",
                                   "1000 fourth ave.", "central library"])
def test_spellings_of_an_address_or_a_name_find_the_point(gazetteer: geocode.Gazetteer,
                                                          typed: str) -> None:
    found = gazetteer.search(typed)
    assert labels(found) == ["Central Library (1000 4th Ave), Seattle, WA"]
    assert (found[0].lat, found[0].lon) == (47.60672, -122.33250)


@pytest.mark.parametrize("typed", ["4th Ave", "999 4th Ave", "Seattle", "Seattle WA 98101",
                                   "1000 Pine St", "", "   ", "x" * 5000])
def test_no_guess_without_the_house_number_street_or_name(gazetteer: geocode.Gazetteer,
                                                          typed: str) -> None:
    assert gazetteer.search(typed) == []


def test_an_ambiguous_address_offers_each_place(gazetteer: geocode.Gazetteer) -> None:
    assert labels(gazetteer.search("500 Main Street")) == [
        "500 N Main St, Seattle, WA", "500 S Main St, Seattle, WA"]
    assert labels(gazetteer.search("500 South Main Street")) == ["500 S Main St, Seattle, WA"]


def test_the_demo_file_covers_the_demo_city() -> None:
    demo = geocode.Gazetteer.from_csv(geocode.DEMO_GAZETTEER)
    assert len(demo) >= 30
    from provider_registry.synthetic import BBOX  # the seeded city's bounding box

    found = demo.search("Harborview Medical Center")
    assert len(found) == 1
    assert BBOX[0] <= found[0].lat <= BBOX[1] and BBOX[2] <= found[0].lon <= BBOX[3]


def test_the_typed_address_never_reaches_the_referral_body() -> None:
    body = forms.referral_body({"location.address": "1000 4th Ave", "location.lat": "47.6",
                                "location.lon": "-122.3", "location.pick": "47.6,-122.3",
                                "flags": ["veteran"], "consent.contact_methods": ["sms"]})
    assert body["location"] == {"lat": "47.6", "lon": "-122.3"}
    assert "1000 4th Ave" not in repr(body)
    assert body["flags"] == ["veteran"] and body["consent"]["contact_methods"] == ["sms"]


@pytest.fixture
def nominatim() -> Any:
    """A local server speaking Nominatim's /search (jsonv2), answering from the gazetteer."""
    app = Flask("nominatim")
    seen: list[dict[str, str]] = []
    behaviour = {"mode": "ok"}
    places = geocode.Gazetteer.from_rows(ROWS)

    @app.get("/search")
    def search() -> Any:
        seen.append({**request.args, "ua": request.headers.get("User-Agent", "")})
        if behaviour["mode"] == "fail":
            return "overloaded", 503
        if behaviour["mode"] == "garbage":
            return jsonify({"error": "no"})
        found = places.search(request.args["q"], int(request.args["limit"]))
        return jsonify([{"place_id": 1, "lat": f"{p.lat}", "lon": f"{p.lon}",
                         "display_name": p.label} for p in found]
                       + [{"lat": "not a number", "lon": "1"}])

    served = Served(app)
    yield served.url, seen, behaviour
    served.close()


def test_nominatim_answers_become_places(nominatim: Any) -> None:
    url, seen, _ = nominatim
    coder = geocode.from_settings("nominatim", url, "", 5)
    found = coder.search("1000 Fourth Avenue")
    assert [(p.label, p.lat, p.lon) for p in found] == [
        ("Central Library (1000 4th Ave), Seattle, WA", 47.60672, -122.3325)]
    assert seen[0]["q"] == "1000 Fourth Avenue" and seen[0]["format"] == "jsonv2"
    assert seen[0]["ua"]  # Nominatim's usage policy asks for an identifying User-Agent


@pytest.mark.parametrize("mode", ["fail", "garbage"])
def test_a_failing_geocoder_is_reported_without_the_address(nominatim: Any, mode: str) -> None:
    url, _, behaviour = nominatim
    behaviour["mode"] = mode
    with pytest.raises(geocode.GeocoderUnavailable) as caught:
        geocode.Nominatim(url, 5).search("1000 Fourth Avenue")
    assert "Fourth" not in str(caught.value)


def test_unreachable_geocoder_is_unavailable() -> None:
    with pytest.raises(geocode.GeocoderUnavailable):
        geocode.Nominatim("http://127.0.0.1:9", 1).search("1000 4th Ave")


def test_configuration(tmp_path: Path) -> None:
    assert geocode.from_settings("off", "", "", 5) is None
    with pytest.raises(RuntimeError, match="CONSOLE_GEOCODER_URL"):
        geocode.from_settings("nominatim", "", "", 5)
    with pytest.raises(RuntimeError, match="gazetteer, nominatim or off"):
        geocode.from_settings("google", "", "", 5)
    extract = tmp_path / "county.csv"
    extract.write_text("lon,lat,number,street,city\n-122.3,47.6,12,Elm St,Springfield\n")
    found = geocode.from_settings("gazetteer", "", str(extract), 5).search("12 elm street")
    assert labels(found) == ["12 Elm St, Springfield"]
