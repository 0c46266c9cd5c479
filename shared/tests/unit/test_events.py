"""Public event contracts: envelope codec, schemas, upcasting, poison detection, no PII."""

import copy
import datetime as dt
import json
import re
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import Schema, fields

from servicekit import events, geo
from servicekit.events import EventContractError, PoisonMessage
from servicekit.testing import exact

REFERRAL_ID = "3f1c2a9e-8d4b-4c1e-9a7f-2b6d5e4c3a21"
SERVICE_ID = "svc-0042"
ORG_ID = "org-harbour-housing"
NOW = dt.datetime(2025, 3, 14, 9, 26, 53, 589000, tzinfo=dt.UTC)
CONSENT = {"share_with_provider": True, "referrer_updates": "milestones",
           "contact_methods": ["phone", "sms"]}
REASONS = [{"code": "distance", "text": "2.1 km from the resident's area"},
           {"code": "headroom", "text": "4 of 12 places free"}]

VALID: dict[str, tuple[str, dict[str, Any]]] = {  # type -> (subject, data)
    "referral.submitted": (REFERRAL_ID, {
        "referral_id": uuid.UUID(REFERRAL_ID), "short_id": "R-7F3K", "need": "housing",
        "urgency": "urgent", "coarse_location": geo.coarsen(51.50722, -0.1275),
        "eligibility": {"age": 34, "gender": "female", "preferred_language": "pt-BR",
                        "needs_interpreter": True, "flags": ["veteran", "family"]},
        "consent": CONSENT, "agency_id": "metro-pd", "officer_ref": "off-5b2e91",
        "submitted_at": dt.datetime(2025, 3, 14, 11, 26, tzinfo=dt.timezone(dt.timedelta(hours=2))),
    }),
    "referral.status_changed": (REFERRAL_ID, {
        "referral_id": REFERRAL_ID, "short_id": "R-7F3K", "need": "housing",
        "urgency": "urgent", "agency_id": "metro-pd", "officer_ref": "off-5b2e91",
        "from_status": "submitted", "to_status": "offered",
        "offer": {"offer_id": "0b7e6f3c-1d2a-4e5f-8a9b-0c1d2e3f4a5b", "service_id": SERVICE_ID,
                  "organization_id": ORG_ID, "expires_at": NOW + dt.timedelta(hours=4),
                  "status": "open", "attempt": 1},
        "reason_code": None, "outcome_code": None, "actor_role": "system",
        "referrer_updates": "milestones", "proposal_id": "5e0c8a44-7a61-4df2-9b55-1f0c2d3e4f50",
        "occurred_at": NOW,
    }),
    "referral.consent_changed": (REFERRAL_ID, {
        "referral_id": REFERRAL_ID, "consent": {**CONSENT, "share_with_provider": False},
        "actor_role": "officer", "occurred_at": NOW,
    }),
    "referral.sla_breached": (REFERRAL_ID, {
        "referral_id": REFERRAL_ID, "short_id": "R-7F3K", "agency_id": "metro-pd",
        "sla": "first_contact", "need": "mental_health", "urgency": "emergency",
        "due_at": NOW - dt.timedelta(minutes=5), "occurred_at": NOW, "organization_id": ORG_ID,
    }),
    "referral.erased": (REFERRAL_ID, {"referral_id": REFERRAL_ID, "occurred_at": NOW}),
    "routing.proposed": (REFERRAL_ID, {
        "referral_id": REFERRAL_ID, "attempt": 2, "service_id": SERVICE_ID,
        "organization_id": ORG_ID, "score": 0.8125, "reasons": REASONS,
        "eliminated": {"category": 31, "capacity": 4, "out_of_area": 7, "already_tried": 1},
        "proposed_at": NOW,
    }),
    "routing.exhausted": (REFERRAL_ID, {
        "referral_id": REFERRAL_ID, "attempt": 3, "candidates_considered": 43,
        "eliminated": {"category": 31, "capacity": 12}, "reasons": REASONS[:1],
        "occurred_at": NOW,
    }),
    "provider.service_upserted": (SERVICE_ID, {
        "service_id": SERVICE_ID, "organization_id": ORG_ID,
        "organization_name": "Harbour Housing Trust", "service_name": "Emergency night shelter",
        "status": "active", "categories": ["housing"],
        "locations": [{"location_id": "loc-1", "lat": 51.5101, "lon": -0.1340,
                       "geohash": geo.encode(51.5101, -0.1340, 9)}],
        "service_area": {"radius_km": 15.0, "geohashes": ["gcpvj", "gcpuv"]},
        "age_min": 18, "age_max": None, "genders": [], "populations": ["veteran"],
        "languages": ["en", "pt"], "interpretation_available": True,
        "schedule": {"always_open": False, "timezone": "Europe/London",
                     "hours": [{"byday": "MO", "opens_at": "08:00", "closes_at": "20:00"},
                               {"byday": "SA", "opens_at": "10:00", "closes_at": "24:00"}]},
        "capacity": {"maximum": 12, "accepting": True, "available": 4},
        "notification_channels": ["in_app", "webhook"], "updated_at": NOW,
    }),
    "provider.service_removed": (SERVICE_ID, {
        "service_id": SERVICE_ID, "organization_id": ORG_ID, "removed_at": NOW,
    }),
}


