"""The spatial index never loses a service that covers the resident's cell (pure)."""
from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from matching import cells, eligibility
from matching.domain import Candidate, Point, Referral
from servicekit import geo

lat_s = st.floats(min_value=-85, max_value=85, allow_nan=False)
lon_s = st.floats(min_value=-180, max_value=180, allow_nan=False)


def _found(service_cells: set[str], geohash: str) -> bool:
    return bool(service_cells & set(cells.lookup_cells(geohash)))


@settings(max_examples=300, deadline=None)
@given(lat=lat_s, lon=lon_s, radius=st.floats(min_value=0.5, max_value=400),
       bearing=st.floats(min_value=0, max_value=2 * math.pi),
       share=st.floats(min_value=0, max_value=1))
def test_every_resident_within_the_radius_finds_the_service(
        lat: float, lon: float, radius: float, bearing: float, share: float) -> None:
    """Whenever the exact area check passes, the index returned the service."""
    d = radius * share / 111.2
    plat = max(-89.9, min(89.9, lat + d * math.cos(bearing)))
    plon = lon + d * math.sin(bearing) / max(0.05, math.cos(math.radians(plat)))
    plon = ((plon + 180) % 360) - 180
    where = geo.coarsen(plat, plon)
    service = Candidate(service_id="s", organization_id="o", categories=frozenset({"food"}),
                        locations=(Point(lat, lon),), radius_km=radius)
    resident = Referral(referral_id="r", need="food", urgency="urgent", lat=where["lat"],
                        lon=where["lon"], geohash=where["geohash"])
    if eligibility.in_area(resident, service):
        assert _found(cells.service_cells([(lat, lon)], radius, []), where["geohash"])


@settings(max_examples=300, deadline=None)
@given(lat=lat_s, lon=lon_s, radius=st.floats(min_value=0.5, max_value=400),
       bearing=st.floats(min_value=0, max_value=2 * math.pi),
       share=st.floats(min_value=0, max_value=1))
def test_every_resident_within_the_radius_is_inside_the_reach_box(
        lat: float, lon: float, radius: float, bearing: float, share: float) -> None:
    """The reach box never drops a service whose exact area check passes."""
    d = radius * share / 111.2
    plat = max(-89.9, min(89.9, lat + d * math.cos(bearing)))
    plon = lon + d * math.sin(bearing) / max(0.05, math.cos(math.radians(plat)))
    plon = ((plon + 180) % 360) - 180
    where = geo.coarsen(plat, plon)
    service = Candidate(service_id="s", organization_id="o", categories=frozenset({"food"}),
                        locations=(Point(lat, lon),), radius_km=radius)
    resident = Referral(referral_id="r", need="food", urgency="urgent", lat=where["lat"],
                        lon=where["lon"], geohash=where["geohash"])
    box = cells.reach_box([(lat, lon)], radius, [])
    if eligibility.in_area(resident, service) and box is not None:
        lat_min, lat_max, lon_min, lon_max = box
        assert lat_min <= where["lat"] <= lat_max and lon_min <= where["lon"] <= lon_max


def test_a_reach_box_only_where_a_radius_alone_decides() -> None:
    assert cells.reach_box([(51.5, -0.12)], None, []) is None  # serves everywhere
    assert cells.reach_box([(51.5, -0.12)], 5.0, ["gcpv"]) is None  # an area too
    assert cells.reach_box([], 5.0, []) is None
    assert cells.reach_box([(0.0, 179.99)], 20.0, []) is None  # across the antimeridian
    lat_min, lat_max, lon_min, lon_max = cells.reach_box([(51.5, -0.12), (51.6, 0.1)], 5.0,
                                                         [])
    assert lat_min < 51.5 - 0.045 and lat_max > 51.6 + 0.045
    assert lon_min < -0.12 - 0.07 and lon_max > 0.1 + 0.07
    assert lat_max - lat_min < 0.25 and lon_max - lon_min < 0.4


@given(lat=lat_s, lon=lon_s, precision=st.integers(min_value=1, max_value=9))
def test_area_geohashes_are_found_from_inside(lat: float, lon: float, precision: int) -> None:
    area = geo.encode(lat, lon, precision)
    assert _found(cells.service_cells([], None, [area]), geo.coarsen(lat, lon)["geohash"])


def test_small_radii_use_fine_cells_and_large_ones_coarse_cells() -> None:
    small = cells.service_cells([(51.5, -0.12)], 3.0, [])
    large = cells.service_cells([(51.5, -0.12)], 300.0, [])
    assert {len(c) for c in small} == {5} and len(small) <= cells.MAX_CELLS
    assert max(len(c) for c in large) <= 3 and len(large) <= cells.MAX_CELLS


