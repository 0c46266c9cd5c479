"""Pure unit tests of matching's rules: constraints, scoring, tie-break, load accounting."""
from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matching import domain, eligibility
from matching.domain import Candidate, OpeningHours, Point, Referral, Schedule
from servicekit import geo

HOME = geo.coarsen(51.5074, -0.1278)  # the resident's coarse cell (central London)
NOW = datetime(2025, 3, 12, 10, 30, tzinfo=UTC)  # a Wednesday, 10:30 in London
ALL_ZERO = dict.fromkeys(domain.CONSTRAINTS, 0)


def referral(**overrides: object) -> Referral:
    base = Referral(referral_id="r-1", need="housing", urgency="urgent", lat=HOME["lat"],
                    lon=HOME["lon"], geohash=HOME["geohash"], age=34,
                    preferred_language="pt-BR", tried=frozenset({"svc-tried"}))
    return replace(base, **overrides)  # type: ignore[arg-type]


def service(service_id: str, *, km_north: float = 0.5, **overrides: object) -> Candidate:
    """A well-placed housing service ``km_north`` of the resident, 10 free places."""
    base = Candidate(service_id=service_id, organization_id=f"org-{service_id}",
                     categories=frozenset({"housing"}), capacity_max=10,
                     languages=frozenset({"en", "pt"}), radius_km=15.0,
                     locations=(Point(HOME["lat"] + km_north / 111.2, HOME["lon"]),))
    return replace(base, **overrides)  # type: ignore[arg-type]


def trap_directory() -> list[Candidate]:
    """Six services closer and emptier than the one that fits, each with one flaw."""
    return [
        service("svc-full", km_north=0.1, capacity_max=2, open_offers=1, active_cases=1),
        service("svc-inactive", km_north=0.1, status="inactive"),
        service("svc-youth", km_north=0.1, age_min=16, age_max=24),
        service("svc-far", km_north=80.0, radius_km=10.0),
        service("svc-food", km_north=0.1, categories=frozenset({"food"})),
        service("svc-tried", km_north=0.1),
        service("svc-fit", km_north=3.0, capacity_max=3, open_offers=1),
    ]


def test_only_the_fitting_service_is_chosen_from_a_directory_of_traps() -> None:
    decision = domain.evaluate(referral(), trap_directory(), NOW)

    assert decision.outcome == "proposed"
    assert decision.best is not None and decision.best.candidate.service_id == "svc-fit"
    assert [r.candidate.service_id for r in decision.ranked] == ["svc-fit"]
    assert dict(decision.excluded) == {
        "svc-full": "at_capacity", "svc-inactive": "inactive", "svc-youth": "age",
        "svc-far": "out_of_area", "svc-food": "category", "svc-tried": "already_tried"}
    assert decision.considered == 7


def test_reasons_explain_the_choice_in_words_and_codes() -> None:
    best = domain.evaluate(referral(), trap_directory(), NOW).best
    assert best is not None
    reasons = {r.code: r.text for r in best.reasons}
    assert reasons["distance"] == "3.0 km from the resident's area"
    assert reasons["headroom"] == "2 of 3 places free"
    assert reasons["language"] == "speaks pt-BR"
    assert 0.0 < best.score <= 1.0


def test_exhaustion_counts_what_each_constraint_removed() -> None:
    traps = [c for c in trap_directory() if c.service_id != "svc-fit"]
    decision = domain.evaluate(referral(), traps, NOW, pre_eliminated={"category": 4})

    assert decision.outcome == "exhausted"
    assert decision.best is None
    assert decision.eliminated == {**ALL_ZERO, "at_capacity": 1, "inactive": 1, "age": 1,
                                   "out_of_area": 1, "category": 5, "already_tried": 1}
    assert decision.considered == 10
    assert {r.code for r in decision.reasons} == {"at_capacity", "inactive", "age",
                                                  "out_of_area", "category", "already_tried"}
    assert "5 service(s) do not offer this need" in [r.text for r in decision.reasons]


