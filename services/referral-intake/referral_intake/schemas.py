"""HTTP request/response schemas of referral-intake (marshmallow; unknown fields rejected)."""
from __future__ import annotations

from datetime import date, datetime, timezone
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
from servicekit.schemas import LANGUAGE_TAG, Strict

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
        today = datetime.now(timezone.utc).date()
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
    expires_at = fields.AwareDateTime(default_timezone=timezone.utc)


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
