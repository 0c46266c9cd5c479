"""Geohash, coarsening and distance: known vectors and properties."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from servicekit import geo

latitudes = st.floats(min_value=-90, max_value=90, allow_nan=False)
longitudes = st.floats(min_value=-180, max_value=180, allow_nan=False)


@pytest.mark.parametrize(
    ("lat", "lon", "precision", "expected"),
    [
        (57.64911, 10.40744, 11, "u4pruydqqvj"),  # Wikipedia's example
        (42.605, -5.603, 5, "ezs42"),
        (0.0, 0.0, 1, "s"),
        (-90.0, -180.0, 1, "0"),
        (90.0, 180.0, 1, "z"),
        (57.64911, 10.40744, 6, "u4pruy"),
    ],
)
def test_encode_matches_known_vectors(lat: float, lon: float, precision: int,
                                      expected: str) -> None:
    assert geo.encode(lat, lon, precision) == expected


def test_encode_defaults_to_precision_6() -> None:
    assert geo.encode(57.64911, 10.40744) == "u4pruy"


def test_decode_returns_the_cell_centre() -> None:
    lat, lon = geo.decode("ezs42")
    assert lat == pytest.approx(42.60498046875)
    assert lon == pytest.approx(-5.60302734375)


def test_decode_is_case_insensitive() -> None:
    assert geo.decode("U4PRUY") == geo.decode("u4pruy")


@pytest.mark.parametrize("bad", ["", "u4pa", "u4pr!", "0123456789bcd"])
def test_decode_rejects_invalid_geohashes(bad: str) -> None:
    with pytest.raises(ValueError):
        geo.decode(bad)


@pytest.mark.parametrize(
    ("lat", "lon", "precision"),
    [(90.5, 0.0, 6), (0.0, -180.1, 6), (math.nan, 0.0, 6), (0.0, math.inf, 6), (0.0, 0.0, 0),
     (0.0, 0.0, 13)],
)
def test_encode_rejects_invalid_input(lat: float, lon: float, precision: int) -> None:
    with pytest.raises(ValueError):
        geo.encode(lat, lon, precision)


@given(latitudes, longitudes, st.integers(min_value=1, max_value=12))
def test_decoded_centre_lies_in_the_cell_of_the_point(lat: float, lon: float,
                                                      precision: int) -> None:
    geohash = geo.encode(lat, lon, precision)
    lat_min, lat_max, lon_min, lon_max = geo.bounds(geohash)
    centre_lat, centre_lon = geo.decode(geohash)
    assert len(geohash) == precision
    assert lat_min <= lat <= lat_max and lon_min <= lon <= lon_max
    assert abs(centre_lat - lat) <= (lat_max - lat_min) / 2 + 1e-12
    assert abs(centre_lon - lon) <= (lon_max - lon_min) / 2 + 1e-12
    assert geo.encode(centre_lat, centre_lon, precision) == geohash


@given(latitudes, longitudes)
def test_coarsened_location_is_the_rounded_centre_of_the_precision_6_cell(lat: float,
                                                                         lon: float) -> None:
    coarse = geo.coarsen(lat, lon)
    assert coarse["geohash"] == geo.encode(lat, lon, 6)
    assert coarse["lat"] == round(coarse["lat"], 3) and coarse["lon"] == round(coarse["lon"], 3)
    # rounding keeps the point inside its own cell
    assert geo.encode(coarse["lat"], coarse["lon"], 6) == coarse["geohash"]
    assert geo.haversine_km(lat, lon, coarse["lat"], coarse["lon"]) < 1.0


def test_coarsen_hides_the_precise_location() -> None:
    # cell u4pruy spans lat 57.64526..57.65076, lon 10.40405..10.41504
    assert geo.coarsen(57.64911, 10.40744) == {"geohash": "u4pruy", "lat": 57.648, "lon": 10.41}


def test_haversine_known_distances() -> None:
    paris, london = (48.8566, 2.3522), (51.5074, -0.1278)
    assert geo.haversine_km(*paris, *london) == pytest.approx(343.5, abs=1.0)
    quarter_equator = math.pi / 2 * geo.EARTH_RADIUS_KM
    assert geo.haversine_km(0, 0, 0, 90) == pytest.approx(quarter_equator)
    assert geo.haversine_km(0, 0, 0, 180) == pytest.approx(2 * quarter_equator)


@given(latitudes, longitudes, latitudes, longitudes)
def test_haversine_is_symmetric_and_non_negative(lat1: float, lon1: float, lat2: float,
                                                 lon2: float) -> None:
    forward = geo.haversine_km(lat1, lon1, lat2, lon2)
    assert forward == pytest.approx(geo.haversine_km(lat2, lon2, lat1, lon1), abs=1e-9)
    assert 0.0 <= forward <= math.pi * geo.EARTH_RADIUS_KM + 1e-6
    assert geo.haversine_km(lat1, lon1, lat1, lon1) == 0.0
