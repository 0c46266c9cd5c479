"""Public Kafka event contracts (DESIGN.md section 3): envelope, schemas, versions, upcasters.

Producers build events with ``new_event`` (data validated strictly: unknown fields are
rejected, so nothing extra, least of all personal data, can leak onto a topic) and
serialise them with ``encode``. Consumers call ``decode``: it upcasts old versions step by
step, ignores unknown fields, passes unknown event types through untouched, and raises
``PoisonMessage`` for anything that must go to the dead-letter topic.

``Envelope.data`` always holds the JSON-ready form (datetimes as RFC 3339 strings with
``Z``, UUIDs as strings); ``load_data`` gives the typed form.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, validate, validates_schema

from servicekit import geo
from servicekit.canonical import NotCanonical, compile_schema

# --- topics ------------------------------------------------------------------------------
REFERRAL_EVENTS = "referral.events"
ROUTING_DECISIONS = "routing.decisions"
PROVIDER_EVENTS = "provider.events"
ALL_TOPICS = (REFERRAL_EVENTS, ROUTING_DECISIONS, PROVIDER_EVENTS)


def dlq_topic(topic: str) -> str:
    """Name of the dead-letter topic of ``topic``."""
    return f"{topic}.dlq"


# --- event types -------------------------------------------------------------------------
REFERRAL_SUBMITTED = "referral.submitted"
REFERRAL_STATUS_CHANGED = "referral.status_changed"
REFERRAL_CONSENT_CHANGED = "referral.consent_changed"
REFERRAL_SLA_BREACHED = "referral.sla_breached"
REFERRAL_ERASED = "referral.erased"
ROUTING_PROPOSED = "routing.proposed"
ROUTING_EXHAUSTED = "routing.exhausted"
PROVIDER_SERVICE_UPSERTED = "provider.service_upserted"
PROVIDER_SERVICE_REMOVED = "provider.service_removed"

# --- vocabularies (DESIGN.md sections 3-5) ----------------------------------------------
NEEDS = ("housing", "mental_health", "substance_use", "youth", "food", "domestic_violence",
         "medical", "legal", "employment", "other")
URGENCIES = ("emergency", "urgent", "routine")
STATUSES = ("submitted", "offered", "unmatched", "accepted", "in_progress", "on_hold",
            "completed", "failed", "cancelled", "entered_in_error")
TERMINAL_STATUSES = ("completed", "failed", "cancelled", "entered_in_error")
OFFER_STATUSES = ("open", "accepted", "declined", "expired", "withdrawn")
DECLINE_REASONS = ("no_capacity", "not_eligible", "out_of_area", "language", "unable_to_serve",
                   "duplicate", "other")
SYSTEM_REASONS = ("expired", "withdrawn", "consent_revoked", "rerouted", "cancelled_by_officer",
                  "cancelled_by_supervisor", "proposal_void")
REASON_CODES = DECLINE_REASONS + SYSTEM_REASONS
OUTCOMES = ("connected", "enrolled", "resident_declined", "unable_to_contact", "ineligible",
            "no_show", "moved", "other")
ACTOR_ROLES = ("officer", "provider", "supervisor", "admin", "system")
REFERRER_UPDATES = ("none", "milestones", "full")
CONTACT_METHODS = ("phone", "sms", "email", "in_person")
ELIGIBILITY_FLAGS = ("veteran", "youth", "family", "disability", "pregnant", "lgbtq")
SLA_KINDS = ("offer_response", "first_contact")
SERVICE_STATUSES = ("active", "inactive", "defunct", "temporarily closed")
WEEKDAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")
NOTIFICATION_CHANNELS = ("in_app", "email", "webhook", "sms")


class EventContractError(ValueError):
    """A producer tried to build or encode an event that breaks its contract."""

    def __init__(self, message: str, errors: Any = None) -> None:
        super().__init__(message)
        self.errors = errors  # marshmallow's error messages, when a schema failed


class PoisonMessage(Exception):
    """A message no consumer can process: it belongs on the dead-letter topic."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- time ---------------------------------------------------------------------------------
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})")