def test_constraints_are_checked_in_the_documented_order() -> None:
    assert tuple(code for code, _ in eligibility.CHECKS) == domain.CONSTRAINTS


def test_a_candidate_is_counted_only_under_the_first_constraint_it_fails() -> None:
    both = service("svc-x", status="inactive", capacity_max=1, open_offers=1)
    decision = domain.evaluate(referral(), [both], NOW)
    assert decision.eliminated["inactive"] == 1
    assert decision.eliminated["at_capacity"] == 0


def test_equal_scores_are_broken_by_service_id_whatever_the_input_order() -> None:
    twins = [service("svc-b"), service("svc-a"), service("svc-c")]
    first = domain.evaluate(referral(), twins, NOW)
    second = domain.evaluate(referral(), list(reversed(twins)), NOW)
    assert [r.candidate.service_id for r in first.ranked] == ["svc-a", "svc-b", "svc-c"]
    assert [r.candidate.service_id for r in second.ranked] == ["svc-a", "svc-b", "svc-c"]
    assert len({r.score for r in first.ranked}) == 1


def test_nearer_and_emptier_services_score_higher() -> None:
    near, far = service("svc-near", km_north=1.0), service("svc-far", km_north=8.0)
    assert domain.score(referral(), near).score > domain.score(referral(), far).score
    empty = service("svc-empty", capacity_max=10)
    busy = service("svc-busy", capacity_max=10, open_offers=6, active_cases=3)
    assert domain.score(referral(), empty).score > domain.score(referral(), busy).score


def test_weights_change_the_ranking() -> None:
    near_busy = service("svc-near", km_north=0.5, capacity_max=10, active_cases=9)
    far_empty = service("svc-far", km_north=6.0, capacity_max=10)
    by_distance = domain.evaluate(referral(), [near_busy, far_empty], NOW)
    by_headroom = domain.evaluate(referral(), [near_busy, far_empty], NOW,
                                  domain.Weights(distance=0.1, headroom=0.9, language=0.0))
    assert by_distance.best is not None and by_headroom.best is not None
    assert by_distance.best.candidate.service_id == "svc-near"
    assert by_headroom.best.candidate.service_id == "svc-far"


def test_default_weights_keep_scores_between_zero_and_one() -> None:
    w = domain.DEFAULT_WEIGHTS
    assert (w.distance + w.headroom + w.language + w.acceptance + w.response
            + w.spreading) == pytest.approx(1.0)
    perfect = service("svc-p", km_north=0.0, answered=50, accepted=50, mean_response_s=0.0)
    awful = service("svc-a", km_north=14.0, open_offers=9, answered=50, accepted=0,
                    mean_response_s=10 * 24 * 3600.0, languages=frozenset())
    assert 0.99 <= domain.score(referral(), perfect).score <= 1.0
    assert 0.0 <= domain.score(referral(), awful, org_pending=9).score < 0.2


def test_history_and_spreading_change_the_ranking() -> None:
    """Twins apart from their record: the one that accepts and answers fast wins; an
    organization with offers awaiting answers loses to an idle one."""
    reliable = service("svc-z", answered=20, accepted=18, mean_response_s=1800.0)
    flaky = service("svc-a", answered=20, accepted=2, mean_response_s=30 * 3600.0)
    decision = domain.evaluate(referral(), [flaky, reliable], NOW)
    assert [r.candidate.service_id for r in decision.ranked] == ["svc-z", "svc-a"]
    assert decision.best is not None
    assert ("acceptance", "accepted 18 of 20 answered offers") in {
        (r.code, r.text) for r in decision.best.reasons}
    busy_org = [service("svc-a", open_offers=2, organization_id="org-a"),
                service("svc-b", open_offers=3, organization_id="org-a")]
    idle = service("svc-c", open_offers=2, organization_id="org-c")
    # svc-a and svc-c are twins, but svc-a's organization has 5 offers waiting, svc-c's 2
    order = [r.candidate.service_id
             for r in domain.evaluate(referral(), [*busy_org, idle], NOW).ranked]
    assert order.index("svc-c") < order.index("svc-a")


