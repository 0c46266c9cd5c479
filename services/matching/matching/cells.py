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

The same cells as integers (``GridKey`` = precision, longitude slot, latitude slot: the
geohash's two interleaved bit strings) serve the worker's in-memory index (``index.py``):
``disk_grid`` enumerates a disk's cells with a few divisions instead of encoding each one,
and ``lookup_grid`` turns a referral's cell into the keys of its prefixes.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from functools import cache, lru_cache

from servicekit import geo

EVERYWHERE = ""
MAX_CELLS = 24
KM_PER_DEG_LAT = 110.57  # the shortest degree of latitude (at the equator): a safe bound
KM_PER_DEG_LON_EQ = 111.33


def lookup_cells(geohash: str) -> list[str]:
    """The cells to read for a referral in ``geohash``: every prefix, the empty one too."""
    cell = geohash[:geo.COARSE_PRECISION]
    return [cell[:n] for n in range(len(cell) + 1)]


@cache
def _cell_size(precision: int) -> tuple[float, float]:
    lat_min, lat_max, lon_min, lon_max = geo.bounds("0" * precision)
    return lat_max - lat_min, lon_max - lon_min


def _box(lat: float, lon: float, radius_km: float) -> tuple[float, float, float, float]:
    """(lat_min, lat_max, lon_min, lon_max) containing the disk; longitudes may pass ±180."""
    dlat = radius_km / KM_PER_DEG_LAT * 1.01
    lat_min, lat_max = max(-90.0, lat - dlat), min(90.0, lat + dlat)
    widest = math.cos(math.radians(max(abs(lat_min), abs(lat_max))))
    if widest < 1e-6 or radius_km / (KM_PER_DEG_LON_EQ * widest) * 1.01 >= 180.0:
        return lat_min, lat_max, -180.0, 180.0
    dlon = radius_km / (KM_PER_DEG_LON_EQ * widest) * 1.01
    return lat_min, lat_max, lon - dlon, lon + dlon


def _precision(lat_min: float, lat_max: float, lon_min: float, lon_max: float) -> int:
    """The finest precision (<= 6) covering the box with at most ``MAX_CELLS`` cells."""
    for precision in range(geo.COARSE_PRECISION, 1, -1):
        h, w = _cell_size(precision)
        rows = (lat_max - lat_min) / h + 2
        cols = min((lon_max - lon_min) / w + 2, 360.0 / w)
        if rows * cols <= MAX_CELLS:
            return precision
    return 1


def disk_cells(lat: float, lon: float, radius_km: float) -> set[str]:
    """Cells (finest precision within ``MAX_CELLS``) covering a disk's bounding box: every
    cell meeting the box (``disk_grid``, as geohashes)."""
    return {grid_geohash(k) for k in disk_grid(lat, lon, radius_km)}


# --- the same cells as integers (the worker's in-memory index) ------------------------------
GridKey = tuple[int, int, int]  # precision, longitude slot, latitude slot


def _bits(precision: int) -> tuple[int, int]:
    """(longitude bits, latitude bits) of a geohash of ``precision`` characters."""
    return (5 * precision + 1) // 2, 5 * precision // 2


def _slot(value: float, low: float, span: float, bits: int) -> int:
    """Which of the 2**bits equal slots of [low, low + span] holds ``value``, exactly as the
    geohash bisection decides: a value on a boundary belongs to the upper slot, the top
    edge to the last one (slot boundaries are dyadic, hence exact in floating point)."""
    n = 1 << bits
    width = span / n
    i = min(max(int((value - low) // width), 0), n - 1)
    while i > 0 and value < low + i * width:
        i -= 1
    while i < n - 1 and value >= low + (i + 1) * width:
        i += 1
    return i


def _columns(low: float, high: float, bits: int) -> set[int]:
    """Longitude slots meeting [low, high] (high - low <= 360; either end may pass ±180)."""
    pieces = []
    if low < -180.0:
        pieces += [(low + 360.0, 180.0), (-180.0, min(high, 180.0))]
    elif high > 180.0:
        pieces += [(low, 180.0), (-180.0, high - 360.0)]
    else:
        pieces.append((low, high))
    out: set[int] = set()
    for a, b in pieces:
        a, b = max(-180.0, min(180.0, a)), max(-180.0, min(180.0, b))
        out.update(range(_slot(a, -180.0, 360.0, bits), _slot(b, -180.0, 360.0, bits) + 1))
    return out


def disk_grid(lat: float, lon: float, radius_km: float) -> set[GridKey]:
    """``disk_cells`` as grid keys (the cells meeting the disk's bounding box), computed
    with a few divisions instead of one geohash encoding per cell."""
    return disk_cover(lat, lon, radius_km)[1]


def disk_cover(lat: float, lon: float, radius_km: float) -> tuple[Box | None, set[GridKey]]:
    """``reach_box`` and ``disk_grid`` of a one-location radius service, at once."""
    box = _box(lat, lon, radius_km)
    reach = None if box[2] < -180.0 or box[3] > 180.0 else box
    return reach, _box_grid(box)


def _box_grid(box: tuple[float, float, float, float]) -> set[GridKey]:
    lat_min, lat_max, lon_min, lon_max = box
    precision = _precision(lat_min, lat_max, lon_min, lon_max)
    lon_bits, lat_bits = _bits(precision)
    rows = range(_slot(lat_min, -90.0, 180.0, lat_bits),
                 _slot(lat_max, -90.0, 180.0, lat_bits) + 1)
    cols = _columns(lon_min, min(lon_max, lon_min + 360.0), lon_bits)
    return {(precision, x, y) for x in cols for y in rows}


def _split(value: int, first_is_x: bool) -> tuple[int, int, int, int]:
    """A geohash character's 5 bits as (x bits, x count, y bits, y count)."""
    x = y = nx = ny = 0
    to_x = first_is_x
    for shift in range(4, -1, -1):
        bit = (value >> shift) & 1
        if to_x:
            x, nx = x << 1 | bit, nx + 1
        else:
            y, ny = y << 1 | bit, ny + 1
        to_x = not to_x
    return x, nx, y, ny


# per character: its bits when it starts on a longitude bit (even positions), or a latitude
_SPLIT = {char: (_split(i, True), _split(i, False)) for i, char in enumerate(geo.BASE32)}


def geohash_grid(geohash: str) -> GridKey:
    """The grid key of a geohash cell (its bits, de-interleaved)."""
    x = y = 0
    for k, char in enumerate(geohash.lower()):
        bx, nx, by, ny = _SPLIT[char][k % 2]
        x, y = x << nx | bx, y << ny | by
    return len(geohash), x, y


@lru_cache(maxsize=1 << 16)  # neighbouring services share most of their cells
def grid_geohash(key: GridKey) -> str:
    """The geohash of a grid key (the inverse of ``geohash_grid``)."""
    precision, x, y = key
    lon_bits, lat_bits = _bits(precision)
    value = 0
    for i in range(5 * precision):
        if i % 2 == 0:
            bit = (x >> (lon_bits - 1 - i // 2)) & 1
        else:
            bit = (y >> (lat_bits - 1 - i // 2)) & 1
        value = value << 1 | bit
    return "".join(geo.BASE32[(value >> (5 * (precision - 1 - k))) & 31]
                   for k in range(precision))


_SHIFTS = [[(p, lon - _bits(p)[0], lat - _bits(p)[1]) for p in range(1, precision + 1)]
           for precision, (lon, lat) in enumerate(_bits(n) for n in range(13))]


def lookup_grid(geohash: str) -> list[GridKey]:
    """The grid keys of every non-empty prefix of a referral's cell (``lookup_cells``)."""
    precision, x, y = geohash_grid(geohash[:geo.COARSE_PRECISION])
    return [(p, x >> dx, y >> dy) for p, dx, dy in _SHIFTS[precision]]


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