def format_time(value: dt.datetime) -> str:
    """RFC 3339 in UTC with a ``Z`` suffix; naive datetimes are refused."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("datetime must be timezone-aware")
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def parse_time(value: str) -> dt.datetime:
    """Parse an RFC 3339 date-time with an offset into an aware UTC datetime."""
    text = value.upper()
    if not _RFC3339.fullmatch(text):
        raise ValueError(f"not an RFC 3339 date-time with offset: {value!r}")
    try:
        return dt.datetime.fromisoformat(text).astimezone(dt.UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00: before year 1 in UTC
        raise ValueError(f"outside the years 1-9999 in UTC: {value!r}") from None


_INVALID_TIME = "Not an RFC 3339 date-time with a UTC offset."


class UtcDateTime(fields.Field[dt.datetime]):
    """RFC 3339 date-time, always timezone-aware, loaded as UTC and dumped with ``Z``."""

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None,
                     **kwargs: Any) -> dt.datetime:
        try:
            if isinstance(value, dt.datetime):
                return parse_time(format_time(value))
            if isinstance(value, str):
                return parse_time(value)
        except ValueError as error:
            raise ValidationError(_INVALID_TIME) from error
        raise ValidationError(_INVALID_TIME)

    def _serialize(self, value: dt.datetime | None, attr: str | None, obj: Any,
                   **kwargs: Any) -> str | None:
        return None if value is None else format_time(value)


# --- field helpers ------------------------------------------------------------------------
def _id(**kwargs: Any) -> fields.String:
    return fields.String(validate=validate.Length(1, 200), **kwargs)


def _one_of(choices: tuple[str, ...], **kwargs: Any) -> fields.String:
    return fields.String(validate=validate.OneOf(choices), **kwargs)


def _nullable_one_of(choices: tuple[str, ...]) -> fields.String:
    return _one_of(choices, load_default=None, allow_none=True)


def _count(minimum: int = 0, **kwargs: Any) -> fields.Integer:
    return fields.Integer(strict=True, validate=validate.Range(min=minimum), **kwargs)


def _list_of(choices: tuple[str, ...], **kwargs: Any) -> fields.List[str]:
    return fields.List(_one_of(choices), **kwargs)


def _eliminated() -> fields.Dict:
    """Constraint code -> number of candidates that constraint filtered out."""
    return fields.Dict(keys=fields.String(validate=validate.Length(1, 100)), values=_count(),
                       required=True)


def _short_id() -> fields.String:
    return fields.String(required=True, validate=validate.Regexp(r"R-[0-9A-Z]{4,10}\Z"))


def _degrees(limit: float) -> fields.Float:
    return fields.Float(required=True, allow_nan=False, validate=validate.Range(-limit, limit))


_GEOHASH6 = validate.Regexp(r"[0-9b-hjkmnp-z]{6}\Z", error="Not a precision-6 geohash.")
_GEOHASH = validate.Regexp(r"[0-9b-hjkmnp-z]{1,12}\Z", error="Not a geohash.")
_LANGUAGE = validate.Regexp(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*\Z", error="Not a language tag.")
_TIME_OF_DAY = validate.Regexp(r"(([01]\d|2[0-3]):[0-5]\d|24:00)\Z", error="Not HH:MM.")


# --- nested schemas -----------------------------------------------------------------------
class _Contract(Schema):
    class Meta:
        unknown = RAISE


@functools.lru_cache(maxsize=4096)
def _cell_centre(geohash: str) -> tuple[float, float]:
    """The coarsened centre of a precision-6 cell: every ``referral.submitted`` decode checks
    one (it was a quarter of the CPU of a decode that takes the shortcut), and one city's
    referrals come from a few thousand cells."""
    centre = geo.coarsen(*geo.decode(geohash))
    return centre["lat"], centre["lon"]


class CoarseLocationSchema(_Contract):
    """Centre of the resident's precision-6 geohash cell, rounded to 3 decimals."""

    geohash = fields.String(required=True, validate=_GEOHASH6)
    lat = _degrees(90)
    lon = _degrees(180)

    @validates_schema
    def _is_cell_centre(self, data: dict[str, Any], **kwargs: Any) -> None:
        lat, lon = _cell_centre(data["geohash"])
        if abs(data["lat"] - lat) > 1e-9 or abs(data["lon"] - lon) > 1e-9:
            raise ValidationError("lat/lon must be the coarsened centre of the geohash cell",
                                  "lat")