def test_weights_are_validated() -> None:
    with pytest.raises(ValueError):
        domain.Weights(distance=-1.0)
    with pytest.raises(ValueError):
        domain.Weights(0, 0, 0, 0, 0, 0)


OFFICE_HOURS = Schedule(always_open=False, timezone="Europe/London",
                        hours=(OpeningHours("WE", "09:00", "17:00"),))


@pytest.mark.parametrize(("urgency", "when", "fits"), [
    ("emergency", datetime(2025, 3, 12, 10, 30, tzinfo=UTC), True),  # Wed 10:30 London
    ("emergency", datetime(2025, 3, 12, 18, 0, tzinfo=UTC), False),  # Wed 18:00, closed
    ("emergency", datetime(2025, 3, 13, 10, 30, tzinfo=UTC), False),  # Thursday
    ("urgent", datetime(2025, 3, 12, 18, 0, tzinfo=UTC), True),  # only emergencies need open
])
def test_emergencies_need_a_service_open_now(urgency: str, when: datetime, fits: bool) -> None:
    decision = domain.evaluate(referral(urgency=urgency),
                               [service("svc-office", schedule=OFFICE_HOURS)], when)
    assert (decision.outcome == "proposed") is fits
    assert decision.eliminated["closed_now"] == (0 if fits else 1)


def test_opening_hours_are_read_in_the_service_time_zone() -> None:
    new_york = Schedule(timezone="America/New_York", hours=(OpeningHours("WE", "09:00", "17:00"),))
    assert not eligibility.is_open(new_york, datetime(2025, 3, 12, 10, 30, tzinfo=UTC))  # 06:30 EDT
    assert eligibility.is_open(new_york, datetime(2025, 3, 12, 15, 0, tzinfo=UTC))  # 11:00 EDT


def test_hours_past_midnight_count_on_the_next_morning() -> None:
    night = Schedule(timezone="UTC", hours=(OpeningHours("TU", "20:00", "08:00"),))
    assert eligibility.is_open(night, datetime(2025, 3, 11, 22, 0, tzinfo=UTC))  # Tue 22:00
    assert eligibility.is_open(night, datetime(2025, 3, 12, 7, 59, tzinfo=UTC))  # Wed 07:59
    assert not eligibility.is_open(night, datetime(2025, 3, 12, 8, 0, tzinfo=UTC))
    assert eligibility.is_open(Schedule(always_open=True), NOW)


def test_language_binds_only_when_the_resident_needs_an_interpreter() -> None:
    english_only = service("svc-en", languages=frozenset({"en"}))
    relaxed = domain.evaluate(referral(), [english_only], NOW)
    strict = domain.evaluate(referral(needs_interpreter=True), [english_only], NOW)
    interpreting = domain.evaluate(referral(needs_interpreter=True),
                                   [replace(english_only, interpretation_available=True)], NOW)
    assert relaxed.outcome == "proposed"
    assert strict.eliminated["language"] == 1
    assert interpreting.outcome == "proposed"


def test_area_by_geohash_prefix_or_radius_or_unrestricted() -> None:
    far = service("svc-far", km_north=50.0, radius_km=5.0)
    assert not eligibility.in_area(referral(), far)
    assert eligibility.in_area(referral(), replace(far, area_geohashes=(HOME["geohash"][:4],)))
    assert eligibility.in_area(referral(), replace(far, radius_km=None))  # declares no area