def make(event_type: str, **overrides: Any) -> events.Envelope:
    subject, data = VALID[event_type]
    return events.new_event(event_type, subject=subject, sequence=3, source="test",
                            data={**copy.deepcopy(data), **overrides})


def raw_envelope(**overrides: Any) -> dict[str, Any]:
    env = make("referral.erased")
    return {**json.loads(events.encode(env)), **overrides}


def as_bytes(document: Any) -> bytes:
    return json.dumps(document).encode("utf-8")


def names(field: str) -> str:
    """Pattern of an error message that names ``field`` (dotted path) as the culprit."""
    return rf"(: |; ){re.escape(field)}: "


def test_every_event_type_has_test_data() -> None:
    assert set(VALID) == set(events.SCHEMAS) == set(events.CURRENT_VERSION)


@pytest.mark.parametrize("event_type", sorted(VALID))
def test_every_event_type_round_trips_through_encode_and_decode(event_type: str) -> None:
    env = make(event_type)
    decoded = events.decode(events.encode(env))
    assert decoded == env
    assert decoded.version == events.CURRENT_VERSION[event_type]
    json.dumps(decoded.data)  # JSON-ready: would raise on datetimes or UUIDs


def test_new_event_stores_json_ready_data_in_utc() -> None:
    env = make("referral.submitted")
    assert env.data["referral_id"] == REFERRAL_ID
    assert env.data["submitted_at"] == "2025-03-14T09:26:00Z"
    assert env.data["eligibility"]["age_band"] is None  # optional facets are explicit nulls
    assert env.version == 2 and env.sequence == 3 and env.time.tzinfo is not None


def test_new_event_defaults_correlation_to_a_fresh_uuid_and_keeps_causation() -> None:
    first, second = make("referral.erased"), make("referral.erased")
    assert uuid.UUID(first.correlation_id) and first.correlation_id != second.correlation_id
    assert uuid.UUID(first.id).version == 4 and first.causation_id is None
    env = events.new_event("referral.erased", subject=REFERRAL_ID, sequence=1, source="x",
                           data=VALID["referral.erased"][1], correlation_id="req-1",
                           causation_id="cause-1")
    assert (env.correlation_id, env.causation_id) == ("req-1", "cause-1")


def test_encode_is_compact_json_in_the_design_key_order() -> None:
    raw = events.encode(make("referral.erased"))
    document = json.loads(raw)
    assert list(document) == ["id", "type", "version", "source", "time", "subject",
                              "sequence", "correlation_id", "causation_id", "data"]
    assert b", " not in raw and b'": ' not in raw
    assert document["time"].endswith("Z")


def test_key_is_the_aggregate_id_and_topic_follows_the_type() -> None:
    assert make("referral.submitted").key == REFERRAL_ID.encode()
    assert make("provider.service_removed").key == SERVICE_ID.encode()
    assert make("routing.proposed").topic == events.ROUTING_DECISIONS
    assert make("referral.erased").topic == events.REFERRAL_EVENTS
    assert make("provider.service_upserted").topic == events.PROVIDER_EVENTS


def test_topics_and_dead_letter_topics() -> None:
    assert events.ALL_TOPICS == ("referral.events", "routing.decisions", "provider.events")
    assert events.dlq_topic("provider.events") == "provider.events.dlq"
    assert set(events.TOPIC_OF.values()) == set(events.ALL_TOPICS)
    assert all(events.TOPIC_OF[t].startswith(t.split(".")[0]) for t in events.TOPIC_OF)


def test_headers_carry_type_version_correlation_and_traceparent() -> None:
    env = make("routing.proposed")
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert dict(events.headers_for(env, traceparent)) == {
        "event_type": b"routing.proposed", "event_version": b"1",
        "correlation_id": env.correlation_id.encode(), "traceparent": traceparent.encode(),
    }
    assert "traceparent" not in dict(events.headers_for(env, None))