class EligibilitySchema(_Contract):
    age = fields.Integer(strict=True, load_default=None, allow_none=True,
                         validate=validate.Range(0, 130))
    age_band = fields.String(load_default=None, allow_none=True,
                             validate=validate.Regexp(r"\d{1,3}(-\d{1,3}|\+)\Z"))
    gender = fields.String(load_default=None, allow_none=True, validate=validate.Length(1, 50))
    preferred_language = fields.String(load_default=None, allow_none=True, validate=_LANGUAGE)
    needs_interpreter = fields.Boolean(load_default=False)
    flags = _list_of(ELIGIBILITY_FLAGS, load_default=list)


class ConsentSchema(_Contract):
    share_with_provider = fields.Boolean(required=True)
    referrer_updates = _one_of(REFERRER_UPDATES, required=True)
    contact_methods = _list_of(CONTACT_METHODS, required=True)


class OfferSchema(_Contract):
    offer_id = _id(required=True)
    service_id = _id(required=True)
    organization_id = _id(required=True)
    expires_at = UtcDateTime(required=True)
    status = _one_of(OFFER_STATUSES, required=True)
    attempt = _count(1, required=True)


class ReasonSchema(_Contract):
    code = fields.String(required=True, validate=validate.Length(1, 100))
    text = fields.String(required=True, validate=validate.Length(max=1000))


class ServiceLocationSchema(_Contract):
    location_id = _id(required=True)
    lat = _degrees(90)
    lon = _degrees(180)
    geohash = fields.String(required=True, validate=_GEOHASH)
    # optional (added by the registry's HSDS issue): a site whose address must never be shown
    # to people (e.g. a domestic-violence shelter); routing still uses its coordinates
    confidential = fields.Boolean(load_default=False)


class ServiceAreaSchema(_Contract):
    radius_km = fields.Float(load_default=None, allow_none=True, allow_nan=False,
                             validate=validate.Range(min=0))
    geohashes = fields.List(fields.String(validate=_GEOHASH), load_default=list)


class OpeningHoursSchema(_Contract):
    byday = _one_of(WEEKDAYS, required=True)
    opens_at = fields.String(required=True, validate=_TIME_OF_DAY)
    closes_at = fields.String(required=True, validate=_TIME_OF_DAY)


def _is_time_zone(name: str) -> None:
    try:
        ZoneInfo(name)
    except (ValueError, OSError, KeyError) as error:  # ZoneInfoNotFoundError is a KeyError
        raise ValidationError("Not an IANA time zone.") from error


class ScheduleSchema(_Contract):
    always_open = fields.Boolean(required=True)
    timezone = fields.String(required=True, validate=_is_time_zone)
    hours = fields.List(fields.Nested(OpeningHoursSchema), load_default=list)
    # optional (HSDS schedule.valid_from/valid_to): outside these dates the service is closed
    valid_from = fields.Date(load_default=None, allow_none=True)
    valid_to = fields.Date(load_default=None, allow_none=True)


class CapacitySchema(_Contract):
    maximum = _count(required=True)
    accepting = fields.Boolean(required=True)
    available = _count(load_default=None, allow_none=True)


# --- event schemas (current versions) -----------------------------------------------------
class ReferralSubmittedV2(_Contract):
    referral_id = fields.UUID(required=True)
    short_id = _short_id()
    need = _one_of(NEEDS, required=True)
    urgency = _one_of(URGENCIES, required=True)
    coarse_location = fields.Nested(CoarseLocationSchema, required=True)
    eligibility = fields.Nested(EligibilitySchema, required=True)
    consent = fields.Nested(ConsentSchema, required=True)
    agency_id = _id(required=True)
    officer_ref = _id(required=True)
    submitted_at = UtcDateTime(required=True)


