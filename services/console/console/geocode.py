"""Typed address -> coordinates for the officer's form (issue 7: "location from the browser's
geolocation or an address").

The address is personal data (DESIGN.md §6: address, precise location). It travels only in a
POST body from the browser to the console, is looked up server-side, is never logged and is
never sent to referral-intake: the referral carries the coordinates the officer confirmed.

Two geocoders, chosen by ``CONSOLE_GEOCODER``:

* ``gazetteer`` (the embedded default): an in-memory index of an address-points CSV in the
  OpenAddresses layout (``LON,LAT,NUMBER,STREET,UNIT,CITY,DISTRICT,REGION,POSTCODE,...``,
  plus an optional ``NAME`` column for named places), read from ``CONSOLE_GAZETTEER``. The
  project ships a small file for the demo city (landmarks and their street addresses); a
  deployment points it at its county's OpenAddresses extract or address-point export.
  Nothing leaves the machine.
* ``nominatim``: the Nominatim search API at ``CONSOLE_GEOCODER_URL`` (``/search?q=&format=
  jsonv2``). The address goes to that server in its query string, so point it only at a
  geocoder the agency runs or has a data-processing agreement with, never at a public one.

``off`` hides the address lookup; officers use the phone's location or type coordinates.
"""
from __future__ import annotations

import csv
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import requests

DEMO_GAZETTEER = Path(__file__).resolve().parent / "data" / "demo-gazetteer.csv"
MAX_QUERY = 200  # characters; longer input is not an address


@dataclass(frozen=True)
class Place:
    label: str
    lat: float
    lon: float


class GeocoderUnavailable(Exception):
    """The geocoder could not answer (network, timeout, bad answer). The message is safe to
    show: it never contains the query."""


class Geocoder(Protocol):
    def search(self, query: str, limit: int = 5) -> list[Place]: ...


# --- normalisation: one spelling per token, so "4th Avenue" finds "4TH AVE" ---------------
_ABBREVIATIONS = {
    "street": "st", "avenue": "ave", "av": "ave", "boulevard": "blvd", "drive": "dr",
    "road": "rd", "place": "pl", "court": "ct", "lane": "ln", "parkway": "pkwy",
    "terrace": "ter", "highway": "hwy", "square": "sq", "circle": "cir",
    "north": "n", "south": "s", "east": "e", "west": "w", "northeast": "ne",
    "northwest": "nw", "southeast": "se", "southwest": "sw",
    "first": "1st", "second": "2nd", "third": "3rd", "fourth": "4th", "fifth": "5th",
    "sixth": "6th", "seventh": "7th", "eighth": "8th", "ninth": "9th", "tenth": "10th",
    "saint": "st", "mount": "mt", "washington": "wa",
}
_NOISE = frozenset({"the", "of", "and", "usa", "us"})
_TOKEN = re.compile(r"[a-z0-9]+")


def tokens(text: str) -> list[str]:
    out = []
    for raw in _TOKEN.findall(text.lower()):
        token = _ABBREVIATIONS.get(raw, raw)
        if token not in _NOISE:
            out.append(token)
    return out


def _is_number(token: str) -> bool:
    return token.isdigit()


@dataclass(frozen=True)
class _Entry:
    place: Place
    number: str  # the house number, "" for a named place without one
    name: frozenset[str]  # tokens of the place's name ("" for a bare address point)
    core: frozenset[str]  # name, street and unit tokens: what makes it this place