def test_v1_referral_submitted_is_upcast_to_v2_with_a_coarse_location() -> None:
    data = make("referral.submitted").data
    v1_data = {key: value for key, value in data.items() if key != "coarse_location"}
    v1_data["location_geohash"] = "gcpvj0"
    decoded = events.decode(as_bytes(raw_envelope(type="referral.submitted", version=1,
                                                  data=v1_data)))
    lat, lon = geo.decode("gcpvj0")
    assert decoded.version == 2
    assert decoded.data["coarse_location"] == {"geohash": "gcpvj0", "lat": round(lat, 3),
                                               "lon": round(lon, 3)}
    assert "location_geohash" not in decoded.data


def test_v1_with_an_invalid_geohash_is_poison() -> None:
    data = {**make("referral.submitted").data, "location_geohash": "not-a-geohash"}
    with pytest.raises(PoisonMessage, match="upcast"):
        events.decode(as_bytes(raw_envelope(type="referral.submitted", version=1, data=data)))


def test_unknown_major_version_of_a_known_type_is_poison() -> None:
    raw = as_bytes(raw_envelope(version=2))  # referral.erased is at v1
    with pytest.raises(PoisonMessage, match="unknown major version"):
        events.decode(raw)


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"\xff\xfe{}", b"", b"[1, 2]", b'"text"', b'{"id": NaN}'],
    ids=["malformed", "not-utf8", "empty", "array", "string", "nan"],
)
def test_undecodable_bytes_are_poison(raw: bytes) -> None:
    with pytest.raises(PoisonMessage):
        events.decode(raw)


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xef\xbb\xbf{}", b'{"a": Infinity}',
                                 b'{"a": -Infinity}', b"[1, 2", b"{} {}", b'"\\ud800', b"\t"])
def test_invalid_json_is_poison_in_json_loads_words(raw: bytes) -> None:
    with pytest.raises(ValueError) as expected:
        json.loads(raw.decode(), parse_constant=events._reject_constant)
    with pytest.raises(PoisonMessage) as got:
        events.decode(raw)
    assert got.value.reason == f"invalid JSON: {expected.value}"


@pytest.mark.parametrize("missing", ["id", "type", "version", "source", "time", "subject",
                                     "sequence", "correlation_id", "data"])
def test_envelope_without_a_required_field_is_poison(missing: str) -> None:
    document = raw_envelope()
    del document[missing]
    with pytest.raises(PoisonMessage, match=names(missing)):
        events.decode(as_bytes(document))


@pytest.mark.parametrize(
    ("field", "value"),
    [("id", "not-a-uuid"), ("version", 0), ("version", "1"), ("sequence", 0),
     ("sequence", True), ("time", "2025-03-14T09:26:53"), ("time", "yesterday"),
     # valid RFC 3339, but before year 1 / after 9999 in UTC (was an OverflowError, which
     # stopped the consumer instead of dead-lettering the message)
     ("time", "0001-01-01T00:00:00+01:00"), ("time", "9999-12-31T23:30:00-01:00"),
     ("subject", ""), ("data", [1]), ("type", 7)],
)
def test_envelope_with_an_invalid_field_is_poison(field: str, value: Any) -> None:
    with pytest.raises(PoisonMessage, match=names(field)):
        events.decode(as_bytes(raw_envelope(**{field: value})))


def test_data_failing_its_schema_is_poison() -> None:
    document = json.loads(events.encode(make("referral.status_changed")))
    document["data"]["to_status"] = "teleported"
    with pytest.raises(PoisonMessage, match=names("to_status")):
        events.decode(as_bytes(document))


def test_json_nested_too_deep_is_poison() -> None:
    with pytest.raises(PoisonMessage, match="undecodable: RecursionError"):
        events.decode(b"[" * 100_000 + b"]" * 100_000)


def test_data_time_outside_utc_years_is_poison() -> None:
    document = json.loads(events.encode(make("referral.status_changed")))
    document["data"]["occurred_at"] = "0001-01-01T00:30:00+01:00"
    with pytest.raises(PoisonMessage, match=names("occurred_at")):
        events.decode(as_bytes(document))


def test_unknown_fields_are_ignored_on_decode() -> None:
    env = make("referral.status_changed")
    document = json.loads(events.encode(env))
    document["data"]["added_in_v1_1"] = "x"
    document["data"]["offer"]["channel"] = "webhook"
    document["partition_hint"] = 4
    decoded = events.decode(as_bytes(document))
    assert decoded == env


