"""HTTP request/response schemas of referral-intake (marshmallow; unknown fields rejected)."""
from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    validate,
    validates,
    validates_schema,
)
from marshmallow.decorators import POST_LOAD, PRE_LOAD, VALIDATES_SCHEMA
from marshmallow.error_store import ErrorStore
from marshmallow.utils import missing

from servicekit import events
from servicekit.schemas import LANGUAGE_TAG, PageArgs, Strict

E164 = validate.Regexp(r"^\+[1-9]\d{6,14}$", error="Not an E.164 phone number (+15551234567).")
NAME = validate.Length(min=1, max=100)


class FastLoad(Strict):
    """``load`` of a valid body without marshmallow's per-load bookkeeping (error store,
    getter closures, partial and unknown handling): each field's own ``deserialize`` and the
    schema's own ``@validates``/``@validates_schema`` hooks, in marshmallow's order. Anything
    else (an error, ``many``, ``partial``, an unknown field, another ``unknown`` mode, load
    processors, ``data_key``/``attribute``) takes marshmallow's ``load``, which also words
    the errors. Nested schemas of this kind take the same shortcut. About half of a
    POST /v1/referrals body's validation CPU; a test holds it equal to ``Schema.load``."""

    def load(self, data: Any, *, many: bool | None = None, partial: Any = None,
             unknown: str | None = None) -> Any:
        if not (many or self.many or partial or self.partial) and \
                (self.unknown if unknown is None else unknown) == RAISE and type(data) is dict:
            loaded = self._load_plain(data)
            if loaded is not None:
                return loaded
        return super().load(data, many=many, partial=partial, unknown=unknown)

    def _load_plain(self, data: dict[str, Any]) -> dict[str, Any] | None:
        plain = self.__dict__.get("_plain_fields")
        if plain is None:
            plain = self.__dict__["_plain_fields"] = None if (
                self._hooks[PRE_LOAD] or self._hooks[POST_LOAD] or any(
                    f.data_key is not None or f.attribute is not None
                    for f in self.load_fields.values())) else tuple(self.load_fields.items())
        if not plain or not data.keys() <= self.load_fields.keys():
            return None
        out = self.dict_class()
        try:
            for name, field in plain:
                value = field.deserialize(data.get(name, missing), name, data)
                if value is not missing:
                    out[name] = value
        except ValidationError:
            return None
        errors = ErrorStore()
        self._invoke_field_validators(error_store=errors, data=out, many=False)
        if self._hooks[VALIDATES_SCHEMA]:
            for collection in (True, False):
                self._invoke_schema_validators(
                    error_store=errors, pass_collection=collection, data=out,
                    original_data=data, many=False, partial=None, unknown=RAISE,
                    field_errors=False)
        return None if errors.errors else out


def _one_line(value: str) -> None:
    """``$`` in LANGUAGE_TAG lets one trailing newline through; the event contract's tag
    (``referral.submitted`` carries it) does not."""
    if "\n" in value:
        raise ValidationError("Not a BCP 47 language tag.")


