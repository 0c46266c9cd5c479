"""HTTP request/response schemas of referral-intake (marshmallow; unknown fields rejected)."""
from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from marshmallow import (
    Schema,
    ValidationError,
    fields,
    validate,
    validates,
    validates_schema,
)

from servicekit import events
from servicekit.schemas import LANGUAGE_TAG, PageArgs, Strict

E164 = validate.Regexp(r"^\+[1-9]\d{6,14}$", error="Not an E.164 phone number (+15551234567).")
NAME = validate.Length(min=1, max=100)


class SubjectIn(Strict):
    given_name = fields.String(required=True, validate=NAME)
    family_name = fields.String(validate=NAME)
    birth_date = fields.Date()
    age = fields.Integer(validate=validate.Range(min=0, max=120))
    phone = fields.String(validate=E164)
    email = fields.Email(validate=validate.Length(max=254))
    preferred_language = fields.String(validate=LANGUAGE_TAG)
    needs_interpreter = fields.Boolean(load_default=False)
    gender = fields.String(validate=validate.Length(max=40))

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


class LocationIn(Strict):
    lat = fields.Float(required=True, validate=validate.Range(min=-90, max=90))
    lon = fields.Float(required=True, validate=validate.Range(min=-180, max=180))


class ConsentIn(Strict):
    share_with_provider = fields.Boolean(required=True)
    referrer_updates = fields.String(required=True, validate=validate.OneOf(events.REFERRER_UPDATES))
    contact_methods = fields.List(fields.String(validate=validate.OneOf(events.CONTACT_METHODS)),
                                  required=True)
    obtained_via = fields.String(required=True,
                                 validate=validate.OneOf(("verbal", "written", "electronic")))
    expires_at = fields.AwareDateTime(default_timezone=UTC)


class ReferralIn(Strict):
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