@pytest.mark.parametrize(
    ("extra", "field"),
    [({"resident_phone": "555-0100"}, "resident_phone"),
     ({"consent": {**CONSENT, "given_by": "resident"}}, "consent.given_by")],
)
def test_new_event_rejects_unknown_fields(extra: dict[str, Any], field: str) -> None:
    with pytest.raises(EventContractError, match=names(field)):
        make("referral.consent_changed", **extra)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [({"need": "bicycles"}, "need"),
     ({"eligibility": {"flags": ["veteran", "astronaut"]}}, "eligibility.flags.1"),
     ({"submitted_at": dt.datetime(2025, 3, 14, 9, 26)}, "submitted_at"),
     ({"coarse_location": {"geohash": "gcpvj0", "lat": 51.50722, "lon": -0.1275}},
      "coarse_location.lat"),
     ({"short_id": "7F3K"}, "short_id")],
)
def test_new_event_names_the_invalid_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(EventContractError, match=names(field)):
        make("referral.submitted", **overrides)


def test_new_event_requires_the_subject_to_be_the_aggregate_id() -> None:
    with pytest.raises(EventContractError, match="subject"):
        events.new_event("referral.erased", subject="someone-else", sequence=1, source="x",
                         data=VALID["referral.erased"][1])


@pytest.mark.parametrize("sequence", [0, -1, True])
def test_new_event_requires_a_positive_sequence(sequence: Any) -> None:
    with pytest.raises(EventContractError, match="sequence"):
        events.new_event("referral.erased", subject=REFERRAL_ID, sequence=sequence, source="x",
                         data=VALID["referral.erased"][1])


def test_new_event_rejects_unknown_types() -> None:
    with pytest.raises(EventContractError, match="unknown event type"):
        events.new_event("referral.teleported", subject=REFERRAL_ID, sequence=1, source="x",
                         data={})


def test_provider_age_range_must_be_ordered() -> None:
    with pytest.raises(EventContractError, match=names("age_min")):
        make("provider.service_upserted", age_min=30, age_max=18)


def test_unknown_event_type_decodes_with_data_untouched() -> None:
    data = {"referral_id": REFERRAL_ID, "anything": {"nested": [1, 2]}}
    decoded = events.decode(as_bytes(raw_envelope(type="referral.reopened", version=7,
                                                  data=data)))
    assert (decoded.type, decoded.version, decoded.data) == ("referral.reopened", 7, data)
    with pytest.raises(EventContractError):
        _ = decoded.topic


def test_decode_normalises_the_envelope_time_to_utc() -> None:
    decoded = events.decode(as_bytes(raw_envelope(time="2025-03-14T11:26:53+02:00")))
    assert decoded.time == dt.datetime(2025, 3, 14, 9, 26, 53, tzinfo=dt.UTC)
    assert decoded.time.utcoffset() == dt.timedelta(0)


def test_load_data_gives_typed_values() -> None:
    loaded = events.load_data(make("referral.sla_breached"))
    assert loaded["occurred_at"] == NOW
    assert loaded["referral_id"] == uuid.UUID(REFERRAL_ID)


def test_every_older_version_has_an_upcaster() -> None:
    for event_type, current in events.CURRENT_VERSION.items():
        for version in range(1, current):
            assert (event_type, version) in events.UPCASTERS
    assert events.CURRENT_VERSION["referral.submitted"] == 2


@pytest.mark.parametrize("event_type", sorted(events.SCHEMAS))
def test_no_event_schema_has_a_field_named_like_personal_data(event_type: str) -> None:
    assert events.pii_field_paths(events.SCHEMAS[event_type]()) == []


def test_personal_data_detector_finds_planted_fields() -> None:
    class Contact(Schema):
        phone_number = fields.String()
        street_address = fields.String()

    class Leaky(Schema):
        given_name = fields.String()
        organization_name = fields.String()
        notes = fields.String()
        contacts = fields.List(fields.Nested(Contact))

    assert events.pii_field_paths(Leaky()) == [
        "given_name", "notes", "contacts.phone_number", "contacts.street_address"]