def test_a_service_without_area_is_indexed_everywhere() -> None:
    assert cells.service_cells([(1.0, 2.0)], None, []) == {cells.EVERYWHERE}
    assert cells.EVERYWHERE in cells.lookup_cells("u10hb7")


def test_a_radius_across_the_antimeridian_covers_both_sides() -> None:
    covered = cells.service_cells([(0.0, 179.99)], 20.0, [])
    west = geo.coarsen(0.0, -179.95)["geohash"]
    assert _found(covered, west)


def _steps(low: float, high: float, step: float) -> list[float]:
    count = math.floor((high - low) / step) + 1
    return [low + i * step for i in range(count)] + [high]


def _wrap(lon: float) -> float:
    return ((lon + 180.0) % 360.0) - 180.0 if not -180.0 <= lon <= 180.0 else lon


def _reference_disk_cells(lat: float, lon: float, radius_km: float) -> set[str]:
    """``disk_cells`` as first written: one geohash per sample point of the box."""
    lat_min, lat_max, lon_min, lon_max = cells._box(lat, lon, radius_km)
    precision = cells._precision(lat_min, lat_max, lon_min, lon_max)
    h, w = cells._cell_size(precision)
    return {geo.encode(y, _wrap(x), precision)
            for y in _steps(lat_min, lat_max, h)
            for x in _steps(lon_min, min(lon_max, lon_min + 360.0), w)}


@settings(max_examples=500, deadline=None)
@given(lat=st.floats(min_value=-89.9, max_value=89.9, allow_nan=False), lon=lon_s,
       radius=st.floats(min_value=0.05, max_value=3000))
def test_grid_keys_are_the_geohash_cells_of_the_disk(lat: float, lon: float,
                                                     radius: float) -> None:
    """The in-memory index's integer cells are exactly the database index's cells."""
    grid = cells.disk_grid(lat, lon, radius)
    assert {cells.grid_geohash(k) for k in grid} == _reference_disk_cells(lat, lon, radius)
    assert cells.disk_cells(lat, lon, radius) == _reference_disk_cells(lat, lon, radius)
    box, same = cells.disk_cover(lat, lon, radius)
    assert same == grid and box == cells.reach_box([(lat, lon)], radius, [])


@given(lat=lat_s, lon=lon_s)
def test_grid_lookup_keys_are_the_prefixes_of_the_referral_cell(lat: float, lon: float) -> None:
    cell = geo.coarsen(lat, lon)["geohash"]
    assert [cells.grid_geohash(k) for k in cells.lookup_grid(cell)] == \
        cells.lookup_cells(cell)[1:]
    assert cells.geohash_grid(cell)[0] == 6 and cells.grid_geohash(cells.geohash_grid(cell)) == cell


@settings(max_examples=300, deadline=None)
@given(lat=lat_s, lon=lon_s, radius=st.floats(min_value=0.5, max_value=400),
       bearing=st.floats(min_value=0, max_value=2 * math.pi),
       share=st.floats(min_value=0, max_value=1), two=st.booleans())
def test_every_resident_within_the_radius_finds_the_service_in_memory(
        lat: float, lon: float, radius: float, bearing: float, share: float,
        two: bool) -> None:
    """Whenever the exact area check passes, the in-memory index returns the service, with
    the distance the area check computed (bit for bit)."""
    from matching.index import DirectoryIndex, candidate, lookup_keys, record

    d = radius * share / 111.2
    plat = max(-89.9, min(89.9, lat + d * math.cos(bearing)))
    plon = lon + d * math.sin(bearing) / max(0.05, math.cos(math.radians(plat)))
    plon = ((plon + 180) % 360) - 180
    where = geo.coarsen(plat, plon)
    locations = (Point(lat, lon), Point(-lat, lon)) if two else (Point(lat, lon),)
    service = Candidate(service_id="s", organization_id="o", categories=frozenset({"food"}),
                        locations=locations, radius_km=radius)
    resident = Referral(referral_id="r", need="food", urgency="urgent", lat=where["lat"],
                        lon=where["lon"], geohash=where["geohash"])
    memory = DirectoryIndex()
    memory._put(record(service))
    found, _examined = memory._covering(lookup_keys("food", where["geohash"]), resident, {})
    if eligibility.in_area(resident, service):
        [(sid, slot, km)] = found
        assert sid == "s" and isinstance(slot, int)
        assert candidate(memory._store.record(slot)) == service
        assert km is None or km == eligibility.nearest_km(service, resident)
        assert two or km is not None
    else:
        assert found == []
