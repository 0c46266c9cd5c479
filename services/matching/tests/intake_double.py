"""A stand-in for referral-intake in matching's tests: it answers matching's decisions with
the ``referral.status_changed`` events the real lifecycle owner emits (DESIGN.md §4), and
keeps each referral's status so ``from_status`` is always right."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from matching_factories import status_changed

from servicekit import events

Apply = Callable[[events.Envelope], Any]


@dataclass
class IntakeDouble:
    apply: Apply  # hands one event to matching (a handler call or a Kafka publish)
    status: dict[str, str] = field(default_factory=dict)
    holder: dict[str, str] = field(default_factory=dict)  # referral -> service with offer/case

    def _emit(self, rid: str, to: str, **kwargs: Any) -> None:
        env = status_changed(rid, self.status.get(rid, "submitted"), to, **kwargs)
        self.status[rid] = to
        self.apply(env)

    def answer(self, decision: events.Envelope) -> None:
        """What intake does with a decision it receives: an offer, or ``unmatched``."""
        rid = decision.subject
        if decision.type == events.ROUTING_EXHAUSTED:
            self._emit(rid, "unmatched")
            return
        self.holder[rid] = decision.data["service_id"]
        self._emit(rid, "offered", service_id=decision.data["service_id"],
                   proposal_id=decision.id, attempt=decision.data["attempt"])

    def decline(self, rid: str, reason: str = "no_capacity") -> None:
        self._emit(rid, "submitted", service_id=self.holder.pop(rid), offer_status="declined",
                   reason_code=reason)

    def expire(self, rid: str) -> None:
        self._emit(rid, "submitted", service_id=self.holder.pop(rid), offer_status="expired",
                   reason_code="expired")

    def accept(self, rid: str) -> None:
        self._emit(rid, "accepted", service_id=self.holder[rid], offer_status="accepted")

    def close(self, rid: str) -> None:
        self.holder.pop(rid, None)
        self._emit(rid, "completed")