# --- decode's shortcut for canonical events ------------------------------------------------
UPPER_UUID = REFERRAL_ID.upper()
ODD_VALUES: list[Any] = [
    None, "", " ", "x" * 201, 0, 1, 2, -1, 10**20, 0.5, 1.0, 51.51, -0.127, True, False, "1",
    "true", [], [1], ["veteran"], {}, {"a": 1}, REFERRAL_ID, UPPER_UUID, f"{{{REFERRAL_ID}}}",
    f"urn:uuid:{REFERRAL_ID}", "housing", "open", "offered", "system", "milestones", "R-7F3K",
    "R-7F3K\n", "gcpvj0", "gcpvj", "pt-BR", "Europe/London", "Mars/Olympus", "MO", "08:00",
    "24:00", "2025-03-14", "2025-03-14T09:26:53Z", "2025-03-14T09:26:53.000000Z",
    "2025-03-14T09:26:53.5Z", "2025-03-14T09:26:53.589000Z", "2025-03-14t09:26:53.589000z",
    "2025-03-14T11:26:53.589000+02:00", "2025-03-14T09:26:53.123456789Z",
    "2025-02-30T09:26:53Z", "2025-03-14T09:26:60Z", "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59.999999Z", "referral.erased", "routing.proposed", "__INFINITY__",
]
TIMES = ["2025-03-14T09:26:53Z", "2030-01-01T00:00:00.000001Z", "1970-01-01T00:00:00Z"]
EDGES: dict[str, list[Any]] = {  # values at and just past each key's rule (same in every schema)
    "need": ["food", "other", "Food"], "urgency": ["emergency", "routine"],
    "age": [0, 130, None, 131, -1], "age_band": [None, "18-24", "65+", "65"],
    "gender": [None, "x", "x" * 50, "x" * 51], "flags": [[], ["lgbtq"], ["lgbtq", "vet"]],
    "preferred_language": [None, "en", "zh-Hant-TW", "e"], "needs_interpreter": [False],
    "contact_methods": [[], ["email", "in_person"]], "share_with_provider": [False],
    "referrer_updates": ["none", "full"], "from_status": [None, "accepted"],
    "reason_code": ["no_capacity", "rerouted"], "outcome_code": ["connected"],
    "proposal_id": [None, "p", "p" * 200, "p" * 201], "offer": [None],
    "causation_id": [None, "c-1"], "score": [0.0, -3.5, 1e300],
    "attempt": [1, 7, 0], "sequence": [1, 2**40, 0], "source": ["m", "m" * 201],
    "eliminated": [{}, {"x" * 100: 0}, {"": 1}, {"x" * 101: 0}, {"a": -1}],
    "reasons": [[], [{"code": "c", "text": ""}]], "code": ["x" * 100, "x" * 101],
    "text": ["é" * 1000, "é" * 1001], "short_id": ["R-ABCD123456", "R-ABCD1234567", "R-abcd"],
    "organization_id": [None, "o"], "subject": ["s"], "id": [str(uuid.uuid4())],
    "referral_id": [str(uuid.uuid4())], "time": TIMES, "occurred_at": TIMES,
    "submitted_at": TIMES, "expires_at": TIMES, "proposed_at": TIMES, "removed_at": TIMES,
    "due_at": TIMES, "updated_at": TIMES,
    "lat": [51.5, 90.5], "lon": [-0.13], "geohash": ["gcpvj1"],  # not the cell's centre
}
MUTATIONS = st.sampled_from(["delete", "replace", "add", "edge", "edge", "respell", "respell"])


def _respellings(value: Any) -> list[Any]:
    """Values near ``value``: other spellings its field may load (and dump differently),
    an empty container."""
    if type(value) in (dict, list):
        return [type(value)()]
    if type(value) is bool:
        return [int(value), str(value).lower(), "yes" if value else "no"]
    if type(value) is int:
        return [float(value), str(value), *([True] if value == 1 else [])]
    if type(value) is float:
        return [str(value), "__INFINITY__", *([int(value)] if value.is_integer() else [])]
    if isinstance(value, str) and re.fullmatch(r"[0-9a-f-]{36}", value):
        return [value.upper(), f"{{{value}}}", f"urn:uuid:{value}", value.replace("-", "")]
    if isinstance(value, str) and events._is_canonical_time(value):
        when = events.parse_time(value)
        return [value.lower(), when.astimezone(dt.timezone(dt.timedelta(hours=-5))).isoformat(),
                value.replace("Z", "+00:00"), when.replace(microsecond=0).isoformat()[:-6] +
                ".000000Z", value[:19] + ".5Z"]
    return []


