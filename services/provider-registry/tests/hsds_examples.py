"""HSDS test documents built from the fixed example (``data/service_full.json``)."""
from __future__ import annotations

import copy
from typing import Any

CONTACT_IDS = {"organization": "c0000000-0000-4000-8000-000000000001",
               "service": "c0000000-0000-4000-8000-000000000002",
               "service_at_location": "c0000000-0000-4000-8000-000000000003",
               "location": "c0000000-0000-4000-8000-000000000004"}


def contact(level: str, **extra: Any) -> dict[str, Any]:
    cid = CONTACT_IDS[level]
    return {"id": cid, "name": f"{level.title()} Contact", "title": f"{level} lead",
            "department": "Intake", "email": f"{level}@example.org",
            "phones": [{"id": cid.replace("c0", "d0", 1), "number": "+1 206 555 0100",
                        "extension": 7, "type": "voice", "description": f"{level} desk"}],
            **extra}


def with_contacts(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with one distinct contact (and phone) at each level HSDS nests contacts:
    organization, service, its first service at location and that location."""
    doc = copy.deepcopy(doc)
    doc["organization"]["contacts"] = [contact("organization")]
    doc["contacts"] = [contact("service")]
    sal = doc["service_at_locations"][0]
    sal["contacts"] = [contact("service_at_location")]
    sal["location"]["contacts"] = [contact("location")]
    return doc
