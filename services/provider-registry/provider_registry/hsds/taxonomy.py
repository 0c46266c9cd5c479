"""Routing need categories <-> HSDS taxonomy terms (pure).

The registry publishes its own small taxonomy, ``referral-routing``, with one term per need
category (code = the category, e.g. ``housing``) and one marker term,
``confidential-location``, attached to locations whose address must stay hidden. Terms of
other taxonomies (AIRS/211 LA codes, Open Eligibility, free text) are mapped by code prefix
first, then by keywords in the term's name; a service none of whose terms map is filed under
``other`` so it is still findable. Extend ``CODE_PREFIXES``/``KEYWORDS`` for a new source.
"""
from __future__ import annotations

import uuid
from typing import Any

from servicekit import events

_NAMESPACE = uuid.UUID("5f0d7c8e-2b7a-4c1e-9a51-3c8f1e2d4b60")
TAXONOMY_ID = str(uuid.uuid5(_NAMESPACE, "taxonomy:referral-routing"))
TAXONOMY = {"id": TAXONOMY_ID, "name": "referral-routing",
            "description": "Need categories used to route police referrals to services.",
            "version": "1"}
CONFIDENTIAL_CODE = "confidential-location"


def term_id(code: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"term:{code}"))


def need_term(need: str) -> dict[str, Any]:
    return {"id": term_id(need), "code": need, "name": need.replace("_", " "),
            "description": f"Routing need category: {need.replace('_', ' ')}.",
            "taxonomy": "referral-routing", "language": "en", "taxonomy_id": TAXONOMY_ID}


CONFIDENTIAL_TERM = {**need_term(CONFIDENTIAL_CODE),
                     "description": "The location's address and coordinates are confidential."}
OWN_TERMS = {t["id"]: t for t in [need_term(n) for n in events.NEEDS] + [CONFIDENTIAL_TERM]}

# AIRS / 211 LA taxonomy code prefixes (longest prefix wins)
CODE_PREFIXES: dict[str, str] = {
    "BH": "housing", "BD": "food", "BM": "food", "RX": "substance_use",
    "RP": "mental_health", "RM": "mental_health", "RR": "mental_health",
    "LH": "medical", "LN": "medical", "LT": "medical", "LV": "medical",
    "FT": "legal", "FN": "legal", "ND": "employment",
    "PH-1800": "domestic_violence", "PN-8100": "youth",
}
KEYWORDS: list[tuple[str, str]] = [  # checked in order: the first match wins
    ("domestic violence", "domestic_violence"), ("intimate partner", "domestic_violence"),
    ("substance", "substance_use"), ("addiction", "substance_use"),
    ("alcohol", "substance_use"), ("drug", "substance_use"),
    ("mental health", "mental_health"), ("counsel", "mental_health"),
    ("crisis", "mental_health"), ("shelter", "housing"), ("housing", "housing"),
    ("homeless", "housing"), ("food", "food"), ("meal", "food"), ("pantry", "food"),
    ("youth", "youth"), ("teen", "youth"), ("child", "youth"), ("legal", "legal"),
    ("law", "legal"), ("employment", "employment"), ("job", "employment"),
    ("medical", "medical"), ("health", "medical"), ("clinic", "medical"),
]


def need_of_term(term: dict[str, Any]) -> str | None:
    """The routing need a taxonomy term stands for, if any."""
    code = str(term.get("code") or "")
    if term.get("taxonomy_id") == TAXONOMY_ID or term.get("id") in OWN_TERMS:
        return code if code in events.NEEDS else None
    for prefix in sorted(CODE_PREFIXES, key=len, reverse=True):
        if code.upper().startswith(prefix):
            return CODE_PREFIXES[prefix]
    name = f"{term.get('name') or ''} {term.get('description') or ''}".lower()
    return next((need for word, need in KEYWORDS if word in name), None)


def categories_of(terms: list[dict[str, Any]]) -> list[str]:
    """Sorted needs of a service's terms; ``other`` when none maps."""
    found = {n for n in (need_of_term(t) for t in terms) if n is not None}
    return sorted(found) or ["other"]


def is_confidential_marker(term: dict[str, Any]) -> bool:
    return term.get("id") == CONFIDENTIAL_TERM["id"] or (
        term.get("code") == CONFIDENTIAL_CODE and term.get("taxonomy_id") == TAXONOMY_ID)