class ReferralStatusChangedV1(_Contract):
    referral_id = fields.UUID(required=True)
    short_id = _short_id()
    need = _one_of(NEEDS, required=True)
    urgency = _one_of(URGENCIES, required=True)
    agency_id = _id(required=True)
    officer_ref = _id(required=True)
    from_status = _nullable_one_of(STATUSES)
    to_status = _one_of(STATUSES, required=True)
    offer = fields.Nested(OfferSchema, load_default=None, allow_none=True)
    reason_code = _nullable_one_of(REASON_CODES)
    outcome_code = _nullable_one_of(OUTCOMES)
    actor_role = _one_of(ACTOR_ROLES, required=True)
    referrer_updates = _one_of(REFERRER_UPDATES, required=True)
    proposal_id = _id(load_default=None, allow_none=True)
    occurred_at = UtcDateTime(required=True)


class ReferralConsentChangedV1(_Contract):
    referral_id = fields.UUID(required=True)
    consent = fields.Nested(ConsentSchema, required=True)
    actor_role = _one_of(ACTOR_ROLES, required=True)
    occurred_at = UtcDateTime(required=True)
    # optional (added later, still v1): who to tell without a lookup in intake's database
    short_id = fields.String(load_default=None, allow_none=True,
                             validate=validate.Regexp(r"R-[0-9A-Z]{4,10}\Z"))
    agency_id = _id(load_default=None, allow_none=True)
    officer_ref = _id(load_default=None, allow_none=True)


class ReferralSlaBreachedV1(_Contract):
    referral_id = fields.UUID(required=True)
    short_id = _short_id()
    agency_id = _id(required=True)
    sla = _one_of(SLA_KINDS, required=True)
    need = _one_of(NEEDS, required=True)
    urgency = _one_of(URGENCIES, required=True)
    due_at = UtcDateTime(required=True)
    occurred_at = UtcDateTime(required=True)
    organization_id = _id(load_default=None, allow_none=True)


class ReferralErasedV1(_Contract):
    referral_id = fields.UUID(required=True)
    occurred_at = UtcDateTime(required=True)


class RoutingProposedV1(_Contract):
    referral_id = fields.UUID(required=True)
    attempt = _count(1, required=True)
    service_id = _id(required=True)
    organization_id = _id(required=True)
    score = fields.Float(required=True, allow_nan=False)
    reasons = fields.List(fields.Nested(ReasonSchema), required=True)
    eliminated = _eliminated()
    proposed_at = UtcDateTime(required=True)


class RoutingExhaustedV1(_Contract):
    referral_id = fields.UUID(required=True)
    attempt = _count(1, required=True)
    eliminated = _eliminated()
    candidates_considered = _count(required=True)
    reasons = fields.List(fields.Nested(ReasonSchema), required=True)
    occurred_at = UtcDateTime(required=True)


class ProviderServiceUpsertedV1(_Contract):
    """Full routing snapshot of one service: every field is required except defaults."""

    service_id = _id(required=True)
    organization_id = _id(required=True)
    organization_name = fields.String(required=True, validate=validate.Length(1, 500))
    service_name = fields.String(required=True, validate=validate.Length(1, 500))
    status = _one_of(SERVICE_STATUSES, required=True)
    categories = _list_of(NEEDS, required=True)
    locations = fields.List(fields.Nested(ServiceLocationSchema), required=True)
    service_area = fields.Nested(ServiceAreaSchema, required=True)
    age_min = _count(required=True, allow_none=True)
    age_max = _count(required=True, allow_none=True)
    genders = fields.List(fields.String(validate=validate.Length(1, 50)), required=True)
    populations = _list_of(ELIGIBILITY_FLAGS, required=True)
    languages = fields.List(fields.String(validate=_LANGUAGE), required=True)
    interpretation_available = fields.Boolean(required=True)
    schedule = fields.Nested(ScheduleSchema, required=True)
    capacity = fields.Nested(CapacitySchema, required=True)
    notification_channels = _list_of(NOTIFICATION_CHANNELS, required=True)
    updated_at = UtcDateTime(required=True)
    # optional: when staff last confirmed the listing (stale after REGISTRY_STALE_AFTER_DAYS)
    last_confirmed_at = UtcDateTime(load_default=None, allow_none=True)

    @validates_schema
    def _age_range(self, data: dict[str, Any], **kwargs: Any) -> None:
        low, high = data.get("age_min"), data.get("age_max")
        if low is not None and high is not None and low > high:
            raise ValidationError("age_min must not exceed age_max", "age_min")


