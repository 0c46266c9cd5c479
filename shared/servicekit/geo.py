"""Geohash encoding, location coarsening and great-circle distance.

Pure functions, no dependencies. Events carry the resident's location only
coarsened to a precision-6 geohash cell (about 1.2 km x 0.6 km): see ``coarsen``.
"""

from __future__ import annotations

import math
from typing import TypedDict

BASE32 = "0123456789bcdefghjkmnpqrstuvwxyz"
_DECODE_MAP = {char: index for index, char in enumerate(BASE32)}
MAX_PRECISION = 12
COARSE_PRECISION = 6
EARTH_RADIUS_KM = 6371.0088  # IUGG mean Earth radius


class CoarseLocation(TypedDict):
    """A location reduced to the centre of its precision-6 geohash cell."""

    geohash: str
    lat: float
    lon: float


def check_coordinates(lat: float, lon: float) -> None:
    if not (math.isfinite(lat) and math.isfinite(lon)):
        raise ValueError("latitude and longitude must be finite numbers")
    if not -90.0 <= lat <= 90.0:
        raise ValueError(f"latitude {lat} is outside [-90, 90]")
    if not -180.0 <= lon <= 180.0:
        raise ValueError(f"longitude {lon} is outside [-180, 180]")


def encode(lat: float, lon: float, precision: int = COARSE_PRECISION) -> str:
    """Return the geohash of ``(lat, lon)`` with ``precision`` characters (1-12)."""
    check_coordinates(lat, lon)
    if not 1 <= precision <= MAX_PRECISION:
        raise ValueError(f"precision must be between 1 and {MAX_PRECISION}, got {precision}")
    lat_range, lon_range = [-90.0, 90.0], [-180.0, 180.0]
    chars: list[str] = []
    bits = 0
    value = 0
    even_bit = True  # bits alternate, starting with longitude
    while len(chars) < precision:
        interval, coordinate = (lon_range, lon) if even_bit else (lat_range, lat)
        mid = (interval[0] + interval[1]) / 2
        value <<= 1
        if coordinate >= mid:
            value |= 1
            interval[0] = mid
        else:
            interval[1] = mid
        even_bit = not even_bit
        bits += 1
        if bits == 5:
            chars.append(BASE32[value])
            bits = value = 0
    return "".join(chars)


def bounds(geohash: str) -> tuple[float, float, float, float]:
    """Return the cell of ``geohash`` as ``(lat_min, lat_max, lon_min, lon_max)``."""
    if not 1 <= len(geohash) <= MAX_PRECISION:
        raise ValueError(f"geohash must have 1 to {MAX_PRECISION} characters")
    lat_range, lon_range = [-90.0, 90.0], [-180.0, 180.0]
    even_bit = True
    for char in geohash.lower():
        if char not in _DECODE_MAP:
            raise ValueError(f"invalid geohash character {char!r}")
        value = _DECODE_MAP[char]
        for shift in range(4, -1, -1):
            interval = lon_range if even_bit else lat_range
            mid = (interval[0] + interval[1]) / 2
            if (value >> shift) & 1:
                interval[0] = mid
            else:
                interval[1] = mid
            even_bit = not even_bit
    return lat_range[0], lat_range[1], lon_range[0], lon_range[1]


def decode(geohash: str) -> tuple[float, float]:
    """Return the centre ``(lat, lon)`` of the cell of ``geohash``."""
    lat_min, lat_max, lon_min, lon_max = bounds(geohash)
    return (lat_min + lat_max) / 2, (lon_min + lon_max) / 2


def coarsen(lat: float, lon: float) -> CoarseLocation:
    """Reduce a precise location to its precision-6 geohash cell and the cell centre.

    The centre is rounded to 3 decimal places (about 110 m), far less than half a
    cell, so the rounded point still lies in the same cell.
    """
    geohash = encode(lat, lon, COARSE_PRECISION)
    centre_lat, centre_lon = decode(geohash)
    return {"geohash": geohash, "lat": round(centre_lat, 3), "lon": round(centre_lon, 3)}


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in kilometres between two points given in degrees."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    d_phi = phi2 - phi1
    d_lambda = math.radians(lon2 - lon1)
    a = math.sin(d_phi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(d_lambda / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))
