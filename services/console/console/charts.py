"""Supervisor dashboard data: the intake service's /v1/stats, shaped for the charts.

Pure functions (no Flask, no I/O), unit tested. When /v1/stats cannot be had, the funnel
and the unmatched queue are counted from the supervisor's de-identified referral list and
the page says so; the timing and SLA charts then show "not available". Nothing is invented.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

FUNNEL = ("submitted", "offered", "accepted", "in_progress", "completed")
# the funnel stages a referral in each status has passed through
_PASSED = {
    "submitted": ("submitted",), "unmatched": ("submitted",), "cancelled": ("submitted",),
    "offered": ("submitted", "offered"),
    "accepted": ("submitted", "offered", "accepted"),
    "in_progress": ("submitted", "offered", "accepted", "in_progress"),
    "on_hold": ("submitted", "offered", "accepted", "in_progress"),
    "failed": ("submitted", "offered", "accepted", "in_progress"),
    "completed": FUNNEL,
    "entered_in_error": (),
}


def funnel(by_status: dict[str, int]) -> dict[str, int]:
    """How many referrals reached each stage, from how many are in each status now."""
    counts = dict.fromkeys(FUNNEL, 0)
    for status, n in by_status.items():
        for stage in _PASSED.get(status, ("submitted",)):
            counts[stage] += n
    return counts


def _minutes(seconds: Any) -> float | None:
    return round(seconds / 60, 1) if isinstance(seconds, (int, float)) else None


def timings(stats: dict[str, Any]) -> dict[str, float | None]:
    """Median and 90th percentile, in minutes, of time to accept and to first contact."""
    accept = stats.get("time_to_accept") or {}
    contact = stats.get("time_to_first_contact") or {}
    return {"accept, median": _minutes(accept.get("median_s")),
            "accept, 90th percentile": _minutes(accept.get("p90_s")),
            "first contact, median": _minutes(contact.get("median_s")),
            "first contact, 90th percentile": _minutes(contact.get("p90_s"))}


def _per_key(blocks: Any, field: str) -> dict[str, int]:
    if not isinstance(blocks, dict):
        return {}
    return {str(k): int(v.get(field) or 0) for k, v in blocks.items() if isinstance(v, dict)}


def from_stats(stats: dict[str, Any]) -> dict[str, Any]:
    by_need = _per_key(stats.get("by_need"), "unmatched")
    by_area = _per_key(stats.get("by_area"), "unmatched")
    return {
        "source": "stats", "total": int(stats.get("total") or 0),
        "completion_rate": stats.get("completion_rate"),
        "funnel": funnel(stats.get("by_status") or {}),
        "timings": timings(stats),
        "sla_by_week": _per_key(stats.get("by_week"), "sla_breaches"),
        "sla_total": int(stats.get("sla_breaches") or 0),
        "unmatched_by_need": {k: v for k, v in by_need.items() if v},
        "unmatched_by_area": {k: v for k, v in by_area.items() if v},
    }


def from_list(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The fallback: the current page of the agency's de-identified referrals."""
    waiting = [i for i in items if i.get("status") == "unmatched"]
    return {
        "source": "list", "total": len(items), "completion_rate": None,
        "funnel": funnel(dict(Counter(str(i.get("status")) for i in items))),
        "timings": None, "sla_by_week": None, "sla_total": None,
        "unmatched_by_need": dict(Counter(str(i.get("need")) for i in waiting)),
        "unmatched_by_area": dict(Counter(
            str((i.get("coarse_location") or {}).get("geohash", "?"))[:4] for i in waiting)),
    }
