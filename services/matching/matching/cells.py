"""The spatial candidate index (pure): which geohash cells a service covers, and which
cells to look up for a resident's coarse location.

A service is indexed under geohash cells of mixed precision; a referral (whose location
is a precision-6 cell) looks up every prefix of its cell, so a service indexed under any
prefix of it is found. The index is a superset: the exact area check (``eligibility.in_area``)
still runs on what it returns, it only saves reading services that cannot cover the point.

* A radius around a location: every cell intersecting the radius' bounding box, at the
  finest precision (<= 6) whose covering needs at most ``MAX_CELLS`` cells per location.
* A service-area geohash: itself, cut to precision 6 (the referral's precision; a finer
  area cell is matched by its precision-6 parent, as ``in_area`` does).
* Neither (a hotline or a service that declares no area): ``EVERYWHERE``, the empty
  prefix every lookup includes.

A cell is coarse (a 20 km radius is indexed under ~20 x 20 km cells), so each index row
also carries the service's *reach box* (``reach_box``): a latitude/longitude rectangle
holding every point within the radius of any of its locations. The lookup compares the
resident's point with it in the same index scan, so services whose radius cannot reach
the point are never read (at 100,000 services this cuts the rows read ~3x).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from servicekit import geo

EVERYWHERE = ""
MAX_CELLS = 24
KM_PER_DEG_LAT = 110.57  # the shortest degree of latitude (at the equator): a safe bound
KM_PER_DEG_LON_EQ = 111.33


def lookup_cells(geohash: str) -> list[str]:
    """The cells to read for a referral in ``geohash``: every prefix, the empty one too."""
    cell = geohash[:geo.COARSE_PRECISION]
    return [cell[:n] for n in range(len(cell) + 1)]


def _cell_size(precision: int) -> tuple[float, float]:
    lat_min, lat_max, lon_min, lon_max = geo.bounds("0" * precision)
    return lat_max - lat_min, lon_max - lon_min


def _steps(low: float, high: float, step: float) -> list[float]:
    count = math.floor((high - low) / step) + 1
    return [low + i * step for i in range(count)] + [high]


def _wrap(lon: float) -> float:
    return ((lon + 180.0) % 360.0) - 180.0 if not -180.0 <= lon <= 180.0 else lon


def _box(lat: float, lon: float, radius_km: float) -> tuple[float, float, float, float]:
    """(lat_min, lat_max, lon_min, lon_max) containing the disk; longitudes may pass ±180."""
    dlat = radius_km / KM_PER_DEG_LAT * 1.01
    lat_min, lat_max = max(-90.0, lat - dlat), min(90.0, lat + dlat)
    widest = math.cos(math.radians(max(abs(lat_min), abs(lat_max))))
    if widest < 1e-6 or radius_km / (KM_PER_DEG_LON_EQ * widest) * 1.01 >= 180.0:
        return lat_min, lat_max, -180.0, 180.0
    dlon = radius_km / (KM_PER_DEG_LON_EQ * widest) * 1.01
    return lat_min, lat_max, lon - dlon, lon + dlon


def disk_cells(lat: float, lon: float, radius_km: float) -> set[str]:
    """Cells (finest precision within ``MAX_CELLS``) covering a disk's bounding box."""
    lat_min, lat_max, lon_min, lon_max = _box(lat, lon, radius_km)
    for precision in range(geo.COARSE_PRECISION, 0, -1):
        h, w = _cell_size(precision)
        rows = (lat_max - lat_min) / h + 2
        cols = min((lon_max - lon_min) / w + 2, 360.0 / w)
        if rows * cols > MAX_CELLS and precision > 1:
            continue
        return {geo.encode(y, _wrap(x), precision)
                for y in _steps(lat_min, lat_max, h)
                for x in _steps(lon_min, min(lon_max, lon_min + 360.0), w)}
    return {EVERYWHERE}  # pragma: no cover - precision 1 always returns above


Box = tuple[float, float, float, float]  # lat_min, lat_max, lon_min, lon_max


def reach_box(locations: Sequence[tuple[float, float]], radius_km: float | None,
              area_geohashes: Iterable[str]) -> Box | None:
    """A rectangle holding every point within ``radius_km`` of a location, or None when
    the service may serve points outside any such rectangle (no radius, service-area
    geohashes, no location) or the rectangle would cross the antimeridian."""
    if radius_km is None or not locations or any(True for _ in area_geohashes):
        return None
    boxes = [_box(lat, lon, radius_km) for lat, lon in locations]
    box = (min(b[0] for b in boxes), max(b[1] for b in boxes),
           min(b[2] for b in boxes), max(b[3] for b in boxes))
    return None if box[2] < -180.0 or box[3] > 180.0 else box


def service_cells(locations: Sequence[tuple[float, float]], radius_km: float | None,
                  area_geohashes: Iterable[str]) -> set[str]:
    """Every cell a service must be indexed under (see the module docstring)."""
    areas = [g.lower() for g in area_geohashes]
    if radius_km is None and not areas:
        return {EVERYWHERE}
    out = {g[:geo.COARSE_PRECISION] for g in areas}
    if radius_km is not None:
        for lat, lon in locations:
            out |= disk_cells(lat, lon, radius_km)
    return out