class ProviderServiceRemovedV1(_Contract):
    service_id = _id(required=True)
    organization_id = _id(required=True)
    removed_at = UtcDateTime(required=True)


# --- registry -----------------------------------------------------------------------------
SCHEMAS: dict[str, type[Schema]] = {
    REFERRAL_SUBMITTED: ReferralSubmittedV2,
    REFERRAL_STATUS_CHANGED: ReferralStatusChangedV1,
    REFERRAL_CONSENT_CHANGED: ReferralConsentChangedV1,
    REFERRAL_SLA_BREACHED: ReferralSlaBreachedV1,
    REFERRAL_ERASED: ReferralErasedV1,
    ROUTING_PROPOSED: RoutingProposedV1,
    ROUTING_EXHAUSTED: RoutingExhaustedV1,
    PROVIDER_SERVICE_UPSERTED: ProviderServiceUpsertedV1,
    PROVIDER_SERVICE_REMOVED: ProviderServiceRemovedV1,
}
CURRENT_VERSION: dict[str, int] = {name: 1 for name in SCHEMAS} | {REFERRAL_SUBMITTED: 2}
TOPIC_OF: dict[str, str] = {
    name: {"referral": REFERRAL_EVENTS, "routing": ROUTING_DECISIONS,
           "provider": PROVIDER_EVENTS}[name.split(".")[0]]
    for name in SCHEMAS
}
# The envelope subject (Kafka key) is the aggregate id: this data field, per topic.
SUBJECT_FIELD: dict[str, str] = {
    REFERRAL_EVENTS: "referral_id", ROUTING_DECISIONS: "referral_id",
    PROVIDER_EVENTS: "service_id",
}
_SCHEMA_INSTANCES: dict[str, Schema] = {name: cls() for name, cls in SCHEMAS.items()}

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


def _referral_submitted_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """v1 carried ``location_geohash``; v2 carries the coarsened cell and its centre."""
    upcast = {key: value for key, value in data.items() if key != "location_geohash"}
    upcast["coarse_location"] = dict(geo.coarsen(*geo.decode(data["location_geohash"])))
    return upcast


UPCASTERS: dict[tuple[str, int], Upcaster] = {
    (REFERRAL_SUBMITTED, 1): _referral_submitted_v1_to_v2,
}

# --- no personal data in events (DESIGN.md section 6) -------------------------------------
PII_FIELD_NAMES = frozenset({"name", "given_name", "family_name", "birth_date", "phone",
                             "email", "address", "notes", "narrative"})
_PII_TOKENS = frozenset({"name", "names", "firstname", "lastname", "surname", "birth", "dob",
                         "birthdate", "phone", "mobile", "email", "address", "street", "note",
                         "notes", "narrative", "ssn"})
_NOT_PERSONAL = frozenset({"organization_name", "service_name"})


def _nested_schema(field: fields.Field[Any]) -> Schema | None:
    if isinstance(field, fields.List):
        field = field.inner
    return field.schema if isinstance(field, fields.Nested) else None


def pii_field_paths(schema: Schema, prefix: str = "") -> list[str]:
    """Dotted paths of the fields of ``schema`` (recursively) named like personal data."""
    found: list[str] = []
    for name, field in schema.fields.items():
        path = f"{prefix}{name}"
        tokens = set(name.lower().split("_"))
        if name not in _NOT_PERSONAL and (name in PII_FIELD_NAMES or tokens & _PII_TOKENS):
            found.append(path)
        nested = _nested_schema(field)
        if nested is not None:
            found.extend(pii_field_paths(nested, f"{path}."))
    return found


