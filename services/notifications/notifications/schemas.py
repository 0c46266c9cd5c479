"""HTTP request/response schemas of notifications (marshmallow; unknown fields rejected)."""
from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from servicekit.schemas import PageArgs, Strict


class FeedArgs(PageArgs):
    unread = fields.Boolean(load_default=False)


class NotificationOut(Schema):
    """Id-only: short id, need, urgency, deadline and a link; never personal data."""

    id = fields.String()
    kind = fields.String()
    channel = fields.String()
    referral_id = fields.String()
    short_id = fields.String()
    title = fields.String(allow_none=True)  # null once the referral was erased
    body = fields.String(allow_none=True)
    link = fields.String()
    created_at = fields.DateTime()
    read_at = fields.DateTime(allow_none=True)


class NotificationPage(Schema):
    items = fields.List(fields.Nested(NotificationOut))
    total = fields.Integer()
    unread = fields.Boolean()
    limit = fields.Integer()
    offset = fields.Integer()


_CHANNELS = ("in_app", "email", "sms")


class PreferencesIn(Strict):
    """The caller's channels; e-mail and SMS need an address/number of the staff member."""

    channels = fields.List(fields.String(validate=validate.OneOf(_CHANNELS)), required=True,
                           validate=validate.Length(max=3))
    email = fields.Email(load_default=None, allow_none=True, validate=validate.Length(max=320))
    sms_number = fields.String(load_default=None, allow_none=True,
                               validate=validate.Regexp(r"^\+[1-9][0-9]{6,14}$",
                                                        error="Not an E.164 number."))

    @validates_schema
    def _contact_for_channel(self, data: dict[str, Any], **_: Any) -> None:
        if "email" in data["channels"] and not data.get("email"):
            raise ValidationError("required when channels include email", "email")
        if "sms" in data["channels"] and not data.get("sms_number"):
            raise ValidationError("required when channels include sms", "sms_number")


class PreferencesOut(Schema):
    channels = fields.List(fields.String())
    email = fields.String(allow_none=True)
    sms_number = fields.String(allow_none=True)
    updated_at = fields.DateTime(allow_none=True)


class WebhookIn(Strict):
    url = fields.String(required=True, validate=validate.Length(1, 2000))
    organization_id = fields.String(load_default=None, validate=validate.Length(1, 200))


class WebhookOut(Schema):
    id = fields.String()
    organization_id = fields.String()
    url = fields.String()
    active = fields.Boolean()
    created_at = fields.DateTime()


class WebhookCreated(WebhookOut):
    secret = fields.String(metadata={"description": "HMAC-SHA256 key; shown only now"})


class WebhookList(Schema):
    items = fields.List(fields.Nested(WebhookOut))


class WebhookArgs(Strict):
    organization_id = fields.String(load_default=None, validate=validate.Length(1, 200))


class DeliveryArgs(PageArgs):
    status = fields.String(load_default=None,
                           validate=validate.OneOf(("pending", "sent", "failed", "cancelled")))


class DeliveryOut(Schema):
    id = fields.String()
    notification_id = fields.String()
    channel = fields.String()
    target_kind = fields.String()
    target_id = fields.String()
    status = fields.String()
    attempt = fields.Integer()
    error = fields.String(allow_none=True)
    last_status_code = fields.Integer(allow_none=True)
    next_attempt_at = fields.DateTime(allow_none=True)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


class AttemptOut(Schema):
    attempt = fields.Integer()
    status = fields.String()
    error = fields.String(allow_none=True)
    status_code = fields.Integer(allow_none=True)
    next_attempt_at = fields.DateTime(allow_none=True)
    attempted_at = fields.DateTime()


class DeliveryDetail(DeliveryOut):
    attempts = fields.List(fields.Nested(AttemptOut))


class DeliveryPage(Schema):
    items = fields.List(fields.Nested(DeliveryOut))
    total = fields.Integer()
    status = fields.String(allow_none=True)
    limit = fields.Integer()
    offset = fields.Integer()