VALUES = st.one_of(st.sampled_from(ODD_VALUES), st.text(max_size=5), st.integers(),
                   st.floats(allow_nan=False, allow_infinity=False))


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON document: dict keys and list indexes, depth first."""
    items = value.items() if isinstance(value, dict) else \
        enumerate(value) if isinstance(value, list) else ()
    found = [path] if path else []
    for key, item in items:
        found += _paths(item, (*path, key))
    return found


@st.composite
def event_documents(draw: st.DrawFn) -> bytes:
    """A current event of any known type as ``encode`` gives it, then up to three changes
    (a key deleted or added, a value at or past the edge of its rule, spelt another way
    or replaced by an odd one)."""
    event_type = draw(st.sampled_from(sorted(VALID)))
    document = json.loads(events.encode(make(event_type)))
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2, 3]))):
        action, paths = draw(MUTATIONS), _paths(document)
        if action == "edge":
            paths = [path for path in paths if path[-1] in EDGES]
        *parents, last = draw(st.sampled_from(paths))
        container = document
        for key in parents:
            container = container[key]
        if action == "delete" and isinstance(container, dict):
            del container[last]
        elif action == "edge":
            container[last] = copy.deepcopy(draw(st.sampled_from(EDGES[last])))
        elif action == "respell":
            if respelt := _respellings(container[last]):
                container[last] = draw(st.sampled_from(respelt))
        elif action == "add" and isinstance(container, dict):
            container[draw(st.sampled_from(["extra", "lat", "offer", "name", "", "x" * 101]))] = \
                draw(VALUES)
        else:
            container[last] = copy.deepcopy(draw(VALUES))
    # JSON's 1e400 parses as an infinite float (the literal Infinity is refused)
    return json.dumps(document).replace('"__INFINITY__"', "1e400").encode("utf-8")


def _decoded(raw: bytes) -> Any:
    """What ``decode`` makes of ``raw``, in a form ``==`` compares exactly."""
    try:
        env = events.decode(raw)
    except PoisonMessage as error:
        return "poison", error.reason
    except Exception as error:  # noqa: BLE001 - whatever the reference path raises
        return "raised", type(error).__name__, str(error)
    return "ok", [(name, exact(getattr(env, name))) for name in env.__dataclass_fields__]


def test_the_shortcut_decodes_every_event_exactly_as_marshmallow_does() -> None:
    """Same Envelope (data types and key order included), or the same error, with and
    without ``_decode_canonical``, for current events of every type and changes to them."""
    taken: list[bool] = []
    shortcut = events._decode_canonical

    @settings(max_examples=3000, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(event_documents())
    def agree(raw: bytes) -> None:
        taken.append(shortcut(json.loads(raw)) is not None)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(events, "_decode_canonical", lambda document: None)
            want = _decoded(raw)
        assert _decoded(raw) == want

    agree()
    assert sum(taken) > 600 and taken.count(False) > 600  # both paths well exercised


@pytest.mark.parametrize("event_type", sorted(VALID))
def test_current_events_take_the_shortcut(event_type: str) -> None:
    env = make(event_type)
    fast = events._decode_canonical(json.loads(events.encode(env)))
    if event_type == "provider.service_upserted":  # its age check wants the loaded form
        assert fast is None
    else:
        assert fast == env


def _dumps_back(value: str) -> bool:
    try:
        return events.format_time(events.parse_time(value)) == value
    except (ValueError, OverflowError):
        return False


OFFSETS = st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=2)),
                           dt.timezone(dt.timedelta(hours=-5, minutes=-30))])
TIME_TEXTS = st.one_of(
    st.datetimes(timezones=OFFSETS).map(lambda when: when.isoformat()),
    st.datetimes(timezones=st.just(dt.UTC)).map(events.format_time),
    st.datetimes(timezones=st.just(dt.UTC)).map(events.format_time).flatmap(
        lambda text: st.tuples(st.integers(0, len(text)), st.sampled_from("0159:.TZz+-٣ "))
        .map(lambda edit: text[:edit[0]] + edit[1] + text[edit[0] + 1:])),
    st.tuples(st.datetimes(timezones=st.just(dt.UTC)).map(events.format_time),
              st.sampled_from(["", ".", ".000000", ".0", ".5", ".500000", ".123456789"]))
    .map(lambda parts: parts[0][:19] + parts[1] + "Z"),
    st.text(alphabet="0123456789-:.TZ", max_size=30))


@settings(max_examples=3000, deadline=None, derandomize=True)
@given(TIME_TEXTS)
def test_canonical_times_are_exactly_those_that_dump_back_unchanged(text: str) -> None:
    assert events._is_canonical_time(text) == _dumps_back(text)