def _check_registry() -> None:
    for name, schema in _SCHEMA_INSTANCES.items():
        if leaks := pii_field_paths(schema):
            raise RuntimeError(f"{name} has fields named like personal data: {leaks}")
        missing = [v for v in range(1, CURRENT_VERSION[name]) if (name, v) not in UPCASTERS]
        if missing:
            raise RuntimeError(f"{name} lacks upcasters from versions {missing}")


_check_registry()


# --- envelope -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Envelope:
    """One event as it travels on Kafka (DESIGN.md section 3)."""

    id: str
    type: str
    version: int
    source: str
    time: dt.datetime
    subject: str
    sequence: int
    correlation_id: str
    causation_id: str | None
    data: dict[str, Any]

    @property
    def key(self) -> bytes:
        """Kafka key: the aggregate id."""
        return self.subject.encode("utf-8")

    @property
    def topic(self) -> str:
        """Topic the event type is published on; ``EventContractError`` if unknown."""
        try:
            return TOPIC_OF[self.type]
        except KeyError:
            raise EventContractError(f"no topic for event type {self.type!r}") from None


class _EnvelopeSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    id = fields.UUID(required=True)
    type = fields.String(required=True, validate=validate.Length(1, 200))
    version = _count(1, required=True)
    source = fields.String(required=True, validate=validate.Length(1, 200))
    time = UtcDateTime(required=True)
    subject = fields.String(required=True, validate=validate.Length(1, 200))
    sequence = _count(1, required=True)
    correlation_id = fields.String(required=True, validate=validate.Length(1, 200))
    causation_id = fields.String(load_default=None, allow_none=True)
    data = fields.Dict(keys=fields.String(), required=True)


_ENVELOPE = _EnvelopeSchema()


def _describe(messages: Any, prefix: str = "") -> str:
    """Flatten marshmallow's nested error messages into ``field.path: message; ...``."""
    if isinstance(messages, Mapping):
        return "; ".join(_describe(value, f"{prefix}{key}.") for key, value in messages.items())
    if isinstance(messages, list) and all(isinstance(item, str) for item in messages):
        return f"{prefix.rstrip('.') or '_schema'}: {' '.join(messages)}"
    return f"{prefix.rstrip('.')}: {messages}"


def new_event(type: str, *, subject: str, sequence: int, data: Mapping[str, Any], source: str,
              correlation_id: str | None = None, causation_id: str | None = None,
              time: dt.datetime | None = None, trusted: bool = False) -> Envelope:
    """Build an event of the current version of ``type``, validating ``data`` strictly.

    Raises ``EventContractError`` naming the offending field(s). ``time`` defaults to now.
    ``trusted`` skips marshmallow (most of a bulk import's CPU) and only turns dates and
    times into their JSON form: for bulk emits whose data come from the same builder as an
    event of the batch that was validated in full (``outbox.emit_many``).
    """
    if type not in SCHEMAS:
        raise EventContractError(f"unknown event type {type!r}")
    schema = _SCHEMA_INSTANCES[type]
    try:
        serialised: dict[str, Any] = (_plain(data) if trusted
                                      else schema.dump(schema.load(data)))
    except ValidationError as error:
        raise EventContractError(f"{type} data: {_describe(error.messages)}",
                                 error.messages) from None
    _check_subject(type, subject, serialised)
    if isinstance(sequence, bool) or not isinstance(sequence, int) or sequence < 1:
        raise EventContractError(f"sequence must be an integer >= 1, got {sequence!r}")
    if not source:
        raise EventContractError("source must not be empty")
    when = dt.datetime.now(dt.UTC) if time is None else _utc(time)
    return Envelope(id=str(uuid.uuid4()), type=type, version=CURRENT_VERSION[type],
                    source=source, time=when, subject=subject, sequence=sequence,
                    correlation_id=correlation_id or str(uuid.uuid4()),
                    causation_id=causation_id, data=serialised)


_JSON_SCALARS = frozenset((str, int, float, bool, type(None)))


