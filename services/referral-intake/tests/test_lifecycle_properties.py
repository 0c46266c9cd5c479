"""Property tests of the pure lifecycle (DESIGN.md §4): any sequence of commands, legal or
not, leaves a referral in a consistent state; refused commands change nothing."""
from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from referral_intake import domain as d

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # a Monday
SERVICES = {"s1": "o1", "s2": "o1", "s3": "o2", "s4": "o3"}
_ids = itertools.count()


def _offer_args(service: str, minutes: int) -> dict[str, object]:
    return {"offer_id": f"x{next(_ids)}", "service_id": service,
            "organization_id": SERVICES[service], "attempt": 1,
            "expires_at": T0 + timedelta(minutes=minutes)}


service = st.sampled_from(sorted(SERVICES))
org = st.sampled_from(sorted(set(SERVICES.values())) + ["stranger"])
minute = st.integers(0, 120)
now = minute.map(lambda m: T0 + timedelta(minutes=m))

commands = st.one_of(
    st.builds(lambda s, m: d.Propose(**_offer_args(s, m)), service, minute),  # type: ignore[arg-type]
    st.just(d.Exhaust()),
    st.builds(d.Accept, org, now),
    st.builds(d.Decline, org, st.sampled_from(d.DECLINE_REASONS), now),
    st.builds(d.Expire, now),
    st.builds(d.Progress, org, st.sampled_from(("in_progress", "on_hold"))),
    st.builds(d.Close, org, st.sampled_from(("completed", "failed")), st.sampled_from(d.OUTCOMES)),
    st.builds(d.Cancel, st.sampled_from(("officer", "supervisor"))),
    st.just(d.EnterInError()),
    st.just(d.Reroute()),
    st.builds(lambda s, m: d.Assign(**_offer_args(s, m)), service, minute),  # type: ignore[arg-type]
    st.just(d.RevokeSharing()),
)


def _check_invariants(ref: d.Referral) -> None:
    assert ref.status in d.TRANSITIONS or ref.status in d.TERMINAL
    open_offers = [o for o in ref.offers if o.status == "open"]
    accepted = [o for o in ref.offers if o.status == "accepted"]
    assert len(open_offers) <= 1 and len(accepted) <= 1
    assert (ref.status == "offered") == bool(open_offers)
    if ref.status in d.ACTIVE_CASE or ref.status in ("completed", "failed"):
        assert accepted
    if ref.status in d.ROUTABLE:
        assert not accepted
    services = [o.service_id for o in ref.offers]
    assert len(services) == len(set(services)), "a service was offered the referral twice"


@settings(max_examples=400, deadline=None)
@given(st.lists(commands, max_size=30))
def test_no_sequence_of_commands_reaches_an_illegal_state(cmds: list[d.Command]) -> None:
    ref = d.Referral("submitted")
    for cmd in cmds:
        before = ref
        try:
            ref, changes = d.decide(ref, cmd)
        except d.DomainError:
            assert ref == before
            continue
        if before.status in d.TERMINAL:
            assert ref.status == before.status, "a terminal state was left"
        for change in changes:
            assert change.to_status == change.from_status or d.can_transition(
                change.from_status, change.to_status)
        if isinstance(cmd, d.Propose):
            assert len(changes) == 1, "every proposal is answered exactly once"
            assert changes[0].void == (ref.status != "offered" or ref.open_offer is None
                                       or ref.open_offer.id != cmd.offer_id)
        _check_invariants(ref)


@settings(max_examples=200, deadline=None)
@given(st.lists(commands, max_size=25), service, minute)
def test_a_declined_or_expired_service_is_never_offered_again(
        cmds: list[d.Command], again: str, m: int) -> None:
    ref = d.Referral("submitted")
    for cmd in cmds:
        try:
            ref, _ = d.decide(ref, cmd)
        except d.DomainError:
            pass
    closed = {o.service_id for o in ref.offers if o.status in ("declined", "expired")}
    ref2, changes = d.decide(ref, d.Propose(**_offer_args(again, m)))  # type: ignore[arg-type]
    if again in closed:
        assert changes[0].void and ref2 == ref
        with pytest.raises(d.DomainError):
            d.decide(ref, d.Assign(**_offer_args(again, m)))  # type: ignore[arg-type]


def _offered(minutes: int = 30) -> d.Referral:
    ref, _ = d.decide(d.Referral("submitted"), d.Propose(**_offer_args("s1", minutes)))  # type: ignore[arg-type]
    return ref


def test_accepting_an_expired_offer_is_refused_with_the_offer_status() -> None:
    ref = _offered(10)
    with pytest.raises(d.OfferNotOpen) as err:
        d.decide(ref, d.Accept("o1", T0 + timedelta(minutes=11)))
    assert err.value.offer_status == "expired" and err.value.current == "offered"


def test_accepting_a_withdrawn_offer_is_refused() -> None:
    ref, _ = d.decide(_offered(), d.RevokeSharing())
    assert ref.status == "submitted" and ref.offers[0].status == "withdrawn"
    with pytest.raises(d.OfferNotOpen) as err:
        d.decide(ref, d.Accept("o1", T0))
    assert err.value.offer_status == "withdrawn"


def test_another_organization_cannot_answer_the_offer() -> None:
    with pytest.raises(d.NoOffer):
        d.decide(_offered(), d.Accept("o2", T0))


def test_decline_reroutes_and_expiry_only_after_the_deadline() -> None:
    ref = _offered(10)
    assert d.decide(ref, d.Expire(T0 + timedelta(minutes=9))) == (ref, [])
    expired, [change] = d.decide(ref, d.Expire(T0 + timedelta(minutes=10)))
    assert expired.status == "submitted" and change.reason_code == "expired"
    declined, [change] = d.decide(ref, d.Decline("o1", "no_capacity", T0))
    assert declined.status == "submitted" and change.offer is not None
    assert change.offer.status == "declined" and change.reason_code == "no_capacity"


def test_full_case_path_and_illegal_progress_reports_the_current_status() -> None:
    ref, _ = d.decide(_offered(), d.Accept("o1", T0))
    ref, _ = d.decide(ref, d.Progress("o1", "in_progress"))
    with pytest.raises(d.IllegalTransition) as err:
        d.decide(ref, d.Progress("o1", "in_progress"))
    assert err.value.current == "in_progress"
    ref, [change] = d.decide(ref, d.Close("o1", "completed", "connected"))
    assert ref.status == "completed" and change.outcome_code == "connected"
    with pytest.raises(d.IllegalTransition):
        d.decide(ref, d.Cancel("officer"))


def test_routine_deadlines_skip_weekends() -> None:
    friday = datetime(2026, 3, 6, 12, 0, tzinfo=UTC)
    assert d.add_business_time(friday, timedelta(days=2)) == datetime(
        2026, 3, 10, 12, 0, tzinfo=UTC)
    saturday = datetime(2026, 3, 7, 9, 0, tzinfo=UTC)
    assert d.add_business_time(saturday, timedelta(hours=2)) == datetime(
        2026, 3, 9, 2, 0, tzinfo=UTC)