def test_age_band_must_lie_within_the_service_range() -> None:
    adults = service("svc-adults", age_min=18)
    assert domain.evaluate(referral(age=None, age_band="18-24"), [adults], NOW).best
    assert not domain.evaluate(referral(age=None, age_band="16-20"), [adults], NOW).best
    assert domain.evaluate(referral(age=None, age_band=None), [adults], NOW).best


def test_gender_and_population_restrictions() -> None:
    women = service("svc-w", genders=frozenset({"female"}))
    veterans = service("svc-v", populations=frozenset({"veteran"}))
    d = domain.evaluate(referral(gender="male"), [women, veterans], NOW)
    assert d.eliminated["gender"] == 1 and d.eliminated["population"] == 1
    ok = domain.evaluate(referral(gender="Female", flags=frozenset({"veteran"})),
                         [women, veterans], NOW)
    assert len(ok.ranked) == 2


def test_a_full_candidate_is_eliminated_as_at_capacity() -> None:
    fit = service("svc-fit", capacity_max=4, active_cases=1)
    decision = domain.evaluate(referral(), [domain.as_full(fit)], NOW)
    assert decision.eliminated["at_capacity"] == 1


def test_now_must_be_timezone_aware() -> None:
    with pytest.raises(ValueError):
        domain.evaluate(referral(), [], datetime(2025, 3, 12, 10, 30))


@pytest.mark.parametrize(("from_status", "to_status", "reason", "reserved", "expected"), [
    ("submitted", "offered", None, True, domain.LoadChange()),
    ("unmatched", "offered", None, False, domain.LoadChange(open_offers=1)),  # manual assign
    ("offered", "accepted", None, True, domain.LoadChange(open_offers=-1, active_cases=1)),
    ("offered", "submitted", "not_eligible", True,
     domain.LoadChange(open_offers=-1, mark_tried=True, reevaluate=True)),
    ("offered", "submitted", "expired", True,
     domain.LoadChange(open_offers=-1, mark_tried=True, reevaluate=True)),
    ("offered", "cancelled", "cancelled_by_officer", True,
     domain.LoadChange(open_offers=-1, mark_tried=True)),
    ("submitted", "submitted", "proposal_void", True,
     domain.LoadChange(open_offers=-1, mark_tried=True, reevaluate=True)),
    ("offered", "offered", "proposal_void", True, domain.LoadChange(open_offers=-1)),
    ("in_progress", "completed", None, True, domain.LoadChange(active_cases=-1)),
    ("on_hold", "failed", None, True, domain.LoadChange(active_cases=-1)),
    ("accepted", "cancelled", "cancelled_by_supervisor", True,
     domain.LoadChange(active_cases=-1)),
    ("accepted", "in_progress", None, True, domain.LoadChange()),
    ("unmatched", "submitted", None, True, domain.LoadChange(reevaluate=True)),
    ("submitted", "unmatched", None, True, domain.LoadChange()),
])
def test_status_changes_move_load(from_status: str, to_status: str, reason: str | None,
                                  reserved: bool, expected: domain.LoadChange) -> None:
    assert domain.load_change(from_status, to_status, reason, reserved=reserved) == expected


def test_the_written_out_constraints_are_those_of_the_table() -> None:
    """``first_failure`` and ``sift`` (inline, for speed) decide as ``CHECKS`` read in order,
    for every combination of flaws the candidates and residents below can have."""
    import itertools

    flaws = [{}, {"status": "inactive"}, {"accepting": False},
             {"open_offers": 10}, {"age_min": 40}, {"age_max": 20},
             {"genders": frozenset({"female"})}, {"populations": frozenset({"veteran"})},
             {"languages": frozenset({"en"})}, {"radius_km": 0.1},
             {"schedule": Schedule(always_open=False, timezone="Europe/London")},
             {"schedule": Schedule(always_open=True, valid_to="2024-01-01")},
             {"categories": frozenset({"food"})}, {"service_id": "svc-tried"}]
    residents = [referral(), referral(gender="male", flags=frozenset({"veteran"})),
                 referral(needs_interpreter=True, urgency="emergency", age=None,
                          age_band="18-24"), referral(gender="female", age=None)]
    for r, (a, b) in itertools.product(residents, itertools.combinations(flaws, 2)):
        flawed = {**a, **b}
        c = service(str(flawed.pop("service_id", "svc-x")), **flawed)
        expected = eligibility.first_failure_by_table(r, c, NOW)
        assert eligibility.first_failure(r, c, NOW) == expected, (r, c)
        fitting, failed = eligibility.sift(r, [c], NOW)  # evaluate's, over many at once
        assert (failed == [(c.service_id, expected)] and not fitting if expected
                else fitting == [(c, fitting[0][1])] and not failed), (r, c)


