"""CPU per ``events.decode`` of the three events every referral's consumers decode most
(``referral.submitted``, ``referral.status_changed``, ``routing.proposed``), built by the
services' own emit code and encoded as the outbox relay sends them. Not a `make bench`
timing bench: ``time.process_time`` over N decodes, median of ROUNDS rounds, in µs.
No database, no broker.

    .venv/bin/python bench/cost_decode.py          # N=20000 ROUNDS=5
"""
from __future__ import annotations

import datetime as dt
import os
import random
import statistics
import time
import uuid
from types import SimpleNamespace

from matching import decide
from matching.domain import Reason
from referral_intake import domain, handlers
from servicekit import crypto, events, geo

N = int(os.environ.get("N", "20000"))
ROUNDS = int(os.environ.get("ROUNDS", "5"))


def _submitted(now: dt.datetime) -> events.Envelope:
    rid = str(uuid.uuid4())
    where = (47.5 + random.random() / 4, -122.45 + random.random() / 5)  # one city's cells
    row = {"id": rid, "short_id": domain.short_id(rid), "need": "mental_health",
           "urgency": "urgent", "agency_id": "metro-pd",
           "officer_ref": crypto.blind_index(b"k" * 32, "officer-7", purpose="officer")}
    coarse = dict(geo.coarsen(*where))
    eligibility = {"age": 34, "gender": "female", "preferred_language": "es-MX",
                   "needs_interpreter": True, "flags": ["family", "veteran"]}
    consent = {"share_with_provider": True, "referrer_updates": "milestones",
               "contact_methods": ["phone", "sms"]}
    return events.new_event(events.REFERRAL_SUBMITTED, subject=rid, sequence=1,
                            source="referral-intake",
                            data=handlers.submitted_data(row, coarse, eligibility, consent, now))


def _status_changed(now: dt.datetime) -> events.Envelope:
    rid = str(uuid.uuid4())
    ref = SimpleNamespace(id=rid, short_id=domain.short_id(rid), need="housing",
                          urgency="routine", agency_id="metro-pd", officer_ref="a" * 43)
    offer = domain.Offer(id=str(uuid.uuid4()), service_id="svc-0042",
                         organization_id="org-harbour-housing",
                         expires_at=now + dt.timedelta(hours=4), status="open", attempt=1)
    change = domain.Change(from_status="submitted", to_status="offered", actor_role="system",
                           offer=offer)
    _row, data = handlers._record(ref, change, {"referrer_updates": "milestones"}, now=now,
                                  proposal_id=str(uuid.uuid4()), note_ct=None)
    return events.new_event(events.REFERRAL_STATUS_CHANGED, subject=rid, sequence=2,
                            source="referral-intake", data=data,
                            causation_id=str(uuid.uuid4()))


def _proposed(now: dt.datetime) -> events.Envelope:
    rid = str(uuid.uuid4())
    best = SimpleNamespace(
        candidate=SimpleNamespace(service_id="svc-0042", organization_id="org-harbour-housing"),
        score=0.8125347, reasons=(
            Reason("category", "offers housing"),
            Reason("distance", "2.1 km from the resident's area"),
            Reason("headroom", "4 of 12 places free"), Reason("language", "speaks es-MX"),
            Reason("acceptance", "accepted 7 of 9 answered offers"),
            Reason("response", "answers in 1.4 h on average")))
    decision = SimpleNamespace(best=best, reasons=best.reasons,
                               eliminated={"category": 31, "capacity": 4, "out_of_area": 7})
    recorded = decide.Recorded(referral_id=rid, attempt=1, decision=decision, now=now)
    name, data, _reasons = decide._event_data(recorded)
    return events.new_event(name, subject=rid, sequence=1, source="matching", data=data,
                            causation_id=str(uuid.uuid4()))


def main() -> None:
    random.seed(7)
    now = dt.datetime.now(dt.UTC).replace(microsecond=589123)
    for build in (_submitted, _status_changed, _proposed):
        raws = [events.encode(build(now + dt.timedelta(seconds=i))) for i in range(100)]
        rounds = []
        for _ in range(ROUNDS):
            started = time.process_time()
            for i in range(N):
                events.decode(raws[i % 100])
            rounds.append((time.process_time() - started) / N * 1e6)
        print(f"{build.__name__[1:]:<15} {statistics.median(rounds):7.1f} µs/decode "
              f"(median of {ROUNDS}; rounds {', '.join(f'{r:.1f}' for r in rounds)})")


if __name__ == "__main__":
    main()
