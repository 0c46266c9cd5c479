"""HTTP request/response schemas of provider-registry (marshmallow; unknown fields rejected).

Request schemas load nested parts straight into domain objects and run the domain rules,
so a broken rule is a 422 naming the field, the same as a malformed value.
"""
from __future__ import annotations

from typing import Any

from marshmallow import (
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

from servicekit import events
from servicekit.schemas import LANGUAGE_TAG, PageArgs, Strict

from . import domain

TIME_OF_DAY = validate.Regexp(r"^(([01]\d|2[0-3]):[0-5]\d|24:00)$", error="Not HH:MM.")
GEOHASH = validate.Regexp(r"^[0-9b-hjkmnp-z]{1,12}$", error="Not a geohash.")
NAME = validate.Length(min=1, max=500)
AGE = validate.Range(min=0, max=domain.MAX_AGE)


def _strings(validator: Any = None, **kwargs: Any) -> fields.List:
    return fields.List(fields.String(validate=validator), **kwargs)


# --- requests -------------------------------------------------------------------------------

class OrganizationFields(Strict):
    name = fields.String(required=True, validate=NAME)
    description = fields.String(validate=validate.Length(max=4000))
    notification_channels = _strings(validate.OneOf(events.NOTIFICATION_CHANNELS),
                                     load_default=lambda: ["in_app"])


class OrganizationIn(OrganizationFields):
    id = fields.UUID()  # optional; a provider registering its own organization gives its org


class LocationFields(Strict):
    name = fields.String(validate=NAME)
    location_type = fields.String(load_default="physical",
                                  validate=validate.OneOf(("physical", "postal", "virtual")))
    latitude = fields.Float(required=True, allow_nan=False, validate=validate.Range(-90, 90))
    longitude = fields.Float(required=True, allow_nan=False, validate=validate.Range(-180, 180))
    confidential = fields.Boolean(load_default=False)  # e.g. a domestic-violence shelter


class LocationIn(LocationFields):
    organization_id = fields.UUID(required=True)


class OpeningHoursIn(Strict):
    byday = fields.String(required=True, validate=validate.OneOf(events.WEEKDAYS))
    opens_at = fields.String(required=True, validate=TIME_OF_DAY)
    closes_at = fields.String(required=True, validate=TIME_OF_DAY)

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> domain.OpeningHours:
        return domain.OpeningHours(**data)


class ScheduleIn(Strict):
    always_open = fields.Boolean(required=True)
    timezone = fields.String(required=True, validate=validate.Length(1, 64))
    hours = fields.List(fields.Nested(OpeningHoursIn), load_default=list)
    valid_from = fields.Date(load_default=None, allow_none=True)
    valid_to = fields.Date(load_default=None, allow_none=True)

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> domain.Schedule:
        schedule = domain.Schedule(always_open=data["always_open"], timezone=data["timezone"],
                                   hours=tuple(data["hours"]), valid_from=data["valid_from"],
                                   valid_to=data["valid_to"])
        if errors := domain.schedule_errors(schedule):
            raise ValidationError(errors)
        return schedule


class ServiceAreaIn(Strict):
    radius_km = fields.Float(load_default=None, allow_none=True, allow_nan=False,
                             validate=validate.Range(min=0, max=1000))
    geohashes = _strings(GEOHASH, load_default=list)

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> domain.ServiceArea:
        return domain.ServiceArea(radius_km=data["radius_km"], geohashes=tuple(data["geohashes"]))


class CapacityIn(Strict):
    maximum = fields.Integer(required=True, strict=True, validate=validate.Range(0, 100_000))
    accepting = fields.Boolean(required=True)
    available = fields.Integer(strict=True, load_default=None, allow_none=True,
                               validate=validate.Range(min=0))

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> domain.Capacity:
        capacity = domain.Capacity(**data)
        if errors := domain.capacity_errors(capacity):
            raise ValidationError(errors)
        return capacity


class ServiceFields(Strict):
    """A full service description (PUT replaces every field)."""

    name = fields.String(required=True, validate=NAME)
    description = fields.String(validate=validate.Length(max=4000))
    status = fields.String(load_default="active",
                           validate=validate.OneOf(events.SERVICE_STATUSES))
    categories = _strings(validate.OneOf(events.NEEDS), required=True,
                          validate=validate.Length(min=1))
    minimum_age = fields.Integer(strict=True, load_default=None, allow_none=True, validate=AGE)
    maximum_age = fields.Integer(strict=True, load_default=None, allow_none=True, validate=AGE)
    genders = _strings(validate.Length(1, 50), load_default=list)
    populations = _strings(validate.OneOf(events.ELIGIBILITY_FLAGS), load_default=list)
    languages = _strings(LANGUAGE_TAG, load_default=list)
    interpretation_available = fields.Boolean(load_default=False)
    service_area = fields.Nested(ServiceAreaIn, required=True)
    schedule = fields.Nested(ScheduleIn, required=True)
    location_ids = fields.List(fields.UUID(), load_default=list)
    locations = fields.List(fields.Nested(LocationFields), load_default=list)
    capacity = fields.Nested(CapacityIn, load_default=None, allow_none=True)

    @validates_schema
    def _rules(self, data: dict[str, Any], **_: Any) -> None:
        errors: dict[str, list[str]] = {}
        if ages := domain.age_range_errors(data.get("minimum_age"), data.get("maximum_age")):
            errors["minimum_age"] = ages
        area = data.get("service_area")
        sites = len(data.get("location_ids", [])) + len(data.get("locations", []))
        if isinstance(area, domain.ServiceArea) and (bad := domain.area_errors(area, sites)):
            errors["service_area"] = bad
        if errors:
            raise ValidationError(errors)


class ServiceIn(ServiceFields):
    organization_id = fields.UUID(required=True)


class ServiceQuery(PageArgs):
    need = fields.String(validate=validate.OneOf(events.NEEDS))
    accepting = fields.Boolean()
    organization_id = fields.UUID()
    lat = fields.Float(allow_nan=False, validate=validate.Range(-90, 90))
    lon = fields.Float(allow_nan=False, validate=validate.Range(-180, 180))
    radius_km = fields.Float(allow_nan=False, validate=validate.Range(min=0.1, max=500))
    language = fields.String(validate=LANGUAGE_TAG)
    age = fields.Integer(validate=AGE)
    open_now = fields.Boolean()
    stale = fields.Boolean()

    @validates_schema
    def _place(self, data: dict[str, Any], **_: Any) -> None:
        if ("lat" in data) != ("lon" in data):
            raise ValidationError("Give lat and lon together.", "lat" if "lon" in data else "lon")
        if "radius_km" in data and "lat" not in data:
            raise ValidationError("radius_km needs lat and lon.", "radius_km")


# --- responses ------------------------------------------------------------------------------

class OrganizationOut(Schema):
    id = fields.String()
    name = fields.String()
    description = fields.String(allow_none=True)
    notification_channels = fields.List(fields.String())
    last_modified = events.UtcDateTime()


class OrganizationPage(Schema):
    items = fields.List(fields.Nested(OrganizationOut))
    total = fields.Integer(metadata={"description": "counted up to 1000; 1001 means more "
                                     "than 1000"})
    limit = fields.Integer()
    offset = fields.Integer()


class AddressOut(Schema):
    attention = fields.String(allow_none=True)
    address_1 = fields.String()
    address_2 = fields.String(allow_none=True)
    city = fields.String()
    region = fields.String(allow_none=True)
    state_province = fields.String()
    postal_code = fields.String()
    country = fields.String()
    address_type = fields.String()


class LocationOut(Schema):
    """A site. A confidential one shows only ``id``, ``organization_id`` and
    ``confidential`` to people outside its organization (admins see everything)."""

    id = fields.String()
    organization_id = fields.String()
    name = fields.String(allow_none=True)
    location_type = fields.String()
    description = fields.String(allow_none=True)
    latitude = fields.Float()
    longitude = fields.Float()
    confidential = fields.Boolean()
    addresses = fields.List(fields.Nested(AddressOut))


class LocationQuery(PageArgs):
    organization_id = fields.UUID()


class LocationPage(Schema):
    items = fields.List(fields.Nested(LocationOut))
    total = fields.Integer(metadata={"description": "counted up to 1000; 1001 means more "
                                     "than 1000"})
    limit = fields.Integer()
    offset = fields.Integer()


class ServiceLocationOut(events.ServiceLocationSchema):
    name = fields.String(allow_none=True)


class ScheduleOut(events.ScheduleSchema):
    valid_from = fields.String(allow_none=True)  # ISO dates, as in the snapshot
    valid_to = fields.String(allow_none=True)


class ServiceOut(events.ProviderServiceUpsertedV1):
    """The routing snapshot matching receives, plus what people read. A confidential site
    shows only ``location_id`` and ``confidential`` to people outside its organization."""

    description = fields.String(allow_none=True)
    locations = fields.List(fields.Nested(ServiceLocationOut))
    schedule = fields.Nested(ScheduleOut)
    stale = fields.Boolean()  # not confirmed within REGISTRY_STALE_AFTER_DAYS
    distance_km = fields.Float()  # search with lat/lon: to the nearest site


class ServicePage(Schema):
    items = fields.List(fields.Nested(ServiceOut))
    total = fields.Integer(metadata={"description": "exact with lat/lon; else counted up to "
                                     "1000, and 1001 means more than 1000"})
    limit = fields.Integer()
    offset = fields.Integer()
