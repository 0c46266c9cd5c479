"""Load accounting: how referral status changes move a service's open offers and cases."""
from __future__ import annotations

from dataclasses import dataclass

ACTIVE_CASE = frozenset({"accepted", "in_progress", "on_hold"})
TERMINAL = frozenset({"completed", "failed", "cancelled", "entered_in_error"})


@dataclass(frozen=True)
class LoadChange:
    open_offers: int = 0
    active_cases: int = 0
    mark_tried: bool = False  # never propose this service for this referral again
    reevaluate: bool = False  # the referral is routable again: make a new decision


def load_change(from_status: str | None, to_status: str, reason_code: str | None, *,
                reserved: bool) -> LoadChange:
    """How one ``referral.status_changed`` moves the load of the offer's service.

    ``reserved``: the offer answers one of matching's own proposals, whose place was
    reserved when it was proposed (a supervisor's manual assignment was not).
    Every proposal gets exactly one answer (DESIGN.md §3): an offer or a void.
    """
    routable = to_status in ("submitted", "unmatched")
    if reason_code == "proposal_void":
        # voided while still routable can only mean the service was tried already
        return LoadChange(open_offers=-1, mark_tried=routable,
                          reevaluate=to_status == "submitted")
    if from_status == "offered" and to_status == "accepted":
        return LoadChange(open_offers=-1, active_cases=1)
    if from_status == "offered" and to_status != "offered":
        return LoadChange(open_offers=-1, mark_tried=True, reevaluate=to_status == "submitted")
    if to_status == "offered" and from_status != "offered":
        return LoadChange(open_offers=0 if reserved else 1)
    if from_status in ACTIVE_CASE and to_status in TERMINAL:
        return LoadChange(active_cases=-1)
    if from_status == "unmatched" and to_status == "submitted":
        return LoadChange(reevaluate=True)
    return LoadChange()