class SubjectIn(FastLoad):
    given_name = fields.String(required=True, validate=NAME)
    family_name = fields.String(validate=NAME)
    birth_date = fields.Date()
    age = fields.Integer(validate=validate.Range(min=0, max=120))
    phone = fields.String(validate=E164)
    email = fields.Email(validate=validate.Length(max=254))
    preferred_language = fields.String(validate=[LANGUAGE_TAG, _one_line])
    needs_interpreter = fields.Boolean(load_default=False)
    gender = fields.String(validate=validate.Length(min=1, max=40))

    @validates("birth_date")
    def _not_future(self, value: date, **_: Any) -> None:
        today = datetime.now(UTC).date()
        if value > today:
            raise ValidationError("Birth date is in the future.")
        if value.year < today.year - 120:
            raise ValidationError("Birth date is more than 120 years ago.")

    @validates_schema
    def _age_or_birth_date(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("age") is None and data.get("birth_date") is None:
            raise ValidationError("Give birth_date or age.", field_name="age")


class LocationIn(FastLoad):
    lat = fields.Float(required=True, validate=validate.Range(min=-90, max=90))
    lon = fields.Float(required=True, validate=validate.Range(min=-180, max=180))


class ConsentIn(FastLoad):
    share_with_provider = fields.Boolean(required=True)
    referrer_updates = fields.String(required=True, validate=validate.OneOf(events.REFERRER_UPDATES))
    contact_methods = fields.List(fields.String(validate=validate.OneOf(events.CONTACT_METHODS)),
                                  required=True)
    obtained_via = fields.String(required=True,
                                 validate=validate.OneOf(("verbal", "written", "electronic")))
    expires_at = fields.AwareDateTime(default_timezone=UTC)


class ReferralIn(FastLoad):
    need = fields.String(required=True, validate=validate.OneOf(events.NEEDS))
    urgency = fields.String(required=True, validate=validate.OneOf(events.URGENCIES))
    subject = fields.Nested(SubjectIn, required=True)
    location = fields.Nested(LocationIn, required=True)
    notes = fields.String(validate=validate.Length(max=4000))
    flags = fields.List(fields.String(validate=validate.OneOf(events.ELIGIBILITY_FLAGS)))
    consent = fields.Nested(ConsentIn, required=True)


class OfferOut(Schema):
    id = fields.String()
    service_id = fields.String()
    status = fields.String()
    expires_at = fields.DateTime()
    attempt = fields.Integer()


class ReferralOut(Schema):
    id = fields.String()
    short_id = fields.String()
    need = fields.String()
    urgency = fields.String()
    status = fields.String()
    created_at = fields.DateTime()
    updated_at = fields.DateTime()
    agency_id = fields.String()
    coarse_location = fields.Dict()
    eligibility = fields.Dict()
    offer = fields.Nested(OfferOut, allow_none=True)
    contact = fields.Dict(allow_none=True)


class ReferralPage(Schema):
    items = fields.List(fields.Nested(ReferralOut))
    total = fields.Integer()
    limit = fields.Integer()
    offset = fields.Integer()


class ReferralCreateIn(ReferralIn):
    """A new referral; ``same_subject_as`` files another need of a resident the officer
    already referred (then ``subject`` and ``location`` are taken from that referral)."""

    subject = fields.Nested(SubjectIn)
    location = fields.Nested(LocationIn)
    same_subject_as = fields.UUID()

    @validates_schema
    def _subject_once(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("same_subject_as"):
            for name in ("subject", "location"):
                if name in data:
                    raise ValidationError("Omit when same_subject_as is given.", field_name=name)
        else:
            for name in ("subject", "location"):
                if name not in data:
                    raise ValidationError("Missing data for required field.", field_name=name)


class DeclineIn(Strict):
    reason = fields.String(required=True, validate=validate.OneOf(events.DECLINE_REASONS))


class ProgressIn(Strict):
    status = fields.String(required=True, validate=validate.OneOf(("in_progress", "on_hold")))
    note = fields.String(validate=validate.Length(max=4000))


class CloseIn(Strict):
    outcome = fields.String(required=True, validate=validate.OneOf(("completed", "failed")))
    outcome_code = fields.String(required=True, validate=validate.OneOf(events.OUTCOMES))
    note = fields.String(validate=validate.Length(max=4000))


class EmptyIn(Strict):
    pass


class AssignIn(Strict):
    service_id = fields.String(required=True, validate=validate.Length(1, 200))
    organization_id = fields.String(validate=validate.Length(1, 200))


class PiiAccessIn(Strict):
    reason = fields.String(required=True, validate=validate.Length(min=10, max=500))


class ReferralListArgs(PageArgs):
    status = fields.String(validate=validate.OneOf(events.STATUSES))


class AuditArgs(PageArgs):
    referral_id = fields.UUID()


class FullReferralOut(ReferralOut):
    consent = fields.Dict(allow_none=True)
    provider = fields.Dict(allow_none=True)
    offers = fields.List(fields.Dict())
    outcome_code = fields.String(allow_none=True)
    pii = fields.Dict(allow_none=True)


class FullReferralPage(Schema):
    items = fields.List(fields.Nested(FullReferralOut))
    total = fields.Integer()
    limit = fields.Integer()
    offset = fields.Integer()