def _plain(value: Any) -> Any:
    """``value`` in the JSON form the event schemas dump: RFC 3339 times, ISO dates, lists."""
    kind = type(value)  # exact type checks, and scalars kept without a call: this runs per
    if kind is dict:  # field in bulk emits
        return {k: v if type(v) in _JSON_SCALARS else _plain(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [v if type(v) in _JSON_SCALARS else _plain(v) for v in value]
    if kind in _JSON_SCALARS:
        return value
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, dt.datetime):
        return format_time(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def _utc(value: dt.datetime) -> dt.datetime:
    try:
        return parse_time(format_time(value))
    except ValueError as error:
        raise EventContractError(f"time: {error}") from None


def _check_subject(type: str, subject: str, data: Mapping[str, Any]) -> None:
    field = SUBJECT_FIELD[TOPIC_OF[type]]
    if subject != data[field]:
        raise EventContractError(f"subject must be the aggregate id data.{field} "
                                 f"({data[field]!r}), got {subject!r}")


def encode(env: Envelope) -> bytes:
    """Serialise ``env`` as compact UTF-8 JSON in the DESIGN.md envelope layout."""
    document = {
        "id": env.id, "type": env.type, "version": env.version, "source": env.source,
        "time": format_time(env.time), "subject": env.subject, "sequence": env.sequence,
        "correlation_id": env.correlation_id, "causation_id": env.causation_id,
        "data": env.data,
    }
    try:
        text = json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise EventContractError(f"event {env.type} is not JSON-serialisable: {error}") from None
    return text.encode("utf-8")


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not valid JSON")


# One decoder for every message: json.loads with an argument builds a decoder and its
# scanner per call (a tenth of a decode that takes the shortcut).
_JSON = json.JSONDecoder(parse_constant=_reject_constant)


def _parse_json(raw: bytes) -> Any:
    if raw is None or not isinstance(raw, (bytes, bytearray, memoryview)):
        raise PoisonMessage("message value is empty or not bytes")
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as error:
        raise PoisonMessage(f"invalid UTF-8: {error}") from None
    try:
        if text.startswith("\ufeff"):  # json.loads refuses a byte order mark in its words
            return json.loads(text, parse_constant=_reject_constant)
        return _JSON.decode(text)
    except ValueError as error:  # JSONDecodeError and rejected constants
        raise PoisonMessage(f"invalid JSON: {error}") from None


def _known_only(schema: Schema, data: Any) -> Any:
    """Drop fields the schema does not know, recursively (consumers ignore them)."""
    if not isinstance(data, Mapping):
        return data
    known: dict[str, Any] = {}
    for name, field in schema.fields.items():
        if name not in data:
            continue
        value, nested = data[name], _nested_schema(field)
        if nested is not None and isinstance(value, list):
            value = [_known_only(nested, item) for item in value]
        elif nested is not None:
            value = _known_only(nested, value)
        known[name] = value
    return known


def _upcast(type: str, version: int, data: dict[str, Any]) -> dict[str, Any]:
    current = CURRENT_VERSION[type]
    if version > current:
        raise PoisonMessage(f"unknown major version {version} of {type} (current {current})")
    for step in range(version, current):
        try:
            data = UPCASTERS[(type, step)](data)
        except (KeyError, TypeError, ValueError) as error:
            raise PoisonMessage(f"cannot upcast {type} v{step}: {error!r}") from None
    return data


def _current_data(type: str, version: int, data: dict[str, Any]) -> dict[str, Any]:
    schema = _SCHEMA_INSTANCES[type]
    try:
        loaded = schema.load(_known_only(schema, _upcast(type, version, data)))
    except ValidationError as error:
        raise PoisonMessage(f"invalid {type} data: {_describe(error.messages)}") from None
    result: dict[str, Any] = schema.dump(loaded)
    return result


_CANONICAL_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{6})?Z\Z")


def _is_canonical_time(value: Any) -> bool:
    """``value`` is a time ``UtcDateTime`` loads and dumps back unchanged: ``format_time``'s
    form (UTC with ``Z``, microseconds only when there are some) of a time that exists. A
    test holds it to ``format_time(parse_time(value)) == value``, which costs four times
    the CPU."""
    if type(value) is not str or _CANONICAL_TIME.match(value) is None or \
            value.endswith(".000000Z"):
        return False
    try:
        dt.datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


_CANONICAL_FIELDS: dict[type, Callable[[Any], bool]] = {UtcDateTime: _is_canonical_time}
_CANONICAL_ENVELOPE = compile_schema(_ENVELOPE, _CANONICAL_FIELDS)
_CANONICAL_DATA = {name: compile_schema(schema, _CANONICAL_FIELDS)
                   for name, schema in _SCHEMA_INSTANCES.items()}


def _decode_canonical(document: Any) -> Envelope | None:
    """``decode``'s result for an event of the current version whose envelope and data are
    valid and already in the form ``new_event`` and ``encode`` give them, without marshmallow
    (``servicekit.canonical``); ``None`` for anything else. Nearly every event a consumer
    reads is such an event, and each is decoded by several consumers."""
    if _CANONICAL_ENVELOPE is None:
        return None
    try:
        head = _CANONICAL_ENVELOPE(document)
        name, data = head["type"], head["data"]
        if name in SCHEMAS:
            convert = _CANONICAL_DATA[name]
            if convert is None or head["version"] != CURRENT_VERSION[name]:
                return None
            data = convert(data)
    except NotCanonical:
        return None
    return Envelope(id=head["id"], type=name, version=head["version"], source=head["source"],
                    time=parse_time(head["time"]), subject=head["subject"],
                    sequence=head["sequence"], correlation_id=head["correlation_id"],
                    causation_id=head["causation_id"], data=data)


def decode(raw: bytes) -> Envelope:
    """Parse a Kafka message value into an ``Envelope`` of the current version.

    Raises ``PoisonMessage`` for bytes that are not UTF-8 JSON, an invalid envelope, an
    unknown major version of a known type, or data failing its schema after upcasting.
    Unknown fields are ignored; unknown event types pass through with data untouched.
    Events already in canonical form take a shortcut (``_decode_canonical``) to the same
    result; everything else, marshmallow's path. Whatever else a message makes the decoding
    raise (a ``RecursionError`` from JSON nested too deep) is ``PoisonMessage`` too, named by
    the error's type only: the consumer dead-letters it instead of stopping on it for ever.
    """
    try:
        return _decode(raw)
    except PoisonMessage:
        raise
    except Exception as error:  # noqa: BLE001 - a property of the message, whatever it is
        raise PoisonMessage(f"undecodable: {type(error).__name__}") from None


def _decode(raw: bytes) -> Envelope:
    document = _parse_json(raw)
    fast = _decode_canonical(document)
    if fast is not None:
        return fast
    if not isinstance(document, dict):
        raise PoisonMessage("envelope is not a JSON object")
    try:
        fields_ = _ENVELOPE.load(document)
    except ValidationError as error:
        raise PoisonMessage(f"invalid envelope: {_describe(error.messages)}") from None
    name, version, data = fields_["type"], fields_["version"], fields_["data"]
    if name in SCHEMAS:
        data, version = _current_data(name, version, data), CURRENT_VERSION[name]
    return Envelope(id=str(fields_["id"]), type=name, version=version, source=fields_["source"],
                    time=fields_["time"], subject=fields_["subject"],
                    sequence=fields_["sequence"], correlation_id=fields_["correlation_id"],
                    causation_id=fields_["causation_id"], data=data)


def load_data(env: Envelope) -> dict[str, Any]:
    """The data of a known event type in typed form (datetimes, UUIDs)."""
    if env.type not in SCHEMAS:
        raise EventContractError(f"unknown event type {env.type!r}")
    loaded: dict[str, Any] = _SCHEMA_INSTANCES[env.type].load(env.data)
    return loaded


def headers_for(env: Envelope, traceparent: str | None = None) -> list[tuple[str, bytes]]:
    """Kafka headers of ``env``: event type and version, correlation id, W3C traceparent."""
    headers = [
        ("event_type", env.type.encode("utf-8")),
        ("event_version", str(env.version).encode("ascii")),
        ("correlation_id", env.correlation_id.encode("utf-8")),
    ]
    if traceparent:
        headers.append(("traceparent", traceparent.encode("utf-8")))
    return headers