class Gazetteer:
    """Address points in memory with an inverted index: a query looks only at entries that
    share its rarest word, so a county-sized extract answers in milliseconds.

    A query with a house number matches address points with that number on the street typed;
    a query without one matches named places by their name ("pike place market"). City,
    region and postcode words are ignored for matching (every entry shares them), so
    "Seattle" alone finds nothing rather than an arbitrary place in Seattle."""

    def __init__(self, entries: Iterable[_Entry], area_words: Iterable[str] = ()) -> None:
        self._entries = list(entries)
        self._area_words = frozenset(area_words)
        self._by_word: dict[str, list[int]] = defaultdict(list)
        for i, entry in enumerate(self._entries):
            for word in entry.core:
                self._by_word[word].append(i)

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def from_rows(cls, rows: Iterable[dict[str, str]]) -> Gazetteer:
        entries, area_words = [], set()
        for row in rows:
            row = {str(k).strip().upper(): (v or "").strip() for k, v in row.items() if k}
            try:
                lat, lon = float(row["LAT"]), float(row["LON"])
            except (KeyError, ValueError):
                continue  # a row without usable coordinates is no place
            if not (-90 <= lat <= 90 and -180 <= lon <= 180):
                continue
            number, street, unit = row.get("NUMBER", ""), row.get("STREET", ""), row.get("UNIT", "")
            name = row.get("NAME", "")
            area = [p for p in (row.get("CITY", ""), row.get("REGION", ""), row.get("POSTCODE", ""))
                    if p]
            street_line = " ".join(p for p in (number, street, unit and f"#{unit}") if p)
            first = f"{name} ({street_line})" if name and street_line else name or street_line
            if not first or not (name or number):
                continue  # a street without a number is no point
            area_words.update(tokens(" ".join(area)))
            entries.append(_Entry(Place(", ".join([first, *area[:2]]), lat, lon), number.lower(),
                                  frozenset(tokens(name)), frozenset(tokens(f"{name} {street} {unit}"))))
        return cls(entries, area_words)

    @classmethod
    def from_csv(cls, path: Path) -> Gazetteer:
        with open(path, newline="", encoding="utf-8") as handle:
            return cls.from_rows(csv.DictReader(handle))

    def search(self, query: str, limit: int = 5) -> list[Place]:
        query_tokens = tokens(query[:MAX_QUERY])
        numbers = {t for t in query_tokens if _is_number(t)}
        typed = {t for t in query_tokens if not _is_number(t)}
        # city, region and postcode words neither select nor need to match (they rank)
        words = typed - self._area_words
        indexed = [w for w in words if w in self._by_word]
        if not indexed:
            return []
        rarest = min(indexed, key=lambda w: len(self._by_word[w]))
        scored = []
        for i in self._by_word[rarest]:
            entry = self._entries[i]
            by_number = bool(entry.number) and entry.number in numbers
            if not by_number and not words & entry.name:
                continue  # an address point answers to its own number; a place to its name
            matched = len(words & entry.core)
            if matched * 3 < len(words) * 2:
                continue  # most of what was typed must be there
            scored.append((-len(typed & entry.core), len(entry.core - typed), entry.place.label,
                           entry.place))
        scored.sort(key=lambda item: item[:3])
        return [place for *_, place in scored[:limit]]


class Nominatim:
    """Nominatim's search API (https://nominatim.org/release-docs/latest/api/Search/)."""

    def __init__(self, base_url: str, timeout_s: float, http: requests.Session | None = None,
                 user_agent: str = "referrals-console") -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.http = http or requests.Session()
        self.user_agent = user_agent

    def search(self, query: str, limit: int = 5) -> list[Place]:
        try:
            resp = self.http.get(f"{self.base_url}/search", timeout=self.timeout_s,
                                 params={"q": query[:MAX_QUERY], "format": "jsonv2",
                                         "limit": limit, "addressdetails": 0},
                                 headers={"User-Agent": self.user_agent,
                                          "Accept": "application/json"})
            resp.raise_for_status()
            answer: Any = resp.json()
        except (requests.RequestException, ValueError) as exc:
            raise GeocoderUnavailable(f"the address service did not answer "
                                      f"({type(exc).__name__})") from None
        if not isinstance(answer, list):
            raise GeocoderUnavailable("the address service gave an answer it could not use")
        places = []
        for item in answer[:limit]:
            try:
                lat, lon = float(item["lat"]), float(item["lon"])
                label = str(item.get("display_name") or f"{lat:.5f}, {lon:.5f}")
            except (KeyError, TypeError, ValueError):
                continue
            if -90 <= lat <= 90 and -180 <= lon <= 180:
                places.append(Place(label, lat, lon))
        return places


def from_settings(kind: str, url: str, gazetteer: str, timeout_s: float) -> Geocoder | None:
    """The configured geocoder, or None when address lookup is off."""
    kind = (kind or "gazetteer").strip().lower()
    if kind == "off":
        return None
    if kind == "nominatim":
        if not url:
            raise RuntimeError("CONSOLE_GEOCODER=nominatim needs CONSOLE_GEOCODER_URL")
        return Nominatim(url, timeout_s)
    if kind == "gazetteer":
        return Gazetteer.from_csv(Path(gazetteer) if gazetteer else DEMO_GAZETTEER)
    raise RuntimeError(f"CONSOLE_GEOCODER must be gazetteer, nominatim or off, not {kind!r}")
