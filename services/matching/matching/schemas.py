"""HTTP request/response schemas of matching (marshmallow; unknown request fields rejected)."""
from __future__ import annotations

from marshmallow import Schema, fields, validate

from servicekit import events
from servicekit.schemas import LANGUAGE_TAG, Strict


class SimulateIn(Strict):
    """A referral profile: the de-identified facts matching decides on."""

    need = fields.String(required=True, validate=validate.OneOf(events.NEEDS))
    urgency = fields.String(required=True, validate=validate.OneOf(events.URGENCIES))
    lat = fields.Float(required=True, validate=validate.Range(min=-90, max=90))
    lon = fields.Float(required=True, validate=validate.Range(min=-180, max=180))
    age = fields.Integer(strict=True, validate=validate.Range(min=0, max=130))
    age_band = fields.String(validate=validate.Regexp(r"\d{1,3}(-\d{1,3}|\+)\Z",
                                                      error="Not an age band like 18-24 or 65+."))
    preferred_language = fields.String(validate=LANGUAGE_TAG)
    needs_interpreter = fields.Boolean(load_default=False)
    gender = fields.String(validate=validate.Length(min=1, max=50))
    flags = fields.List(fields.String(validate=validate.OneOf(events.ELIGIBILITY_FLAGS)))


class ReasonOut(Schema):
    code = fields.String()
    text = fields.String()


class DecisionOut(Schema):
    id = fields.String()
    referral_id = fields.String()
    attempt = fields.Integer()
    outcome = fields.String()
    service_id = fields.String(allow_none=True)
    organization_id = fields.String(allow_none=True)
    score = fields.Float(allow_none=True)
    reasons = fields.List(fields.Nested(ReasonOut))
    eliminated = fields.Dict(keys=fields.String(), values=fields.Integer())
    candidates = fields.Integer()
    created_at = fields.DateTime()
    event_id = fields.String()


class DecisionList(Schema):
    referral_id = fields.String()
    items = fields.List(fields.Nested(DecisionOut))


class LoadOut(Schema):
    service_id = fields.String()
    organization_id = fields.String()
    status = fields.String()
    accepting = fields.Boolean()
    capacity_max = fields.Integer()
    open_offers = fields.Integer()
    active_cases = fields.Integer()
    load_ = fields.Integer(attribute="load", data_key="load")  # not `load`: a Schema method
    headroom = fields.Integer()


class LoadPage(Schema):
    items = fields.List(fields.Nested(LoadOut))
    total = fields.Integer()
    limit = fields.Integer()
    offset = fields.Integer()


class RankedOut(Schema):
    service_id = fields.String()
    organization_id = fields.String()
    score = fields.Float()
    distance_km = fields.Float(allow_none=True)
    open_offers = fields.Integer()
    active_cases = fields.Integer()
    capacity_max = fields.Integer()
    reasons = fields.List(fields.Nested(ReasonOut))


class ExcludedOut(Schema):
    service_id = fields.String()
    code = fields.String()


class SimulationOut(Schema):
    outcome = fields.String()
    candidates_considered = fields.Integer()
    eliminated = fields.Dict(keys=fields.String(), values=fields.Integer())
    ranked = fields.List(fields.Nested(RankedOut))
    excluded = fields.List(fields.Nested(ExcludedOut))
    reasons = fields.List(fields.Nested(ReasonOut))