def test_reasons_are_written_when_read_and_only_then() -> None:
    decision = domain.evaluate(referral(), trap_directory(), NOW)
    best = decision.best
    assert best is not None and "reasons" not in vars(best)
    assert best.reasons == decision.reasons and "reasons" in vars(best)
    assert best.reasons[0] == domain.Reason("category", "offers housing")


def _evaluate_by_definition(r: Referral, candidates: list[Candidate], now: datetime,
                            pre: dict[str, int]) -> domain.Decision:
    """``evaluate`` as specified: ``first_failure`` and ``score`` per candidate, ranked by
    score then service_id (a stable sort)."""
    eliminated = dict.fromkeys(domain.CONSTRAINTS, 0)
    for code, count in pre.items():
        eliminated[code] = eliminated.get(code, 0) + count
    pending: dict[str, int] = {}
    for c in candidates:
        pending[c.organization_id] = pending.get(c.organization_id, 0) + c.open_offers
    ranked, excluded = [], []
    for c in candidates:
        failed = eligibility.first_failure(r, c, now)
        if failed is None:
            ranked.append(domain.score(r, c, domain.DEFAULT_WEIGHTS,
                                       pending.get(c.organization_id, 0)))
        else:
            eliminated[failed] += 1
            excluded.append((c.service_id, failed))
    ranked.sort(key=lambda x: (-x.score, x.candidate.service_id))
    return domain.Decision(tuple(ranked), eliminated, tuple(excluded),
                           len(candidates) + sum(pre.values()))


_schedules = st.sampled_from([
    Schedule(always_open=True), Schedule(always_open=True), Schedule(always_open=True),
    Schedule(always_open=False, timezone="Europe/London",
             hours=(OpeningHours("WE", "09:00", "17:00"),)),
    Schedule(always_open=False, timezone="America/New_York",
             hours=(OpeningHours("TU", "22:00", "06:00"),)),
    Schedule(always_open=True, valid_to="2024-01-01"),
    Schedule(always_open=False, timezone="Nowhere/Unknown"),
])
_candidates = st.builds(  # each field mostly fitting, so that many candidates reach the end
    lambda sid, org, cats, status, accepting, cap, offers, cases, age, genders, pops, langs,
    interp, km, radius, areas, schedule, answered, accepted, mean_s: Candidate(
        service_id=sid, organization_id=org, categories=cats, status=status,
        accepting=accepting, capacity_max=cap, open_offers=offers, active_cases=cases,
        age_min=age[0], age_max=age[1], genders=genders, populations=pops, languages=langs,
        interpretation_available=interp,
        locations=tuple(Point(HOME["lat"] + k / 111.2, HOME["lon"]) for k in km),
        radius_km=radius, area_geohashes=areas, schedule=schedule, answered=answered,
        accepted=min(accepted, answered), mean_response_s=mean_s),
    st.sampled_from(["svc-a", "svc-b", "svc-c", "svc-tried"]),
    st.sampled_from(["org-1", "org-2"]),
    st.sampled_from([frozenset({"housing"})] * 3 + [frozenset({"housing", "food"}),
                                                    frozenset({"food"}), frozenset()]),
    st.sampled_from(["active"] * 4 + ["inactive"]), st.sampled_from([True] * 4 + [False]),
    st.sampled_from([0, 1, 3, 4, 4]), st.sampled_from([0, 0, 1, 2]),
    st.sampled_from([0, 0, 1]),
    st.sampled_from([(None, None)] * 3 + [(18, None), (None, 30), (40, 64)]),
    st.sampled_from([frozenset()] * 3 + [frozenset({"female"}), frozenset({"Male", "female"})]),
    st.sampled_from([frozenset()] * 3 + [frozenset({"veteran"})]),
    st.sampled_from([frozenset(), frozenset({"en"}), frozenset({"en", "PT-br"})]),
    st.booleans(),
    st.sampled_from([[0.5], [3.0], [0.0], [20.0], [], [0.5, 20.0], [20.0, 3.0]]),
    st.sampled_from([15.0, 15.0, 5.0, 1.0, None]),
    st.sampled_from([()] * 4 + [(HOME["geohash"][:4],), (HOME["geohash"] + "x",), ("zz",)]),
    _schedules, st.integers(0, 5), st.integers(0, 5),
    st.sampled_from([None, 600.0, 7200.0]))
_residents = st.builds(
    lambda urgency, age, gender, language, interpreter, flags, tried: referral(
        urgency=urgency, age=age[0], age_band=age[1], gender=gender,
        preferred_language=language, needs_interpreter=interpreter, flags=flags,
        tried=tried),
    st.sampled_from(["urgent", "emergency", "routine"]),
    st.sampled_from([(34, None), (None, "18-24"), (None, "65+"), (None, None)]),
    st.sampled_from([None, "female", "MALE"]), st.sampled_from([None, "pt-BR", "en", "so"]),
    st.booleans(), st.sampled_from([frozenset(), frozenset({"veteran"})]),
    st.sampled_from([frozenset(), frozenset({"svc-tried"}), frozenset({"svc-a", "svc-b"})]))


@settings(max_examples=400, deadline=None)
@given(r=_residents, candidates=st.lists(_candidates, max_size=8), twins=st.integers(0, 3),
       hinted=st.booleans(), pre=st.sampled_from([{}, {"category": 3, "out_of_area": 2}]))
def test_evaluate_decides_as_first_failure_and_score_per_candidate(
        r: Referral, candidates: list[Candidate], twins: int, hinted: bool,
        pre: dict[str, int]) -> None:
    """The fused ``evaluate`` (``eligibility.sift``, the area check's distance reused for
    the score) makes the decision ``first_failure`` and ``score`` define: same ranking,
    scores, distances, reasons, eliminations and exclusions, in the same order; also with
    the distance hint the in-memory index sets."""
    candidates += [replace(c) for c in candidates[:twins]]  # equal, not the same: ties
    if hinted:  # as index.lookup hands them over: the distance to this point attached
        candidates = [replace(c) for c in candidates]
        for c in candidates:
            km = eligibility.nearest_km(c, r)
            if km is not None:
                c.__dict__[eligibility.NEAREST_HINT] = (r.lat, r.lon, km)
    for when in (NOW, datetime(2025, 3, 12, 3, 30, tzinfo=UTC)):
        fast = domain.evaluate(r, candidates, when, pre_eliminated=pre)
        spec = _evaluate_by_definition(r, candidates, when, pre)
        assert [(x.candidate, x.score, x.distance_km, x.reasons) for x in fast.ranked] == [
            (x.candidate, x.score, x.distance_km, x.reasons) for x in spec.ranked]
        assert all(a.candidate is b.candidate for a, b in zip(fast.ranked, spec.ranked))
        assert fast.eliminated == spec.eliminated
        assert list(fast.eliminated) == list(spec.eliminated)  # the same order too
        assert fast.excluded == spec.excluded
        assert fast.considered == spec.considered
        assert fast.reasons == spec.reasons
